"""Job logging: at ``info`` one ``job_done`` line per job with every stage's elapsed ms, its ids and its outcome
(issue 13, point 2); at ``debug`` a line per stage (issue 2, point 9); a missed deadline or a failover warns and
says why."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import (
    Daemon,
    b64,
    memory_node,
    memory_peer,
    memory_session,
    node_register,
    pcm,
    registered_node,
    result_for,
    session,
)
from trioscheduler import logs
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.joblog import JobStages
from trioscheduler.latency import DISPATCH_BUCKETS, LatencyHistogram
from trioscheduler.logs import FIELDS_ATTR

IDS = ("session_id=", "utterance_index=", "job_id=", "node_id=", "trace_id=", "elapsed_ms=")


STAGES = ("created_ms", "selected_ms", "dispatched_ms", "result_ms", "delivered_ms")
PER_STAGE = ("job_finalized", "job_created", "job_selected", "job_dispatched", "job_result", "job_outcome",
             "job_delivered", "job_waiting", "job_cancelled")


def job_done(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The fields of every ``job_done`` line, in order."""
    return [getattr(r, FIELDS_ATTR) for r in caplog.records if r.getMessage().startswith("job_done ")]


def events(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage().split(" ", 1)[0] for r in caplog.records if r.levelno == level]


async def test_each_stage_is_logged_with_ids_at_debug(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trioscheduler")
    scheduler = Scheduler(make_config())
    await nursery.start(scheduler.run)
    node = memory_peer(nursery, scheduler, "node")
    await node.send(**node_register("node-LOG00001"))
    await node.recv_type("node_register_ack")
    client = memory_peer(nursery, scheduler, "session")
    await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
    sid = (await client.recv_type("session_init_ack"))["session_id"]
    await client.send(type="audio_chunk", session_id=sid, is_final=True, payload=b64(pcm(200)))
    assign = await node.recv_type("job_assign")
    await node.send(**result_for(assign))
    await client.recv_type("translation_result")
    await trio.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records]
    for stage in ("job_finalized", "job_created", "job_selected", "job_dispatched", "job_result",
                  "job_delivered"):
        matching = [r.getMessage() for r in caplog.records
                    if r.getMessage().startswith(stage + " ") and r.levelno == logging.DEBUG]
        assert matching, (stage, lines)
        line = matching[0]
        # Before selection there is no node, and before the registry there is no job_id yet.
        expected = {"job_finalized": ("session_id=", "utterance_index=", "trace_id=", "elapsed_ms="),
                    "job_created": ("session_id=", "utterance_index=", "job_id=", "trace_id=", "elapsed_ms=")
                    }.get(stage, IDS)
        for field in expected:
            assert field in line, (stage, field, line)
        assert f"session_id={sid}" in line and "utterance_index=0" in line


async def test_info_logs_exactly_one_job_done_line_per_job_with_every_stage(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioscheduler")
    scheduler = Scheduler(make_config(scheduler={"heartbeat_timeout_seconds": 1000}))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-DONE0001")
    client, sid = await memory_session(nursery, scheduler)
    await trio.sleep(1)
    for index in range(3):
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)))
    assigns = [await node.recv_type("job_assign") for _ in range(3)]
    await trio.sleep(0.25)  # the node works 250 ms
    await node.send(**result_for(assigns[0]))
    await node.send(**result_for(assigns[1], text_asr="", text_translated="", tts_audio=""))
    await node.send(**result_for(assigns[2], success=False, error={"code": "MODEL_NOT_AVAILABLE", "message": "x"}))
    assert [(await client.recv_type("translation_result", "missing_result", "error"))["type"] for _ in range(3)] \
        == ["translation_result", "missing_result", "error"]
    await trio.sleep(0.01)
    lines = job_done(caplog)
    assert [line["utterance_index"] for line in lines] == [0, 1, 2]
    assert [(line["outcome"], line["code"], line["reason"]) for line in lines] == [
        ("result", None, None), ("missing", None, "silence_detected"), ("error", "MODEL_NOT_AVAILABLE", None)]
    for line, assign in zip(lines, assigns):
        assert (line["session_id"], line["job_id"], line["node_id"], line["trace_id"], line["attempts"]) == (
            sid, assign["job_id"], "node-DONE0001", assign["trace_id"], 1)
        times = [line[stage] for stage in STAGES]
        assert None not in times and times == sorted(times), line
        assert line["result_ms"] == pytest.approx(250.0, abs=1.0)
    assert not set(PER_STAGE) & set(events(caplog, logging.INFO)), "per-stage lines belong to debug"


