"""Turns answered once and readiness as a preference, driven through the registry's requests under MockClock.

The original's node buffers the audio of a turn (the jobs of one ``turn_id``) and answers the turn once, on the job
that ends it; a node that says ``features_supported.answers_every_job`` answers each job and loses none to that rule.
A node whose services for a pipeline are not ready still serves its language pairs when no ready node has room.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from typing import Any

import pytest
import trio

from tests.test_registry import (
    STEP,
    ZH_EN,
    FakeNode,
    Harness,
    drain,
    failed_result,
    make_config,
    ok_result,
    spec_for,
)
from trioscheduler.config import LimitsConfig
from trioscheduler.protocol.codec import encode, node_codec
from trioscheduler.protocol.errors import ProtocolError
from trioscheduler.protocol.messages import CapabilityByType, MissingResult, NodeRegister, NodeRegisterAck
from trioscheduler.registry.requests import NodeLink

_conn_ids = itertools.count(10_000)
JOB_TIMEOUT = 30.0
ALL_READY = [CapabilityByType(type=t, ready=True) for t in ("asr", "nmt", "tts")]
TTS_STOPPED = [CapabilityByType(type="asr", ready=True), CapabilityByType(type="nmt", ready=True),
               CapabilityByType(type="tts", ready=False, reason="cpu_only")]


async def node_with(h: Harness, node_id: str, *, max_jobs: int = 4, features: dict[str, Any] | None = None,
                    capability_by_type: list[CapabilityByType] | None = None) -> FakeNode:
    outbox_send, outbox_recv = trio.open_memory_channel[Any](1000)
    link = NodeLink(next(_conn_ids), outbox_send, "peer")
    message = NodeRegister(node_id=node_id, language_capabilities=ZH_EN, max_concurrent_jobs=max_jobs,
                           features_supported=features, capability_by_type=capability_by_type)
    with trio.fail_after(STEP):
        reply = await h.client.register(link, message)
    assert reply == node_id, reply
    items = drain(outbox_recv)
    assert isinstance(items[0], NodeRegisterAck)
    return FakeNode(h, link, outbox_recv, items[0], items)


async def submit_turn(h: Harness, sink: trio.MemorySendChannel[Any], indices: range, turn_id: str) -> None:
    for index in indices:
        reply = await h.client.submit(spec_for("s", index, turn_id=turn_id), sink, trio.current_time() + 5)
        assert reply is not None


def outcomes(recv: trio.MemoryReceiveChannel[Any]) -> list[tuple[int, str, Any]]:
    """(index, message type, reason or merged_into) per outcome, in delivery order."""
    seen = []
    for item in drain(recv):
        message = item.message
        seen.append((item.utterance_index, message.TYPE, getattr(message, "merged_into", None)))
    return seen


# ============================================================================================ turns answered once


async def test_a_turn_answered_on_its_last_job_closes_its_earlier_jobs_as_merged_without_redispatch(
        nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=JOB_TIMEOUT))
    turn_node = await node_with(h, "turn-node", max_jobs=1)
    sink, recv = trio.open_memory_channel[Any](math.inf)
    await submit_turn(h, sink, range(3), "turn-1")
    spare = await node_with(h, "spare")  # where a re-dispatch would go
    assigns = turn_node.assigns()
    assert [a.utterance_index for a in assigns] == [0, 1, 2]
    await turn_node.result(ok_result(assigns[2]))
    assert outcomes(recv) == [(0, "missing_result", 2), (1, "missing_result", 2), (2, "translation_result", None)]
    assert await h.in_flight() == {turn_node.node_id: 0, spare.node_id: 0}
    # Long past every deadline: nothing of the turn is sent again, to either node, and no outcome follows.
    await trio.sleep(JOB_TIMEOUT * 3)
    assert turn_node.assigns() == [] and spare.assigns() == []
    assert outcomes(recv) == []
    snapshot = await h.sync()
    assert snapshot["jobs"]["total"] == 0
    assert snapshot["counters"].get("redispatches", 0) == 0
    assert snapshot["counters"]["outcome_missing_merged"] == 2


async def test_merged_outcome_names_the_reason_and_the_answer(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await node_with(h, "n")
    sink, recv = trio.open_memory_channel[Any](math.inf)
    await submit_turn(h, sink, range(2), "turn-1")
    first, second = node.assigns()
    await node.result(ok_result(second))
    merged = drain(recv)[0].message
    assert (merged.reason, merged.merged_into, merged.utterance_index, merged.job_id) == (
        "merged", 1, 0, first.job_id)


async def test_a_turn_that_fails_on_its_last_job_closes_its_earlier_jobs_too(nursery: trio.Nursery,
                                                                             autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await node_with(h, "n")
    sink, recv = trio.open_memory_channel[Any](math.inf)
    await submit_turn(h, sink, range(2), "turn-1")
    _, last = node.assigns()
    await node.result(failed_result(last, "PROCESSING_ERROR"))
    assert outcomes(recv) == [(0, "missing_result", 1), (1, "error", None)]


async def test_later_jobs_of_the_turn_and_other_turns_are_not_merged(nursery: trio.Nursery,
                                                                     autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await node_with(h, "n")
    sink, recv = trio.open_memory_channel[Any](math.inf)
    await submit_turn(h, sink, range(3), "turn-1")
    reply = await h.client.submit(spec_for("s", 3, turn_id="turn-2"), sink, trio.current_time() + 5)
    assert reply is not None
    assigns = node.assigns()
    await node.result(ok_result(assigns[1]))
    assert outcomes(recv) == [(0, "missing_result", 1), (1, "translation_result", None)]
    await node.result(ok_result(assigns[2]))
    await node.result(ok_result(assigns[3]))
    assert outcomes(recv) == [(2, "translation_result", None), (3, "translation_result", None)]


async def test_a_node_that_answers_every_job_loses_nothing_answering_out_of_order(nursery: trio.Nursery,
                                                                                  autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await node_with(h, "sdk", max_jobs=1, features={"answers_every_job": True, "streaming_asr": True})
    sink, recv = trio.open_memory_channel[Any](math.inf)
    await submit_turn(h, sink, range(3), "turn-1")
    assigns = node.assigns()
    for assign in reversed(assigns):
        await node.result(ok_result(assign))
    assert outcomes(recv) == [(2, "translation_result", None), (1, "translation_result", None),
                              (0, "translation_result", None)]
    assert (await h.counters()).get("outcome_missing_merged", 0) == 0


async def test_features_without_the_flag_keep_the_merge_rule(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """The original's node sends features_supported with its own flags, never answers_every_job."""
    h = Harness(nursery, make_config())
    node = await node_with(h, "original", features={"streaming_asr": True, "answers_every_job": "yes"})
    sink, recv = trio.open_memory_channel[Any](math.inf)
    await submit_turn(h, sink, range(2), "turn-1")
    _, last = node.assigns()
    await node.result(ok_result(last))
    assert outcomes(recv) == [(0, "missing_result", 1), (1, "translation_result", None)]


