"""Benchmark orchestrator for trioscheduler (issue 4). Prints markdown tables; writes JSON to bench/results/.

Each system runs in its own process on free loopback ports and restarts every repeat; load generators and
simulated nodes are separate processes; the order of the systems rotates between repeats; medians are over
repeats and ratios are computed inside each repeat. Process CPU comes from /proc/PID/stat over the window.

Systems: scheduler (`python -m trioscheduler` at its default log level, info, with bench/scheduler-bench.toml:
only the admission cap and the per-client message budget raised), scheduler-warning (the same at `--log-level
warning`, so the cost of logging is always visible; throughput and alternate only unless named in --systems),
relay (bench/relay.py, the transport ceiling; relay-fast is the same on orjson and pybase64), celery (Celery +
Redis, throughput only; skipped with a note if unavailable).

Experiments (issue 4):
  throughput  closed-loop 33 KB `utterance`, c clients, 4 nodes               (point 3)
  alternate   c closed-loop clients per system, every system up, the systems taking turns in slices (50 ms at
              c = 1, 1 s above): the closed loop with every system in the same seconds of the box (issue 13.4)
  stream      S sessions streaming 200 ms chunks in real time, 50 nodes:
              finalize -> job_assign at the node, finalize -> translation_result  (point 1)
  storm       the stream run at 200 sessions, without and with 1,000 nodes heartbeating at 1 Hz / 10 Hz (point 2)
  selection   in-process selection cost, bench/selection_bench.py             (point 2 "selection latency", 4)
  scale       bench/scale.py: cost per job vs nodes/pools, memory per idle session / per node   (point 4)
  overload    bench/overload.py: 0.5x, 2x, 0.5x the fleet's capacity; registry time per result (issue 8.8)

    python bench/run.py --quick                 # < 2 min; scheduler (if present) + relay; no celery, no scale
    python bench/run.py                         # full: 3 repeats, all experiments, celery if installed
    python bench/run.py --repeats 5 --only throughput --systems scheduler,relay,celery
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import audio_b64, utterance_dict
from _procs import (
    BENCH,
    PY,
    SCHEDULER_LOG_LEVELS,
    Procs,
    StartError,
    celery_available,
    histogram_delta,
    install_signal_handlers,
    metrics_text,
    parse_metrics,
    read_json,
    scheduler_available,
    start_nodes,
    start_system,
    stop_system,
)

LOADGEN = os.path.join(BENCH, "loadgen.py")
#: Every system run.py knows, in report order; relay-fast only runs when asked for with --systems.
SYSTEMS = ("scheduler", "scheduler-warning", "relay", "relay-fast", "celery")


# ----------------------------------------------------------------------------------------------- parameters


def params(quick: bool) -> dict:
    if quick:
        return {
            "repeats": 1,
            "tp_conc": [1, 50], "tp_warmup": 0.5, "tp_window": 2.0, "tp_nodes": 4,
            "alt_conc": [1, 50], "alt_warmup": 0.5, "alt_window": 4.0,
            "st_sessions": [1, 50], "st_warmup": 1.0, "st_window": 3.0, "st_drain": 2.0, "st_nodes": 50,
            "storm_sessions": 50, "storm_levels": [(0, 0.0), (200, 2.0)],
            "storm_warmup": 1.0, "storm_window": 3.0,
            "selection": ["--quick"], "overload": ["--quick"], "quiet_wait": 0,
        }
    return {
        "repeats": 3,
        "tp_conc": [1, 50, 200], "tp_warmup": 1.5, "tp_window": 5.0, "tp_nodes": 4,
        "alt_conc": [1, 50, 200], "alt_warmup": 2.0, "alt_window": 20.0,
        "st_sessions": [1, 100, 500], "st_warmup": 2.0, "st_window": 10.0, "st_drain": 5.0, "st_nodes": 50,
        "storm_sessions": 200, "storm_levels": [(0, 0.0), (1000, 1.0), (1000, 10.0)],
        "storm_warmup": 2.0, "storm_window": 10.0,
        "selection": [], "overload": [], "quiet_wait": 60,
    }


# ----------------------------------------------------------------------------------------------- helpers


def rotate(xs: list, r: int) -> list:
    if not xs:
        return xs
    k = r % len(xs)
    return xs[k:] + xs[:k]


def watch_spec(watch: dict[str, list[int]]) -> str:
    return ",".join(f"{k}={'+'.join(str(p) for p in v)}" for k, v in watch.items())


def run_loadgen(procs: Procs, rundir: str, system, mode: str, c: int, warmup: float, window: float,
                watch: dict[str, list[int]], extra: list[str] | None = None, drain: float = 0.0) -> dict:
    out = os.path.join(rundir, f"lg-{system.name}-{mode}-{c}-{time.monotonic_ns()}.json")
    argv = [PY, LOADGEN, "--mode", mode, "-c", str(c), "--warmup", str(warmup), "--window", str(window),
            "--watch", watch_spec(watch), "--out", out]
    if mode != "celery":
        argv += ["--url", system.url]
    if drain:
        argv += ["--drain", str(drain)]
    argv += extra or []
    p = procs.start(f"loadgen-{system.name}-{mode}-c{c}", argv, env=system.env)
    rc = procs.wait(p, timeout=warmup + window + drain + 180)
    if rc != 0 or not os.path.exists(out):
        raise StartError(f"loadgen {mode} c={c} against {system.name} failed (rc={rc})\n{p.tail()}")
    return read_json(out)


def pair_assigns(records: list, assigns: dict) -> tuple[list[int], int]:
    lat, unpaired = [], 0
    for sid, idx, fin_ns, *_ in records:
        t = assigns.get((sid, idx)) if idx is not None else None
        if t is None:
            unpaired += 1
        else:
            lat.append(t - fin_ns)
    return lat, unpaired


def load_assigns(paths: list[str]) -> dict:
    assigns: dict = {}
    for path in paths:
        if not os.path.exists(path):
            continue
        for sid, idx, t_ns, _node in read_json(path).get("assigns", []):
            key = (sid, idx)
            if key not in assigns or t_ns < assigns[key]:
                assigns[key] = t_ns
    return assigns


def calibrate() -> dict:
    """json.dumps/loads of the 33 KB utterance on this machine (a reference measurement: 43 / 12 µs)."""
    d = utterance_dict("s-00000001", 1, audio_b64())
    s = json.dumps(d)
    dumps = min(timeit.repeat(lambda: json.dumps(d), number=500, repeat=5)) / 500 * 1e6
    loads = min(timeit.repeat(lambda: json.loads(s), number=500, repeat=5)) / 500 * 1e6
    return {"json_dumps_33k_us": dumps, "json_loads_33k_us": loads}


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    vers = {}
    for mod in ("trio", "trio_websocket", "wsproto", "celery", "kombu", "redis"):
        with contextlib.suppress(Exception):
            vers[mod] = __import__(mod).__version__
    redis_v = ""
    if shutil.which("redis-server"):
        redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "nproc": os.cpu_count(),
            "python": platform.python_version(), "cpu": cpu, "versions": vers, "redis_server": redis_v,
            **calibrate()}


# ----------------------------------------------------------------------------------------------- experiments


def exp_throughput(procs, rundir, systems, P, config, log) -> list[dict]:
    if P.get("paired"):
        return _throughput_paired(procs, rundir, systems, P, config, log)
    rows = []
    for r in range(P["repeats"]):
        for name in rotate(systems, r):
            try:
                P["quiet_wait"] and wait_quiet(log, P["quiet_wait"])
                s = start_system(procs, name, config)
                nodes = None
                try:
                    if name != "celery":
                        nodes = start_nodes(procs, s, P["tp_nodes"], os.path.join(rundir, f"tpn-{name}-{r}.json"))
                        watch = {"server": s.watch["server"], "nodes": [nodes.pid]}
                    else:
                        watch = dict(s.watch)
                    rows.extend(_throughput_once(procs, rundir, s, name, c, r, watch, P, log) for c in P["tp_conc"])
                finally:
                    if nodes is not None:
                        procs.stop(nodes)
                    stop_system(procs, s)
            except StartError as exc:
                log(f"  throughput r{r} {name}: FAILED: {exc}")
                rows.append({"repeat": r, "system": name, "failed": str(exc)[:2000]})
    return rows


def _throughput_once(procs, rundir, s, name, c, r, watch, P, log) -> dict:
    """One closed-loop measurement of system ``name`` at ``c`` clients (repeat ``r``), logged."""
    mode = "celery" if name == "celery" else "utterance"
    res = run_loadgen(procs, rundir, s, mode, c, P["tp_warmup"], P["tp_window"], watch)
    res.update({"repeat": r, "system": name})
    log(f"  throughput r{r} {name:9s} c={c:<4d} {res['rt_per_s']:8.0f} rt/s  "
        f"p50 {res['p50_ms'] or 0:7.2f} ms  p99 {res['p99_ms'] or 0:7.2f} ms  errors {res['errors']}")
    return res


def _throughput_paired(procs, rundir, systems, P, config, log) -> list[dict]:
    """--paired: every system is up at once, each with its own nodes, and each concurrency is measured on the
    systems back to back (their order rotating), so a ratio compares runs seconds apart rather than minutes. This box's
    speed drifts by up to 2x within minutes (bench/README.md), which the default order (one system at a time,
    every concurrency) turns into ratios that move by +-15 %. The idle systems cost the measured one little: nodes
    that only heartbeat and servers waiting on their sockets."""
    rows: list[dict] = []
    up: dict = {}
    try:
        for name, failure in start_all(procs, rundir, systems, P, config, up, "throughput", log):
            rows.append({"repeat": 0, "system": name, "failed": failure})
        names = list(up)
        turn = 0
        for r in range(P["repeats"]):
            for c in P["tp_conc"]:
                for name in rotate(names, turn):
                    P["quiet_wait"] and wait_quiet(log, P["quiet_wait"])
                    s, _, watch = up[name]
                    rows.append(_throughput_once(procs, rundir, s, name, c, r, watch, P, log))
                turn += 1
    finally:
        stop_all(procs, up)
    return rows


def start_all(procs, rundir, names, P, config, up: dict, label: str, log) -> list[tuple[str, str]]:
    """Start every system at once, each with its own ``tp_nodes`` nodes (celery has none), into ``up``: name ->
    (system, nodes process or None, the processes to watch). Returns (name, why) for each that failed to start."""
    failed = []
    for name in names:
        try:
            s = start_system(procs, name, config)
        except StartError as exc:
            log(f"  {label} {name}: FAILED: {exc}")
            failed.append((name, str(exc)[:2000]))
            continue
        up[name] = (s, None, dict(s.watch))
        if name != "celery":
            nodes = start_nodes(procs, s, P["tp_nodes"], os.path.join(rundir, f"{label}-nodes-{name}.json"))
            up[name] = (s, nodes, {"server": s.watch["server"], "nodes": [nodes.pid]})
    return failed


def stop_all(procs, up: dict) -> None:
    for s, nodes, _ in up.values():
        if nodes is not None:
            procs.stop(nodes)
        stop_system(procs, s)


def alternate_slice_seconds(c: int) -> float:
    """A slice is short against the box's drift, and long against a closed loop's tail (its clients finish the
    round trip they are in): ~30 round trips at one client, ~10 round-trip times at 50 and 200."""
    return 0.05 if c == 1 else 1.0


def exp_alternate(procs, rundir, systems, P, config, log) -> list[dict]:
    """The closed loop, interleaved: every system up with its own nodes, and one load generator holding c clients
    per system whose slices take turns between the systems (loadgen.py's ``alternate`` mode). Separate windows,
    even paired ones, put the systems in different seconds of a box whose speed drifts; here each system's figures
    come from the same seconds. One row per system, concurrency and repeat."""
    rows: list[dict] = []
    up: dict = {}
    try:
        start_all(procs, rundir, [n for n in systems if n != "celery"], P, config, up, "alternate", log)
        order = list(up)
        turn = 0
        for r in range(P["repeats"]):
            for c in P["alt_conc"]:
                P["quiet_wait"] and wait_quiet(log, P["quiet_wait"])
                names_now = rotate(order, turn)
                turn += 1
                out = os.path.join(rundir, f"lg-alternate-{r}-{c}.json")
                argv = [PY, LOADGEN, "--mode", "alternate", "-c", str(c),
                        "--urls", ",".join(up[n][0].url for n in names_now),
                        "--slice-seconds", str(alternate_slice_seconds(c)), "--warmup", str(P["alt_warmup"]),
                        "--window", str(P["alt_window"]), "--out", out]
                p = procs.start(f"loadgen-alternate-{r}-{c}", argv)
                rc = procs.wait(p, timeout=P["alt_warmup"] + P["alt_window"] + 180)
                if rc != 0 or not os.path.exists(out):
                    log(f"  alternate r{r} c={c}: FAILED (rc={rc})\n{p.tail()}")
                    continue
                res = read_json(out)
                for name, got in zip(names_now, res["systems"], strict=True):
                    rows.append({"repeat": r, "c": c, "system": name, "rounds": res["rounds"],
                                 "errors": res["errors"], **got})
                    log(f"  alternate r{r} {name:17s} c={c:<4d} {got['rt_per_s'] or 0:8.0f} rt/s  "
                        f"p50 {got['p50_ms'] or 0:7.2f} ms  p99 {got['p99_ms'] or 0:7.2f} ms  rounds {res['rounds']}")
    finally:
        stop_all(procs, up)
    return rows


def _stream_once(procs, rundir, s, S, warmup, window, drain, watch, node_outs, tag, log) -> dict:
    before = parse_metrics(metrics_text(s.http_port)) if s.http_port else {}
    res = run_loadgen(procs, rundir, s, "stream", S, warmup, window, watch, drain=drain)
    after = parse_metrics(metrics_text(s.http_port)) if s.http_port else {}
    res["selection_metrics"] = histogram_delta(before, after) if after else {}
    res["_node_outs"] = list(node_outs)
    res["tag"] = tag
    return res


def _finish_stream_rows(rows: list[dict]) -> None:
    """Pair finalize times with the nodes' job_assign receive times (files exist once the nodes have exited)."""
    cache: dict = {}
    for res in rows:
        outs = res.pop("_node_outs", None)
        if outs is None:
            continue
        key = tuple(outs)
        if key not in cache:
            cache[key] = load_assigns(outs)
        lat, unpaired = pair_assigns(res.get("records", []), cache[key])
        from _common import summarize_ns
        res["fin_to_assign"] = summarize_ns(lat)
        res["unpaired"] = unpaired
        res.pop("records", None)


def exp_stream(procs, rundir, systems, P, config, log) -> list[dict]:
    rows = []
    for r in range(P["repeats"]):
        for name in rotate([x for x in systems if x != "celery"], r):
            batch = []
            try:
                P["quiet_wait"] and wait_quiet(log, P["quiet_wait"])
                s = start_system(procs, name, config)
                nodes = None
                try:
                    nout = os.path.join(rundir, f"stn-{name}-{r}.json")
                    nodes = start_nodes(procs, s, P["st_nodes"], nout, record=True)
                    watch = {"server": s.watch["server"], "nodes": [nodes.pid]}
                    for S in P["st_sessions"]:
                        res = _stream_once(procs, rundir, s, S, P["st_warmup"], P["st_window"], P["st_drain"],
                                           watch, [nout], "stream", log)
                        res.update({"repeat": r, "system": name})
                        batch.append(res)
                finally:
                    if nodes is not None:
                        procs.stop(nodes, timeout=20)
                    stop_system(procs, s)
                _finish_stream_rows(batch)
                for res in batch:
                    fa, fr = res["fin_to_assign"], res["fin_to_result"]
                    log(f"  stream r{r} {name:9s} S={res['sessions']:<4d} {res['finalized_per_s']:6.1f} utt/s  "
                        f"fin->assign p50 {fa['p50_ms'] or 0:6.2f} p99 {fa['p99_ms'] or 0:6.2f} ms  "
                        f"fin->result p99 {fr['p99_ms'] or 0:6.2f} ms  missing {res['missing']} "
                        f"errors {res['errors']} send-lag max {res['send_lag_max_ms']:.1f} ms")
                rows += batch
            except StartError as exc:
                log(f"  stream r{r} {name}: FAILED: {exc}")
                rows.append({"repeat": r, "system": name, "failed": str(exc)[:2000]})
    return rows


def exp_storm(procs, rundir, systems, P, config, log) -> list[dict]:
    rows = []
    S = P["storm_sessions"]
    for r in range(P["repeats"]):
        for name in rotate([x for x in systems if x != "celery"], r):
            batch = []
            try:
                P["quiet_wait"] and wait_quiet(log, P["quiet_wait"])
                s = start_system(procs, name, config)
                nodes = None
                try:
                    nout = os.path.join(rundir, f"swn-{name}-{r}.json")
                    nodes = start_nodes(procs, s, P["st_nodes"], nout, record=True)
                    for n_storm, hz in P["storm_levels"]:
                        storm = None
                        outs = [nout]
                        watch = {"server": s.watch["server"], "nodes": [nodes.pid]}
                        try:
                            if n_storm:
                                sout = os.path.join(rundir, f"storm-{name}-{r}-{n_storm}-{hz}.json")
                                storm = start_nodes(procs, s, n_storm, sout, hz=hz, record=True, name="storm",
                                                    ready_timeout=180,
                                                    extra=["--node-prefix", f"storm{r}-{n_storm}-{hz:g}hz"])
                                outs.append(sout)
                                watch["storm"] = [storm.pid]
                                time.sleep(min(2.0, 2.0 / hz if hz else 0))  # let the heartbeat phases spread
                            res = _stream_once(procs, rundir, s, S, P["storm_warmup"], P["storm_window"],
                                               P["st_drain"], watch, outs, "storm", log)
                        finally:
                            if storm is not None:
                                procs.stop(storm, timeout=30)
                        res.update({"repeat": r, "system": name, "storm_nodes": n_storm, "storm_hz": hz})
                        if storm is not None and os.path.exists(outs[-1]):
                            so = read_json(outs[-1])
                            res["storm_hb_rate"] = so.get("hb_rate")
                            res["storm_hb_late"] = so.get("hb_late_skipped")
                            res["storm_disconnected"] = so.get("disconnected")
                        batch.append(res)
                finally:
                    if nodes is not None:
                        procs.stop(nodes, timeout=20)
                    stop_system(procs, s)
                _finish_stream_rows(batch)
                for res in batch:
                    fa = res["fin_to_assign"]
                    log(f"  storm r{r} {name:9s} {res['storm_nodes']:>5d} nodes @ {res['storm_hz']:>4} Hz  "
                        f"fin->assign p99 {fa['p99_ms'] or 0:6.2f} ms  missing {res['missing']} "
                        f"errors {res['errors']} hb/s {res.get('storm_hb_rate') or 0:.0f}")
                rows += batch
            except StartError as exc:
                log(f"  storm r{r} {name}: FAILED: {exc}")
                rows.append({"repeat": r, "system": name, "failed": str(exc)[:2000]})
    return rows


def exp_selection(procs, rundir, P, log) -> dict:
    out = os.path.join(rundir, "selection.json")
    p = procs.start("selection", [PY, os.path.join(BENCH, "selection_bench.py"), *P["selection"], "--json", out])
    rc = procs.wait(p, timeout=600)
    if rc != 0:
        return {"failed": p.tail()}
    return {"rows": read_json(out), "table": p.stdout().strip()}


def exp_scale(procs, rundir, config, quick, log) -> dict:
    out = os.path.join(rundir, "scale.json")
    argv = [PY, os.path.join(BENCH, "scale.py"), "--json", out]
    if config:
        argv += ["--config", config]
    p = procs.start("scale", argv)
    rc = procs.wait(p, timeout=1800)
    if rc != 0:
        return {"failed": p.tail(30)}
    return {"data": read_json(out), "table": p.stdout().strip()}


def exp_overload(procs, rundir, P, log) -> dict:
    out = os.path.join(rundir, "overload.json")
    p = procs.start("overload", [PY, os.path.join(BENCH, "overload.py"), *P["overload"], "--json", out])
    rc = procs.wait(p, timeout=1800)
    if rc != 0:
        return {"failed": p.tail(30)}
    data = read_json(out)
    log(f"  overload: registry time per result overload/baseline {data.get('overload_vs_baseline') or 0:.2f}x, "
        f"recover {data.get('recover_s') or 0:.2f} s, wall {data.get('wall_s', 0):.0f} s")
    return {"data": data, "table": p.stdout().strip()}


# ----------------------------------------------------------------------------------------------- report


def _vals(rows, key):
    out = []
    for r in rows:
        v = r
        for k in key.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            out.append(v)
    return out


def fmt_num(v: float | None) -> str:
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def med(vals: list[float], bold: bool = False) -> str:
    if not vals:
        return "–"
    m = fmt_num(statistics.median(vals))
    if bold:
        m = f"**{m}**"
    if len(vals) > 1:
        return f"{m} [{fmt_num(min(vals))}–{fmt_num(max(vals))}]"
    return m


def cpu_cell(rows) -> str:
    names = []
    for r in rows:
        for k in (r.get("cpu") or {}).get("cpu_pct", {}):
            if k not in names:
                names.append(k)
    parts = []
    for k in names:
        v = _vals(rows, f"cpu.cpu_pct.{k}")
        if v:
            parts.append(f"{k} {statistics.median(v):.0f}")
    busy = _vals(rows, "cpu.machine_busy_pct")
    if busy:
        bg = [b for b in map(background_pct, rows) if b is not None]
        parts.append(f"(box {statistics.median(busy):.0f}/200, unwatched {statistics.median(bg):.0f})")
    return ", ".join(parts) or "–"


def background_pct(r: dict) -> float | None:
    """Machine busy % minus the watched processes: load from something else on the box during the window."""
    cpu = r.get("cpu") or {}
    if cpu.get("machine_busy_pct") is None:
        return None
    return max(0.0, cpu["machine_busy_pct"] - sum(v for v in (cpu.get("cpu_pct") or {}).values() if v))


def wait_quiet(log, max_wait: float, limit_pct: float = 15.0) -> float:
    """Wait (up to max_wait s) until the rest of the machine uses < limit_pct of one core; return the last level."""
    from _common import machine_ticks
    end = time.monotonic() + max_wait
    while True:
        b0 = machine_ticks()
        time.sleep(1.0)
        b1 = machine_ticks()
        busy = 100.0 * (os.cpu_count() or 1) * (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
        if busy < limit_pct or time.monotonic() >= end:
            if busy >= limit_pct:
                log(f"  note: machine still {busy:.0f}% busy (of {100 * (os.cpu_count() or 1)}) before this point")
            return busy
        time.sleep(2.0)


def cpu_per_rt(r: dict) -> float | None:
    cpu = (r.get("cpu") or {}).get("cpu_pct") or {}
    rate = r.get("rt_per_s") or r.get("finalized_per_s")
    if not cpu or not rate:
        return None
    return sum(v for v in cpu.values() if v) / 100.0 * 1e6 / rate


def server_cpu_per_rt(r: dict) -> float | None:
    cpu = ((r.get("cpu") or {}).get("cpu_pct") or {}).get("server")
    rate = r.get("rt_per_s") or r.get("finalized_per_s")
    if cpu is None or not rate:
        return None
    return cpu / 100.0 * 1e6 / rate


def per_repeat(rows: list[dict], a: str, b: str, c: int) -> list[tuple[dict, dict]]:
    """(the row of system a, the row of system b) at c clients, for each repeat that has both."""
    out = []
    for rep in sorted({r["repeat"] for r in rows}):
        ra = next((r for r in rows if r["system"] == a and r["c"] == c and r["repeat"] == rep), None)
        rb = next((r for r in rows if r["system"] == b and r["c"] == c and r["repeat"] == rep), None)
        if ra and rb:
            out.append((ra, rb))
    return out


def ratio_table(rows: list[dict], pairs: list[tuple[str, str]], systems: list[str], concs: list[int]) -> list[str]:
    """Rows ``| a/b | c | rt/s | p50 | p99 |`` of the ratios inside each repeat (median [min–max])."""
    lines = []
    for a, b in pairs:
        if a not in systems or b not in systems:
            continue
        for c in concs:
            both = [(ra, rb) for ra, rb in per_repeat(rows, a, b, c)
                    if rb["rt_per_s"] and rb["p50_ms"] and rb["p99_ms"]]
            if both:
                rt = [(ra["rt_per_s"] or 0) / rb["rt_per_s"] for ra, rb in both]
                p50 = [(ra["p50_ms"] or 0) / rb["p50_ms"] for ra, rb in both]
                p99 = [(ra["p99_ms"] or 0) / rb["p99_ms"] for ra, rb in both]
                lines.append(f"| {a}/{b} | {c} | {med(rt, True)} | {med(p50)} | {med(p99)} |")
    return lines


def report_throughput(rows: list[dict]) -> str:
    ok = [r for r in rows if "failed" not in r]
    if not ok:
        return "_throughput: no successful run_\n"
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in ok)]
    concs = sorted({r["c"] for r in ok})
    out = ["### Throughput: closed-loop 33 KB `utterance` (median [min–max] over repeats)", "",
           "| system | c | round trips/s | p50 ms | p99 ms | p99.9 ms | errors | CPU % of one core (median) | "
           "server CPU µs/rt | watched CPU µs/rt |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in systems:
        for c in concs:
            g = [r for r in ok if r["system"] == s and r["c"] == c]
            if not g:
                continue
            errs = sum(r["errors"] for r in g)
            out.append(f"| {s} | {c} | {med(_vals(g, 'rt_per_s'), True)} | {med(_vals(g, 'p50_ms'))} | "
                       f"{med(_vals(g, 'p99_ms'))} | {med(_vals(g, 'p999_ms'))} | {errs} | {cpu_cell(g)} | "
                       f"{med([x for x in map(server_cpu_per_rt, g) if x])} | "
                       f"{med([x for x in map(cpu_per_rt, g) if x])} |")
    pairs = [("scheduler", "scheduler-warning"), ("scheduler", "relay"), ("scheduler", "relay-fast"),
             ("scheduler-warning", "relay"), ("relay-fast", "relay"),
             ("scheduler", "celery"), ("relay", "celery")]
    ratio_lines = ratio_table(ok, pairs, systems, concs)
    if ratio_lines:
        out += ["", "Ratios computed inside each repeat (median [min–max]):", "",
                "| ratio | c | rt/s | p50 | p99 |", "|---|---|---|---|---|", *ratio_lines]
    return "\n".join(out) + "\n"


def report_alternate(rows: list[dict]) -> str:
    if not rows:
        return "_alternate: no successful run_\n"
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    concs = sorted({r["c"] for r in rows})
    out = ["### Closed loop, the systems taking turns (`alternate`; median [min–max] over repeats)", "",
           "| system | c | round trips/s of its slices | p50 ms | p99 ms | p99.9 ms | round trips | errors |",
           "|---|---|---|---|---|---|---|---|"]
    for s in systems:
        for c in concs:
            g = [r for r in rows if r["system"] == s and r["c"] == c]
            if g:
                out.append(f"| {s} | {c} | {med(_vals(g, 'rt_per_s'), True)} | {med(_vals(g, 'p50_ms'))} | "
                           f"{med(_vals(g, 'p99_ms'))} | {med(_vals(g, 'p999_ms'))} | {med(_vals(g, 'n'), True)} | "
                           f"{sum(r['errors'] for r in g)} |")
    lines = ratio_table(rows, [("scheduler", "relay-fast"), ("scheduler", "relay"), ("scheduler", "scheduler-warning"),
                               ("scheduler-warning", "relay-fast"), ("relay-fast", "relay")], systems, concs)
    if lines:
        out += ["", "Ratios inside each repeat (median [min–max]):", "", "| ratio | c | rt/s | p50 | p99 |",
                "|---|---|---|---|---|", *lines]
    return "\n".join(out) + "\n"


def report_stream(rows: list[dict], title: str, key: str) -> str:
    ok = [r for r in rows if "failed" not in r]
    if not ok:
        return f"_{title}: no successful run_\n"
    out = [f"### {title} (median [min–max] over repeats; latencies in ms)", "",
           "| system | sessions | storm | finalized/s | finalize→job_assign p50 / p99 / p99.9 | "
           "finalize→result p50 / p99 / p99.9 | missing / late / failed / error msgs | CPU % (median) | "
           "client send lag max |",
           "|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in ok:
        storm = f"{r.get('storm_nodes', 0)} @ {r.get('storm_hz', 0):g} Hz" if r.get("storm_nodes") else "–"
        groups.setdefault((r["system"], r["sessions"], storm), []).append(r)
    for (s, S, storm), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[1][0].get("storm_hz", 0))):
        fa = " / ".join(med(_vals(g, f"fin_to_assign.{q}")) for q in ("p50_ms", "p99_ms", "p999_ms"))
        fr = " / ".join(med(_vals(g, f"fin_to_result.{q}")) for q in ("p50_ms", "p99_ms", "p999_ms"))
        bad = (f"{sum(r['missing'] for r in g)} / {sum(r['late'] for r in g)} / "
               f"{sum(r.get('failed_outcomes', 0) for r in g)} / {sum(r['errors'] for r in g)}")
        hb = ""
        if storm != "–":
            hb = f" (hb/s {med(_vals(g, 'storm_hb_rate'))})"
        out.append(f"| {s} | {S} | {storm}{hb} | {med(_vals(g, 'finalized_per_s'))} | {fa} | {fr} | {bad} | "
                   f"{cpu_cell(g)} | {med(_vals(g, 'send_lag_max_ms'))} |")
    # ratios inside each repeat
    lines = []
    reps = sorted({r["repeat"] for r in ok})
    if key == "stream":
        for S in sorted({r["sessions"] for r in ok}):
            v = []
            for rep in reps:
                a = next((r for r in ok if r["system"] == "scheduler" and r["sessions"] == S and r["repeat"] == rep),
                         None)
                b = next((r for r in ok if r["system"] == "relay" and r["sessions"] == S and r["repeat"] == rep),
                         None)
                if a and b and a["fin_to_assign"]["p99_ms"] and b["fin_to_assign"]["p99_ms"]:
                    v.append(a["fin_to_assign"]["p99_ms"] / b["fin_to_assign"]["p99_ms"])
            if v:
                lines.append(f"| scheduler/relay finalize→job_assign p99 | S={S} | {med(v, True)} |")
    else:
        for s in sorted({r["system"] for r in ok}):
            storms = {(r.get("storm_nodes", 0), r.get("storm_hz", 0)) for r in ok if r.get("storm_nodes")}
            for n_st, hz in sorted(storms):
                v = []
                for rep in reps:
                    base = next((r for r in ok if r["system"] == s and not r.get("storm_nodes")
                                 and r["repeat"] == rep), None)
                    st = next((r for r in ok if r["system"] == s and r.get("storm_nodes") == n_st
                               and r.get("storm_hz") == hz and r["repeat"] == rep), None)
                    if base and st and base["fin_to_assign"]["p99_ms"] and st["fin_to_assign"]["p99_ms"]:
                        v.append(st["fin_to_assign"]["p99_ms"] / base["fin_to_assign"]["p99_ms"])
                if v:
                    lines.append(f"| {s}: storm/no storm finalize→job_assign p99 | {n_st} @ {hz:g} Hz "
                                 f"| {med(v, True)} |")
    if lines:
        out += ["", "Ratios inside each repeat:", "", "| ratio | point | median [min–max] |", "|---|---|---|", *lines]
    sel = [(r["system"], r.get("storm_nodes", 0), r.get("storm_hz", 0), r.get("selection_metrics")) for r in ok
           if r.get("selection_metrics")]
    if sel:
        out += ["", "Scheduler selection metrics over each run (from /metrics, histograms with 'select' in the name):"]
        for s, n_st, hz, m in sel:
            for name, e in m.items():
                out.append(f"- {s} storm={n_st}@{hz:g}Hz `{name}`: count {e['count']:.0f}, mean {_us(e['mean'])}, "
                           f"p50 ≤ {_us(e.get('p50_le'))}, p99 ≤ {_us(e.get('p99_le'))}")
    return "\n".join(out) + "\n"


