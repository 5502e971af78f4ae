"""Job timelines (issue 11, point 2): the bounded history of recent jobs, the views of a timeline, and the registry
queries that read them under a deadline (MockClock: a deadline missed is abandoned, never answered late)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import b64, memory_node, memory_session, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.joblog import JobStages
from trioscheduler.registry import queries
from trioscheduler.registry.queries import NOT_FOUND, RegistryUnavailable
from trioscheduler.timeline import JobHistory, JobRecord, job_summary, job_timeline


def record(job_ids: list[str], stages: JobStages | None = None) -> JobRecord:
    return JobRecord(job_ids, "sess-1", 0, "zh", "en", "zh>en", "trace", stages or JobStages(10.0, 10.001))


@given(size=st.integers(0, 8), adds=st.integers(0, 30), retries=st.sets(st.integers(0, 29)))
def test_history_keeps_the_newest_size_records_and_finds_every_attempt(size: int, adds: int,
                                                                        retries: set[int]) -> None:
    history = JobHistory(size)
    for n in range(adds):
        history.add(record([f"job-{n}", f"job-{n}-retry"] if n in retries else [f"job-{n}"]))
        assert len(history) <= size
    kept = list(range(max(0, adds - size), adds)) if size else []
    assert [r.job_ids[0] for r in history.recent(size + 5)] == [f"job-{n}" for n in reversed(kept)]
    assert [r.job_ids[0] for r in history.recent(2)] == [f"job-{n}" for n in reversed(kept)][:2]
    for n in range(adds):
        found = history.find(f"job-{n}")
        assert (found is not None) == (n in kept)
        if n in retries:
            assert history.find(f"job-{n}-retry") is found


def test_summary_reads_outcome_and_latency_from_the_stages() -> None:
    stages = JobStages(10.0, 10.001)
    job = record(["job-a", "job-b"], stages)
    offset = 1_000_000.0
    assert job_summary(job, offset)["outcome"] == "in_progress"
    assert job_summary(job, offset)["latency_ms"] is None
    stages.timeline.append(("created", 10.001, None, 0, {"cut": "pause"}))
    stages.selected(10.002, 1, "node-1")
    stages.timeline.append(("selected", 10.002, "node-1", 1, None))
    stages.dispatched(10.003, 1)
    stages.dispatched(10.004, 0)  # an older attempt's late write changes nothing
    stages.timeline.append(("failover", 10.5, "node-1", 1, {"reason": "JOB_TIMEOUT"}))
    stages.selected(10.6, 2, "node-2")
    stages.timeline.append(("selected", 10.6, "node-2", 2, None))
    stages.timeline.append(("outcome", 10.7, "node-2", 2, {"kind": "error", "code": "JOB_TIMEOUT"}))
    summary = job_summary(job, offset)
    assert (summary["outcome"], summary["code"], summary["delivered"]) == ("error", "JOB_TIMEOUT", False)
    assert summary["latency_ms"] == pytest.approx(700.0)
    stages.delivered(10.75)
    detail = job_timeline(job, offset)
    assert detail["latency_ms"] == pytest.approx(750.0) and detail["delivered"]
    assert [(s["stage"], s["job_id"], s["node_id"]) for s in detail["timeline"]] == [
        ("finalized", "job-a", None), ("created", "job-a", None), ("selected", "job-a", "node-1"),
        ("dispatched", "job-a", "node-1"), ("failover", "job-a", "node-1"), ("selected", "job-b", "node-2"),
        ("outcome", "job-b", "node-2"), ("delivered", "job-b", "node-2")]
    assert detail["timeline"][0]["at_ms"] == int((10.0 + offset) * 1000)
    assert [a["node_id"] for a in detail["attempt_list"]] == ["node-1", "node-2"]


async def test_a_query_past_its_deadline_is_abandoned_not_answered_late(
        autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config], nursery: trio.Nursery) -> None:
    scheduler = Scheduler(make_config())
    asked = []

    def view(registry: object, now: float) -> str:
        asked.append(now)
        return "answer"

    with pytest.raises(RegistryUnavailable):
        await queries.ask(scheduler.client, view, 1.0)  # the registry is not running yet
    await nursery.start(scheduler.run)
    assert await queries.ask(scheduler.client, view, 1.0) == "answer"
    assert len(asked) == 1  # the abandoned query, still in the inbox, was skipped


async def test_a_view_that_fails_in_the_registry_is_unavailable_and_the_registry_lives_on(
        autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config], nursery: trio.Nursery) -> None:
    scheduler = Scheduler(make_config())
    await nursery.start(scheduler.run)

    def broken(registry: object, now: float) -> None:
        raise RuntimeError("bug in a view")

    with pytest.raises(RegistryUnavailable):
        await queries.ask(scheduler.client, broken, 1.0)
    assert (await queries.ask(scheduler.client, queries.nodes_view, 1.0))["count"] == 0
    assert await queries.ask(scheduler.client, queries.job_detail("job-none"), 1.0) == NOT_FOUND


async def test_a_timed_out_attempt_and_its_failover_are_on_the_timeline(
        autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config], nursery: trio.Nursery) -> None:
    config: Config = make_config(scheduler={"job_timeout_seconds": 5, "heartbeat_timeout_seconds": 1000})
    scheduler = Scheduler(config)
    await nursery.start(scheduler.run)
    slow = await memory_node(nursery, scheduler, "node-SLOW", capacity=1)
    client, session_id = await memory_session(nursery, scheduler)
    await client.send(type="audio_chunk", session_id=session_id, is_final=True, payload=b64(pcm(200)))
    first = await slow.recv_type("job_assign")
    fast = await memory_node(nursery, scheduler, "node-FAST")
    second = await fast.recv_type("job_assign", timeout=10)  # after job_timeout_seconds of virtual time
    await fast.send(**result_for(second, node_id="node-FAST"))
    await client.recv_type("translation_result")
    await trio.sleep(0.01)
    job = await queries.ask(scheduler.client, queries.job_detail(first["job_id"]), 1.0)
    stages = [(s["stage"], s["node_id"]) for s in job["timeline"]]
    assert stages == [("finalized", None), ("created", None), ("selected", "node-SLOW"), ("dispatched", "node-SLOW"),
                      ("deadline_missed", "node-SLOW"), ("failover", "node-SLOW"), ("selected", "node-FAST"),
                      ("dispatched", "node-FAST"), ("result", "node-FAST"), ("outcome", "node-FAST"),
                      ("delivered", "node-FAST")]
    timed_out = job["timeline"][4]
    assert timed_out["elapsed_ms"] == pytest.approx(5000.0, abs=1.0)
    assert job["timeline"][5]["fields"] == {"reason": "JOB_TIMEOUT"}
    node = await queries.ask(scheduler.client, queries.node_detail("node-SLOW", 10), 1.0)
    assert [f["stage"] for f in node["recent_failures"]] == ["failover", "deadline_missed"]
    assert node["jobs_failed"] == 1 and len(node["failure_times_ms"]) == 1
