"""In-process micro-benchmark of the selection step: ns per operation, median of rounds, gc disabled.

Two things are timed for each (nodes, pools) point:
- `reference`: a power-of-two-choices cycle as a reference measurement ran it (select + reserve + release of the
  job started K cycles earlier; capacities 2/4/8; steady in-flight load 50 % of capacity; dicts for in-flight and
  job->node). It calibrates the harness: its cost on this machine is comparable across runs and machines.
- `scheduler`: the same cycle with trioscheduler's own policy (choose_node on a MemberList), from bench_selection().

    python bench/selection_bench.py [--quick] [--nodes 10,100,1000,10000] [--pools 1,10,100] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import percentile

Step = Callable[[], object]


# ----------------------------------------------------------------------------------------------- scheduler


def bench_selection(n_nodes: int, n_pools: int, seed: int = 1) -> Step:
    """One steady-state cycle of trioscheduler's own selection as the registry runs it per job: choose_node on
    the job's pool (MemberList) + reserve a slot + release the slot of the job reserved K cycles earlier. Node
    capacities 2/4/8, in-flight load held near 50 % of total capacity; all setup outside the callable."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    from trioscheduler.policy.selection import MemberList, choose_node

    class Node:
        __slots__ = ("alive", "capacity", "in_flight", "node_id", "quarantined_until")

        def __init__(self, node_id: str, capacity: int) -> None:
            self.node_id, self.alive, self.in_flight = node_id, True, 0
            self.capacity, self.quarantined_until = capacity, float("-inf")

        def serves(self, services: frozenset[str]) -> bool:
            return True

    rnd = random.Random(seed)
    rand = rnd.random
    nodes = {f"node-{i:05d}": Node(f"node-{i:05d}", (2, 4, 8)[i % 3]) for i in range(n_nodes)}
    pools = [MemberList() for _ in range(n_pools)]
    for i, nid in enumerate(nodes):
        pools[i % n_pools].add(nid)
    total = sum(n.capacity for n in nodes.values())
    K = max(1, total // 2)
    ring: list[Node | None] = [None] * K
    services = frozenset({"asr", "nmt", "tts"})
    excluded: frozenset[str] = frozenset()
    state = {"pos": 0}

    def step() -> None:
        pos = state["pos"]
        old = ring[pos]
        if old is not None:
            old.in_flight -= 1
        members = pools[int(rand() * n_pools)]
        nid = choose_node(members, nodes, services=services, excluded=excluded, preferred=None,  # type: ignore[arg-type]
                          now=0.0, rand=rand)
        node = None if nid is None else nodes[nid]
        if node is not None:
            node.in_flight += 1
        ring[pos] = node
        state["pos"] = (pos + 1) % K

    for _ in range(3 * K):
        step()
    return step


# ----------------------------------------------------------------------------------------------- reference


def reference_p2c(n_nodes: int, n_pools: int, seed: int = 1) -> Step:
    """P2C on in_flight/capacity compared by cross-multiplication, in pools (the reference cycle)."""
    rnd = random.Random(seed)
    rand = rnd.random
    capacity = {f"node-{i:05d}": (2, 4, 8)[i % 3] for i in range(n_nodes)}
    in_flight = dict.fromkeys(capacity, 0)
    pools: list[list[str]] = [[] for _ in range(n_pools)]
    for i, nid in enumerate(capacity):
        pools[i % n_pools].append(nid)
    total = sum(capacity.values())
    K = max(1, total // 2)  # steady in-flight = 50 % of capacity
    ring: list[str | None] = [None] * K
    job_node: dict[int, str] = {}
    state = {"pos": 0, "job": 0, "both_full": 0}

    def select(members: list[str]) -> str | None:
        n = len(members)
        for attempt in range(3):  # P2C, with two bounded retries when both picks are full
            i = int(rand() * n)
            j = int(rand() * (n - 1)) if n > 1 else 0
            if j >= i:
                j += 1
            a = members[i]
            b = members[j] if n > 1 else a
            fa = in_flight[a] < capacity[a]
            fb = in_flight[b] < capacity[b]
            if fa and fb:
                return a if in_flight[a] * capacity[b] <= in_flight[b] * capacity[a] else b
            if fa:
                return a
            if fb:
                return b
            if attempt == 0:
                state["both_full"] += 1
        best = None
        for m in members:  # rare fallback: full scan of the pool
            if in_flight[m] < capacity[m] and (
                best is None or in_flight[m] * capacity[best] < in_flight[best] * capacity[m]
            ):
                best = m
        return best

    def step() -> None:
        pos = state["pos"]
        old = ring[pos]
        if old is not None:  # release the job started K cycles ago
            in_flight[old] -= 1
        pool = pools[int(rand() * n_pools)]
        nid = select(pool)
        if nid is not None:
            in_flight[nid] += 1
            job = state["job"]
            job_node[job] = nid
            job_node.pop(job - K, None)
            state["job"] = job + 1
        ring[pos] = nid
        state["pos"] = (pos + 1) % K

    # warm to the steady state
    for _ in range(2 * K + 1000):
        step()
    state["both_full"] = 0
    step.state = state  # type: ignore[attr-defined]
    return step


def full_scan(n_nodes: int, n_pools: int, seed: int = 1) -> Step:
    """Least-loaded by a full scan of the pool (reference only; must never be on the per-job path)."""
    rnd = random.Random(seed)
    capacity = {f"node-{i:05d}": (2, 4, 8)[i % 3] for i in range(n_nodes)}
    in_flight = {k: rnd.randrange(v) for k, v in capacity.items()}
    pools: list[list[str]] = [[] for _ in range(n_pools)]
    for i, nid in enumerate(capacity):
        pools[i % n_pools].append(nid)

    def step():
        best = None
        for m in pools[0]:
            if in_flight[m] < capacity[m] and (
                best is None or in_flight[m] * capacity[best] < in_flight[best] * capacity[m]
            ):
                best = m
        return best

    return step


# ----------------------------------------------------------------------------------------------- harness


def time_per_op(step: Step, n_ops: int, rounds: int) -> dict:
    """ns per call of step(): median [min, max] over rounds, gc disabled, loop overhead reported separately."""
    def noop():
        return None

    def run(fn) -> float:
        rng = range(n_ops)
        t0 = time.perf_counter_ns()
        for _ in rng:
            fn()
        return (time.perf_counter_ns() - t0) / n_ops

    was = gc.isenabled()
    gc.disable()
    try:
        run(step)  # warm
        per = [run(step) for _ in range(rounds)]
        overhead = statistics.median(run(noop) for _ in range(3))
    finally:
        if was:
            gc.enable()
    return {"median_ns": statistics.median(per), "min_ns": min(per), "max_ns": max(per),
            "call_overhead_ns": overhead, "ops": n_ops, "rounds": rounds}


def latency_dist(step: Step, n: int) -> dict:
    """Per-call latency percentiles (each call timed on its own; includes ~50-100 ns of timer cost)."""
    clock = time.perf_counter_ns
    out = [0] * n
    was = gc.isenabled()
    gc.disable()
    try:
        for k in range(n):
            t0 = clock()
            step()
            out[k] = clock() - t0
    finally:
        if was:
            gc.enable()
    out.sort()
    return {"p50_ns": percentile(out, 50), "p99_ns": percentile(out, 99), "p999_ns": percentile(out, 99.9),
            "lat_max_ns": out[-1]}


def run_point(factory: Callable[[int, int], Step], n_nodes: int, n_pools: int, n_ops: int, rounds: int) -> dict:
    step = factory(n_nodes, n_pools)
    r = time_per_op(step, n_ops, rounds)
    r.update(latency_dist(step, min(n_ops, 100_000)))
    st = getattr(step, "state", None)
    if st is not None and st.get("job"):
        r["both_full_pct"] = 100.0 * st["both_full"] / max(1, st["job"])
    return r


def run_all(nodes: list[int], pools: list[int], n_ops: int, rounds: int, with_scan: bool = True) -> list[dict]:
    rows = []
    for n in nodes:
        for p in pools:
            if p > n:
                continue
            row = {"nodes": n, "pools": p,
                   "reference": run_point(reference_p2c, n, p, n_ops, rounds),
                   "scheduler": run_point(bench_selection, n, p, n_ops, rounds)}
            if with_scan and p == 1:
                row["full_scan"] = run_point(full_scan, n, p, max(100, min(n_ops, 2_000_000 // n)), 3)
            rows.append(row)
    return rows


def fmt(r: dict | None, key: str = "median_ns") -> str:
    if not r:
        return "–"
    v = r.get(key)
    if v is None:
        return "–"
    return f"{v / 1000:.1f} µs" if v >= 10_000 else f"{v:.0f} ns"


def table(rows: list[dict]) -> str:
    lines = ["| nodes | pools | scheduler ns/op | scheduler p99 | reference P2C ns/op [min–max] | reference p99 | "
             "full scan | both picks full |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ref = row["reference"]
        lines.append(
            f"| {row['nodes']:,} | {row['pools']} | {fmt(row['scheduler'])} | {fmt(row['scheduler'], 'p99_ns')} | "
            f"{fmt(ref)} [{fmt(ref, 'min_ns')}–{fmt(ref, 'max_ns')}] | {fmt(ref, 'p99_ns')} | "
            f"{fmt(row.get('full_scan'))} | {ref.get('both_full_pct', 0):.1f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nodes", default="")
    ap.add_argument("--pools", default="")
    ap.add_argument("--ops", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    nodes = [int(x) for x in a.nodes.split(",")] if a.nodes else ([10, 1000] if a.quick else [10, 100, 1000, 10000])
    pools = [int(x) for x in a.pools.split(",")] if a.pools else ([1] if a.quick else [1, 10, 100])
    n_ops = a.ops or (50_000 if a.quick else 300_000)
    rows = run_all(nodes, pools, n_ops, 3 if a.quick else a.rounds)
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
