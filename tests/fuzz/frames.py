"""A WebSocket client below trio-websocket: it can send what a well-behaved library refuses to (binary and
invalid UTF-8 text frames), reset its TCP connection mid-handshake or mid-stream, and never read its socket."""

from __future__ import annotations

import contextlib
import socket
import struct

import trio
import wsproto
import wsproto.events
from wsproto import ConnectionType, WSConnection

from tests.wire import WAIT

#: What a hostile peer's own operations may raise once the daemon has (rightly) closed on it.
PEER_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, wsproto.utilities.LocalProtocolError,
             ConnectionError)

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2


def upgrade_request(host: str, port: int, path: str) -> bytes:
    return WSConnection(ConnectionType.CLIENT).send(wsproto.events.Request(host=f"{host}:{port}", target=path))


async def reset(stream: trio.SocketStream) -> None:
    """Close with a TCP reset (SO_LINGER 0): the daemon sees ECONNRESET, not a close handshake."""
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


class RawPeer:
    """An open WebSocket over a plain trio stream. ``drain`` reads (and keeps the text messages); a peer that
    never calls it never reads its socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.received: list[str | bytes] = []
        self.close_code: int | None = None

    @classmethod
    async def open(cls, host: str, port: int, path: str) -> RawPeer:
        stream = await trio.open_tcp_stream(host, port)
        peer = cls(stream)
        try:
            await stream.send_all(peer.ws.send(wsproto.events.Request(host=f"{host}:{port}", target=path)))
            with trio.fail_after(WAIT):
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise ConnectionError("closed during the handshake")
                    peer.ws.receive_data(data)
                    for event in peer.ws.events():
                        if isinstance(event, wsproto.events.AcceptConnection):
                            return peer
                        if isinstance(event, wsproto.events.RejectConnection):
                            raise ConnectionError(f"handshake rejected: {event.status_code}")
        except BaseException:
            await reset(stream)
            raise

    def text_bytes(self, text: str) -> bytes:
        return self.ws.send(wsproto.events.TextMessage(data=text))

    def close_bytes(self) -> bytes:
        return self.ws.send(wsproto.events.CloseConnection(code=1000))

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.text_bytes(text))

    async def drain(self) -> None:
        """Read until the daemon closes; keeps text and binary messages and the close code."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except PEER_GONE:
                return
            if not data:
                return
            try:
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, wsproto.events.Message):
                        self.received.append(event.data)
                    elif isinstance(event, wsproto.events.CloseConnection):
                        self.close_code = event.code
            except PEER_GONE:
                return

    async def close(self) -> None:
        """A polite close frame, then the socket."""
        with contextlib.suppress(PEER_GONE):
            await self.stream.send_all(self.close_bytes())
        await self.stream.aclose()
