"""Client load generator (one process; all clients in it). Every mode is bounded in time and writes JSON to --out.

Modes
- utterance: c closed-loop clients, each with its own WebSocket and session, sending a one-shot 33 KB `utterance`
  (32,768 base64 chars, manual_cut) and waiting for its `translation_result` before sending the next.
  --warmup seconds, then a --window: round trips/s counts the round trips completed inside the window, and the
  percentiles are theirs.
- stream: S sessions, each streaming 200 ms pcm16 chunks (6,400 B) in real time with is_final on every K-th chunk.
  Records finalize (time.monotonic_ns() just before the is_final chunk is sent) -> translation_result per utterance
  (outcomes are matched to finalizes in order, FIFO),
  and writes the finalize times keyed by (session_id, utterance_index) so the orchestrator can pair them with the
  nodes' job_assign receive times. Utterances finalized inside the window are the ones counted.
- celery: the same closed loop as `utterance`, but callers are threads doing translate.delay(utt).get(timeout=30)
  against bench/celery_app.py (broker and backend from $BENCH_REDIS_URL).
- alternate: c closed-loop clients per system (--urls A,B,...), and the systems take turns: A's clients run for
  --slice-seconds (then finish the round trip they are in), then B's, and so on, for --warmup then --window
  seconds. Every system sees the same seconds of the box, so their figures compare without the box's drift
  between separate runs (bench/README.md, Method). Reports each system's percentiles and round trips per second of
  its slices, and the medians over rounds of each system's p50 and rate in that round divided by the first
  system's.
- idle: open c sessions (session_init only), print READY, hold them until SIGTERM/--max-seconds (memory runs).

--watch name=PID[+PID],... samples those processes' CPU (and the machine's) over exactly the window.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from urllib.parse import urlparse

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import (
    CHUNK_SECONDS,
    MAX_MESSAGE,
    RECEIVE_BUFFER,
    CpuWatch,
    audio_b64,
    parse_watch,
    pcm_chunk_b64,
    summarize_ns,
    template,
    utterance_dict,
    write_json,
)


class Counters:
    def __init__(self) -> None:
        self.errors = 0
        self.timeouts = 0
        self.connect_failures = 0
        self.unmatched = 0
        self.error_samples: list[str] = []

    def err(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(text[:300])


# ----------------------------------------------------------------------------------------------- trio modes


def _trio_imports():
    global trio, open_websocket, ConnectionClosed, HandshakeError
    import trio
    from trio_websocket import ConnectionClosed, HandshakeError, open_websocket


class Phase:
    """Connect all sessions first, then start them together."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.connected = 0
        self.failed = 0
        self.all_connected = trio.Event()
        self.go = trio.Event()
        self.t: dict = {}

    def tick(self) -> None:
        if self.connected + self.failed >= self.n:
            self.all_connected.set()


async def with_session(i, host, port, cnt: Counters, sem, phase: Phase, body) -> None:
    """Connect and session_init (under the connect semaphore), wait for the common start, run body(i, ws, sid)."""
    await sem.acquire()
    released = False
    try:
        async with open_websocket(host, port, "/ws/session", use_ssl=False, receive_buffer_size=RECEIVE_BUFFER,
                                  max_message_size=MAX_MESSAGE, connect_timeout=30, disconnect_timeout=2) as ws:
            await ws.send_message(json.dumps({
                "type": "session_init", "client_version": "bench", "platform": "api-gateway",
                "src_lang": "zh", "tgt_lang": "en", "audio_format": "pcm16", "sample_rate": 16000,
                "mode": "one_way",
            }))
            with trio.fail_after(30):
                while True:
                    m = json.loads(await ws.get_message())
                    if m.get("type") == "session_init_ack":
                        sid = m["session_id"]
                        break
                    if m.get("type") == "error":
                        raise RuntimeError(f"session_init refused: {m}")
            sem.release()
            released = True
            phase.connected += 1
            phase.tick()
            await phase.go.wait()
            await body(i, ws, sid)
    except* (OSError, HandshakeError, ConnectionClosed, RuntimeError, trio.TooSlowError, ValueError) as eg:
        exc = eg.exceptions[0]
        if not released:
            cnt.connect_failures += 1
            phase.failed += 1
            phase.tick()
        cnt.err(f"{'connect' if not released else 'session'}: {type(exc).__name__}: {exc}")
    finally:
        if not released:
            sem.release()


