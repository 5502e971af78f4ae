"""Issue 2, point 9: every stage of a job is a log line with its ids and elapsed ms; a missed deadline says why."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
import trio

from tests.wire import b64, memory_peer, node_register, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config

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
    scheduler = Scheduler(make_config(scheduler={"heartbeat_timeout_seconds": 1000}))
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
