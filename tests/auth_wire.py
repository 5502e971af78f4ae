"""Peers that present credentials, an Origin, or TLS: helpers for the issue 10 door tests."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

from tests.wire import WAIT, Peer, node_register


def bearer(token: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {token}".encode())


@asynccontextmanager
async def open_peer(url: str, *headers: tuple[bytes, bytes],
                    ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Peer]:
    async with trio_websocket.open_websocket_url(url, ssl_context, extra_headers=list(headers),
                                                 max_message_size=16 * 2**20, connect_timeout=WAIT) as ws:
        yield Peer(ws)


async def refused_status(url: str, *headers: tuple[bytes, bytes], ssl_context: ssl.SSLContext | None = None) -> int:
    """The HTTP status the door answers a WebSocket handshake with; fails if the WebSocket opens."""
    with trio.fail_after(WAIT):
        try:
            async with open_peer(url, *headers, ssl_context=ssl_context):
                pass
        except trio_websocket.ConnectionRejected as rejected:
            return rejected.status_code
    raise AssertionError(f"the handshake to {url} was accepted")


async def register(node: Peer, node_id: str | None = None, **kwargs: Any) -> str:
    await node.send(**node_register(node_id, **kwargs))
    return str((await node.recv_type("node_register_ack"))["node_id"])


async def init_session(client: Peer, **fields: Any) -> str:
    await client.send(type="session_init", client_version="test", platform="web", src_lang="zh", tgt_lang="en",
                      audio_format="pcm16", **fields)
    return str((await client.recv_type("session_init_ack"))["session_id"])
