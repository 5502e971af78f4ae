"""Issue 8 points 5 and 7, node side: the handshake deadline, a node that does not read its socket, and teardown
that always leaves the registry without the node, whenever its handler dies."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from tests.wire import (
    POLL_SECONDS,
    WAIT,
    Daemon,
    Peer,
    b64,
    connect,
    heartbeat,
    memory_node,
    memory_session,
    node_register,
    pcm,
    result_for,
    start_daemon,
)
from trioscheduler.app import Scheduler
from trioscheduler.config import Config, config_with
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.transport import MemoryTransport, memory_transport_pair


def config(**sections: dict[str, Any]) -> Config:
    """Heartbeat silence plays no part here unless a test asks for it."""
    sections.setdefault("scheduler", {})
    sections["scheduler"] = {"heartbeat_interval_seconds": 1000, "heartbeat_timeout_seconds": 3000,
                             **sections["scheduler"]}
    return config_with(Config(), **sections)


async def start_handler(nursery: trio.Nursery, scheduler: Scheduler,
                        transport: MemoryTransport) -> trio.CancelScope:
    """Run the node handler on ``transport`` in a scope the test can cancel; returns that scope."""

    async def run(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await scheduler.handle_node(transport)

    return await nursery.start(run)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------ teardown


async def test_handler_cancelled_before_its_register_reply_leaves_no_node(nursery: trio.Nursery) -> None:
    """Reproduced: a node handler that died with its node_register in the registry's inbox left the node pooled
    until the heartbeat timeout (the gone notice was only sent once the reply had come back)."""
    scheduler = Scheduler(config())  # the registry is not running yet: the registration waits in its inbox
    server_side, client_side = memory_transport_pair("node")
    scope = await start_handler(nursery, scheduler, server_side)
    await Peer(client_side).send(**node_register("node-early"))  # type: ignore[arg-type]
    await trio.testing.wait_all_tasks_blocked()  # the handler waits for the register reply
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    await nursery.start(scheduler.run)
    with trio.fail_after(5):
        snapshot = await scheduler.stats()
    assert snapshot is not None
    # The gone notice overtook the registration waiting in the inbox: it is refused, never applied.
    assert snapshot["counters"].get("registrations_from_gone_links") == 1
    assert "node_registrations" not in snapshot["counters"]
    assert snapshot["nodes"] == [] and snapshot["pools"] == {}


@pytest.mark.parametrize("checkpoints", range(12))
async def test_handler_cancelled_at_any_point_of_its_life_leaves_no_node(
        nursery: trio.Nursery, autojump_clock: Any, checkpoints: int) -> None:
    """Cancel the handler after ``checkpoints`` scheduling rounds of a register-heartbeat conversation."""
    scheduler = Scheduler(config())
    await nursery.start(scheduler.run)
    server_side, client_side = memory_transport_pair("node")
    scope = await start_handler(nursery, scheduler, server_side)
    peer = Peer(client_side)  # type: ignore[arg-type]
    await peer.send(**node_register("node-any"))
    await peer.send(**heartbeat("node-any", languages=("en", "de")))
    for _ in range(checkpoints):
        await trio.lowlevel.checkpoint()
    scope.cancel()
    await trio.sleep(1)
    snapshot = await scheduler.stats()
    assert snapshot is not None
    assert snapshot["nodes"] == [] and snapshot["pools"] == {}
    assert not scheduler.registry.indexes


# ------------------------------------------------------------------------------------------ slow consumer


def unread_transport_pair() -> tuple[MemoryTransport, trio.MemoryReceiveChannel[str | bytes], MemoryTransport]:
    """A node socket whose peer reads only when the test does: every send waits for the test to receive.
    Returns (server side, what the node would read, the node's side for sending)."""
    to_server_send, to_server_recv = trio.open_memory_channel[str | bytes](math.inf)
    to_client_send, to_client_recv = trio.open_memory_channel[str | bytes](0)
    server_side = MemoryTransport(to_server_recv, to_client_send, "slow-node")
    client_side = MemoryTransport(to_client_recv, to_server_send, "slow-node-client")
    return server_side, to_client_recv, client_side


async def test_node_that_does_not_read_is_closed_with_slow_consumer_and_its_jobs_fail_over(
        nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trioscheduler")
    scheduler = Scheduler(config(scheduler={"node_outbox_size": 2}))
    await nursery.start(scheduler.run)
    server_side, unread, client_side = unread_transport_pair()
    await start_handler(nursery, scheduler, server_side)
    slow = Peer(client_side)  # type: ignore[arg-type]
    await slow.send(**node_register("node-slow", capacity=10))
    assert '"node_register_ack"' in await unread.receive()  # ... and from now on it reads nothing
    client, sid = await memory_session(nursery, scheduler)

    async def utterance(index: int) -> None:
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000, manual_cut=True)

    for index in range(3):  # one blocks the writer, two fill the outbox
        await utterance(index)
    await trio.sleep(0.5)
    assert server_side.close_code is None
    healthy = await memory_node(nursery, scheduler, "node-ok", capacity=2)  # within its own outbox
    await utterance(3)  # the session's node is still node-slow: its outbox overflows
    assigns = []
    for _ in range(4):
        assigns.append(await healthy.recv_type("job_assign"))
        await healthy.send(**result_for(assigns[-1]))
    assert sorted(a["utterance_index"] for a in assigns) == [0, 1, 2, 3]
    assert all(a["attempt_id"] == 2 for a in assigns if a["utterance_index"] < 3)
    results = [await client.recv_type("translation_result") for _ in range(4)]
    assert [r["utterance_index"] for r in results] == [0, 1, 2, 3]
    await trio.sleep(1)
    assert server_side.close_code == CloseCode.SLOW_CONSUMER
    snapshot = await scheduler.stats()
    assert snapshot is not None and [n["node_id"] for n in snapshot["nodes"]] == ["node-ok"]
    assert snapshot["node_connections"] == 1
    assert any("node_connection_closing" in r.getMessage() and "slow_consumer" in r.getMessage()
               for r in caplog.records)


async def test_node_flooding_errors_it_never_reads_is_closed(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Errors the connection itself answers with go through the same bounded outbox."""
    scheduler = Scheduler(config(scheduler={"node_outbox_size": 4}))
    await nursery.start(scheduler.run)
    server_side, _unread, client_side = unread_transport_pair()
    await start_handler(nursery, scheduler, server_side)
    flooder = Peer(client_side)  # type: ignore[arg-type]
    for _ in range(50):
        await flooder.send_raw("not json")
        await trio.sleep(0.01)
        if server_side.closed:
            break
    assert server_side.close_code == CloseCode.SLOW_CONSUMER


# ------------------------------------------------------------------------------------------ handshake deadline


async def test_node_that_never_registers_is_closed_at_the_handshake_deadline(
        nursery: trio.Nursery, autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trioscheduler")
    scheduler = Scheduler(config(limits={"handshake_timeout_seconds": 10}))
    await nursery.start(scheduler.run)
    server_side, client_side = memory_transport_pair("node")
    await start_handler(nursery, scheduler, server_side)
    peer = Peer(client_side)  # type: ignore[arg-type]
    await peer.send(**node_register(languages=("en",) * 0, capacity=0))  # refused: does not count
    assert (await peer.recv_type("error"))["code"] == "INVALID_MESSAGE"
    await trio.sleep(9.9)
    assert server_side.close_code is None
    await trio.sleep(0.2)
    assert server_side.close_code == CloseCode.HANDSHAKE_TIMEOUT
    assert any(r.getMessage().startswith("node_handshake_timeout") for r in caplog.records)
    snapshot = await scheduler.stats()
    assert snapshot is not None and snapshot["node_connections"] == 0


async def test_registered_node_outlives_the_handshake_deadline(nursery: trio.Nursery, autojump_clock: Any) -> None:
    scheduler = Scheduler(config(limits={"handshake_timeout_seconds": 10}))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-stays")
    await trio.sleep(100)
    await node.send(**heartbeat("node-stays"))
    await trio.sleep(1)
    snapshot = await scheduler.stats()
    assert snapshot is not None and [n["node_id"] for n in snapshot["nodes"]] == ["node-stays"]
    assert snapshot["node_connections"] == 1


async def test_silent_socket_is_closed_with_4008_over_a_real_websocket(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(limits={"handshake_timeout_seconds": 0.2}))
    async with connect(daemon.node_url) as node:
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await node.ws.get_message()
    assert closed.value.reason.code == CloseCode.HANDSHAKE_TIMEOUT
    assert "node_register" in (closed.value.reason.reason or "")


async def slow_holds_jobs(daemon: Daemon, count: int) -> None:
    """Wait until node-slow has ``count`` jobs in flight. The session reads its utterance on its own time: a test
    that connects another node before the registry placed the job races that node for it (under load, the other
    node won and, by session affinity, took every later job too)."""
    with trio.fail_after(WAIT):
        while True:
            stats = await daemon.scheduler.stats()
            assert stats is not None
            if any(n["node_id"] == "node-slow" and n["in_flight"] == count for n in stats["nodes"]):
                return
            await trio.sleep(POLL_SECONDS)


async def test_node_that_does_not_read_a_real_socket_is_dropped_and_its_jobs_fail_over(
        nursery: trio.Nursery, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    """Over TCP: the node stops reading, the kernel buffers fill, then its outbox; the scheduler drops it (a
    clean close frame cannot reach a peer that does not read) and its jobs go to the other node."""
    caplog.set_level(logging.WARNING, logger="trioscheduler")
    daemon = await start_daemon(nursery, make_config(scheduler={"node_outbox_size": 2},
                                                     limits={"max_session_audio_bytes": 2**30,
                                                             "max_session_outstanding": 1000}))
    audio = b64(pcm(30_000))  # 960 kB of pcm16 per utterance

    async def utterance(index: int) -> None:
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=audio,
                          audio_format="pcm16", sample_rate=16000, manual_cut=True)

    async with connect(daemon.node_url) as slow, connect(daemon.session_url) as client:
        await slow.send(**node_register("node-slow", capacity=1000))
        await slow.recv_type("node_register_ack")  # from now on it reads nothing
        await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
        sid = (await client.recv_type("session_init_ack"))["session_id"]
        await utterance(0)  # the session's node is node-slow from now on...
        await slow_holds_jobs(daemon, 1)  # ...once the job is placed there: before node-ok exists to take it
        async with connect(daemon.node_url) as healthy:
            await healthy.send(**node_register("node-ok", capacity=2))  # within its own outbox
            await healthy.recv_type("node_register_ack")
            index = 1
            with trio.fail_after(60):
                while True:
                    stats = await daemon.scheduler.stats()
                    assert stats is not None
                    if [n["node_id"] for n in stats["nodes"]] == ["node-ok"]:
                        break
                    assert index < 200, "the node that does not read was never dropped"
                    await utterance(index)
                    index += 1
                    await trio.sleep(0.05)
            assigns = [await healthy.recv_type("job_assign", timeout=30) for _ in range(2)]
            assert sorted(a["utterance_index"] for a in assigns) == [0, 1]
            assert all(a["attempt_id"] == 2 for a in assigns)
        assert any("node_connection_closing" in r.getMessage() and "close_code=4009" in r.getMessage()
                   for r in caplog.records)
        with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionClosed):
            await slow.read_until_closed()  # what was buffered, then the end of the connection
