"""The door's own server WebSocket (trioscheduler/server/websocket.py) over real sockets on 127.0.0.1: messages
arrive whole and in order however they are fragmented and cut into TCP reads, pings are answered, a flooding peer
cannot starve other tasks, and a send cancelled mid-frame breaks the connection rather than the stream."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio_websocket
import wsproto
import wsproto.events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection

import trioscheduler.server.websocket as websocket_module
from tests.websocket_server import serve_websockets
from tests.wire import WAIT, masked_frame
from trioscheduler.server.websocket import FAIR_OPERATIONS, ServerWebSocket
from trioscheduler.transport import TransportClosed

TEXT, BINARY, CONTINUATION, PING = 0x1, 0x2, 0x0, 0x9


class RawClient:
    """A WebSocket client over a plain TCP stream: it writes bytes as the test cuts them, and reads with wsproto."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pongs = 0
        self.messages: list[str | bytes] = []
        self.close_code: int | None = None

    @classmethod
    async def open(cls, port: int) -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.stream.send_all(client.ws.send(wsproto.events.Request(host="127.0.0.1", target="/x")))
        with trio.fail_after(WAIT):
            while True:
                client.ws.receive_data(await client.stream.receive_some(65536))
                events = list(client.ws.events())
                if any(isinstance(e, wsproto.events.AcceptConnection) for e in events):
                    client._record(events)  # the server's first frames may come in the same read as its 101
                    return client

    def _record(self, events: list[wsproto.events.Event]) -> None:
        for event in events:
            if isinstance(event, wsproto.events.Pong):
                self.pongs += 1
            elif isinstance(event, wsproto.events.Message):
                self.messages.append(event.data)
            elif isinstance(event, wsproto.events.CloseConnection):
                self.close_code = event.code

    async def read_until(self, done: Callable[[], bool]) -> None:
        with trio.fail_after(WAIT):
            while not done():
                data = await self.stream.receive_some(65536)
                self.ws.receive_data(data or None)
                self._record(list(self.ws.events()))
                if not data:
                    return


async def _collect(ws: ServerWebSocket, into: list[str | bytes], done: trio.Event) -> None:
    try:
        while True:
            into.append(await ws.get_message())
    except TransportClosed:
        done.set()


messages = st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                              st.binary(min_size=70_000, max_size=70_000)), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sent=messages, data=st.data())
def test_messages_arrive_whole_and_in_order_however_fragmented_and_cut(sent: list[str | bytes],
                                                                       data: st.DataObject) -> None:
    """Text and binary messages, each cut into fragments at random byte boundaries (inside UTF-8 characters too),
    with pings between any two frames, written in random TCP chunks: the server gets each message whole, as str or
    bytes, in order, and the client a pong per ping."""
    wire = b""
    pings = 0
    for message in sent:
        payload = message.encode() if isinstance(message, str) else message
        cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
        for i, piece in enumerate(pieces):
            opcode = (TEXT if isinstance(message, str) else BINARY) if i == 0 else CONTINUATION
            wire += masked_frame(opcode, piece, fin=i == len(pieces) - 1)
            if data.draw(st.booleans()):
                wire += masked_frame(PING, b"p%d" % pings)
                pings += 1
    wire += masked_frame(0x8, struct.pack("!H", 1000))
    sizes = data.draw(st.lists(st.integers(1, 70_000), max_size=20))

    async def main() -> list[str | bytes]:
        received: list[str | bytes] = []
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_websockets, lambda ws: _collect(ws, received, done))
            client = await RawClient.open(port)
            async with trio.open_nursery() as writing:
                writing.start_soon(client.read_until, lambda: client.close_code is not None)
                position = 0
                for size in sizes:
                    await client.stream.send_all(wire[position:position + size])
                    position += size
                await client.stream.send_all(wire[position:])
            with trio.fail_after(WAIT):
                await done.wait()
            assert client.pongs == pings and client.close_code == 1000
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
        return received

    assert trio.run(main) == sent