async def test_job_done_is_not_formatted_when_info_is_off(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    formatted: list[object] = []
    monkeypatch.setattr(logs, "_format_value", lambda value: formatted.append(value) or str(value))
    caplog.set_level(logging.WARNING, logger="trioscheduler")
    scheduler = Scheduler(make_config())
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-QUIET001")
    client, sid = await memory_session(nursery, scheduler)
    await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)))
    await node.send(**result_for(await node.recv_type("job_assign")))
    await client.recv_type("translation_result")
    await trio.sleep(0.01)
    assert caplog.records == [] and formatted == []


async def test_a_failover_warns_and_the_job_done_line_names_the_last_attempt(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioscheduler")
    scheduler = Scheduler(make_config(scheduler={"heartbeat_timeout_seconds": 1000, "job_timeout_seconds": 5}))
    await nursery.start(scheduler.run)
    first = await memory_node(nursery, scheduler, "node-SLOW0001")
    client, sid = await memory_session(nursery, scheduler)
    await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)))
    stalled = await first.recv_type("job_assign")
    second = await memory_node(nursery, scheduler, "node-FAST0001")
    await trio.sleep(5.5)  # past the first attempt's deadline: failover to the second node
    retry = await second.recv_type("job_assign")
    await second.send(**result_for(retry))
    await client.recv_type("translation_result")
    await trio.sleep(0.01)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("job_deadline_missed ") and f"job_id={stalled['job_id']}" in w for w in warnings)
    [line] = job_done(caplog)
    assert (line["job_id"], line["node_id"], line["attempts"], line["outcome"]) == (
        retry["job_id"], "node-FAST0001", 2, "result")
    # selected and dispatched are the last attempt's: after the first attempt's deadline.
    assert line["created_ms"] < 1.0 and 5000.0 <= line["selected_ms"] <= line["dispatched_ms"] <= line["result_ms"]


async def test_a_lost_node_warns_and_the_job_gets_one_line(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioscheduler")
    scheduler = Scheduler(make_config(scheduler={"heartbeat_timeout_seconds": 1000}))
    await nursery.start(scheduler.run)
    doomed = await memory_node(nursery, scheduler, "node-GONE0001")
    client, sid = await memory_session(nursery, scheduler)
    await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)))
    await doomed.recv_type("job_assign")
    await doomed.ws.aclose()
    error = await client.recv_type("error", timeout=60)
    assert error["code"] == "NODE_UNAVAILABLE"
    await trio.sleep(0.01)
    assert any(r.getMessage().startswith("job_node_lost ") for r in caplog.records if r.levelno == logging.WARNING)
    [line] = job_done(caplog)
    assert (line["outcome"], line["code"], line["node_id"], line["attempts"]) == (
        "error", "NODE_UNAVAILABLE", "node-GONE0001", 1)
    assert line["result_ms"] is None and line["delivered_ms"] >= line["dispatched_ms"]


async def test_a_cancelled_job_gets_its_line(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioscheduler")
    scheduler = Scheduler(make_config(scheduler={"heartbeat_timeout_seconds": 1000}))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-CANC0001")
    client, sid = await memory_session(nursery, scheduler)
    await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)))
    assign = await node.recv_type("job_assign")
    await trio.sleep(0.5)
    await client.ws.aclose()
    cancel = await node.recv_type("job_cancel")
    assert cancel["job_id"] == assign["job_id"]
    await trio.sleep(0.01)
    [line] = job_done(caplog)
    assert (line["outcome"], line["reason"], line["job_id"], line["attempts"]) == (
        "cancelled", "session_closed", assign["job_id"], 1)
    assert line["dispatched_ms"] is not None and line["result_ms"] is None and line["delivered_ms"] is None
    assert "job_cancelled" not in events(caplog, logging.INFO)


@given(st.lists(st.integers(min_value=1, max_value=5), max_size=20), st.data())
def test_only_the_current_attempts_dispatch_is_recorded(attempts: list[int], data: st.DataObject) -> None:
    """A node's writer that writes an older attempt's job_assign late never stamps the current attempt."""
    stages = JobStages(0.0, 0.0)
    for step, attempt in enumerate(attempts):
        stages.selected(float(step), attempt, f"node-{attempt}")
        late = data.draw(st.integers(min_value=1, max_value=5))
        stages.dispatched(step + 0.5, late)
        assert stages.dispatched_at == (step + 0.5 if late == attempt else None)
        assert (stages.attempt, stages.node_id, stages.selected_at) == (attempt, f"node-{attempt}", float(step))