def _us(seconds: float | None) -> str:
    return "–" if seconds is None else "+Inf" if seconds == float("inf") else f"{seconds * 1e6:,.1f} µs"


def report_targets(res: dict) -> str:
    """Issue 4's targets, where the scheduler was measured."""
    lines = []
    tp = [r for r in res.get("throughput", []) if "failed" not in r]

    def by(system, c):
        return [r for r in tp if r["system"] == system and r["c"] == c]

    if by("scheduler", max((r["c"] for r in tp), default=0)):
        top = max(r["c"] for r in tp)
        sch, rel = by("scheduler", top), by("relay", top)
        if rel:
            v = [a["rt_per_s"] / b["rt_per_s"] for a in sch for b in rel
                 if a["repeat"] == b["repeat"] and b["rt_per_s"]]
            if v:
                m = statistics.median(v)
                lines.append(f"- throughput ≥ 75 % of relay at c={top}: {m:.0%} → {'met' if m >= 0.75 else 'MISSED'}")
        s1, r1 = by("scheduler", 1), by("relay", 1)
        v = [a["p50_ms"] / b["p50_ms"] for a in s1 for b in r1 if a["repeat"] == b["repeat"] and b["p50_ms"]]
        if v:
            m = statistics.median(v)
            lines.append(f"- one-client p50 within 1.5× of relay: {m:.2f}× → {'met' if m <= 1.5 else 'MISSED'}")
    st = [r for r in res.get("stream", []) if "failed" not in r and r["system"] == "scheduler"]
    if st:
        top = max(r["sessions"] for r in st)
        v = _vals([r for r in st if r["sessions"] == top], "fin_to_assign.p99_ms")
        if v:
            m = statistics.median(v)
            lines.append(f"- finalize→job_assign p99 ≤ 5 ms at {top} sessions: {m:.2f} ms → "
                         f"{'met' if m <= 5 else 'MISSED'}")
        else:
            lines.append(f"- finalize→job_assign p99 ≤ 5 ms at {top} sessions: no utterance reached a node → MISSED")
    sm = [r for r in res.get("storm", []) if "failed" not in r and r["system"] == "scheduler"]
    for n_st, hz in sorted({(r.get("storm_nodes"), r.get("storm_hz")) for r in sm if r.get("storm_nodes")}):
        v = []
        for rep in {r["repeat"] for r in sm}:
            b = next((r for r in sm if not r.get("storm_nodes") and r["repeat"] == rep), None)
            s = next((r for r in sm if r.get("storm_nodes") == n_st and r.get("storm_hz") == hz
                      and r["repeat"] == rep), None)
            if b and s and b["fin_to_assign"]["p99_ms"] and s["fin_to_assign"]["p99_ms"]:
                v.append(s["fin_to_assign"]["p99_ms"] / b["fin_to_assign"]["p99_ms"])
        if v:
            m = statistics.median(v)
            lines.append(f"- storm {n_st} @ {hz:g} Hz moves finalize→job_assign p99 by ≤ 1.5×: {m:.2f}× → "
                         f"{'met' if m <= 1.5 else 'MISSED'}")
    out = "### Issue 4 targets (scheduler)\n\n" + "\n".join(lines) + "\n" if lines else ""
    point4 = _point4_targets(res.get("alternate", []))
    if point4:
        out += ("\n" if out else "") + "### Issue 13 point 4 targets (`alternate`, against relay-fast)\n\n" + point4
    return out


