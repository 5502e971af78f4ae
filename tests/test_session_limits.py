"""What one client can cost: the session's bounds, its handshake deadline, slow consumers, crashes and teardown.

Memory transports under MockClock (real sockets would race the mocked clock), plus real WebSockets where the
behaviour is the socket's own (handshake timeout, close codes on the wire).
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from tests.wire import Peer, b64, connect, memory_node, memory_session, pcm, result_for, start_daemon, until
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.registry.requests import Notices, Passthrough, RegistryClient, SessionEnded, open_registry_channel
from trioscheduler.server.outcome_writer import OutcomeWriter, Send
from trioscheduler.transport import MemoryTransport, memory_transport_pair


def _config(make_config: Callable[..., Config], **sections: dict[str, Any]) -> Config:
    """Test nodes here do not heartbeat: keep them alive however far MockClock jumps."""
    sections["scheduler"] = {"heartbeat_timeout_seconds": 100_000, **sections.get("scheduler", {})}
    # These tests count on strict order and a close that waits for every outcome.
    sections["results"] = {"ordering": "strict", "close_wait_seconds": 1000, **sections.get("results", {})}
    return make_config(**sections)


async def _utterance(client: Peer, sid: str, index: int, ms: int = 100) -> None:
    await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(ms)),
                      audio_format="pcm16", sample_rate=16000)


def _session_transport(nursery: trio.Nursery, scheduler: Scheduler,
                       make: Callable[[], tuple[MemoryTransport, MemoryTransport]] = memory_transport_pair,
                       ) -> tuple[MemoryTransport, Peer]:
    """A session over memory transports: (the server's end, the client peer)."""
    server_side, client_side = make()
    nursery.start_soon(scheduler.handle_session, server_side)
    return server_side, Peer(client_side)  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], seconds: float = 600.0) -> None:
    """``until`` with room for the virtual minutes these MockClock tests let pass."""
    await until(predicate, seconds)


# ------------------------------------------------------------------------------------------ job bounds


