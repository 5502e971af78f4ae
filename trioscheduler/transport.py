"""The one interface session and node code use to talk to a peer, whatever carries the bytes.

trio-websocket, hypercorn's ASGI WebSocket and an in-memory pair (tests, fault-injection runs under MockClock,
where real sockets would race the mocked clock) all look the same from the scheduler's side.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Iterator
from typing import Any, Protocol, cast

import trio
import trio_websocket
import wsproto
import wsproto.events
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.frame_protocol import CloseReason, FrameDecoder, Opcode, ParseFailed, RsvBits
from wsproto.handshake import H11Handshake

from trioscheduler.errors import TrioschedulerError
from trioscheduler.protocol.errors import CloseCode


class TransportClosed(TrioschedulerError):
    """The peer went away (or we closed): the connection's tasks end, cleanly."""


class Transport(Protocol):
    peer: str

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str) -> None: ...

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code`` (a CloseCode) and ``reason``; idempotent, and never raises for a peer gone."""


class _SpentHandshake:
    """Stands in for wsproto's H11Handshake once the connection is open. wsproto's WSConnection then only calls
    ``handshake.events()`` (to drain what the handshake still held, nothing once it is done)."""

    __slots__ = ()

    def events(self) -> Iterator[Any]:
        return iter(())


_SPENT_HANDSHAKE = _SpentHandshake()  # stateless, shared


def release_spent_handshake(ws: trio_websocket.WebSocketConnection) -> bool:
    """Drop the HTTP/1.1 upgrade state (an h11 connection, its buffers, an empty 760-byte deque: ~2.5 KB) that
    wsproto keeps for the life of an open connection, although it never uses it again. Applied only when
    everything is as in the wsproto version this was checked against (1.3.2): the connection is open and the
    handshake has no events left; otherwise nothing changes. Returns whether it was released."""
    ws_connection = getattr(ws, "_wsproto", None)
    if not isinstance(ws_connection, wsproto.WSConnection) or ws_connection.connection is None:
        return False
    handshake = getattr(ws_connection, "handshake", None)
    if type(handshake) is not H11Handshake:
        return False
    pending = getattr(handshake, "_events", None)
    if type(pending) is not collections.deque or pending:
        return False
    ws_connection.handshake = _SPENT_HANDSHAKE  # type: ignore[assignment]
    return True


class EdgeWebSocketConnection(trio_websocket.WebSocketConnection):
    """trio-websocket's server connection with the edge's guarantees.

    - ``max_message_size`` counts bytes (UTF-8 for text), not characters.
    - A frame that wsproto refuses (invalid UTF-8 in a text frame, a protocol error, a frame over the limit refused
      at its header by ``refuse_oversize_frames``) is answered with a close frame carrying wsproto's code (1007,
      1002, 1009) before TCP closes; trio-websocket alone closes TCP without one. After such a refusal, what the
      peer still sends is read and dropped for a moment (at most ``REFUSAL_LINGER_SECONDS`` and
      ``REFUSAL_LINGER_BYTES``) before the socket closes, so the close frame is not lost to a TCP reset.
    """

    _refused = False

    async def _handle_message_event(
        self, event: wsproto.events.BytesMessage | wsproto.events.TextMessage,
    ) -> None:
        data = event.data
        if type(data) is str and not data.isascii():  # isascii is O(1) on str: only non-ASCII text is encoded
            self._message_size += len(data.encode("utf-8", "surrogatepass")) - len(data)
        if not event.message_finished or self._message_size + len(data) > self._max_message_size:
            await super()._handle_message_event(event)  # a part to keep, or the refusal of an oversize message
            return
        # A complete message within the limit, as trio-websocket hands it over, except that it goes into the
        # message channel without a checkpoint when the channel has room: the reader checkpoints in its next
        # receive anyway, and the extra one cost a task switch per message.
        parts = cast("list[Any]", self._message_parts)  # str parts of a text message, bytes of a binary one
        parts.append(data)
        message = b"".join(parts) if isinstance(event, wsproto.events.BytesMessage) else "".join(parts)
        self._message_size = 0
        self._message_parts = []
        try:
            try:
                self._send_channel.send_nowait(message)
            except trio.WouldBlock:
                await self._send_channel.send(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # nobody reads any more (the connection is closing): as trio-websocket does, drop it

    async def _send(self, event: wsproto.events.Event) -> None:
        """trio-websocket's ``_send`` (one writer at a time, a broken stream becomes ConnectionClosed), except
        that a free lock is taken without a checkpoint: ``send_all`` checkpoints (and checks for cancellation
        before any byte goes out) anyway, and the lock's own checkpoint cost a task switch per message."""
        data = self._wsproto.send(event)
        lock = self._stream_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._abort_web_socket()
            assert self._close_reason is not None
            raise trio_websocket.ConnectionClosed(self._close_reason) from None
        finally:
            lock.release()

    async def _handle_close_connection_event(self, event: wsproto.events.CloseConnection) -> None:
        # A close frame from the peer moves wsproto to REMOTE_CLOSING before this event; still OPEN means the event
        # is wsproto's own refusal of what the peer sent, so the peer is told why.
        if self._wsproto.state == ConnectionState.OPEN:
            try:
                await self._send(wsproto.events.CloseConnection(code=event.code, reason=event.reason))
                self._refused = True
            except trio_websocket.ConnectionClosed:
                pass
        await super()._handle_close_connection_event(event)

    async def _close_stream(self) -> None:
        if self._refused:
            self._refused = False
            await _linger(self._stream)
        await super()._close_stream()


