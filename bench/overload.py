"""Overload without a cliff (issue 8 point 8): the registry driven in process under trio's MockClock.

A fleet of simulated nodes (``--nodes`` × ``--capacity`` slots, each job takes ``--service-ms`` of virtual time)
is offered Poisson load in three phases: ``--low`` × capacity for ``--baseline-s`` (the unloaded figure),
``--high`` × capacity for ``--overload-s``, then ``--low`` × capacity for ``--recovery-s``; arrivals then stop
and the run waits for every job's outcome. Virtual time comes from MockClock, so the figures do not depend on the
machine's speed, except the one that is meant to: **registry time per result**, the CPU time of the registry
task's ``Registry.handle`` for each ``job_result`` (``time.thread_time`` around the real registry's handle, so
other load on a shared machine does not count; the wall time is recorded beside it).

Reported per phase: offered jobs/s, goodput (successful results delivered per s), errors by code, submit→outcome
latency (virtual), registry µs per result (mean, p50, p99), registry busy fraction (CPU time inside the registry
per virtual second: above 1.0 the real daemon could not keep up), the longest waiting queue; and the time to
recover (from the end of the overload until no job waits).

    python bench/overload.py [--quick] [--json out.json] [--log-level info]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
import trio.testing
from _common import percentile

from trioscheduler import logs
from trioscheduler.config import Config, config_with
from trioscheduler.policy.capability import direction_key
from trioscheduler.protocol import messages as m
from trioscheduler.registry.actor import Dispatch, Registry
from trioscheduler.registry.requests import (
    JobSpec,
    NodeLink,
    Outcome,
    RegistryClient,
    Result,
    open_registry_channel,
)

PHASES = ("baseline", "overload", "recovery", "drain")
LANGS = m.LanguageCapabilities(asr_languages=["zh", "en"], tts_languages=["zh", "en"],
                               semantic_languages=["zh", "en"])


def params(quick: bool) -> dict[str, Any]:
    return {
        "nodes": 5 if quick else 25, "capacity": 4, "service_ms": 500.0, "sessions": 100,
        "baseline_s": 5.0, "overload_s": 10.0, "recovery_s": 10.0 if quick else 20.0,
        "low": 0.5, "high": 2.0, "seed": 1,
    }


class Recorder:
    """Everything the run observes, stamped with virtual time."""

    def __init__(self) -> None:
        self.phase = "baseline"
        self.phase_start: dict[str, float] = {}
        self.submitted: collections.Counter[str] = collections.Counter()
        self.submitted_at: dict[tuple[str, int], float] = {}
        self.outcomes: list[tuple[float, str, str, float]] = []  # (t, phase of submit, code or "ok", latency)
        self.result_us: dict[str, list[float]] = collections.defaultdict(list)  # phase -> CPU µs per job_result
        self.result_wall_us: dict[str, list[float]] = collections.defaultdict(list)  # phase -> wall µs per result
        self.busy_s: collections.Counter[str] = collections.Counter()  # phase -> CPU s inside the registry
        self.max_waiting: collections.Counter[str] = collections.Counter()
        self.last_waiting_at = 0.0  # virtual time when a job was last seen waiting
        self._all_answered: trio.Event | None = None

    def outcome(self, session_id: str, index: int, code: str) -> None:
        submitted = self.submitted_at.pop((session_id, index), None)
        now = trio.current_time()
        if submitted is not None:
            self.outcomes.append((now, self.phase_of(submitted), code, now - submitted))
        if not self.submitted_at and self._all_answered is not None:
            self._all_answered.set()

    async def wait_all_answered(self) -> None:
        """Return once every job submitted so far has its outcome (call it after the last submit)."""
        if self.submitted_at:
            self._all_answered = trio.Event()
            await self._all_answered.wait()

    def phase_of(self, t: float) -> str:
        current = "baseline"
        for name in PHASES:
            if name in self.phase_start and t >= self.phase_start[name]:
                current = name
        return current


class SessionSink:
    """A session's writer inbox as the registry sees it: it takes outcomes without blocking."""

    def __init__(self, session_id: str, recorder: Recorder) -> None:
        self.session_id = session_id
        self.recorder = recorder

    def send_nowait(self, value: Any) -> None:
        if isinstance(value, Outcome):
            message = value.message
            code = ("ok" if isinstance(message, m.TranslationResult)
                    else getattr(message, "code", None) or f"missing:{getattr(message, 'reason', '?')}")
            self.recorder.outcome(self.session_id, value.utterance_index, str(code))


