"""A node socket's message budget (``limits.node_messages_per_second`` / ``node_messages_burst``).

Without one, a node (anyone, while authentication is off) could send job_results for jobs that do not exist as fast
as TCP allows: every one of them took a turn of the registry task that every session shares, and wrote a WARNING
line. Measured with four such nodes on a loaded two-core box: ~5,000 frames a second reached the registry, each one
counted in ``results_dropped_unknown_job``, until the nodes chose to stop; the other session's utterances still got
their results, but only in the registry turns the flood left over. The tests count what reaches the registry (its
own counters), not time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
import trio
import trio_websocket

from tests.wire import b64, connect, node_register, pcm, registered_node, result_for, session, start_daemon
from trioscheduler.config import Config
from trioscheduler.metrics import exposition
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.ratelimit import ACCEPT, TokenBucket

#: Next to no refill while a test runs: what a node may send is its burst, whatever the machine's speed.
NO_REFILL = 0.001
BURST = 20
FLOOD = 200
UNKNOWN_RESULT = json.dumps({"type": "job_result", "job_id": "job-that-never-was", "attempt_id": 1,
                             "success": True, "text_asr": "x", "text_translated": "y"})


async def test_a_flooding_node_gets_its_budget_of_registry_turns_then_is_closed_while_a_session_goes_on(
        nursery: trio.Nursery, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trioscheduler")
    daemon = await start_daemon(nursery, make_config(
        limits={"node_messages_per_second": NO_REFILL, "node_messages_burst": BURST}))
    utterances = 8  # the well-behaved node's register and results stay within the same budget
    async with registered_node(daemon.node_url, "good", capacity=4) as (good, _), \
            session(daemon.session_url) as (client, sid):

        async def answer() -> None:
            for _ in range(utterances):
                assign = await good.recv_type("job_assign")
                await good.send(**result_for(assign, node_id="good"))

        async def flood() -> list[dict[str, object]]:
            async with connect(daemon.node_url) as flooder:
                await flooder.send(**node_register("flooder", languages=("fr", "de")))
                await flooder.recv_type("node_register_ack")
                errors = []
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    for _ in range(FLOOD):
                        await flooder.send_raw(UNKNOWN_RESULT)
                    while True:
                        errors.append(await flooder.recv_type("error"))
                assert closed.value.reason.code == CloseCode.RATE_LIMITED
                return errors

        nursery.start_soon(answer)
        refused: list[dict[str, object]] = []

        async def run_flood() -> None:
            refused.extend(await flood())

        async with trio.open_nursery() as flooding:
            flooding.start_soon(run_flood)
            for index in range(utterances):
                await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                                  audio_format="pcm16", sample_rate=16000, manual_cut=True)
                outcome = await client.recv_type("translation_result", "error", skip=("server_heartbeat",))
                assert outcome["type"] == "translation_result", outcome
    stats = await daemon.scheduler.stats()
    assert stats is not None
    # The register took one token: BURST - 1 results reached the registry, not FLOOD.
    assert stats["counters"]["results_dropped_unknown_job"] == BURST - 1
    assert [e["code"] for e in refused] == ["RATE_LIMITED"] * BURST
    assert stats["node_sockets"]["counters"] == {"node_messages_rate_limited": BURST, "nodes_closed_rate_limited": 1}
    assert "flooder" not in [n["node_id"] for n in stats["nodes"]]
    text = exposition(stats).decode()
    assert f'trioscheduler_events_total{{event="node_messages_rate_limited"}} {BURST}.0' in text
    assert 'trioscheduler_events_total{event="nodes_closed_rate_limited"} 1.0' in text
    lines = [r.getMessage() for r in caplog.records]
    assert sum("node_rate_limited " in line and "node_id=flooder" in line for line in lines) == 1
    assert sum("node_rate_limited_closing" in line and "node_id=flooder" in line for line in lines) == 1


async def test_a_node_over_its_rate_before_registering_is_refused_and_closed(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """The budget holds from the first frame: garbage before node_register is charged like anything else."""
    daemon = await start_daemon(nursery, make_config(
        limits={"node_messages_per_second": NO_REFILL, "node_messages_burst": 3}))
    async with connect(daemon.node_url) as node:
        for _ in range(3):
            await node.send_raw("not json")
        assert [(await node.recv_type("error"))["code"] for _ in range(3)] == ["INVALID_MESSAGE"] * 3
        await node.send(**node_register("late"))
        assert (await node.recv_type("error"))["code"] == "RATE_LIMITED"  # dropped, not registered
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            for _ in range(3):
                await node.send_raw("not json")
            while True:
                assert (await node.recv_type("error"))["code"] == "RATE_LIMITED"
    assert closed.value.reason.code == CloseCode.RATE_LIMITED
    stats = await daemon.scheduler.stats()
    assert stats is not None and stats["nodes"] == []


def test_the_default_budget_carries_a_node_at_full_capacity_with_partials(make_config: Callable[..., Config]) -> None:
    """What docs/configuration.md reckons a real node sends at ``max_node_capacity`` (1,024) jobs, each lasting a
    second: job_ack, job_started, one asr_partial (the default partial_update_interval_ms is 1000) and job_result
    per job, 1,024 jobs a second, plus a heartbeat; and, after a reconnect, its finished jobs' results at once."""
    limits = make_config().limits
    bucket = TokenBucket(limits.node_messages_per_second, limits.node_messages_burst, 0.0)
    per_second = 4 * limits.max_node_capacity + 1
    assert all(bucket.take(i / per_second) == ACCEPT for i in range(per_second * 600))
    assert all(bucket.take(600.0) == ACCEPT for _ in range(2 * limits.max_node_capacity))
