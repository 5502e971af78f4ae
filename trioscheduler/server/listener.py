"""The top nursery: the registry, the door every WebSocket comes through, and the HTTP listener.

The door is one handler per TCP connection. Whatever goes wrong on a connection (a reset during the upgrade, a peer
address that can no longer be read, garbage instead of HTTP, a read, write or close error) ends that connection
only: it is logged at debug level (info for the door's refusals), counted in ``Scheduler.edge``, and the process
and every other connection go on. Before the WebSocket opens the door enforces ``limits.handshake_timeout_seconds``
(the whole upgrade, from the first byte) and ``limits.max_connections`` (an HTTP 503 beyond it); once open,
``limits.max_message_bytes`` in bytes, refused at the header of the frame that goes over (close 1009). The open
WebSocket is trioscheduler/server/websocket.py's ``ServerWebSocket``.

Before the upgrade, on ``/ws/session`` and ``/ws/node``, the door also answers (trioscheduler/auth.py,
docs/security.md): 403 to an Origin that ``server.allowed_origins`` does not allow; 401 to no credential and 403
to a wrong one when authentication is on; 429 beyond ``limits.connections_per_address`` open WebSockets from the
peer's IP address. The socket's handler gets the ``Principal`` the credential maps to (``ANONYMOUS`` when
authentication is off). With ``server.tls_cert`` and ``tls_key`` both listeners speak TLS.

When ``http_port`` equals a non-zero ``port`` the door carries both: a request for ``/ws/session`` or ``/ws/node``
stays with it, any other request is handed, with the bytes already read, to hypercorn's per-connection server.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import attrs
import h11
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState
from hypercorn.utils import wrap_app

from trioscheduler.app import Scheduler, log_listening
from trioscheduler.auth import (
    AmbiguousCredential,
    BindPolicy,
    Credentials,
    ExemptAddresses,
    OriginPolicy,
    Refusal,
    check_bind,
    presented_credential,
    warn_insecure,
)
from trioscheduler.config import Config
from trioscheduler.drain import run_drain
from trioscheduler.gateway import STREAM_PATH, Gateway, serve_stream
from trioscheduler.http import make_app
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.server.websocket import ServerWebSocket, Upgrade, open_upgrade
from trioscheduler.tls import server_ssl_context
from trioscheduler.transport import TransportClosed, peer_host, peer_name

log = logging.getLogger("trioscheduler.server.listener")

SESSION_PATH = "/ws/session"
NODE_PATH = "/ws/node"
#: Largest HTTP request head the door reads (request line and headers); beyond it the request gets 431.
MAX_REQUEST_HEAD_BYTES = 16 * 1024
#: How long the door waits for a refused peer's socket to take its HTTP answer.
REFUSAL_SEND_SECONDS = 1.0
#: How long closing an open WebSocket may take (close handshake included) before its socket is dropped.
CLOSE_SECONDS = 2.0
_RECEIVE_BYTES = 4096


@attrs.frozen
class Listening:
    host: str
    port: int
    http_port: int
    #: Both listeners speak TLS (wss://, https://).
    tls: bool = False

    @property
    def session_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{SESSION_PATH}"

    @property
    def node_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}{NODE_PATH}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.http_port}"


#: What a peer that resets or vanishes makes trio, the OS or the transport raise: routine, logged at debug.
_PEER_GONE_TYPES = (trio.BrokenResourceError, trio.ClosedResourceError, TransportClosed, OSError)


def _peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception in a group) only says that the peer went away."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(_PEER_GONE_TYPES)[1] is None
    return isinstance(exc, _PEER_GONE_TYPES)


class RequestHeadTooLarge(Exception):
    """The request head did not end within MAX_REQUEST_HEAD_BYTES."""


async def read_request_head(stream: trio.abc.ReceiveStream) -> bytes | None:
    """Bytes up to and including the blank line that ends an HTTP request head (and whatever the peer sent after
    it in the same reads), or None if the peer closed first. Raises RequestHeadTooLarge past the bound."""
    data = bytearray()
    while True:
        chunk = await stream.receive_some(_RECEIVE_BYTES)
        if not chunk:
            return None
        searched_from = max(0, len(data) - 3)
        data += chunk
        if data.find(b"\r\n\r\n", searched_from) >= 0:
            return bytes(data)
        if len(data) > MAX_REQUEST_HEAD_BYTES:
            raise RequestHeadTooLarge


def request_path(head: bytes) -> str | None:
    """The path of the request line (without its query), or None if the first line is not ``METHOD TARGET
    HTTP/x``."""
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    return parts[1].split(b"?", 1)[0].decode("latin-1")


def http_response(status: int, phrase: str, body: str, headers: str = "") -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a plain-text body; ``headers`` are extra header
    lines, each ending in CRLF."""
    payload = body.encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n{headers}"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n").encode() + payload