def timed_handle(registry: Registry, recorder: Recorder) -> None:
    """Wrap the registry's own ``handle`` (the run loop calls it for every request) with a CPU and wall probe."""
    handle = registry.handle
    cpu, perf = time.thread_time, time.perf_counter

    def probe(request: Any, now: float) -> None:
        started_wall, started = perf(), cpu()
        handle(request, now)
        spent, spent_wall = cpu() - started, perf() - started_wall
        phase = recorder.phase
        recorder.busy_s[phase] += spent
        if type(request) is Result:
            recorder.result_us[phase].append(spent * 1e6)
            recorder.result_wall_us[phase].append(spent_wall * 1e6)
        waiting = len(registry.waiting)
        if waiting:
            recorder.last_waiting_at = now
            if waiting > recorder.max_waiting[phase]:
                recorder.max_waiting[phase] = waiting

    registry.handle = probe  # type: ignore[method-assign]


async def node(client: RegistryClient, number: int, P: dict[str, Any], rnd: random.Random) -> None:
    send, receive = trio.open_memory_channel[Any](100_000)
    link = NodeLink(conn_id=number, outbox=send, peer="overload")
    node_id = f"node-{number:05d}"
    await client.register(link, m.NodeRegister(node_id=node_id, language_capabilities=LANGS,
                                                max_concurrent_jobs=P["capacity"]))
    service = P["service_ms"] / 1000.0
    async with trio.open_nursery() as nursery:
        async for item in receive:
            if isinstance(item, Dispatch):
                nursery.start_soon(answer, client, link, node_id, item.assign, service * rnd.uniform(0.8, 1.2))


async def answer(client: RegistryClient, link: NodeLink, node_id: str, assign: m.JobAssign, delay: float) -> None:
    await trio.sleep(delay)
    await client.result(link, m.JobResult(
        job_id=assign.job_id, success=True, attempt_id=assign.attempt_id, node_id=node_id,
        session_id=assign.session_id, utterance_index=assign.utterance_index, text_asr="asr",
        text_translated="translated", tts_audio="dHRz", tts_format="pcm16", trace_id=assign.trace_id))


async def offer(client: RegistryClient, recorder: Recorder, P: dict[str, Any], rnd: random.Random) -> None:
    capacity_per_s = P["nodes"] * P["capacity"] / (P["service_ms"] / 1000.0)
    sinks = [SessionSink(f"s-{i:05d}", recorder) for i in range(P["sessions"])]
    next_index = [0] * len(sinks)
    key = direction_key("zh", "en")
    for phase, seconds, factor in (("baseline", P["baseline_s"], P["low"]), ("overload", P["overload_s"], P["high"]),
                                   ("recovery", P["recovery_s"], P["low"])):
        recorder.phase = phase
        recorder.phase_start[phase] = trio.current_time()
        end = trio.current_time() + seconds
        rate = capacity_per_s * factor
        while True:
            await trio.sleep(rnd.expovariate(rate))
            now = trio.current_time()
            if now >= end:
                break
            which = rnd.randrange(len(sinks))
            sink, index = sinks[which], next_index[which]
            next_index[which] += 1
            spec = JobSpec(session_id=sink.session_id, utterance_index=index, trace_id=f"t-{which}-{index}",
                           src_lang="zh", tgt_lang="en", selection_key=key, pipeline=m.Pipeline(),
                           audio=b"\x01" * 3200, audio_format="pcm16", sample_rate=16000, turn_id=None,
                           cut_reason="manual", finalized_at=now, is_manual_cut=True)
            recorder.submitted[phase] += 1
            recorder.submitted_at[(sink.session_id, index)] = now
            reply = await client.submit(spec, sink, deadline=now + 5.0)
            if reply is None:
                recorder.outcome(sink.session_id, index, "SCHEDULER_BUSY")
    recorder.phase = "drain"
    recorder.phase_start["drain"] = trio.current_time()


async def scenario(P: dict[str, Any], recorder: Recorder) -> None:
    config = config_with(Config(), scheduler={"max_concurrent_jobs_per_node": P["capacity"],
                                              "heartbeat_interval_seconds": 1000.0,
                                              "heartbeat_timeout_seconds": 3000.0})
    send, receive = open_registry_channel(config.scheduler.registry_inbox_size)
    registry = Registry(config, receive, rng=random.Random(P["seed"]))
    timed_handle(registry, recorder)
    client = RegistryClient(send, registry.notices)
    rnd = random.Random(P["seed"])
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        for number in range(P["nodes"]):
            nursery.start_soon(node, client, number, P, random.Random(P["seed"] * 1000 + number))
        await trio.sleep(0.001)
        await offer(client, recorder, P, rnd)
        limit = config.scheduler.pending_timeout_seconds + config.scheduler.job_timeout_seconds * 4
        with trio.move_on_after(limit):
            await recorder.wait_all_answered()
        nursery.cancel_scope.cancel()