async def _cpu_window(watch: CpuWatch | None, t_start: float, t_end: float, holder: dict) -> None:
    if watch is None:
        return
    await trio.sleep_until(t_start)
    watch.start()
    await trio.sleep_until(t_end)
    holder["cpu"] = watch.stop()


async def _run_sessions(args, host, port, cnt, body, set_times, watch, holder, budget) -> float:
    """Open args.c sessions, call set_times(phase) once all are connected, start them, wait for all bodies."""
    phase = Phase(args.c)
    sem = trio.Semaphore(args.connect_concurrency)
    t_c0 = time.monotonic()
    with trio.fail_after(budget):
        async with trio.open_nursery() as n:
            for i in range(args.c):
                n.start_soon(with_session, i, host, port, cnt, sem, phase, body)
            await phase.all_connected.wait()
            connect_s = time.monotonic() - t_c0
            set_times(phase)
            if watch is not None:
                n.start_soon(_cpu_window, watch, phase.t["cpu_start"], phase.t["cpu_end"], holder)
            phase.go.set()
    return connect_s, phase.connected


async def until_result(ws, idx: int, cnt: Counters) -> dict | None:
    """Read until the translation_result of utterance ``idx`` (None) or an error message (returned); a result for
    another index is counted as unmatched, anything else is skipped."""
    while True:
        m = json.loads(await ws.get_message())
        mt = m.get("type")
        if mt == "translation_result":
            if m.get("utterance_index") == idx:
                return None
            cnt.unmatched += 1
        elif mt == "error":
            return m


async def run_utterance(args, host, port, watch) -> dict:
    cnt = Counters()
    audio = audio_b64()
    lat: list[int] = []
    holder: dict = {}
    T: dict = {}

    def set_times(phase):
        now = trio.current_time()
        T["ws"] = now + args.warmup
        T["we"] = T["ws"] + args.window
        T["p_ws"] = time.perf_counter_ns() + int(args.warmup * 1e9)
        T["p_we"] = T["p_ws"] + int(args.window * 1e9)
        phase.t["cpu_start"], phase.t["cpu_end"] = T["ws"], T["we"]

    async def client(i, ws, sid):
        prefix, suffix = template(utterance_dict(sid, 0, audio), "utterance_index")
        t_we, p_ws, p_we = T["we"], T["p_ws"], T["p_we"]
        idx = 0
        while trio.current_time() < t_we:
            msg = prefix + str(idx) + suffix
            t0 = time.perf_counter_ns()
            await ws.send_message(msg)
            ok = False
            with trio.move_on_after(args.rt_timeout) as cs:
                error = await until_result(ws, idx, cnt)
                if error is not None:
                    cnt.err(f"error: {error}")
                else:
                    ok = True
            t1 = time.perf_counter_ns()
            if cs.cancelled_caught:
                cnt.timeouts += 1
                cnt.err(f"timeout after {args.rt_timeout}s on {sid}#{idx}")
                return
            if ok and p_ws <= t1 < p_we:
                lat.append(t1 - t0)
            idx += 1

    budget = 120 + args.warmup + args.window + args.rt_timeout
    connect_s, connected = await _run_sessions(args, host, port, cnt, client, set_times, watch, holder, budget)
    res = {
        "mode": "utterance",
        "c": args.c,
        "connected": connected,
        "connect_s": connect_s,
        "window_s": args.window,
        "round_trips": len(lat),
        "rt_per_s": len(lat) / args.window,
        **summarize_ns(lat),
    }
    res.update(_counters(cnt))
    res["cpu"] = holder.get("cpu")
    return res