@attrs.frozen
class RequestHead:
    """What the door's checks read from a request head: its query string and its headers (names lowercased)."""

    query: str
    headers: tuple[tuple[str, str], ...]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


def parse_request_head(head: bytes) -> RequestHead | None:
    """The query and headers of an HTTP/1.1 request head, or None if it is not one."""
    connection = h11.Connection(h11.SERVER)
    try:
        connection.receive_data(head)
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    target = event.target.decode("latin-1")
    return RequestHead(query=target.partition("?")[2],
                       headers=tuple((k.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
                                     for k, v in event.headers))


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose first reads return bytes already taken from it (the door read the request head).
    Over TLS it wraps the decrypted stream, and ``socket`` is still the TCP socket (hypercorn reads addresses from
    it)."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = _tcp_socket(stream)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self._stream, trio.abc.HalfCloseableStream):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _tcp_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under ``stream`` (under its TLS layer, if any)."""
    inner = getattr(stream, "transport_stream", stream)
    return getattr(inner, "socket", None)


class Door:
    """One ``serve_connection`` per accepted TCP connection; see the module docstring for its guarantees."""

    def __init__(self, scheduler: Scheduler, config: Config,
                 http: Callable[[trio.abc.Stream], Awaitable[None]] | None = None,
                 gateway: Gateway | None = None) -> None:
        self._scheduler = scheduler
        #: Serves STREAM_PATH when set (issue 14).
        self._gateway = gateway
        self._paths = (SESSION_PATH, NODE_PATH) if gateway is None else (SESSION_PATH, NODE_PATH, STREAM_PATH)
        self._edge = scheduler.edge
        self._limits = config.limits
        self._receive_buffer_size = config.server.receive_buffer_size
        self._http = http
        self._credentials = Credentials.from_config(config.auth)
        self._origins = OriginPolicy.from_config(config.server)
        #: Open WebSockets per peer IP address (exempt ones not counted); an address leaves when its last closes.
        self._open_by_address: dict[str, int] = {}
        self._exempt = ExemptAddresses.from_config(config.limits)

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        """Never raises (but Cancelled): the connection's failure is logged and counted here."""
        try:
            await self._serve(stream)
        except Exception as exc:
            if _peer_gone(exc):
                self._edge.counters["peers_gone"] += 1
                log.debug("connection from %s ended at the edge: %r", peer_name(stream), exc)
            else:
                self._edge.counters["connection_errors"] += 1
                log.warning("connection from %s failed at the edge; closing it", peer_name(stream), exc_info=True)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream) -> None:
        edge = self._edge
        with trio.move_on_after(self._limits.handshake_timeout_seconds) as deadline:
            try:
                head = await read_request_head(stream)
            except RequestHeadTooLarge:
                edge.counters["refused_bad_request"] += 1
                await self._refuse(stream, http_response(431, "Request Header Fields Too Large",
                                                         "request head too large\n"))
                return
        if deadline.cancelled_caught:
            edge.counters["handshake_timeouts"] += 1
            log.info("connection from %s closed: no complete upgrade request within %ss", peer_name(stream),
                     self._limits.handshake_timeout_seconds)
            return
        if head is None:
            return
        path = request_path(head)
        if path is None or path not in self._paths:
            if path is not None and self._http is not None:
                await self._http(PrefixedStream(stream, head))
            elif path is None:
                edge.counters["refused_bad_request"] += 1
                await self._refuse(stream, http_response(400, "Bad Request", "not an HTTP request\n"))
            else:
                edge.counters["refused_unknown_path"] += 1
                await self._refuse(stream, http_response(404, "Not Found",
                                                         "unknown path; use /ws/session or /ws/node\n"))
            return
        if path != NODE_PATH and self._scheduler.drain.draining:
            edge.counters["refused_draining"] += 1
            await self._refuse(stream, http_response(503, "Service Unavailable",
                                                     "scheduler draining; open the session on another scheduler\n"))
            return
        principal = await self._admit(stream, head, path)
        if principal is None:
            return
        host = peer_host(stream)
        address = None if host in self._exempt else host  # None: not counted
        if address is not None and self._open_by_address.get(address, 0) >= self._limits.connections_per_address:
            edge.counters["refused_per_address"] += 1
            log.info("connection from %s refused: limits.connections_per_address (%d) reached", peer_name(stream),
                     self._limits.connections_per_address)
            await self._refuse(stream, http_response(
                429, "Too Many Requests", "too many connections from this address "
                f"(limits.connections_per_address = {self._limits.connections_per_address})\n"))
            return
        if edge.open >= self._limits.max_connections:
            edge.counters["refused_at_capacity"] += 1
            log.info("connection from %s refused: limits.max_connections (%d) reached", peer_name(stream),
                     self._limits.max_connections)
            await self._refuse(stream, http_response(
                503, "Service Unavailable",
                f"scheduler at capacity (limits.max_connections = {self._limits.max_connections}); retry later\n"))
            return
        upgrade = open_upgrade(head, self._limits.max_message_bytes)
        del head  # not kept for the connection's life
        if upgrade is None:
            edge.counters["refused_bad_request"] += 1
            await self._refuse(stream, http_response(400, "Bad Request", "not a WebSocket upgrade request\n"))
            return
        edge.open += 1
        if address is not None:
            self._open_by_address[address] = self._open_by_address.get(address, 0) + 1
        try:
            await self._websocket(upgrade, stream, path, deadline.deadline, principal)
        finally:
            edge.open -= 1
            if address is not None:
                remaining = self._open_by_address[address] - 1
                if remaining:
                    self._open_by_address[address] = remaining
                else:
                    del self._open_by_address[address]

    async def _admit(self, stream: trio.abc.Stream, head: bytes, path: str) -> Principal | None:
        """The principal of a WebSocket request on ``path``, or None once the request has been refused (Origin,
        credential), answered and counted."""
        if not (self._credentials.enabled or self._origins.checks):
            return ANONYMOUS
        request = parse_request_head(head)
        if request is None:
            self._edge.counters["refused_bad_request"] += 1
            await self._refuse(stream, http_response(400, "Bad Request", "not an HTTP/1.1 request\n"))
            return None
        if not self._origins.allows(request.values("origin")):
            self._edge.counters["refused_origin"] += 1
            log.info("connection from %s refused: Origin not in server.allowed_origins", peer_name(stream))
            await self._refuse(stream, http_response(403, "Forbidden", "Origin not allowed\n"))
            return None
        try:
            presented = presented_credential(request.values("authorization"), request.query)
        except AmbiguousCredential as exc:
            self._edge.counters["refused_bad_request"] += 1
            await self._refuse(stream, http_response(400, "Bad Request", f"{exc}\n"))
            return None
        admitted = (self._credentials.node(presented) if path == NODE_PATH
                    else self._credentials.session(presented))
        if admitted is Refusal.MISSING:
            self._edge.counters["refused_unauthenticated"] += 1
            log.info("connection from %s to %s refused: no credential", peer_name(stream), path)
            await self._refuse(stream, http_response(
                401, "Unauthorized", "a credential is required: Authorization: Bearer <token> or ?token=<token>\n",
                'www-authenticate: Bearer realm="trioscheduler"\r\n'))
            return None
        if admitted is Refusal.WRONG:
            self._edge.counters["refused_forbidden"] += 1
            log.info("connection from %s to %s refused: unknown credential", peer_name(stream), path)
            await self._refuse(stream, http_response(403, "Forbidden", "credential not accepted\n"))
            return None
        assert isinstance(admitted, Principal)
        return admitted

    async def _refuse(self, stream: trio.abc.Stream, response: bytes) -> None:
        with trio.move_on_after(REFUSAL_SEND_SECONDS):
            try:
                await stream.send_all(response)
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _websocket(self, upgrade: Upgrade, stream: trio.abc.Stream, path: str, deadline: float,
                         principal: Principal) -> None:
        peer = peer_name(stream)
        with trio.move_on_at(deadline) as handshake:
            try:
                await stream.send_all(upgrade.response)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._edge.counters["handshakes_aborted"] += 1
                return
        if handshake.cancelled_caught:
            self._edge.counters["handshake_timeouts"] += 1
            return
        transport = ServerWebSocket(stream, upgrade.protocol, peer, self._receive_buffer_size, upgrade.rest)
        del upgrade
        try:
            if path == SESSION_PATH:
                await self._scheduler.handle_session(transport, principal)
            elif path == STREAM_PATH and self._gateway is not None:
                await serve_stream(self._gateway, transport, principal)
            else:
                await self._scheduler.handle_node(transport, principal)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_SECONDS):
                await transport.aclose()