def summarize(P: dict[str, Any], recorder: Recorder, wall_s: float) -> dict[str, Any]:
    capacity_per_s = P["nodes"] * P["capacity"] / (P["service_ms"] / 1000.0)
    durations = {"baseline": P["baseline_s"], "overload": P["overload_s"], "recovery": P["recovery_s"]}
    out: dict[str, Any] = {"params": P, "capacity_per_s": capacity_per_s, "wall_s": wall_s, "phases": {}}
    for phase in PHASES:
        start = recorder.phase_start.get(phase)
        if start is None:
            continue
        seconds = durations.get(phase)
        delivered = [o for o in recorder.outcomes if recorder.phase_of(o[0]) == phase]
        ok = [o for o in delivered if o[2] == "ok"]
        errors = collections.Counter(o[2] for o in delivered if o[2] != "ok")
        latency = sorted(o[3] * 1000.0 for o in recorder.outcomes if o[1] == phase)
        us = sorted(recorder.result_us.get(phase, []))
        wall_us = recorder.result_wall_us.get(phase, [])
        elapsed = seconds if seconds else max((o[0] for o in delivered), default=start) - start
        out["phases"][phase] = {
            "seconds": elapsed,
            "offered_per_s": recorder.submitted[phase] / seconds if seconds else 0.0,
            "goodput_per_s": len(ok) / elapsed if elapsed else None,
            "errors": dict(errors),
            "latency_p50_ms": percentile(latency, 50), "latency_p99_ms": percentile(latency, 99),
            "results": len(us),
            "registry_us_per_result_mean": statistics.fmean(us) if us else None,
            "registry_us_per_result_p50": percentile(us, 50), "registry_us_per_result_p99": percentile(us, 99),
            "registry_wall_us_per_result_mean": statistics.fmean(wall_us) if wall_us else None,
            "registry_busy_fraction": recorder.busy_s[phase] / elapsed if elapsed else None,
            "max_waiting": recorder.max_waiting[phase],
        }
    overload_end = recorder.phase_start.get("recovery")
    out["recover_s"] = (max(0.0, recorder.last_waiting_at - overload_end) if overload_end is not None else None)
    base = out["phases"].get("baseline", {}).get("registry_us_per_result_mean")
    over = out["phases"].get("overload", {}).get("registry_us_per_result_mean")
    out["overload_vs_baseline"] = over / base if base and over else None
    out["unanswered"] = len(recorder.submitted_at)
    return out


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def table(result: dict[str, Any]) -> str:
    P = result["params"]
    lines = [f"Fleet: {P['nodes']} nodes × {P['capacity']} slots, {P['service_ms']:g} ms per job (±20 %) = "
             f"{result['capacity_per_s']:,.0f} jobs/s; offered {P['low']:g}× for {P['baseline_s']:g} s, "
             f"{P['high']:g}× for {P['overload_s']:g} s, {P['low']:g}× for {P['recovery_s']:g} s; "
             f"{P['sessions']} sessions; log level {P.get('log_level', 'info')}.", "",
             "Goodput and errors count outcomes delivered during the phase; latency, jobs submitted during it.", "",
             "| phase | offered/s | goodput/s | errors by code | submit→outcome p50 / p99 ms | "
             "registry CPU µs per result mean / p50 / p99 (wall mean) | registry busy | max waiting |",
             "|---|---|---|---|---|---|---|---|"]
    for phase, row in result["phases"].items():
        errors = ", ".join(f"{k} {v}" for k, v in sorted(row["errors"].items())) or "–"
        lines.append(
            f"| {phase} | {_num(row['offered_per_s'], 0)} | {_num(row['goodput_per_s'], 0)} | {errors} | "
            f"{_num(row['latency_p50_ms'])} / {_num(row['latency_p99_ms'])} | "
            f"{_num(row['registry_us_per_result_mean'])} / {_num(row['registry_us_per_result_p50'])} / "
            f"{_num(row['registry_us_per_result_p99'])} ({_num(row['registry_wall_us_per_result_mean'])}) | "
            f"{_num(row['registry_busy_fraction'], 2)} | "
            f"{row['max_waiting']} |")
    ratio = result["overload_vs_baseline"]
    lines += ["", f"Registry time per result, overload / baseline (mean): **{_num(ratio, 2)}×** "
                  f"(goal ≤ 2×: {'met' if ratio is not None and ratio <= 2 else 'MISSED'}); "
                  f"time to recover (no job waiting after the overload ends): {_num(result['recover_s'], 2)} s; "
                  f"jobs without an outcome at the end: {result['unanswered']}; wall time {result['wall_s']:.1f} s."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller fleet and a shorter recovery phase")
    ap.add_argument("--log-level", default="info", help="the daemon's default, info; lines go to /dev/null")
    ap.add_argument("--json", default="", help="write the results here")
    for key, value in params(False).items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None)
    a = ap.parse_args()
    P = params(a.quick)
    for key in P:
        value = getattr(a, key)
        if value is not None:
            P[key] = value
    P["log_level"] = a.log_level
    handler = logs.configure_logging(a.log_level, sink=logs.fd_sink(os.open(os.devnull, os.O_WRONLY)))
    recorder = Recorder()
    started = time.perf_counter()
    try:
        trio.run(scenario, P, recorder, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        handler.close()
    result = summarize(P, recorder, time.perf_counter() - started)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    print(table(result))
    return 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
