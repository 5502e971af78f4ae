"""A bare server of the door's WebSocket (trioscheduler/server/websocket.py), without a scheduler behind it: the
transport's own tests drive it from a trio-websocket client or a hand-written one."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import trio

from trioscheduler.server.listener import read_request_head
from trioscheduler.server.websocket import ServerWebSocket, open_upgrade
from trioscheduler.transport import TransportClosed

MAX_MESSAGE_BYTES = 1 << 20
RECEIVE_BYTES = 65536


async def serve_websockets(handler: Callable[[ServerWebSocket], Awaitable[None]], *,
                           max_message_bytes: int = MAX_MESSAGE_BYTES, receive_bytes: int = RECEIVE_BYTES,
                           ssl_context: object = None,
                           task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept WebSockets on 127.0.0.1 (a free port, reported by ``task_status``) and run ``handler`` on each; the
    socket is closed when it returns."""

    async def connection(stream: trio.abc.Stream) -> None:
        try:
            head = await read_request_head(stream)
            upgrade = None if head is None else open_upgrade(head, max_message_bytes)
            if upgrade is None:
                return
            await stream.send_all(upgrade.response)
            ws = ServerWebSocket(stream, upgrade.protocol, "peer", receive_bytes, upgrade.rest)
            try:
                await handler(ws)
            except TransportClosed:
                pass  # the peer went: the handler's end
            finally:
                with trio.CancelScope(shield=True):
                    await ws.aclose()
        finally:
            await trio.aclose_forcefully(stream)

    if ssl_context is None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    else:
        listeners = await trio.open_ssl_over_tcp_listeners(0, ssl_context, host="127.0.0.1",  # type: ignore[arg-type]
                                                           https_compatible=True)
    first = listeners[0]
    sock = first.socket if isinstance(first, trio.SocketListener) else first.transport_listener.socket  # type: ignore[attr-defined]
    task_status.started(sock.getsockname()[1])
    await trio.serve_listeners(functools.partial(connection), listeners)  # type: ignore[arg-type]
