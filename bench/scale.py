"""Scale (issue 4, point 4): cost per job as nodes grow and pools multiply; memory per idle session and per node.

1. In-process selection cost, nodes 10 -> 10,000 and pools 1 -> 100 (bench/selection_bench.py: the scheduler's
   policy through its bench_selection() hook, and the reference P2C).
2. Over the wire, against the daemon process: closed-loop 33 KB utterances at c clients while N nodes
   (10 -> 10,000) spread over P pools (distinct language sets, all able to serve zh->en) are registered;
   reports round trips/s and the server's CPU µs per round trip. The relay runs the same points as the baseline.
3. Memory: the server's RSS (/proc/PID/statm) before and after registering 1,000 nodes, then before and after
   opening 10,000 idle sessions (session_init only), divided by the count. The relay's numbers are the transport's
   own share (trio-websocket + wsproto per connection).

    python bench/scale.py [--quick] [--systems scheduler,relay] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import selection_bench
from _common import rss_bytes
from _procs import (
    BENCH,
    PY,
    Procs,
    StartError,
    install_signal_handlers,
    read_json,
    scheduler_available,
    start_nodes,
    start_system,
    stop_system,
    wait_line,
)

LOADGEN = os.path.join(BENCH, "loadgen.py")


def settle_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after it stops moving (max of a few samples over `seconds`)."""
    vals = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = rss_bytes(pid)
        if v is not None:
            vals.append(v)
        time.sleep(0.1)
    return vals[-1] if vals else 0


def wire_point(procs, rundir, name, config, n_nodes, pools, c, warmup, window, log) -> dict:
    s = start_system(procs, name, config)
    nodes = None
    try:
        t0 = time.monotonic()
        nodes = start_nodes(procs, s, n_nodes, os.path.join(rundir, f"sc-{name}-{n_nodes}-{pools}.json"),
                            extra=["--pools", str(pools), "--connect-concurrency", "128"],
                            ready_timeout=240)
        reg_s = time.monotonic() - t0
        out = os.path.join(rundir, f"scl-{name}-{n_nodes}-{pools}.json")
        p = procs.start("loadgen", [PY, LOADGEN, "--mode", "utterance", "--url", s.url, "-c", str(c),
                                    "--warmup", str(warmup), "--window", str(window),
                                    "--watch", f"server={s.server_pid},nodes={nodes.pid}", "--out", out])
        rc = procs.wait(p, warmup + window + 120)
        if rc != 0:
            raise StartError(p.tail())
        r = read_json(out)
        srv = r["cpu"]["cpu_pct"]["server"]
        row = {"system": name, "nodes": n_nodes, "pools": pools, "c": c, "register_s": reg_s,
               "rt_per_s": r["rt_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"],
               "server_cpu_pct": srv, "server_us_per_rt": srv / 100 * 1e6 / r["rt_per_s"] if r["rt_per_s"] else None,
               "server_rss_mb": (rss_bytes(s.server_pid) or 0) / 2**20}
        log(f"  wire {name:9s} nodes={n_nodes:<6d} pools={pools:<4d} {row['rt_per_s']:7.0f} rt/s  "
            f"server {row['server_us_per_rt'] or 0:6.0f} µs/rt  (register {reg_s:.1f}s) errors {row['errors']}")
        return row
    finally:
        if nodes is not None:
            procs.stop(nodes, timeout=30)
        stop_system(procs, s)


