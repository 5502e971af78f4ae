"""Issue 3 at the connection level: overload, gaps, client loss, reconnect, failover, under MockClock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio_websocket

from tests.wire import (
    b64,
    connect,
    memory_node,
    memory_session,
    pcm,
    registered_node,
    result_for,
    session,
    start_daemon,
)
from trioscheduler.app import Scheduler
from trioscheduler.config import Config


def _quiet(make_config: Callable[..., Config], **sections: dict[str, Any]) -> Config:
    """Test nodes here do not heartbeat: keep them alive however far MockClock jumps."""
    sections["scheduler"] = {"heartbeat_timeout_seconds": 100_000, **sections.get("scheduler", {})}
    return make_config(**sections)






async def _utterance(client: Any, sid: str, index: int) -> None:
    await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                      audio_format="pcm16", sample_rate=16000)


async def test_registry_that_cannot_answer_gives_scheduler_busy_and_session_keeps_working(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_quiet(make_config, scheduler={"registry_inbox_size": 1, "selection_deadline_ms": 200}))
    client, sid = await memory_session(nursery, scheduler)  # the registry task is not running yet
    for index in range(3):
        await _utterance(client, sid, index)
    for index in range(3):
        error = await client.recv_type("error")
        assert error["code"] == "SCHEDULER_BUSY" and error["utterance_index"] == index
    await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
    await client.recv_type("server_heartbeat")
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    await _utterance(client, sid, 3)
    assign = await node.recv_type("job_assign")
    assert assign["utterance_index"] == 3  # abandoned requests made no job
    await node.send(**result_for(assign))
    assert (await client.recv_type("translation_result"))["utterance_index"] == 3
    counters = (await scheduler.stats())["counters"]  # type: ignore[index]
    assert counters["submits_abandoned"] >= 1
    assert counters["jobs_created"] == 1


async def test_gap_timeout_releases_missing_then_later_results_and_drops_late_one(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_quiet(make_config, results={"gap_timeout_seconds": 30, "ordering": "strict"},
                                      scheduler={"job_timeout_seconds": 1000}))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    await _utterance(client, sid, 1)
    first, second = await node.recv_type("job_assign"), await node.recv_type("job_assign")
    await node.send(**result_for(second))
    start = trio.current_time()
    missing = await client.recv_type("missing_result", timeout=60)
    assert missing["utterance_index"] == 0 and missing["reason"] == "gap_timeout"
    assert 30 <= trio.current_time() - start < 31
    assert (await client.recv_type("translation_result"))["utterance_index"] == 1
    cancel = await node.recv_type("job_cancel")  # the gap-timed-out job is stopped on its node
    assert cancel["job_id"] == first["job_id"]
    await node.send(**result_for(first))
    await client.nothing_for(5)
    await trio.sleep(0.1)
    dropped = (await scheduler.stats())["counters"]  # type: ignore[index]
    assert dropped["results_dropped_finished_job"] == 1


async def test_client_loss_cancels_its_jobs_on_nodes_and_frees_slots(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_quiet(make_config))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A", capacity=1)
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    await _utterance(client, sid, 1)  # waits for the single slot
    assign = await node.recv_type("job_assign")
    await client.ws.aclose()
    cancel = await node.recv_type("job_cancel")
    assert cancel["job_id"] == assign["job_id"] and cancel["reason"] == "session_closed"
    await trio.sleep(1)
    stats = await scheduler.stats()
    assert stats is not None
    assert stats["slots"]["in_flight"] == 0 and stats["jobs"]["total"] == 0
    await node.nothing_for(20)  # the waiting job was never dispatched


async def test_job_timeout_fails_over_with_new_job_id_then_job_timeout(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_quiet(make_config, scheduler={"job_timeout_seconds": 30, "failover_max_attempts": 1}))
    await nursery.start(scheduler.run)
    nodes = [await memory_node(nursery, scheduler, f"node-{c}") for c in "ABC"]
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    seen: list[tuple[int, dict[str, Any]]] = []

    async def watch(i: int) -> None:
        while True:
            message = await nodes[i].recv(timeout=1000)
            seen.append((i, message))

    async with trio.open_nursery() as watchers:
        for i in range(3):
            watchers.start_soon(watch, i)
        error = await client.recv_type("error", timeout=200)
        await trio.sleep(1)
        watchers.cancel_scope.cancel()
    assert error["code"] == "JOB_TIMEOUT" and error["utterance_index"] == 0
    assigns = [(i, m) for i, m in seen if m["type"] == "job_assign"]
    cancels = [(i, m) for i, m in seen if m["type"] == "job_cancel"]
    assert len(assigns) == 2  # the first dispatch plus failover_max_attempts = 1 re-dispatch
    (n1, a1), (n2, a2) = assigns
    assert n1 != n2 and a1["job_id"] != a2["job_id"] and (a1["attempt_id"], a2["attempt_id"]) == (1, 2)
    assert sorted(m["job_id"] for _, m in cancels) == sorted([a1["job_id"], a2["job_id"]])
    assert all(m["reason"] == "job_timeout" for _, m in cancels)


async def test_node_socket_close_fails_over_at_once(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_quiet(make_config, scheduler={"job_timeout_seconds": 30}))
    await nursery.start(scheduler.run)
    a = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    first = await a.recv_type("job_assign")
    b = await memory_node(nursery, scheduler, "node-B")
    start = trio.current_time()
    await a.ws.aclose()
    second = await b.recv_type("job_assign")
    assert trio.current_time() - start < 1  # not after the 30 s job timeout
    assert second["job_id"] != first["job_id"] and second["attempt_id"] == 2
    await b.send(**result_for(second))
    assert (await client.recv_type("translation_result"))["job_id"] == second["job_id"]


async def test_only_node_dies_then_a_node_registering_later_delivers_the_result(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """Over real sockets: the one node holding the job goes away, another registers half a second later; the
    job waited for it (pending_timeout_seconds) and the client gets its translation, not NODE_UNAVAILABLE."""
    daemon = await start_daemon(nursery, make_config(scheduler={"pending_timeout_seconds": 10,
                                                                "job_timeout_seconds": 30}))
    async with session(daemon.session_url, audio_format="pcm16") as (client, sid):
        async with registered_node(daemon.node_url, "node-A") as (a, _):
            await _utterance(client, sid, 0)
            first = await a.recv_type("job_assign")
        await trio.sleep(0.5)  # node-A's socket is closed; nothing else serves zh→en yet
        async with registered_node(daemon.node_url, "node-B") as (b, _):
            second = await b.recv_type("job_assign")
            assert second["utterance_index"] == 0 and second["attempt_id"] == 2
            assert second["job_id"] != first["job_id"]
            await b.send(**result_for(second))
            result = await client.recv_type("translation_result", skip=("server_heartbeat",))
            assert result["job_id"] == second["job_id"] and result["utterance_index"] == 0
        assert not any(m["type"] == "error" for m in client.received)


async def test_reconnect_with_same_node_id_closes_old_socket(nursery: trio.Nursery,
                                                           make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config())
    async with registered_node(daemon.node_url, "node-SAME0001") as (old, _), \
            registered_node(daemon.node_url, "node-SAME0001") as (new, node_id):
        assert node_id == "node-SAME0001"
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed):
            await old.read_until_closed()
        stats = await daemon.scheduler.stats()
        assert stats is not None and [n["node_id"] for n in stats["nodes"]] == ["node-SAME0001"]
        assert stats["counters"]["nodes_lost_replaced_by_reconnect"] == 1
        async with connect(daemon.session_url) as client:
            await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
            sid = (await client.recv_type("session_init_ack"))["session_id"]
            await _utterance(client, sid, 0)
            assign = await new.recv_type("job_assign")
            await new.send(**result_for(assign))
            await client.recv_type("translation_result")


async def test_misbehaving_node_is_quarantined(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
                                               make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_quiet(make_config, scheduler={
        "quarantine_failures": 2, "quarantine_window_seconds": 60, "quarantine_cooldown_seconds": 100}))
    await nursery.start(scheduler.run)
    bad = await memory_node(nursery, scheduler, "node-BAD")
    client, sid = await memory_session(nursery, scheduler)
    for index in range(2):
        await _utterance(client, sid, index)
        assign = await bad.recv_type("job_assign")
        await bad.send(**result_for(assign, success=False, error={"code": "PROCESSING_ERROR", "message": "x"}))
        assert (await client.recv_type("error"))["code"] == "PROCESSING_ERROR"
    stats = await scheduler.stats()
    assert stats is not None and stats["nodes"][0]["quarantined"] is True
    await _utterance(client, sid, 2)
    good = await memory_node(nursery, scheduler, "node-GOOD")
    assign = await good.recv_type("job_assign")
    assert assign["utterance_index"] == 2
    await bad.nothing_for(1)
    await good.send(**result_for(assign))
    await client.recv_type("translation_result")
