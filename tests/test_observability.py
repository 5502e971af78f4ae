"""Issue 2, point 9: every stage of a job is a log line with its ids and elapsed ms; a missed deadline says why."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import Daemon, b64, memory_peer, node_register, pcm, registered_node, result_for, session
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.latency import DISPATCH_BUCKETS, LatencyHistogram

IDS = ("session_id=", "utterance_index=", "job_id=", "node_id=", "trace_id=", "elapsed_ms=")


async def test_each_stage_is_logged_with_ids(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
                                             make_config: Callable[..., Config],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioscheduler")
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
        matching = [line for line in lines if line.startswith(stage + " ")]
        assert matching, (stage, lines)
        line = matching[0]
        # Before selection there is no node, and before the registry there is no job_id yet.
        expected = {"job_finalized": ("session_id=", "utterance_index=", "trace_id=", "elapsed_ms="),
                    "job_created": ("session_id=", "utterance_index=", "job_id=", "trace_id=", "elapsed_ms=")
                    }.get(stage, IDS)
        for field in expected:
            assert field in line, (stage, field, line)
        assert f"session_id={sid}" in line and "utterance_index=0" in line


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
    assert "# TYPE scheduler_selection_seconds histogram" in metrics
    assert 'scheduler_selection_seconds_bucket{le="+Inf"} 1.0' in metrics
    assert "scheduler_selection_seconds_count 1.0" in metrics
    assert "scheduler_dispatch_delay_seconds_count 1.0" in metrics
    assert 'scheduler_dispatch_delay_seconds_bucket{le="0.00025"}' in metrics
