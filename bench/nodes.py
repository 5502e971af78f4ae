"""Simulated worker nodes: N node connections in one trio process that answer every job_assign at once.

Each node registers (languages zh/en by default, a large max_concurrent_jobs), heartbeats at --hz (cheap,
pre-serialised heartbeats with only the timestamp changing; 0 = only the one right after the ack), and answers each
job_assign immediately with a ~300 B job_result. This is also the heartbeat-storm generator:

    python bench/nodes.py --url ws://127.0.0.1:P --n 1000 --hz 10 --out storm.json

With --record, the receive time of every job_assign (time.monotonic_ns(), system-wide CLOCK_MONOTONIC, so it is
comparable with the load generator's finalize times in another process) is written to --out, keyed by
(session_id, utterance_index).

Prints "READY registered=N" once every node has its node_register_ack; writes --out and exits on SIGTERM/SIGINT
or after --max-seconds. Without --hz, nodes heartbeat every heartbeat_interval_seconds of the ack, as real nodes do
(the scheduler drops a node silent for its heartbeat timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from functools import partial
from urllib.parse import urlparse

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import MAX_MESSAGE, RECEIVE_BUFFER, template, write_json

dumps = partial(json.dumps, separators=(",", ":"))
TTS_AUDIO = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YQAAAAA=" * 2  # ~120 chars


class Stats:
    def __init__(self) -> None:
        self.registered = 0
        self.failed = 0
        self.hb_sent = 0
        self.hb_late = 0  # heartbeats skipped because the sender fell behind its schedule
        self.jobs = 0
        self.other_msgs = 0
        self.per_node: dict[str, int] = {}
        self.assigns: list = []  # [session_id, utterance_index, recv_ns, node_index]
        self.disconnected = 0
        self.errors: list[str] = []


def register_msg(i: int, args) -> dict:
    langs = args.langs.split(",")
    extra = []
    if args.pools > 1:
        extra = [f"x{i % args.pools:03d}"]  # a distinct language set per pool
    all_langs = langs + extra
    msg = {
        "type": "node_register",
        "version": "bench-1",
        "capability_schema_version": "2.0",
        "platform": "linux",
        "hardware": {"cpu_cores": 8, "memory_gb": 16},
        "installed_models": [],
        "installed_services": [
            {"service_id": f"{t}-bench", "type": t, "device": "cpu", "status": "running"}
            for t in ("asr", "nmt", "tts", "semantic")
        ],
        "capability_by_type": [{"type": t, "ready": True} for t in ("asr", "nmt", "tts", "semantic")],
        "features_supported": {},
        "accept_public_jobs": True,
        "language_capabilities": {
            "asr_languages": all_langs,
            "tts_languages": all_langs,
            "semantic_languages": all_langs,
        },
        "max_concurrent_jobs": args.capacity,
    }
    if args.node_prefix:
        msg["node_id"] = f"{args.node_prefix}-{i:05d}"
    return msg


def heartbeat_template(node_id: str, reg: dict) -> tuple[str, str]:
    hb = {
        "type": "node_heartbeat",
        "node_id": node_id,
        "timestamp": 0,
        "resource_usage": {"cpu_percent": 12.5, "mem_percent": 30.0, "running_jobs": 0},
        "installed_services": reg["installed_services"],
        "capability_by_type": reg["capability_by_type"],
        "language_capabilities": reg["language_capabilities"],
    }
    return template(hb, "timestamp")


async def one_node(i: int, args, host: str, port: int, stats: Stats, sem: trio.Semaphore,
                   all_ready: trio.Event, task_status=trio.TASK_STATUS_IGNORED) -> None:
    reg = register_msg(i, args)
    record = args.record
    await sem.acquire()
    released = False
    try:
        async with open_websocket(host, port, "/ws/node", use_ssl=False, receive_buffer_size=RECEIVE_BUFFER,
                                  max_message_size=MAX_MESSAGE, connect_timeout=30, disconnect_timeout=2) as ws:
            await ws.send_message(dumps(reg))
            with trio.fail_after(30):
                while True:
                    ack = json.loads(await ws.get_message())
                    if ack.get("type") == "node_register_ack":
                        break
                    if ack.get("type") == "error":
                        raise RuntimeError(f"node_register refused: {ack}")
            node_id = ack["node_id"]
            sem.release()
            released = True
            stats.registered += 1
            stats.per_node[node_id] = 0
            if stats.registered + stats.failed >= args.n:
                all_ready.set()
            prefix, suffix = heartbeat_template(node_id, reg)
            if args.hz > 0:
                interval = 1.0 / args.hz
            elif args.hz == 0:  # as a real node: every heartbeat_interval_seconds from the ack
                interval = float(ack.get("heartbeat_interval_seconds") or 15.0)
            else:  # --hz -1: only the heartbeat right after the ack (the server will time the node out)
                interval = None

            async def heartbeats() -> None:
                # one right after the ack (as the real node does), then on a fixed schedule with a random phase
                await ws.send_message(prefix + str(int(time.time() * 1000)) + suffix)
                stats.hb_sent += 1
                if interval is None:
                    return
                next_t = trio.current_time() + random.random() * interval
                while True:
                    await trio.sleep_until(next_t)
                    await ws.send_message(prefix + str(int(time.time() * 1000)) + suffix)
                    stats.hb_sent += 1
                    next_t += interval
                    now = trio.current_time()
                    if next_t < now:  # fell behind: skip the missed beats instead of bursting
                        missed = int((now - next_t) / interval) + 1
                        stats.hb_late += missed
                        next_t += missed * interval

            async with trio.open_nursery() as nursery:
                nursery.start_soon(heartbeats)
                while True:
                    raw = await ws.get_message()
                    t_ns = time.monotonic_ns()
                    msg = json.loads(raw)
                    if msg.get("type") != "job_assign":
                        stats.other_msgs += 1
                        continue
                    sid = msg.get("session_id")
                    uidx = msg.get("utterance_index")
                    if record:
                        stats.assigns.append([sid, uidx, t_ns, i])
                    stats.jobs += 1
                    stats.per_node[node_id] += 1
                    await ws.send_message(dumps({
                        "type": "job_result",
                        "job_id": msg["job_id"],
                        "attempt_id": msg.get("attempt_id", 1),
                        "node_id": node_id,
                        "session_id": sid,
                        "utterance_index": uidx,
                        "success": True,
                        "text_asr": "你好世界",
                        "text_translated": "hello world",
                        "tts_audio": TTS_AUDIO,
                        "tts_format": "pcm16",
                        "trace_id": msg.get("trace_id"),
                        "processing_time_ms": 0,
                    }))
    except* (ConnectionClosed, HandshakeError, OSError, RuntimeError, trio.TooSlowError, ValueError) as eg:
        exc = eg.exceptions[0]
        if not released:
            stats.failed += 1
            if stats.registered + stats.failed >= args.n:
                all_ready.set()
        else:
            stats.disconnected += 1
        if len(stats.errors) < 20:
            stats.errors.append(f"node {i}: {type(exc).__name__}: {exc}"[:300])
    finally:
        if not released:
            sem.release()


async def main(args) -> None:
    u = urlparse(args.url)
    host, port = u.hostname, u.port
    assert host in ("127.0.0.1", "localhost", "::1"), "the bench only talks to loopback"
    stats = Stats()
    sem = trio.Semaphore(args.connect_concurrency)
    all_ready = trio.Event()
    t0 = time.monotonic()
    with trio.move_on_after(args.max_seconds), trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
        async with trio.open_nursery() as nursery:
            for i in range(args.n):
                nursery.start_soon(one_node, i, args, host, port, stats, sem, all_ready)

            async def announce() -> None:
                with trio.move_on_after(args.ready_timeout):
                    await all_ready.wait()
                print(f"READY registered={stats.registered} failed={stats.failed} "
                      f"connect_s={time.monotonic() - t0:.2f}", flush=True)

            nursery.start_soon(announce)
            async for _ in sigs:
                break
            finish(args, stats, t0)
    finish(args, stats, t0)


def finish(args, stats: Stats, t0: float) -> None:
    """Write --out, then exit at once: closing 1,000 sockets politely can take longer than the orchestrator waits,
    and the results matter more than the close handshakes."""
    dur = time.monotonic() - t0
    counts = sorted(stats.per_node.values())
    out = {
        "n": args.n,
        "hz": args.hz,
        "registered": stats.registered,
        "failed": stats.failed,
        "disconnected": stats.disconnected,
        "duration_s": dur,
        "hb_sent": stats.hb_sent,
        "hb_late_skipped": stats.hb_late,
        "hb_rate": stats.hb_sent / dur if dur else 0,
        "jobs": stats.jobs,
        "jobs_per_node_min": counts[0] if counts else 0,
        "jobs_per_node_max": counts[-1] if counts else 0,
        "other_msgs": stats.other_msgs,
        "errors": stats.errors,
        "assigns": stats.assigns,
    }
    if args.out:
        write_json(args.out, out)
    print(f"nodes done: registered={stats.registered} jobs={stats.jobs} hb_sent={stats.hb_sent} "
          f"hb_late={stats.hb_late}", flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="ws://127.0.0.1:PORT (the /ws/node path is added)")
    ap.add_argument("--n", type=int, default=4, help="node connections (4 for closed loop, 50 for streaming)")
    ap.add_argument("--hz", type=float, default=0.0,
                    help="heartbeats per second per node (0: every heartbeat_interval_seconds of the ack, "
                         "as a real node; -1: only the one right after the ack)")
    ap.add_argument("--langs", default="zh,en")
    ap.add_argument("--pools", type=int, default=1, help="spread nodes over this many distinct language sets")
    ap.add_argument("--capacity", type=int, default=1000, help="max_concurrent_jobs sent in node_register")
    ap.add_argument("--node-prefix", default="", help="send node_id=PREFIX-00000.. in node_register")
    ap.add_argument("--record", action="store_true", help="record job_assign receive times")
    ap.add_argument("--out", default="", help="JSON summary (and records) written on exit")
    ap.add_argument("--connect-concurrency", type=int, default=64)
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="exit by itself after this long")
    trio.run(main, ap.parse_args())