def _hypercorn_config(host: str, port: int, certfile: str = "", keyfile: str = "") -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{host}:{port}"]
    hc.accesslog = None
    hc.loglevel = "WARNING"
    if certfile:
        hc.certfile, hc.keyfile = certfile, keyfile
    return hc


def _bound_port(binds: list[str]) -> int:
    return int(binds[0].rsplit(":", 1)[1])


def _hypercorn_connection(app: ASGIFramework,
                          hc: HypercornConfig) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """hypercorn's own per-connection server for a stream the door hands over (one-port mode)."""
    wrapped = wrap_app(app, hc.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)

    async def serve_http(stream: trio.abc.Stream) -> None:
        # hypercorn annotates the stream as an SSLStream, yet it serves plain streams too (as its own serve does:
        # it falls back to ``stream.socket`` when there is no TLS handshake to do).
        await TCPServer(wrapped, hc, context, ConnectionState({}), stream)  # type: ignore[arg-type]

    return serve_http


async def serve(
    config: Config,
    *,
    scheduler: Scheduler | None = None,
    task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled. ``task_status.started`` reports the bound ports (port 0 picks free ones).

    Raises ConfigError before listening if the configuration may not run: ``auth.InsecureBind`` (a non-loopback
    host without credentials), a TLS certificate or key that cannot be used."""
    policy = check_bind(config)
    server = config.server
    ssl_context = server_ssl_context(server)
    scheduler = scheduler or Scheduler(config)
    async with trio.open_nursery() as nursery:
        if policy is BindPolicy.INSECURE_OPEN:
            nursery.start_soon(warn_insecure, server.host)
        await nursery.start(scheduler.run)
        nursery.start_soon(run_drain, scheduler.drain, lambda: scheduler.sessions.live, nursery.cancel_scope)
        one_port = server.port != 0 and server.http_port == server.port
        gateway = Gateway(scheduler.client, config) if config.gateway.enabled else None
        scheduler.gateway = gateway
        http = _hypercorn_connection(make_app(scheduler, gateway), _hypercorn_config(server.host, server.port)) \
            if one_port else None
        door = Door(scheduler, config, http, gateway)
        if ssl_context is None:
            listeners = await nursery.start(functools.partial(
                trio.serve_tcp, door.serve_connection, server.port, host=server.host))
            port = listeners[0].socket.getsockname()[1]
        else:
            ssl_listeners = await nursery.start(functools.partial(
                trio.serve_ssl_over_tcp, door.serve_connection, server.port, ssl_context, host=server.host,
                https_compatible=True))  # HTTP and WebSocket framing end a connection, not close_notify
            port = ssl_listeners[0].transport_listener.socket.getsockname()[1]
        if one_port:
            http_port = port
        else:
            binds = await nursery.start(functools.partial(
                hypercorn_serve, make_app(scheduler, gateway),
                _hypercorn_config(server.host, server.http_port, server.tls_cert, server.tls_key)))
            http_port = _bound_port(binds)
        listening = Listening(server.host, port, http_port, tls=ssl_context is not None)
        log_listening("sessions", listening.session_url)
        log_listening("nodes", listening.node_url)
        log_listening("http", listening.http_url)
        scheduler.drain.listening = True
        task_status.started(listening)