async def test_missed_pending_deadline_logs_candidates_and_why(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioscheduler")
    scheduler = Scheduler(make_config(scheduler={"heartbeat_timeout_seconds": 1000}, results={"ordering": "strict"}))
    await nursery.start(scheduler.run)
    node = memory_peer(nursery, scheduler, "node")
    await node.send(**node_register("node-FULL0001", capacity=1))
    await node.recv_type("node_register_ack")
    client = memory_peer(nursery, scheduler, "session")
    await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
    sid = (await client.recv_type("session_init_ack"))["session_id"]
    for index in range(2):
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)))
    first = await node.recv_type("job_assign")
    await trio.sleep(11)  # past the pending timeout of the second; then the first completes
    await node.send(**result_for(first))
    await client.recv_type("translation_result")
    error = await client.recv_type("error")
    assert error["code"] == "NO_AVAILABLE_NODE" and error["utterance_index"] == 1
    assert error["details"]["candidates"] == {"node-FULL0001": "full(1/1)"}
    missed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job_deadline_missed")]
    assert missed and re.search(r"why=\"no node could take the job within pending_timeout_seconds", missed[0])
    assert "rejected=node-FULL0001:full(1/1)" in missed[0] and "utterance_index=1" in missed[0]
    await trio.sleep(0.01)  # the writer logs job_done once the error is written, after the client can read it
    done = {line["utterance_index"]: line for line in job_done(caplog)}
    assert (done[1]["outcome"], done[1]["code"], done[1]["selected_ms"]) == ("error", "NO_AVAILABLE_NODE", None)
    assert done[1]["delivered_ms"] >= 10_000.0 and done[0]["outcome"] == "result"


# ------------------------------------------------------------------------------------------ latency histograms


@given(st.lists(st.floats(min_value=0.0, max_value=60.0, allow_nan=False), max_size=200))
def test_latency_histogram_counts_every_observation_in_its_bucket(values: list[float]) -> None:
    hist = LatencyHistogram(DISPATCH_BUCKETS)
    for value in values:
        hist.observe(value)
    snap = hist.snapshot()
    assert snap["count"] == len(values) and snap["sum"] == pytest.approx(sum(values))
    assert (snap["p50_le"], snap["p99_le"]) == (hist.quantile_bound(0.5), hist.quantile_bound(0.99))
    bounds = [bound for bound, _ in snap["buckets"]]
    assert bounds == [*DISPATCH_BUCKETS, "+Inf"]
    for bound, cumulative in snap["buckets"]:
        assert cumulative == sum(1 for v in values if bound == "+Inf" or v <= bound)
    for q in (0.5, 0.99):
        bound = hist.quantile_bound(q)
        if not values:
            assert bound is None
            continue
        # The bound holds at least q of the observations, and the bucket below it does not.
        ordered = sorted(values)
        kth = ordered[max(0, math.ceil(q * len(values)) - 1)]
        if bound == "+Inf":
            assert kth > DISPATCH_BUCKETS[-1]
            continue
        assert kth <= bound
        below = [b for b in DISPATCH_BUCKETS if b < bound]
        if below:
            assert kth > below[-1]


async def test_metrics_export_selection_and_dispatch_latency(daemon: Daemon) -> None:
    """Over real sockets: one dispatched job shows up in both histograms on /metrics and in /api/v1/stats."""
    http_url = daemon.listening.http_url
    async with registered_node(daemon.node_url, "node-HIST1") as (node, _), \
            session(daemon.session_url) as (client, session_id), httpx.AsyncClient() as http:
        before = (await http.get(f"{http_url}/api/v1/stats")).json()["latency"]
        assert before["selection_seconds"]["count"] == 0 and before["dispatch_delay_seconds"]["count"] == 0
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(200)), is_final=True)
        assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
        await node.send(**result_for(assign, node_id="node-HIST1"))
        await client.recv_type("translation_result")
        stats = (await http.get(f"{http_url}/api/v1/stats")).json()["latency"]
        assert stats["selection_seconds"]["count"] == 1 and stats["dispatch_delay_seconds"]["count"] == 1
        assert stats["selection_seconds"]["buckets"][-1] == ["+Inf", 1]
        metrics = (await http.get(f"{http_url}/metrics")).text
    assert "# TYPE trioscheduler_selection_seconds histogram" in metrics
    assert 'trioscheduler_selection_seconds_bucket{le="+Inf"} 1.0' in metrics
    assert "trioscheduler_selection_seconds_count 1.0" in metrics
    assert "trioscheduler_dispatch_delay_seconds_count 1.0" in metrics
    assert 'trioscheduler_dispatch_delay_seconds_bucket{le="0.00025"}' in metrics