async def test_ping_pong_and_both_kinds_of_text_with_a_trio_websocket_client(nursery: trio.Nursery) -> None:
    """A str and UTF-8 bytes both go out as text frames; a ping is answered; binary comes in as bytes."""

    async def echo(ws: ServerWebSocket) -> None:
        while True:
            message = await ws.get_message()
            await ws.send_message(message if isinstance(message, str) else message.decode())
            await ws.send_message(("bytes:" + str(message)).encode())

    port = await nursery.start(serve_websockets, echo)
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/x") as client:
        with trio.fail_after(WAIT):
            await client.ping(b"are you there")
            await client.send_message("héllo")
            assert await client.get_message() == "héllo"
            assert await client.get_message() == "bytes:héllo"
            await client.send_message(b"raw")
            assert await client.get_message() == "raw"
            assert await client.get_message() == "bytes:b'raw'"
    nursery.cancel_scope.cancel()


async def _bystander_runs_after(operations: Callable[[ServerWebSocket], Any], ws: ServerWebSocket,
                                count: int) -> int:
    """How many of ``count`` operations ran before a task started next to them got its first step. A checkpoint
    puts both tasks in Trio's next batch, in either order, so the bystander runs at most one step of the operating
    task (FAIR_OPERATIONS operations) after a checkpoint."""
    done = 0
    first_step: list[int] = []

    async def bystander() -> None:
        first_step.append(done)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bystander)
        for _ in range(count):
            await operations(ws)
            done += 1
    return first_step[0]


async def _flood_reader(nursery: trio.Nursery, count: int) -> int:
    """Steps a bystander task took while the server's reader took ``count`` messages that were all in the kernel
    already, so no read had to wait."""
    readable = trio.Event()
    result: list[int] = []

    async def reader(ws: ServerWebSocket) -> None:
        await readable.wait()
        result.append(await _bystander_runs_after(lambda w: w.get_message(), ws, count))

    port = await nursery.start(serve_websockets, reader)
    client = await RawClient.open(port)
    await client.stream.send_all(b"".join(masked_frame(TEXT, b"m%d" % i) for i in range(count)))
    await trio.sleep(0.05)  # the bytes reach the server's socket (loopback)
    readable.set()
    with trio.fail_after(WAIT):
        while not result:
            await trio.sleep(0.01)
    await client.stream.aclose()
    nursery.cancel_scope.cancel()
    return result[0]


async def test_a_flooding_peer_cannot_starve_other_tasks(nursery: trio.Nursery) -> None:
    """The reader still gives way to other tasks at least once every FAIR_OPERATIONS messages (see
    _bystander_runs_after for the factor 2)."""
    assert await _flood_reader(nursery, 10 * FAIR_OPERATIONS) <= 2 * FAIR_OPERATIONS


async def test_a_writer_whose_writes_never_wait_still_gives_way(nursery: trio.Nursery) -> None:
    count = 10 * FAIR_OPERATIONS
    result: list[int] = []

    async def writer(ws: ServerWebSocket) -> None:
        result.append(await _bystander_runs_after(lambda w: w.send_message("x"), ws, count))

    port = await nursery.start(serve_websockets, writer)
    client = await RawClient.open(port)
    await client.read_until(lambda: len(client.messages) == count)
    with trio.fail_after(WAIT):
        while not result:
            await trio.sleep(0.01)
    assert result[0] <= 2 * FAIR_OPERATIONS
    await client.stream.aclose()
    nursery.cancel_scope.cancel()