async def run_alternate(args, urls: list[tuple[str, int]]) -> dict:
    """Mode ``alternate``: see the module docstring."""
    cnt = Counters()
    audio = audio_b64()
    k, c = len(urls), args.c
    lat: list[list[int]] = [[] for _ in range(k)]
    busy = [0.0] * k  # seconds of measured slices, first send to last result
    done_rts = [0] * k
    rounds: list[list[tuple[float, float]]] = []  # per round: each system's (p50 ns, round trips/s) in that round
    go = [trio.Event() for _ in range(k)]
    current: dict = {}
    all_waiting = trio.Event()
    waiting = [0]

    async def client(i, ws, sid):
        prefix, suffix = template(utterance_dict(sid, 0, audio), "utterance_index")
        idx = 0
        waiting[0] += 1
        if waiting[0] == k * c:
            all_waiting.set()  # the first turn may start: every client waits on its system's first event
        while True:
            await go[i].wait()
            if current["stop"]:
                return
            end, mine = current["end"], current["lat"]
            try:
                while time.monotonic() < end:
                    t0 = time.perf_counter_ns()
                    await ws.send_message(prefix + str(idx) + suffix)
                    with trio.fail_after(args.rt_timeout):
                        error = await until_result(ws, idx, cnt)
                    if error is not None:
                        raise RuntimeError(f"error: {error}")
                    mine.append(time.perf_counter_ns() - t0)
                    idx += 1
            finally:  # a client that failed (counted by with_session) ends the run after this slice
                current["left"] -= 1
                if not current["left"]:
                    current["finished"].set()

    async def turn(i: int, stop: bool = False) -> tuple[list[int], float]:
        current.update(stop=stop, end=time.monotonic() + args.slice_seconds, lat=[], left=c,
                       finished=trio.Event())
        event, go[i] = go[i], trio.Event()
        started = time.monotonic()
        event.set()
        if stop:
            return [], 0.0
        await current["finished"].wait()
        return current["lat"], time.monotonic() - started

    async def conductor():
        start = time.monotonic()
        warm_end, end = start + args.warmup, start + args.warmup + args.window
        while time.monotonic() < end and not cnt.errors:
            measured = time.monotonic() >= warm_end
            this_round = []
            for i in range(k):
                got, seconds = await turn(i)
                if measured:
                    lat[i].extend(got)
                    busy[i] += seconds
                    done_rts[i] += len(got)
                this_round.append((sorted(got)[len(got) // 2] if got else 0.0, len(got) / seconds))
            if measured:
                rounds.append(this_round)
        for i in range(k):
            await turn(i, stop=True)

    phase = Phase(k * c)
    sem = trio.Semaphore(args.connect_concurrency)
    with trio.fail_after(120 + args.warmup + args.window + args.rt_timeout):
        async with trio.open_nursery() as n:
            for i, (host, port) in enumerate(urls):
                for _ in range(c):
                    n.start_soon(with_session, i, host, port, cnt, sem, phase, client)
            await phase.all_connected.wait()
            if phase.failed:  # counted by with_session
                n.cancel_scope.cancel()
            else:
                phase.go.set()
                await all_waiting.wait()
                n.start_soon(conductor)

    def median(xs: list[float]) -> float | None:
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else None

    systems = [{
        **summarize_ns(lat[i]),
        "rt_per_s": done_rts[i] / busy[i] if busy[i] else None,
        "p50_ratio_to_first": median([r[i][0] / r[0][0] for r in rounds if r[0][0]]),
        "rt_ratio_to_first": median([r[i][1] / r[0][1] for r in rounds if r[0][1]]),
    } for i in range(k)]
    res = {"mode": "alternate", "c": c, "slice_seconds": args.slice_seconds, "rounds": len(rounds),
           "window_s": args.window, "systems": systems}
    res.update(_counters(cnt))
    return res


async def run_stream(args, host, port, watch) -> dict:
    cnt = Counters()
    chunk = pcm_chunk_b64()
    K = args.chunks_per_utt
    records: list = []  # [session_id, utterance_index, finalize_ns, result_ns|None]
    lag = {"max_ms": 0.0, "late_sends": 0, "sends": 0}
    holder: dict = {}
    T: dict = {}

    def set_times(phase):
        T["S"] = phase.connected
        T["go"] = trio.current_time() + 0.1
        go_ns = time.monotonic_ns() + int(0.1 * 1e9)
        T["win_start_ns"] = go_ns + int(args.warmup * 1e9)
        T["win_end_ns"] = T["win_start_ns"] + int(args.window * 1e9)
        T["stop_send"] = T["go"] + args.warmup + args.window
        phase.t["cpu_start"] = T["go"] + args.warmup
        phase.t["cpu_end"] = T["stop_send"]

    async def session(i, ws, sid):
        S = max(T["S"], 1)
        # Spread the sessions' phases over one whole utterance (K chunks), not just one chunk: with 200 ms of spread
        # every session finalized in the same fifth of each second, a burst no real population of speakers makes.
        t0 = T["go"] + (i % S) / S * CHUNK_SECONDS * K
        stop_send = T["stop_send"]
        finals: list[int] = []
        # Outcomes come back in utterance order (the scheduler orders them), so each translation_result,
        # missing_result or error that names an utterance_index resolves the oldest unresolved finalize (FIFO).
        # The server's utterance_index is recorded from the outcome, whatever index base it uses.
        pending: collections.deque[int] = collections.deque()
        outcome: dict[int, tuple] = {}  # ordinal -> (result_ns | None, server utterance_index, kind)
        state = {"sender_done": False}
        all_in = trio.Event()

        async def receiver():
            while True:
                m = json.loads(await ws.get_message())
                mt = m.get("type")
                if mt == "translation_result" or mt == "missing_result" or (mt == "error" and "utterance_index" in m):
                    now = time.monotonic_ns()
                    if pending:
                        o = pending.popleft()
                        outcome[o] = (now if mt == "translation_result" else None, m.get("utterance_index"), mt)
                    else:
                        cnt.unmatched += 1
                    if mt == "error":
                        cnt.err(f"error: {m}")
                    if state["sender_done"] and not pending:
                        all_in.set()
                elif mt == "error":
                    cnt.err(f"error: {m}")

        async def sender():
            k = 0
            while True:
                t = t0 + k * CHUNK_SECONDS
                if k % K == 0 and t >= stop_send:
                    break
                await trio.sleep_until(t)
                late = (trio.current_time() - t) * 1000.0
                lag["sends"] += 1
                if late > lag["max_ms"]:
                    lag["max_ms"] = late
                if late > 50.0:
                    lag["late_sends"] += 1
                is_final = k % K == K - 1
                msg = ('{"type":"audio_chunk","session_id":"' + sid + '","seq":' + str(k) +
                       ',"is_final":' + ("true" if is_final else "false") + ',"payload":"' + chunk + '"}')
                if is_final:
                    pending.append(len(finals))
                    finals.append(time.monotonic_ns())
                await ws.send_message(msg)
                k += 1
            state["sender_done"] = True
            if not pending:
                all_in.set()

        try:
            async with trio.open_nursery() as n:
                n.start_soon(receiver)
                await sender()
                with trio.move_on_after(args.drain):
                    await all_in.wait()
                n.cancel_scope.cancel()
        finally:
            for o, f_ns in enumerate(finals):
                if T["win_start_ns"] <= f_ns < T["win_end_ns"]:
                    res_ns, idx, kind = outcome.get(o, (None, None, None))
                    records.append([sid, idx, f_ns, res_ns, kind])

    budget = 120 + args.warmup + args.window + args.drain
    connect_s, connected = await _run_sessions(args, host, port, cnt, session, set_times, watch, holder, budget)
    lat = [r[3] - r[2] for r in records if r[3] is not None]
    missing = sum(1 for r in records if r[4] is None)  # no outcome at all before the drain ended
    failed = sum(1 for r in records if r[4] is not None and r[4] != "translation_result")
    deadline_ns = int(args.deadline_ms * 1e6)
    res = {
        "mode": "stream",
        "sessions": args.c,
        "connected": connected,
        "connect_s": connect_s,
        "chunks_per_utt": K,
        "window_s": args.window,
        "finalized": len(records),
        "finalized_per_s": len(records) / args.window,
        "missing": missing,
        "failed_outcomes": failed,
        "late": sum(1 for x in lat if x > deadline_ns),
        "deadline_ms": args.deadline_ms,
        "send_lag_max_ms": lag["max_ms"],
        "late_sends": lag["late_sends"],
        "sends": lag["sends"],
        "fin_to_result": summarize_ns(lat),
        "records": records,
    }
    res.update(_counters(cnt))
    res["cpu"] = holder.get("cpu")
    return res


async def run_idle(args, host, port) -> None:
    cnt = Counters()
    stop = trio.Event()

    def set_times(phase):
        print(f"READY sessions={phase.connected} failed={cnt.connect_failures}", flush=True)
        res = {"mode": "idle", "c": args.c, "connected": phase.connected}
        res.update(_counters(cnt))
        if args.out:
            write_json(args.out, res)

    async def hold(i, ws, sid):
        await stop.wait()

    async def until_signal():
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for _ in sigs:
                break
        os._exit(0)  # do not spend seconds closing 10,000 sockets politely

    async with trio.open_nursery() as n:
        n.start_soon(until_signal)
        with trio.move_on_after(args.max_seconds):
            await _run_sessions(args, host, port, cnt, hold, set_times, None, {}, args.max_seconds + 10)
    os._exit(0)


def _counters(cnt: Counters) -> dict:
    return {"errors": cnt.errors, "timeouts": cnt.timeouts, "connect_failures": cnt.connect_failures,
            "unmatched": cnt.unmatched, "error_samples": cnt.error_samples}


# ----------------------------------------------------------------------------------------------- celery mode


def run_celery(args, watch) -> dict:
    from celery_app import translate  # bench/ is on sys.path

    cnt = Counters()
    lock = threading.Lock()
    audio = audio_b64()
    # readiness: the worker answers one task
    deadline = time.monotonic() + 60
    while True:
        try:
            translate.delay(utterance_dict("s-warm", 0, "")).get(timeout=5)
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery worker not answering: {exc}") from exc
    lat: list[int] = []
    n_win = [0]
    barrier = threading.Barrier(args.c + 1)
    times: dict = {}

    def caller(i):
        sid = f"s-{i:08X}"
        base = utterance_dict(sid, 0, audio)
        barrier.wait()
        w_ws, w_we, t_end = times["ws"], times["we"], times["end"]
        idx = 0
        local: list[int] = []
        while time.monotonic() < t_end:
            utt = dict(base, utterance_index=idx)
            t0 = time.perf_counter_ns()
            try:
                r = translate.delay(utt).get(timeout=args.rt_timeout)
            except Exception as exc:
                with lock:
                    cnt.err(f"celery: {type(exc).__name__}: {exc}")
                return
            t1 = time.perf_counter_ns()
            if r.get("utterance_index") != idx:
                with lock:
                    cnt.unmatched += 1
            elif w_ws <= t1 < w_we:
                local.append(t1 - t0)
            idx += 1
        with lock:
            lat.extend(local)
            n_win[0] += len(local)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(args.c)]
    for t in threads:
        t.start()
    now_ns = time.perf_counter_ns()
    times["ws"] = now_ns + int(args.warmup * 1e9)
    times["we"] = times["ws"] + int(args.window * 1e9)
    times["end"] = time.monotonic() + args.warmup + args.window
    barrier.wait()
    holder = {}
    if watch is not None:
        time.sleep(args.warmup)
        watch.start()
        time.sleep(args.window)
        holder["cpu"] = watch.stop()
    for t in threads:
        t.join(timeout=args.warmup + args.window + args.rt_timeout + 10)
    res = {"mode": "celery", "c": args.c, "connected": args.c, "window_s": args.window, "round_trips": n_win[0],
           "rt_per_s": n_win[0] / args.window, **summarize_ns(lat)}
    res.update(_counters(cnt))
    res["cpu"] = holder.get("cpu")
    return res


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["utterance", "stream", "celery", "idle", "alternate"], default="utterance")
    ap.add_argument("--url", default="", help="ws://127.0.0.1:PORT (/ws/session is added)")
    ap.add_argument("-c", type=int, default=1,
                    help="clients (utterance, celery, idle; alternate: per system) or sessions (stream)")
    ap.add_argument("--warmup", type=float, default=1.5)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--rt-timeout", type=float, default=30.0)
    ap.add_argument("--chunks-per-utt", type=int, default=5, help="stream: is_final on every K-th 200 ms chunk")
    ap.add_argument("--deadline-ms", type=float, default=1000.0, help="stream: a result later than this is late")
    ap.add_argument("--drain", type=float, default=5.0, help="stream: wait this long for the last results")
    ap.add_argument("--connect-concurrency", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="idle: hold at most this long")
    ap.add_argument("--watch", default="", help="name=PID[+PID],... CPU sampled over the window")
    ap.add_argument("--urls", default="", help="alternate: comma list of ws://127.0.0.1:PORT, c clients each")
    ap.add_argument("--slice-seconds", type=float, default=0.05,
                    help="alternate: seconds on one system (its clients then finish their round trip) before the next")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    watch = None
    pids = parse_watch(args.watch)
    if pids:
        pids.setdefault("loadgen", [os.getpid()])
        watch = CpuWatch(pids)

    if args.mode == "celery":
        res = run_celery(args, watch)
    elif args.mode == "alternate":
        urls = [urlparse(u) for u in args.urls.split(",") if u]
        assert all(u.hostname in ("127.0.0.1", "localhost", "::1") for u in urls), "the bench only talks to loopback"
        _trio_imports()
        res = trio.run(run_alternate, args, [(u.hostname, u.port) for u in urls])
    else:
        u = urlparse(args.url)
        host, port = u.hostname, u.port
        assert host in ("127.0.0.1", "localhost", "::1"), "the bench only talks to loopback"
        _trio_imports()
        if args.mode == "utterance":
            res = trio.run(run_utterance, args, host, port, watch)
        elif args.mode == "stream":
            res = trio.run(run_stream, args, host, port, watch)
        else:
            trio.run(run_idle, args, host, port)
            return
    if args.out:
        write_json(args.out, res)
    brief = {k: v for k, v in res.items() if k not in ("records", "error_samples")}
    print(json.dumps(brief), flush=True)


if __name__ == "__main__":
    main()