REFUSAL_LINGER_SECONDS = 1.0
REFUSAL_LINGER_BYTES = 1 << 20


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read and drop what the peer still sends, within the linger bounds; never raises."""
    dropped = 0
    with trio.move_on_after(REFUSAL_LINGER_SECONDS):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while dropped < REFUSAL_LINGER_BYTES:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                dropped += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass


class _SizedFrameDecoder(FrameDecoder):
    """wsproto's frame decoder that also checks, at each frame header, the size of the message the frame belongs
    to: a data frame whose declared length takes its message over ``max_message_bytes`` fails with 1009 before any
    of its payload is read. (An open decoder's class is switched to this one: no closure, no reference cycle.)"""

    max_message_bytes: int
    message_bytes: int

    def extension_processing(self, opcode: Opcode, rsv: RsvBits, payload_len: int) -> None:
        if opcode is Opcode.CONTINUATION:
            total = self.message_bytes + payload_len
        elif opcode.iscontrol():
            total = self.message_bytes  # control frames (at most 125 bytes) do not belong to the message
        else:
            total = payload_len
        if total > self.max_message_bytes:
            raise ParseFailed(f"message exceeds {self.max_message_bytes} bytes", CloseReason.MESSAGE_TOO_BIG)
        self.message_bytes = total
        super().extension_processing(opcode, rsv, payload_len)


def refuse_oversize_frames(ws: trio_websocket.WebSocketConnection, max_bytes: int) -> bool:
    """Once ``ws`` is open, refuse a message over ``max_bytes`` at the header of the frame that takes it over,
    rather than after reading its payload. Applied only when wsproto's frame decoder is the one this was checked
    against (wsproto 1.3.2); otherwise the byte count of ``EdgeWebSocketConnection`` refuses it as it arrives.
    Returns whether it was applied."""
    connection = getattr(getattr(ws, "_wsproto", None), "connection", None)
    decoder = getattr(getattr(connection, "_proto", None), "_frame_decoder", None)
    if type(decoder) is not FrameDecoder:
        return False
    decoder.__class__ = _SizedFrameDecoder
    sized = cast(_SizedFrameDecoder, decoder)
    sized.max_message_bytes = max_bytes
    sized.message_bytes = 0
    return True


def _peer_address(stream: trio.abc.Stream) -> tuple[Any, ...] | None:
    """The peer's socket address (under the TLS layer of an SSLStream), or None when it cannot be read."""
    inner = getattr(stream, "transport_stream", stream)
    sock = getattr(inner, "socket", None)
    try:
        address = sock.getpeername() if sock is not None else None
    except OSError:
        return None
    return address if isinstance(address, tuple) and len(address) >= 2 else None


def peer_name(stream: trio.abc.Stream) -> str:
    """``host:port`` of the peer, or ``"unknown"`` when the socket can no longer say (ENOTCONN after a reset)."""
    address = _peer_address(stream)
    return "unknown" if address is None else f"{address[0]}:{address[1]}"


def peer_host(stream: trio.abc.Stream) -> str:
    """The peer's IP address, or ``"unknown"`` when the socket can no longer say (all such peers count as one)."""
    address = _peer_address(stream)
    return "unknown" if address is None else str(address[0])


class WebSocketTransport:
    __slots__ = ("_ws", "peer")

    def __init__(self, ws: trio_websocket.WebSocketConnection, peer: str) -> None:
        self._ws = ws
        release_spent_handshake(ws)
        self.peer = peer

    async def get_message(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed:
            raise TransportClosed from None

    async def send_message(self, message: str) -> None:
        try:
            await self._ws.send_message(message)
        except (trio_websocket.ConnectionClosed, wsproto.utilities.LocalProtocolError):
            # LocalProtocolError: this side is already closing (e.g. it refused an oversize or invalid frame).
            raise TransportClosed from None

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        with contextlib.suppress(Exception):  # a peer gone mid-close is that peer's; closing never fails the caller
            await self._ws.aclose(int(code), reason or None)


class MemoryTransport:
    """One end of an in-memory connection; closing either end closes both directions."""

    def __init__(
        self,
        inbound: trio.MemoryReceiveChannel[str | bytes],
        outbound: trio.MemorySendChannel[str | bytes],
        peer: str,
    ) -> None:
        self._inbound = inbound
        self._outbound = outbound
        self.peer = peer
        self.closed = False
        #: The code and reason of the first aclose() on this end, for tests.
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def get_message(self) -> str | bytes:
        try:
            return await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
            raise TransportClosed from None

    async def send_message(self, message: str) -> None:
        try:
            await self._outbound.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed from None

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if not self.closed:
            self.close_code, self.close_reason = code, reason
        self.closed = True
        await self._outbound.aclose()
        await self._inbound.aclose()


def memory_transport_pair(peer: str = "memory") -> tuple[MemoryTransport, MemoryTransport]:
    """(server side, client side); buffers are unbounded so neither side can deadlock the other in tests."""
    to_server_send, to_server_recv = trio.open_memory_channel[str | bytes](math.inf)
    to_client_send, to_client_recv = trio.open_memory_channel[str | bytes](math.inf)
    return (
        MemoryTransport(to_server_recv, to_client_send, peer),
        MemoryTransport(to_client_recv, to_server_send, f"{peer}-client"),
    )