def memory_point(procs, rundir, name, config, n_nodes, n_sessions, log) -> dict:
    s = start_system(procs, name, config)
    nodes = idle = None
    try:
        pid = s.server_pid
        # warm the code paths with one node and one session, so the first-use imports are not counted
        warm = start_nodes(procs, s, 1, os.path.join(rundir, f"mw-{name}.json"), name="warm-node")
        wp = procs.start("warm-session", [PY, LOADGEN, "--mode", "idle", "--url", s.url, "-c", "1",
                                          "--max-seconds", "600"])
        wait_line(wp, "READY", 30)
        r0 = settle_rss(pid)
        t0 = time.monotonic()
        nodes = start_nodes(procs, s, n_nodes, os.path.join(rundir, f"mn-{name}.json"),
                            extra=["--connect-concurrency", "128"], ready_timeout=240)
        t_nodes = time.monotonic() - t0
        r1 = settle_rss(pid, 2.0)
        t0 = time.monotonic()
        idle = procs.start("idle-sessions", [PY, LOADGEN, "--mode", "idle", "--url", s.url, "-c", str(n_sessions),
                                             "--connect-concurrency", "128", "--max-seconds", "900"])
        line = wait_line(idle, "READY", 600)
        t_sess = time.monotonic() - t0
        r2 = settle_rss(pid, 2.0)
        got = int(line.split("sessions=")[1].split()[0])
        row = {"system": name, "nodes": n_nodes, "sessions": got, "rss_base_mb": r0 / 2**20,
               "rss_nodes_mb": r1 / 2**20, "rss_sessions_mb": r2 / 2**20,
               "per_node_kib": (r1 - r0) / n_nodes / 1024, "per_session_kib": (r2 - r1) / max(got, 1) / 1024,
               "nodes_connect_s": t_nodes, "sessions_connect_s": t_sess}
        log(f"  memory {name:9s} base {row['rss_base_mb']:.1f} MB, +{n_nodes} nodes {row['per_node_kib']:.1f} KiB "
            f"each, +{got} sessions {row['per_session_kib']:.1f} KiB each")
        for p in (warm, wp):
            procs.stop(p)
        return row
    finally:
        for p in (idle, nodes):
            if p is not None:
                procs.stop(p, timeout=30)
        stop_system(procs, s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small points only (nodes 10/100, 1,000 sessions)")
    ap.add_argument("--systems", default="scheduler,relay")
    ap.add_argument("--nodes", default="", help="wire points, default 10,100,1000,10000")
    ap.add_argument("--pools", default="", help="pool counts at 1,000 nodes, default 1,10,100")
    ap.add_argument("-c", type=int, default=50)
    ap.add_argument("--window", type=float, default=4.0)
    ap.add_argument("--mem-nodes", type=int, default=0)
    ap.add_argument("--mem-sessions", type=int, default=0)
    ap.add_argument("--skip", default="", help="comma list of selection,wire,memory")
    ap.add_argument("--config", default=os.path.join(BENCH, "scheduler-bench.toml"))
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    q = a.quick
    node_pts = [int(x) for x in a.nodes.split(",")] if a.nodes else ([10, 100] if q else [10, 100, 1000, 10000])
    pool_pts = [int(x) for x in a.pools.split(",")] if a.pools else ([1, 10] if q else [1, 10, 100])
    mem_nodes = a.mem_nodes or (100 if q else 1000)
    mem_sessions = a.mem_sessions or (1000 if q else 10000)
    config = a.config if a.config and os.path.exists(a.config) else None
    systems = []
    for s in a.systems.split(","):
        if s == "scheduler" and scheduler_available():
            print(f"note: scheduler skipped: {scheduler_available()}", file=sys.stderr)
            continue
        systems.append(s)

    rundir = tempfile.mkdtemp(prefix="trioscheduler-scale-")
    procs = Procs(rundir)
    install_signal_handlers()
    t_start = time.monotonic()

    def log(msg):
        print(f"[scale {time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    res: dict = {"selection": [], "wire": [], "memory": []}
    try:
        if "selection" not in a.skip:
            res["selection"] = selection_bench.run_all(
                [10, 100, 1000, 10000] if not q else [10, 1000], [1, 10, 100] if not q else [1, 10],
                50_000 if q else 300_000, 3 if q else 5, with_scan=True)
        if "wire" not in a.skip:
            for name in systems:
                pts = [(n, 1) for n in node_pts] + [(1000 if not q else 100, p) for p in pool_pts if p != 1]
                for n, p in pts:
                    try:
                        res["wire"].append(wire_point(procs, rundir, name, config, n, p, a.c, 1.0, a.window, log))
                    except StartError as exc:
                        log(f"  wire {name} nodes={n} pools={p}: FAILED {exc}")
                        res["wire"].append({"system": name, "nodes": n, "pools": p, "failed": str(exc)[:1500]})
        if "memory" not in a.skip:
            for name in systems:
                try:
                    res["memory"].append(memory_point(procs, rundir, name, config, mem_nodes, mem_sessions, log))
                except StartError as exc:
                    log(f"  memory {name}: FAILED {exc}")
                    res["memory"].append({"system": name, "failed": str(exc)[:1500]})
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        procs.stop_all()
        shutil.rmtree(rundir, ignore_errors=True)

    out = []
    if res["selection"]:
        out += ["### Scale (a): selection in-process, cost per select+reserve+release", "",
                selection_bench.table(res["selection"]), ""]
    if res["wire"]:
        out += ["### Scale (b): cost per job over the wire as nodes and pools grow "
                f"(closed loop, c={a.c}, 33 KB utterance)", "",
                "| system | nodes | pools | register s | round trips/s | p50 ms | p99 ms | server CPU µs/rt | "
                "server RSS MB | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["wire"]:
            if "failed" in r:
                out.append(f"| {r['system']} | {r['nodes']:,} | {r['pools']} | failed | | | | | | |")
                continue
            out.append(f"| {r['system']} | {r['nodes']:,} | {r['pools']} | {r['register_s']:.1f} | "
                       f"{r['rt_per_s']:,.0f} | {r['p50_ms'] or 0:.2f} | {r['p99_ms'] or 0:.2f} | "
                       f"{r['server_us_per_rt'] or 0:,.0f} | {r['server_rss_mb']:.0f} | {r['errors']} |")
        out.append("")
    if res["memory"]:
        out += ["### Scale (c): memory in the server process (RSS deltas)", "",
                "| system | base RSS MB | nodes | per node KiB | idle sessions | per idle session KiB | "
                "connect s (nodes / sessions) |", "|---|---|---|---|---|---|---|"]
        for r in res["memory"]:
            if "failed" in r:
                out.append(f"| {r['system']} | failed | | | | | |")
                continue
            out.append(f"| {r['system']} | {r['rss_base_mb']:.1f} | {r['nodes']:,} | {r['per_node_kib']:.1f} | "
                       f"{r['sessions']:,} | {r['per_session_kib']:.1f} | "
                       f"{r['nodes_connect_s']:.1f} / {r['sessions_connect_s']:.1f} |")
        out.append("")
    print("\n".join(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
