"""The one interface session and node code use to talk to a peer, whatever carries the bytes.

The door's WebSocket (trioscheduler/server/websocket.py) and an in-memory pair (tests, fault-injection runs under
MockClock, where real sockets would race the mocked clock) look the same from the scheduler's side.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import trio

from trioscheduler.errors import TrioschedulerError
from trioscheduler.protocol.errors import CloseCode


class TransportClosed(TrioschedulerError):
    """The peer went away (or we closed): the connection's tasks end, cleanly."""


class Transport(Protocol):
    peer: str

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None:
        """Send one text message: a str, or bytes that are already UTF-8 text (the codec's output), sent as they
        are."""

    def send_nowait(self, message: bytes) -> bool:
        """Send one text message (UTF-8 bytes) without waiting, or return False having sent and queued nothing (the
        caller then uses ``send_message``). True with ``pending`` set means part of it still waits: the
        connection's writer must ``flush``. Never a checkpoint."""

    @property
    def pending(self) -> bool:
        """Whether bytes of a message taken by ``send_nowait`` still wait to be written."""

    async def flush(self) -> None:
        """Write what waits; raises TransportClosed if the connection broke."""

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with ``code`` (a CloseCode) and ``reason``; idempotent, and never raises for a peer gone."""


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

    async def send_message(self, message: str | bytes) -> None:
        """Bytes (UTF-8 text) reach the peer as str, as a text frame would."""
        if not isinstance(message, str):
            message = bytes(message).decode()
        try:
            await self._outbound.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed from None

    def send_nowait(self, message: bytes) -> bool:
        """False when this end is closed or the channel has no room (a test's peer that does not read)."""
        if self.closed:
            return False
        try:
            self._outbound.send_nowait(bytes(message).decode())
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    @property
    def pending(self) -> bool:
        return False

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

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
