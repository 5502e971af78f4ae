"""session_close against nodes that do not answer, under MockClock: the close cut goes out as a manual cut (a node
that buffers a turn until a cut flag answers it at once), session_close_ack comes within
``results.close_wait_seconds`` whatever the nodes do, after the outcomes that arrived, and every index still owed is
reported once as ``missing_result{reason: "session_closed"}`` while its job is cancelled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from tests.wire import Peer, b64, memory_node, memory_session, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config

OUTCOMES = ("translation_result", "missing_result", "error")


def _config(make_config: Callable[..., Config], **results: Any) -> Config:
    """Jobs would run 30 s and fail over, as by default; test nodes here do not heartbeat."""
    return make_config(scheduler={"heartbeat_timeout_seconds": 100_000}, results=results)


async def _until_ack(client: Peer, sid: str) -> list[dict[str, Any]]:
    """Every outcome up to session_close_ack, then the ack."""
    got: list[dict[str, Any]] = []
    while True:
        message = await client.recv_type(*OUTCOMES, "session_close_ack", timeout=200)
        got.append(message)
        if message["type"] == "session_close_ack":
            assert message["session_id"] == sid
            return got


async def test_close_cut_is_manual_and_ack_comes_within_close_wait_with_owed_index_reported(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await client.send(type="audio_chunk", session_id=sid, payload=b64(pcm(500)), is_final=False)
    await trio.sleep(0.1)
    start = trio.current_time()
    await client.send(type="session_close", session_id=sid, reason="user_stop")
    assign = await node.recv_type("job_assign")
    assert assign["utterance_index"] == 0
    assert assign["is_manual_cut"] is True and "is_timeout_triggered" not in assign
    assert assign["padding_ms"] == 280
    # The node never answers.
    got = await _until_ack(client, sid)
    assert trio.current_time() - start <= 5.0
    assert [(m["type"], m.get("utterance_index"), m.get("reason")) for m in got] == [
        ("missing_result", 0, "session_closed"), ("session_close_ack", None, None)]
    cancel = await node.recv_type("job_cancel")
    assert cancel["job_id"] == assign["job_id"] and cancel["reason"] == "session_closed"
    await client.nothing_for(100)  # no JOB_TIMEOUT afterwards: index 0 had its one outcome
    await node.nothing_for(100)  # and the job was not dispatched again


async def test_close_delivers_what_arrived_and_reports_each_owed_index_once(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config, close_wait_seconds=2.5))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    for index in range(3):
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000)
    assigns = [await node.recv_type("job_assign") for _ in range(3)]
    await client.send(type="session_close", session_id=sid)
    start = trio.current_time()
    await trio.sleep(0.5)
    await node.send(**result_for(assigns[1]))  # arrives while the close waits: delivered before the ack
    got = await _until_ack(client, sid)
    assert trio.current_time() - start <= 2.5
    assert [(m["type"], m.get("utterance_index"), m.get("reason")) for m in got] == [
        ("translation_result", 1, None), ("missing_result", 0, "session_closed"),
        ("missing_result", 2, "session_closed"), ("session_close_ack", None, None)]
    cancelled = {(await node.recv_type("job_cancel"))["job_id"] for _ in range(2)}
    assert cancelled == {assigns[0]["job_id"], assigns[2]["job_id"]}
    await node.send(**result_for(assigns[0]))  # too late: the session is closed
    await client.nothing_for(100)
    stats = await scheduler.stats()
    assert stats is not None and stats["sessions"]["counters"]["outcome_missing_session_closed"] == 2


async def test_close_with_everything_answered_acks_at_once(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await client.send(type="audio_chunk", session_id=sid, payload=b64(pcm(500)), is_final=False)
    await client.send(type="session_close", session_id=sid)
    start = trio.current_time()
    assign = await node.recv_type("job_assign")
    await node.send(**result_for(assign))
    got = await _until_ack(client, sid)
    assert [(m["type"], m.get("utterance_index")) for m in got] == [
        ("translation_result", 0), ("session_close_ack", None)]
    assert trio.current_time() - start < 0.1