async def test_outstanding_bound_refuses_in_order_and_the_session_lives(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    """No node for the pair: only max_session_outstanding jobs wait; the rest get their own error as their
    outcome, in index order after the waiting ones; once those are answered the session takes jobs again."""
    scheduler = Scheduler(_config(make_config, limits={"max_session_outstanding": 3},
                                  scheduler={"pending_timeout_seconds": 5}, results={"gap_timeout_seconds": 60}))
    await nursery.start(scheduler.run)
    client, sid = await memory_session(nursery, scheduler)
    for index in range(5):
        await _utterance(client, sid, index)
    await trio.sleep(1)
    snapshot = await scheduler.client.snapshot()
    assert snapshot is not None and snapshot["jobs"]["waiting"] == 3
    outcomes = [await client.recv_type("error") for _ in range(5)]
    assert [o["utterance_index"] for o in outcomes] == [0, 1, 2, 3, 4]
    assert [o["code"] for o in outcomes] == ["NO_AVAILABLE_NODE"] * 3 + ["SESSION_OUTSTANDING_LIMIT_EXCEEDED"] * 2
    node = await memory_node(nursery, scheduler, "node-A")
    await _utterance(client, sid, 5)
    assign = await node.recv_type("job_assign")
    await node.send(**result_for(assign))
    assert (await client.recv_type("translation_result"))["utterance_index"] == 5
    (connection,) = scheduler.sessions.live
    await _until(lambda: not connection.writer_running)
    assert connection.footprint() == dict.fromkeys(connection.footprint(), 0)


async def test_streamed_audio_bound_refuses_cuts_past_the_session_audio_limit(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    """A client streaming large chunks with no node for its pair: the audio its waiting jobs hold stays within
    max_session_audio_bytes; each cut past it is refused with SESSION_AUDIO_LIMIT_EXCEEDED and its index."""
    chunk = pcm(1000)  # 32,000 bytes, one cut each (is_final)
    scheduler = Scheduler(_config(make_config, limits={"max_session_audio_bytes": 3 * len(chunk) + 10},
                                  scheduler={"pending_timeout_seconds": 5}, results={"gap_timeout_seconds": 60}))
    await nursery.start(scheduler.run)
    client, sid = await memory_session(nursery, scheduler)
    for _ in range(10):
        await client.send(type="audio_chunk", session_id=sid, seq=0, is_final=True, payload=b64(chunk))
    await trio.sleep(1)
    snapshot = await scheduler.client.snapshot()
    assert snapshot is not None and snapshot["jobs"]["waiting"] == 3
    outcomes = [await client.recv_type("error") for _ in range(10)]
    assert [o["utterance_index"] for o in outcomes] == list(range(10))
    assert [o["code"] for o in outcomes] == ["NO_AVAILABLE_NODE"] * 3 + ["SESSION_AUDIO_LIMIT_EXCEEDED"] * 7


# ------------------------------------------------------------------------------------------ closing


async def test_frames_read_while_closing_are_bounded_in_bytes(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    """While session_close waits for an outcome, the session keeps at most max_message_bytes of what the client
    sends meanwhile; the rest stays unread (on a socket: TCP backpressure)."""
    big = "x" * 100_000
    scheduler = Scheduler(_config(make_config, limits={"max_message_bytes": 300_000},
                                  scheduler={"pending_timeout_seconds": 50}))
    await nursery.start(scheduler.run)
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)  # waits: no node
    await client.send(type="session_close", session_id=sid)
    for _ in range(20):
        await client.send_raw(big)
    await trio.sleep(10)
    unread = client.ws._outbound.statistics().current_buffer_used  # type: ignore[attr-defined]
    assert unread >= 20 - 4, f"the session read {20 - unread} frames of 100 kB while closing"


async def test_client_gone_mid_close_after_the_read_budget_is_still_torn_down(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    """The client fills the close read-ahead, then disconnects while an outcome is still owed: the session ends
    once the outcome comes (its send fails), and the registry holds nothing of it."""
    scheduler = Scheduler(_config(make_config, limits={"max_message_bytes": 64_000},
                                  scheduler={"pending_timeout_seconds": 5}))
    await nursery.start(scheduler.run)
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    await client.send(type="session_close", session_id=sid)
    for _ in range(70):
        await client.send_raw("y" * 1000)
    await trio.sleep(1)
    await client.ws.aclose()
    await _until(lambda: not scheduler.sessions.live, 60)
    await trio.sleep(1)
    snapshot = await scheduler.client.snapshot()
    assert snapshot is not None and snapshot["jobs"]["total"] == 0 and snapshot["sessions_with_jobs"] == 0


# ------------------------------------------------------------------------------------------ handshake


async def test_socket_without_session_init_is_closed_after_the_handshake_timeout(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    scheduler = Scheduler(_config(make_config, limits={"handshake_timeout_seconds": 5}))
    await nursery.start(scheduler.run)
    silent, _ = _session_transport(nursery, scheduler)
    chatty, chatty_peer = _session_transport(nursery, scheduler)
    introduced, introduced_peer = _session_transport(nursery, scheduler)
    await introduced_peer.send(type="session_init", src_lang="zh", tgt_lang="en")
    await introduced_peer.recv_type("session_init_ack")
    await trio.sleep(4)
    await chatty_peer.send(type="client_heartbeat", timestamp=1)  # not an introduction
    assert (await chatty_peer.recv_type("error"))["code"] == "INVALID_SESSION"
    assert not silent.closed and not chatty.closed
    await trio.sleep(2)
    assert silent.close_code == chatty.close_code == CloseCode.HANDSHAKE_TIMEOUT
    assert not introduced.closed and len(scheduler.sessions.live) == 1
    assert "session_handshake_timeout" in caplog.text
    assert scheduler.sessions.counters["sessions_handshake_timeout"] == 2


async def test_handshake_timeout_over_a_real_socket(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(limits={"handshake_timeout_seconds": 0.2}))
    async with connect(daemon.session_url) as client:
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await client.recv(timeout=10)
    assert closed.value.reason.code == CloseCode.HANDSHAKE_TIMEOUT


# ------------------------------------------------------------------------------------------ slow consumers


def _pair(server_class: type[MemoryTransport] = MemoryTransport,
          to_client_buffer: float = math.inf) -> tuple[MemoryTransport, MemoryTransport]:
    """Like memory_transport_pair, with the server's end of ``server_class``; a ``to_client_buffer`` of 0 is a
    client that reads nothing (the server's sends block, as on a full socket)."""
    to_server_send, to_server_recv = trio.open_memory_channel[str | bytes](math.inf)
    to_client_send, to_client_recv = trio.open_memory_channel[str | bytes](to_client_buffer)
    return (server_class(to_server_recv, to_client_send, "server"),
            MemoryTransport(to_client_recv, to_server_send, "client"))


async def test_client_that_does_not_read_is_closed_as_slow_consumer_and_its_jobs_cancelled(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    scheduler = Scheduler(_config(make_config, limits={"max_send_queue": 8}))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    server_side, client = _session_transport(nursery, scheduler, lambda: _pair(to_client_buffer=0))
    await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
    await trio.sleep(1)  # the ack is stuck in the socket: the writer is blocked
    (connection,) = scheduler.sessions.live
    await _utterance(client, "", 0)
    assign = await node.recv_type("job_assign")
    sid = assign["session_id"]
    for _ in range(20):
        if server_side.closed:
            break
        await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
        await trio.sleep(0.1)
    await _until(lambda: server_side.closed)
    assert server_side.close_code == CloseCode.SLOW_CONSUMER
    cancel = await node.recv_type("job_cancel")
    assert cancel["job_id"] == assign["job_id"]
    await _until(lambda: not scheduler.sessions.live)
    assert connection.footprint()["writer_queue"] == 0
    assert "session_slow_consumer" in caplog.text


# ------------------------------------------------------------------------------------------ crashes, teardown


async def test_a_crashing_writer_sends_internal_error_and_closes_with_1011(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture) -> None:
    class ExplodesOnHeartbeat(MemoryTransport):
        async def send_message(self, message: str | bytes) -> None:
            if '"server_heartbeat"' in (message if isinstance(message, str) else message.decode()):
                raise RuntimeError("boom")
            await super().send_message(message)

    scheduler = Scheduler(_config(make_config))
    await nursery.start(scheduler.run)

    server_side, client = _session_transport(nursery, scheduler, lambda: _pair(ExplodesOnHeartbeat))
    await client.send(type="session_init", src_lang="zh", tgt_lang="en")
    sid = (await client.recv_type("session_init_ack"))["session_id"]
    await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
    error = await client.recv_type("error")
    assert error["code"] == "INTERNAL_ERROR" and error["session_id"] == sid
    await _until(lambda: server_side.closed)
    assert server_side.close_code == CloseCode.INTERNAL_ERROR
    await _until(lambda: scheduler.connections_crashed == 1)
    assert "RuntimeError: boom" in caplog.text and "session_crashed" in caplog.text
    assert not scheduler.sessions.live


async def test_gone_notice_is_kept_when_the_registry_inbox_is_full(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    """The registry's inbox is full when the client goes: the SessionEnded notice is not lost (it waits in the
    registry's notice queue, which the registry drains on every iteration), and teardown does not wait for room."""
    scheduler = Scheduler(_config(make_config))
    send, inbox = open_registry_channel(1)
    notices = Notices()
    scheduler.client = RegistryClient(send, notices)
    send.send_nowait("occupying the only slot")
    _, client = _session_transport(nursery, scheduler)
    await client.send(type="session_init", src_lang="zh", tgt_lang="en")
    sid = (await client.recv_type("session_init_ack"))["session_id"]
    await client.ws.aclose()
    await _until(lambda: not scheduler.sessions.live)
    assert await inbox.receive() == "occupying the only slot"
    notice = notices.take()
    assert type(notice) is SessionEnded and notice.session_id == sid


async def test_pipelined_session_after_close_is_served(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    """Frames sent behind session_close (within the read budget) are handled once the close is acked."""
    scheduler = Scheduler(_config(make_config))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    assign = await node.recv_type("job_assign")
    await client.send(type="session_close", session_id=sid)
    await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
    await trio.sleep(1)
    await node.send(**result_for(assign))
    assert (await client.recv_type("translation_result"))["utterance_index"] == 0
    assert (await client.recv_type("session_close_ack"))["session_id"] == sid
    second = (await client.recv_type("session_init_ack"))["session_id"]
    assert second != sid
    received = json.dumps(client.received)
    assert received.count("translation_result") == 1


async def test_a_burst_of_partials_is_dropped_at_the_queue_bound_and_anything_else_closes(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    """The writer's inbox at limits.max_send_queue: a partial is refused (trio.WouldBlock, the registry counts it)
    and the socket stays; any other item closes it as a slow consumer and is refused too."""
    config = _config(make_config, limits={"max_send_queue": 4})
    server_side, _client_side = _pair(to_client_buffer=0)
    send, _inbox = open_registry_channel(8)
    writer = OutcomeWriter(server_side, RegistryClient(send, Notices()), config, collections.Counter(), nursery)
    writer.send_nowait(Send(m.ServerHeartbeat(session_id="s-1", timestamp=1)))
    await trio.sleep(1)  # the writer took it and is blocked on the socket
    partial = Passthrough(m.AsrPartialOut(session_id="s-1", utterance_index=0, job_id="j", text="t", is_final=False,
                                          trace_id="t"))
    for _ in range(4):
        writer.send_nowait(partial)
    with pytest.raises(trio.WouldBlock):
        writer.send_nowait(partial)
    assert not server_side.closed and writer.footprint()["writer_queue"] == 4
    with pytest.raises(trio.ClosedResourceError):
        writer.send_nowait(Send(m.ServerHeartbeat(session_id="s-1", timestamp=2)))
    await _until(lambda: server_side.closed)
    assert server_side.close_code == CloseCode.SLOW_CONSUMER and writer.footprint()["writer_queue"] == 0
    await _until(lambda: not writer.running)