async def test_fairness_is_what_bounds_the_flood(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flood test's own check: without the fairness bound the reader runs through every buffered message."""
    monkeypatch.setattr(websocket_module, "FAIR_OPERATIONS", 10**9)
    count = 10 * FAIR_OPERATIONS
    assert await _flood_reader(nursery, count) == count


async def test_a_send_cancelled_mid_frame_breaks_the_connection(nursery: trio.Nursery) -> None:
    """The peer does not read: a large send blocks part-way through its frame and is cancelled. The connection is
    then closed (the peer sees its end after the partial frame) and the next send raises TransportClosed."""
    outcome: list[str] = []

    async def sender(ws: ServerWebSocket) -> None:
        with trio.move_on_after(0.2) as scope:
            await ws.send_message("x" * (16 << 20))
        outcome.append("cancelled" if scope.cancelled_caught else "sent")
        try:
            await ws.send_message("after")
        except TransportClosed:
            outcome.append("closed")

    port = await nursery.start(serve_websockets, sender)
    client = await RawClient.open(port)
    with trio.fail_after(WAIT):
        while len(outcome) < 2:
            await trio.sleep(0.01)
    assert outcome == ["cancelled", "closed"]
    received = 0
    with trio.fail_after(WAIT):
        while chunk := await client.stream.receive_some(1 << 20):
            received += len(chunk)
    assert 0 < received < 16 << 20  # part of the frame, then the end of the stream
    await client.stream.aclose()
    nursery.cancel_scope.cancel()


async def test_one_reader_at_a_time(nursery: trio.Nursery) -> None:
    errors: list[BaseException] = []

    async def two_readers(ws: ServerWebSocket) -> None:
        async with trio.open_nursery() as readers:
            readers.start_soon(ws.get_message)
            await trio.sleep(0.05)
            try:
                await ws.get_message()
            except trio.BusyResourceError as exc:
                errors.append(exc)
            readers.cancel_scope.cancel()

    port = await nursery.start(serve_websockets, two_readers)
    client = await RawClient.open(port)
    with trio.fail_after(WAIT):
        while not errors:
            await trio.sleep(0.01)
    await client.stream.aclose()
    nursery.cancel_scope.cancel()


async def test_aclose_sends_the_code_and_waits_for_the_answer(nursery: trio.Nursery) -> None:
    """Closed by the server while its reader waits on the socket: the peer gets the close frame with the code, the
    reader gets TransportClosed once the peer answers, and aclose is idempotent."""
    ended = trio.Event()

    async def closer(ws: ServerWebSocket) -> None:
        async def read() -> None:
            try:
                await ws.get_message()
            except TransportClosed:
                ended.set()

        async with trio.open_nursery() as tasks:
            tasks.start_soon(read)
            await trio.sleep(0.05)
            await ws.aclose(4009, "r" * 300)  # a reason longer than a close frame holds is cut
            await ws.aclose()

    port = await nursery.start(serve_websockets, closer)
    client = await RawClient.open(port)
    await client.read_until(lambda: client.close_code is not None)
    assert client.close_code == 4009
    await client.stream.send_all(client.ws.send(wsproto.events.CloseConnection(code=4009)))
    with trio.fail_after(WAIT):
        await ended.wait()
    await client.stream.aclose()
    nursery.cancel_scope.cancel()


async def test_an_idle_connection_does_not_keep_the_last_message(nursery: trio.Nursery) -> None:
    """After a 1 MB message has been received and let go, the connection holds (almost) nothing of it: memory per
    idle session stays small whatever the session last sent."""
    import gc
    import tracemalloc

    size = 1 << 20
    measured: list[int] = []
    go, sent = trio.Event(), trio.Event()

    async def receive(ws: ServerWebSocket) -> None:
        await ws.send_message("ready")
        gc.collect()
        idle = tracemalloc.get_traced_memory()[0]
        go.set()
        message = await ws.get_message()
        assert len(message) == size
        del message
        await sent.wait()  # the client's copy of the frame is gone too
        gc.collect()
        measured.append(tracemalloc.get_traced_memory()[0] - idle)
        await ws.get_message()

    tracemalloc.start()
    try:
        port = await nursery.start(serve_websockets, receive)
        client = await RawClient.open(port)
        await client.read_until(lambda: bool(client.messages))
        await go.wait()
        await client.stream.send_all(masked_frame(BINARY, b"\x01" * size))
        sent.set()
        with trio.fail_after(WAIT):
            while not measured:
                await trio.sleep(0.01)
    finally:
        tracemalloc.stop()
    assert measured[0] < size // 8, measured
    await client.stream.aclose()
    nursery.cancel_scope.cancel()


async def test_over_tls_the_stream_carries_the_same_frames(nursery: trio.Nursery) -> None:
    """Over an SSLStream (the door with ``--tls-cert``): large and small messages both ways, a ping, a clean close."""
    import ssl

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def echo(ws: ServerWebSocket) -> None:
        while True:
            message = await ws.get_message()
            await ws.send_message(message if isinstance(message, str) else message.decode())

    port = await nursery.start(functools.partial(serve_websockets, echo, ssl_context=server_context))
    async with trio_websocket.open_websocket_url(f"wss://127.0.0.1:{port}/x", ssl_context=client_context) as client:
        with trio.fail_after(WAIT):
            for text in ("small", "é" * 40_000, "x" * 200_000):
                await client.send_message(text)
                assert await client.get_message() == text
            await client.ping(b"tls")
    assert client.closed is not None and client.closed.code == 1000
    nursery.cancel_scope.cancel()


async def test_two_acloses_at_once_both_end_with_the_peer_s_answer(nursery: trio.Nursery,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's writer and the door may close the same socket together: the one not reading is woken when the
    other has read the peer's answer, not left to wait out CLOSE_REPLY_SECONDS (made endless here)."""
    monkeypatch.setattr(websocket_module, "CLOSE_REPLY_SECONDS", 10**6)
    closed: list[str] = []

    async def close_twice(ws: ServerWebSocket) -> None:
        async def close(name: str, code: int) -> None:
            await ws.aclose(code)
            closed.append(name)

        async with trio.open_nursery() as closers:
            closers.start_soon(close, "first", 4000)
            await trio.sleep(0.05)
            closers.start_soon(close, "second", 1000)

    port = await nursery.start(serve_websockets, close_twice)
    client = await RawClient.open(port)
    await client.read_until(lambda: client.close_code is not None)
    assert client.close_code == 4000
    await trio.sleep(0.1)  # the second aclose is waiting too
    await client.stream.send_all(client.ws.send(wsproto.events.CloseConnection(code=4000)))
    with trio.fail_after(WAIT):
        while len(closed) < 2:
            await trio.sleep(0.01)
    assert sorted(closed) == ["first", "second"]
    await client.stream.aclose()
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("fragments", [
    [b'{"a": "\xc3', b'\xa9"}', b"\xc3"],  # valid across the cut, then a character the message never finishes
    [b"\xff", b"ok"],
])
async def test_invalid_utf8_across_fragments_is_closed_with_1007(nursery: trio.Nursery,
                                                                fragments: list[bytes]) -> None:
    received: list[str | bytes] = []
    done = trio.Event()
    port = await nursery.start(serve_websockets, lambda ws: _collect(ws, received, done))
    client = await RawClient.open(port)
    wire = b"".join(masked_frame(TEXT if i == 0 else CONTINUATION, piece, fin=i == len(fragments) - 1)
                    for i, piece in enumerate(fragments))
    await client.stream.send_all(masked_frame(TEXT, b"before") + wire)
    await client.read_until(lambda: client.close_code is not None)
    assert client.close_code == 1007
    with trio.fail_after(WAIT):
        await done.wait()
    assert received == ["before"]
    await client.stream.aclose()
    nursery.cancel_scope.cancel()


async def test_pings_from_a_peer_that_does_not_read_are_not_queued_without_bound(nursery: trio.Nursery) -> None:
    """The writer is stuck on a peer that does not read; the peer floods pings. Once more than MAX_QUEUED_FRAMES
    pongs wait, the reader waits for the writer (the socket is not read: TCP back-pressure), so at most the pongs
    of one more read (600 bytes: 100 empty pings) are queued."""
    sockets: list[ServerWebSocket] = []

    async def stuck_writer(ws: ServerWebSocket) -> None:
        sockets.append(ws)
        async with trio.open_nursery() as tasks:
            tasks.start_soon(ws.send_message, "x" * (16 << 20))
            await trio.sleep(0.05)
            while True:
                await ws.get_message()

    port = await nursery.start(functools.partial(serve_websockets, stuck_writer, receive_bytes=600))
    client = await RawClient.open(port)
    with trio.move_on_after(2):  # the flood blocks once the server stops reading; that is the point
        await client.stream.send_all(masked_frame(PING, b"") * 50_000)
    await trio.sleep(0.1)
    assert len(sockets[0]._outgoing) <= websocket_module.MAX_QUEUED_FRAMES + 100 + 1
    await client.stream.aclose()
    nursery.cancel_scope.cancel()