# ============================================================================================ readiness as a preference


async def test_a_node_with_a_stopped_tts_still_gets_jobs(nursery: trio.Nursery, autojump_clock: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(nursery, make_config())
    node = await node_with(h, "cpu-tts", capability_by_type=TTS_STOPPED)
    session = h.session("s")
    with caplog.at_level(logging.INFO, logger="trioscheduler.registry"):
        reply = await session.submit(0)
    assert reply is not None and reply.node_id == node.node_id
    [assign] = node.assigns()
    lines = [r.getMessage() for r in caplog.records if "job_dispatched_unready" in r.getMessage()]
    assert len(lines) == 1 and "missing_services=tts" in lines[0], lines
    await node.result(ok_result(assign, tts_audio=None))
    assert (await session.outcome(STEP)).message.TYPE == "translation_result"
    assert (await h.counters())["dispatches_unready"] == 1


async def test_require_ready_services_keeps_jobs_off_a_node_with_a_stopped_tts(nursery: trio.Nursery,
                                                                              autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(require_ready_services=True, pending_timeout_seconds=10))
    node = await node_with(h, "cpu-tts", capability_by_type=TTS_STOPPED)
    session = h.session("s")
    reply = await session.submit(0)
    assert reply is not None and reply.state == "waiting"
    outcome = await session.outcome(11)
    assert outcome.message.code == "NO_AVAILABLE_NODE"
    assert outcome.message.details == {"candidates": {"cpu-tts": "services_not_ready"}}
    assert node.assigns() == []


async def test_a_ready_node_with_room_is_preferred_and_an_unready_one_takes_the_overflow(
        nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    ready = await node_with(h, "ready", max_jobs=2, capability_by_type=ALL_READY)
    unready = await node_with(h, "unready", max_jobs=2, capability_by_type=TTS_STOPPED)
    sessions = [h.session(f"s{i}") for i in range(3)]
    replies = [await s.submit(0) for s in sessions]
    assert [r.node_id for r in replies if r is not None] == ["ready", "ready", "unready"]
    assert len(ready.assigns()) == 2 and len(unready.assigns()) == 1


async def test_a_waiting_job_goes_to_an_unready_node_when_its_slot_frees(nursery: trio.Nursery,
                                                                         autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await node_with(h, "cpu-tts", max_jobs=1, capability_by_type=TTS_STOPPED)
    first, second = h.session("a"), h.session("b")
    await first.submit(0)
    reply = await second.submit(0)
    assert reply is not None and reply.state == "waiting"
    [assign] = node.assigns()
    await node.result(ok_result(assign))
    [next_assign] = node.assigns()
    assert next_assign.session_id == "b"


# ============================================================================================ the wire


def test_node_register_carries_features_supported_as_a_free_form_object() -> None:
    codec = node_codec(LimitsConfig())
    message = codec.decode(json.dumps({"type": "node_register", "node_id": "n-1",
                                       "features_supported": {"answers_every_job": True, "vad": {"v": 2}}}))
    assert isinstance(message, NodeRegister)
    assert message.features_supported == {"answers_every_job": True, "vad": {"v": 2}}
    with pytest.raises(ProtocolError) as refused:
        codec.decode(json.dumps({"type": "node_register", "features_supported": ["answers_every_job"]}))
    assert refused.value.field is not None and "features_supported" in refused.value.field


def test_a_merged_missing_result_goes_on_the_wire_with_merged_into() -> None:
    wire = json.loads(encode(MissingResult(session_id="s", utterance_index=3, reason="merged", created_at_ms=1,
                                           merged_into=5)))
    assert (wire["reason"], wire["merged_into"]) == ("merged", 5)
    silent = json.loads(encode(MissingResult(session_id="s", utterance_index=3, reason="silence_detected",
                                             created_at_ms=1)))
    assert "merged_into" not in silent