def _point4_targets(rows: list[dict]) -> str:
    """Issue 13 point 4: rt/s ≥ 1.0× relay-fast at 50 and 200 clients, one-client p50 ≤ 1.15× (at the default log
    level), each the median of the ratios inside each repeat."""

    def ratios(c: int, key: str) -> list[float]:
        return [a[key] / b[key] for a, b in per_repeat(rows, "scheduler", "relay-fast", c) if a[key] and b[key]]

    lines = []
    for c in (50, 200):
        if v := ratios(c, "rt_per_s"):
            m = statistics.median(v)
            lines.append(f"- throughput ≥ 1.0× relay-fast at c={c}: {m:.3f}× (min {min(v):.3f}) → "
                         f"{'met' if m >= 1.0 else 'MISSED'}")
    if v := ratios(1, "p50_ms"):
        m = statistics.median(v)
        lines.append(f"- one-client p50 ≤ 1.15× relay-fast: {m:.3f}× (max {max(v):.3f}) → "
                     f"{'met' if m <= 1.15 else 'MISSED'}")
    return "\n".join(lines) + "\n" if lines else ""


def render(res: dict) -> str:
    """The markdown report of a results dict (also: python bench/run.py --report results.json)."""
    m, P = res["machine"], res["params"]
    quick = res.get("quick")
    out = [f"## trioscheduler bench {'(quick)' if quick else ''}", "",
           f"{m['date']}; {m['nproc']} cores ({m['cpu']}); Python {m['python']}; "
           + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
           + (f"; {m['redis_server'].split(' sha')[0]}" if m.get("redis_server") else "")
           + f". Calibration: json.dumps / loads of the 33 KB utterance = {m['json_dumps_33k_us']:.0f} / "
             f"{m['json_loads_33k_us']:.0f} µs (reference: 43 / 12 µs). "
           + f"Repeats: {P['repeats']}. Systems: {', '.join(res['systems'])}."]
    out.extend(f"- note: {n}" for n in res.get("notes", []))
    out.append("")
    sections = [
        ("throughput", lambda: report_throughput(res["throughput"])),
        ("alternate", lambda: report_alternate(res["alternate"])),
        ("stream", lambda: report_stream(res["stream"], "Streaming: 200 ms chunks in real time, is_final every "
                                         f"5 chunks, {P['st_nodes']} nodes", "stream")),
        ("storm", lambda: report_stream(res["storm"], f"Heartbeat storm: {P['storm_sessions']} streaming "
                                        f"sessions, {P['st_nodes']} working nodes + storm nodes (also zh/en)",
                                        "storm")),
        ("selection", lambda: "### Selection in-process (bench/selection_bench.py; gc off; median [min–max] of "
                              "rounds)\n\n" + (res["selection"].get("table") or
                                                f"failed: {res['selection'].get('failed')}") + "\n"),
        ("scale", lambda: (res["scale"].get("table") or f"scale failed: {res['scale'].get('failed')}") + "\n"),
        ("overload", lambda: "### Overload (bench/overload.py; the registry in process, virtual time)\n\n"
                             + (res["overload"].get("table") or f"failed: {res['overload'].get('failed')}") + "\n"),
    ]
    for key, fn in sections:
        if key in res:
            try:
                out.append(fn())
            except Exception as exc:  # a report bug must not hide the other sections
                out.append(f"_{key}: report failed: {type(exc).__name__}: {exc}_\n")
    try:
        t = report_targets(res)
        if t:
            out.append(t)
    except Exception as exc:
        out.append(f"_targets: report failed: {exc}_")
    out.append(f"_elapsed {res.get('elapsed_s', 0):.0f} s_")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="< 2 minutes: 1 repeat, short windows, small storm")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument("--systems", default="", help="comma list of scheduler,scheduler-warning,relay,relay-fast,"
                                                  "celery (default: scheduler,scheduler-warning,relay,celery where "
                                                  "available; scheduler-warning in throughput and alternate only; "
                                                  "celery only in full mode or with --with-celery)")
    ap.add_argument("--with-celery", action="store_true", help="include celery in --quick")
    ap.add_argument("--only", default="",
                    help="comma list of throughput,alternate,stream,storm,selection,scale,overload")
    ap.add_argument("--skip", default="", help="comma list of experiments to skip")
    ap.add_argument("--config", default=os.path.join(BENCH, "scheduler-bench.toml"),
                    help="TOML passed to the scheduler ('' for none)")
    ap.add_argument("--quiet-wait", type=float, default=-1,
                    help="before each system, wait up to this many s for the rest of the box to go idle "
                         "(default 60 in full mode, 0 in --quick)")
    ap.add_argument("--paired", action="store_true",
                    help="throughput: every system up at once, each concurrency measured on the systems back to back")
    ap.add_argument("--clients", default="",
                    help="throughput and alternate: comma list of client counts (default 1,50,200; 1,50 in "
                         "--quick)")
    ap.add_argument("--json", default="", help="results file (default bench/results/run-<time>.json)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the run directory with every process's output")
    ap.add_argument("--report", metavar="JSON", help="only print the report of a saved results file")
    a = ap.parse_args()
    if a.report:
        print(render(read_json(a.report)))
        return 0

    P = params(a.quick)
    if a.repeats:
        P["repeats"] = a.repeats
    if a.quiet_wait >= 0:
        P["quiet_wait"] = a.quiet_wait
    P["paired"] = a.paired
    if a.clients:
        P["tp_conc"] = P["alt_conc"] = [int(c) for c in a.clients.split(",") if c]
    exps = ["throughput", "alternate", "stream", "storm", "selection", "overload"] + ([] if a.quick else ["scale"])
    if a.only:
        exps = [e for e in a.only.split(",") if e]
    exps = [e for e in exps if e not in a.skip.split(",")]

    notes = []
    wanted = [s for s in a.systems.split(",") if s] or ["scheduler", "scheduler-warning", "relay", "celery"]
    systems = []
    for s in wanted:
        why = (scheduler_available() if s in SCHEDULER_LOG_LEVELS else celery_available() if s == "celery"
               else None)
        if s == "celery" and a.quick and not a.with_celery and not a.systems:
            why = why or "skipped in --quick (use --with-celery)"
        if why:
            notes.append(f"{s}: {why}")
        else:
            systems.append(s)
    config = a.config if a.config and os.path.exists(a.config) else None
    # The warning-level scheduler is the throughput table's comparison; elsewhere only when asked for by name.
    detail_systems = systems if a.systems else [s for s in systems if s != "scheduler-warning"]

    rundir = tempfile.mkdtemp(prefix="trioscheduler-bench-")
    procs = Procs(rundir)
    install_signal_handlers()
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    res: dict = {"machine": machine(), "params": dict(P), "systems": systems,
                 "notes": notes, "quick": a.quick, "scheduler_config": config}
    m = res["machine"]
    log(f"{m['date']}  nproc={m['nproc']}  Python {m['python']}  {m['cpu']}  json dumps/loads 33 KB: "
        f"{m['json_dumps_33k_us']:.0f}/{m['json_loads_33k_us']:.0f} µs")
    for n in notes:
        log(f"note: {n}")
    log(f"systems: {', '.join(systems)}; experiments: {', '.join(exps)}; run dir {rundir}")
    rc = 0
    try:
        if "throughput" in exps:
            res["throughput"] = exp_throughput(procs, rundir, systems, P, config, log)
        if "alternate" in exps:
            res["alternate"] = exp_alternate(procs, rundir, systems, P, config, log)
        if "stream" in exps:
            res["stream"] = exp_stream(procs, rundir, detail_systems, P, config, log)
        if "storm" in exps:
            res["storm"] = exp_storm(procs, rundir, detail_systems, P, config, log)
        if "selection" in exps:
            res["selection"] = exp_selection(procs, rundir, P, log)
        if "scale" in exps:
            res["scale"] = exp_scale(procs, rundir, config, a.quick, log)
        if "overload" in exps:
            res["overload"] = exp_overload(procs, rundir, P, log)
    except KeyboardInterrupt:
        log("interrupted: stopping every child process")
        rc = 130
    finally:
        procs.stop_all()
    res["elapsed_s"] = time.monotonic() - t_start

    path = a.json or os.path.join(BENCH, "results", f"run-{time.strftime('%Y%m%d-%H%M%S')}"
                                                     f"{'-quick' if a.quick else ''}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:  # saved before rendering, so a report bug never loses a run
        json.dump(res, f, indent=1, default=str)
    print(render(res))
    log(f"results: {path}")
    if a.keep_logs:
        log(f"logs kept in {rundir}")
    else:
        shutil.rmtree(rundir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
