"""The one interface session and node code use to talk to a peer, whatever carries the bytes.

trio-websocket, hypercorn's ASGI WebSocket and an in-memory pair (tests, fault-injection runs under MockClock,
where real sockets would race the mocked clock) all look the same from the scheduler's side.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator
from typing import Any, Protocol

import trio
import trio_websocket
import wsproto
import wsproto.events
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


def release_accepted_request(request: trio_websocket.WebSocketRequest) -> bool:
    """Drop the upgrade request's headers once the socket is accepted. trio-websocket's per-connection handler
    keeps the WebSocketRequest (and with it every request header: a browser sends a kilobyte or more) alive for
    the whole connection, although nothing reads it after accept(); its ``path``, ``headers`` and
    ``proposed_subprotocols`` are unusable afterwards. Only when the attribute is the wsproto Request this was
    checked against (trio-websocket 0.12.2); otherwise a no-op. Returns whether it was released."""
    if not isinstance(getattr(request, "_event", None), wsproto.events.Request):
        return False
    request._event = None  # type: ignore[assignment]
    return True


class WebSocketTransport:
    __slots__ = ("_ws", "peer")

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        release_spent_handshake(ws)
        remote = ws.remote
        self.peer = f"{remote.address}:{remote.port}" if hasattr(remote, "address") else str(remote)

    async def get_message(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed:
            raise TransportClosed from None

    async def send_message(self, message: str) -> None:
        try:
            await self._ws.send_message(message)
        except trio_websocket.ConnectionClosed:
            raise TransportClosed from None

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        await self._ws.aclose(code, reason or None)


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
