"""Issue 13 point 4: the registry writes a job_assign to an idle node socket, and an in-order outcome to an idle client
socket, itself, without waiting (``Transport.send_nowait``). What a socket cannot take at once goes through the
connection's own writer: every message still arrives whole, in order and exactly once, and a node socket that fell
behind catches up in one pass of its writer, not one frame per pass of the run loop (which starved its sessions
beside the nodes written at once: bench/README.md, "Issue 13 point 4, second pass")."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing
import wsproto.events

from tests.test_websocket import RawClient
from tests.websocket_server import serve_websockets
from tests.wire import WAIT, Peer, b64, memory_session, node_register, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config, config_with
from trioscheduler.server.websocket import ServerWebSocket
from trioscheduler.transport import MemoryTransport

# ------------------------------------------------------------------------------------------ the door's WebSocket


async def test_send_nowait_writes_at_once_or_leaves_the_rest_pending(nursery: trio.Nursery) -> None:
    """A frame the socket has room for goes at once; a frame larger than the room the peer leaves is begun and its
    rest is pending: nothing may overtake it (send_nowait refuses) and a send waits behind it. The peer gets every
    message whole and in order."""
    big = b'"' + b"x" * (16 << 20) + b'"'
    seen: dict[str, Any] = {}

    async def handler(ws: ServerWebSocket) -> None:
        seen["small"] = ws.send_nowait(b'"small"'), ws.pending
        seen["big"] = ws.send_nowait(big), ws.pending  # 16 MiB: more than loopback buffers hold unread
        seen["overtake"] = ws.send_nowait(b'"after"')
        await ws.send_message(b'"after"')
        seen["done"] = ws.pending
        await trio.sleep_forever()

    port = await nursery.start(serve_websockets, handler)
    client = await RawClient.open(port)
    with trio.fail_after(WAIT):
        while "overtake" not in seen:
            await trio.sleep(0.01)
    assert seen["small"] == (True, False)
    assert seen["big"] == (True, True)
    assert seen["overtake"] is False
    # The three frames' bytes are read whole first, then parsed in one go: fed 1 MiB at a time, wsproto's parser
    # is too slow for a 16 MiB frame on a loaded box.
    expected = sum(len(p) + (2 if len(p) < 126 else 4 if len(p) < 1 << 16 else 10)  # RFC 6455 frame heads
                   for p in (b'"small"', big, b'"after"'))
    received = bytearray()
    with trio.fail_after(WAIT):
        while len(received) < expected:
            received += await client.stream.receive_some(1 << 20)
    assert len(received) == expected
    client.ws.receive_data(bytes(received))
    messages: list[str] = []
    parts: list[str] = []
    for event in client.ws.events():
        if isinstance(event, wsproto.events.TextMessage):
            parts.append(event.data)
            if event.message_finished:
                messages.append("".join(parts))
                parts.clear()
    assert messages == ['"small"', big.decode(), '"after"']
    with trio.fail_after(WAIT):
        while "done" not in seen:
            await trio.sleep(0.01)
    assert seen["done"] is False
    await client.stream.aclose()
    nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------ sockets that choke


class ChokedTransport(MemoryTransport):
    """A server-side transport whose ``send_nowait`` behaves like a socket short of room.

    ``mode``: "refuse" takes nothing (False); "partial" takes the message but leaves it ``pending`` until a flush
    or the next send; "alternate" does one, then the other. ``gate``, while not set, holds every ``send_message``
    (a socket the peer does not read). Once through, a send does not yield, like a socket with room."""

    def __init__(self, inbound: Any, outbound: Any, peer: str, mode: str) -> None:
        super().__init__(inbound, outbound, peer)
        self.mode = mode
        self.gate = trio.Event()
        self.gate.set()
        self._rest: str | None = None
        self._calls = 0

    def send_nowait(self, message: bytes) -> bool:
        self._calls += 1
        mode = self.mode
        if mode == "alternate":
            mode = "refuse" if self._calls % 2 else "partial"
        if self.closed or self._rest is not None or mode == "refuse":
            return False
        self._rest = bytes(message).decode()
        return True

    @property
    def pending(self) -> bool:
        return self._rest is not None

    def _forward_rest(self) -> None:
        if self._rest is not None:
            self._outbound.send_nowait(self._rest)
            self._rest = None

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()
        self._forward_rest()

    async def send_message(self, message: str | bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self.gate.is_set():
            await self.gate.wait()
        self._forward_rest()
        self._outbound.send_nowait(message if isinstance(message, str) else bytes(message).decode())


def choked_pair(peer: str, mode: str) -> tuple[ChokedTransport, MemoryTransport]:
    to_server_send, to_server_recv = trio.open_memory_channel[str | bytes](math.inf)
    to_client_send, to_client_recv = trio.open_memory_channel[str | bytes](math.inf)
    return (ChokedTransport(to_server_recv, to_client_send, peer, mode),
            MemoryTransport(to_client_recv, to_server_send, f"{peer}-client"))


def quiet_config() -> Config:
    return config_with(Config(), scheduler={"heartbeat_interval_seconds": 1000, "heartbeat_timeout_seconds": 3000})


async def choked_node(nursery: trio.Nursery, scheduler: Scheduler, mode: str,
                      capacity: int = 64) -> tuple[Peer, ChokedTransport]:
    server_side, client_side = choked_pair("node", mode)
    nursery.start_soon(scheduler.handle_node, server_side)
    node = Peer(client_side)  # type: ignore[arg-type]
    await node.send(**node_register("node-choked", capacity=capacity))
    await node.recv_type("node_register_ack")
    return node, server_side


async def choked_session(nursery: trio.Nursery, scheduler: Scheduler, mode: str) -> tuple[Peer, str]:
    server_side, client_side = choked_pair("session", mode)
    nursery.start_soon(scheduler.handle_session, server_side)
    client = Peer(client_side)  # type: ignore[arg-type]
    await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
    return client, (await client.recv_type("session_init_ack"))["session_id"]


async def send_utterances(client: Peer, sid: str, indices: range) -> None:
    for index in indices:
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000, manual_cut=True)


@pytest.mark.parametrize("node_mode", ["refuse", "partial", "alternate"])
@pytest.mark.parametrize("session_mode", ["refuse", "partial", "alternate"])
async def test_messages_a_socket_cannot_take_at_once_arrive_in_order_exactly_once(
        nursery: trio.Nursery, autojump_clock: Any, node_mode: str, session_mode: str) -> None:
    scheduler = Scheduler(quiet_config())
    await nursery.start(scheduler.run)
    node, _ = await choked_node(nursery, scheduler, node_mode)
    client, sid = await choked_session(nursery, scheduler, session_mode)
    await send_utterances(client, sid, range(6))
    assigns = [await node.recv_type("job_assign") for _ in range(6)]
    assert sorted(a["utterance_index"] for a in assigns) == list(range(6))
    by_index = {a["utterance_index"]: a for a in assigns}
    for index in (2, 0, 1, 5, 3, 4):
        await node.send(**result_for(by_index[index]))
    results = [await client.recv_type("translation_result") for _ in range(6)]
    assert [r["utterance_index"] for r in results] == list(range(6))
    with trio.move_on_after(5):
        extra = await client.recv()
        raise AssertionError(f"a second outcome: {extra}")


class WriterSteps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("NodeConnection._writer"):
            self.steps += 1


async def test_a_node_writer_behind_its_socket_catches_up_in_one_pass(
        nursery: trio.Nursery, autojump_clock: Any) -> None:
    """The node's socket holds its writer on the first job_assign while 31 more queue in its outbox; once the
    socket has room, the writer writes all of them in a few steps (it took one step per frame before)."""
    scheduler = Scheduler(quiet_config())
    await nursery.start(scheduler.run)
    node, transport = await choked_node(nursery, scheduler, "refuse")
    client, sid = await memory_session(nursery, scheduler)
    transport.gate = trio.Event()  # the node stops reading
    await send_utterances(client, sid, range(32))
    await trio.sleep(1)
    assert transport._outbound.statistics().current_buffer_used == 0  # nothing written yet
    instrument = WriterSteps()
    trio.lowlevel.add_instrument(instrument)
    try:
        transport.gate.set()
        assigns = [await node.recv_type("job_assign") for _ in range(32)]
    finally:
        trio.lowlevel.remove_instrument(instrument)
    assert sorted(a["utterance_index"] for a in assigns) == list(range(32))
    assert instrument.steps <= 3, instrument.steps
