"""The network edge over real sockets: what one connection does at the door (handshake, limits, resets) stays that
connection's; the daemon keeps serving a well-behaved session throughout. Every test runs in both listener modes:
two listeners (WebSockets and HTTP on their own ports) and one port carrying both."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection

from tests.websocket_server import serve_websockets
from tests.wire import WAIT, Daemon, masked_frame_head, session, start_daemon, until
from trioscheduler.config import Config
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.server.listener import MAX_REQUEST_HEAD_BYTES, RequestHeadTooLarge, read_request_head, request_path
from trioscheduler.server.websocket import ServerWebSocket
from trioscheduler.transport import peer_name

MODES = ("two_listeners", "one_port")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    """A port the OS just handed out; the one-port mode needs a number (0 means two listeners)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=MODES)
async def edge_daemon(request: pytest.FixtureRequest, nursery: trio.Nursery,
                      make_config: Callable[..., Config]) -> Callable[..., Any]:
    """A factory: ``await edge_daemon(limits={...})`` starts a daemon in this test's listener mode."""

    async def start(**sections: dict[str, Any]) -> Daemon:
        if request.param == "one_port":
            port = _free_port()
            sections["server"] = {**sections.get("server", {}), "port": port, "http_port": port}
        return await start_daemon(nursery, make_config(**sections))

    return start


def _address(daemon: Daemon) -> tuple[str, int]:
    return daemon.listening.host, daemon.listening.port


async def _raw(daemon: Daemon) -> trio.SocketStream:
    return await trio.open_tcp_stream(*_address(daemon))


def _upgrade_request(path: str = "/ws/session") -> bytes:
    return WSConnection(ConnectionType.CLIENT).send(wsproto.events.Request(host="127.0.0.1", target=path))


def _reset(stream: trio.SocketStream) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def _read_until_eof(stream: trio.SocketStream, limit: int = 1 << 20) -> bytes:
    data = b""
    with trio.fail_after(WAIT):
        while len(data) < limit:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return data


async def _still_serves(daemon: Daemon) -> None:
    """A well-behaved client still gets a session (the process, the listener and the registry are alive), and
    nothing at the edge failed other than by its peer going away."""
    async with session(daemon.session_url) as (client, session_id):
        await client.send(type="session_close", session_id=session_id)
        await client.recv_type("session_close_ack")
    assert daemon.scheduler.edge.counters["connection_errors"] == 0


class RawClient:
    """A WebSocket client that writes frames by hand (any length header, any payload) and reads the server's."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def open(cls, address: tuple[str, int], path: str = "/ws/session") -> RawClient:
        client = cls(await trio.open_tcp_stream(*address))
        await client.stream.send_all(client.ws.send(wsproto.events.Request(host="127.0.0.1", target=path)))
        with trio.fail_after(WAIT):
            while True:
                client.ws.receive_data(await client.stream.receive_some(65536))
                if any(isinstance(e, wsproto.events.AcceptConnection) for e in client.ws.events()):
                    return client

    async def send_frame(self, opcode: int, payload: bytes, *, length: int | None = None, fin: bool = True) -> None:
        """One masked frame (mask key 0, so the payload goes as is); ``length`` may claim more than is sent."""
        length = len(payload) if length is None else length
        await self.stream.send_all(masked_frame_head(opcode, length, fin) + b"\0\0\0\0" + payload)

    async def close_code(self) -> int | None:
        """The code of the server's close frame, or None if TCP ended without one."""
        with trio.fail_after(WAIT):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data:
                    return None
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, wsproto.events.CloseConnection):
                        return event.code


# 1. Nothing on one connection ends the process.

async def test_reset_after_upgrade_request_leaves_the_daemon_serving(edge_daemon: Callable[..., Any]) -> None:
    daemon = await edge_daemon()
    for _ in range(5):
        stream = await _raw(daemon)
        await stream.send_all(_upgrade_request())
        _reset(stream)
    await trio.sleep(0.1)  # let the server meet the resets
    await _still_serves(daemon)
    stats = await daemon.scheduler.stats()
    assert stats is not None and stats["connections_crashed"] == 0


async def test_reset_right_after_accept_and_during_close(edge_daemon: Callable[..., Any]) -> None:
    daemon = await edge_daemon()
    for _ in range(3):
        client = await RawClient.open(_address(daemon))
        _reset(client.stream)
    for _ in range(3):
        client = await RawClient.open(_address(daemon))
        await client.stream.send_all(client.ws.send(wsproto.events.CloseConnection(code=1000)))
        _reset(client.stream)
    await trio.sleep(0.1)
    await _still_serves(daemon)


async def test_reset_while_the_server_refuses_a_frame(edge_daemon: Callable[..., Any]) -> None:
    """A frame wsproto refuses (reserved opcode, invalid UTF-8, oversize), then a reset before the close frame."""
    daemon = await edge_daemon(limits={"max_message_bytes": 1000})
    for opcode, payload in ((0x3, b"x"), (0x1, b"\xff"), (0x1, b"a" * 2000)):
        client = await RawClient.open(_address(daemon))
        await client.send_frame(opcode, payload)
        _reset(client.stream)
    await trio.sleep(0.1)
    await _still_serves(daemon)
    stats = await daemon.scheduler.stats()
    assert stats is not None and stats["connections_crashed"] == 0


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xaa" * 64 + b"\r\n\r\n",  # a TLS hello
    b"GET /ws/session HTTP/1.1\r\nHost: x\r\n\r\n",  # no upgrade headers
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET /ws/session HTTP/1.1\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",
])
async def test_garbage_instead_of_an_upgrade_is_refused(edge_daemon: Callable[..., Any], garbage: bytes) -> None:
    daemon = await edge_daemon()
    stream = await _raw(daemon)
    # The server may have refused and closed before everything was written.
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(garbage)
    answer = await _read_until_eof(stream)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    await stream.aclose()
    await _still_serves(daemon)


async def test_unknown_path_is_refused(edge_daemon: Callable[..., Any]) -> None:
    """404 from the door; 403 in one-port mode, where any other path goes to the HTTP app."""
    daemon = await edge_daemon()
    stream = await _raw(daemon)
    await stream.send_all(_upgrade_request("/ws/elsewhere"))
    answer = await _read_until_eof(stream)
    assert answer.startswith((b"HTTP/1.1 404", b"HTTP/1.1 403")), answer[:200]
    await stream.aclose()
    await _still_serves(daemon)


# 4. The upgrade must complete within the handshake deadline.

@pytest.mark.parametrize("sent", [b"", b"GET /ws/session HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
async def test_silent_or_half_sent_upgrade_is_closed_at_the_deadline(edge_daemon: Callable[..., Any],
                                                                      sent: bytes) -> None:
    daemon = await edge_daemon(limits={"handshake_timeout_seconds": 0.2})
    stream = await _raw(daemon)
    await stream.send_all(sent)
    assert await _read_until_eof(stream) == b""  # closed by the server, with nothing said
    await stream.aclose()
    assert daemon.scheduler.edge.counters["handshake_timeouts"] == 1
    await _still_serves(daemon)


# 2. The connection cap.

async def test_connections_beyond_the_cap_get_503_and_the_daemon_lives(edge_daemon: Callable[..., Any]) -> None:
    daemon = await edge_daemon(limits={"max_connections": 2})
    async with session(daemon.session_url), session(daemon.session_url):
        for path in ("/ws/session", "/ws/node"):
            stream = await _raw(daemon)
            await stream.send_all(_upgrade_request(path))
            answer = await _read_until_eof(stream)
            await stream.aclose()
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
            assert b"max_connections" in answer
        assert daemon.scheduler.edge.counters["refused_at_capacity"] == 2
        assert daemon.scheduler.edge.open == 2
    await until(lambda: not daemon.scheduler.edge.open)
    await _still_serves(daemon)  # the freed places are usable again


# 3. Limits in bytes, refused early, with the right close code.

async def test_message_limit_counts_utf8_bytes(edge_daemon: Callable[..., Any]) -> None:
    daemon = await edge_daemon(limits={"max_message_bytes": 4000})
    client = await RawClient.open(_address(daemon))
    await client.send_frame(0x1, ("😀" * 1500).encode())  # 1,500 characters, 6,000 bytes
    assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG
    await client.stream.aclose()
    fits = await RawClient.open(_address(daemon))
    await fits.send_frame(0x1, ("é" * 1999).encode())  # 3,998 bytes: under the limit, answered (not closed)
    await fits.stream.aclose()
    await _still_serves(daemon)


async def test_oversize_frame_is_refused_at_its_header(edge_daemon: Callable[..., Any]) -> None:
    """Only the header of a 100 MB frame is sent: the close comes without the server waiting for the payload."""
    daemon = await edge_daemon(limits={"max_message_bytes": 65536})
    client = await RawClient.open(_address(daemon))
    await client.send_frame(0x1, b"{", length=100 * 2**20)
    assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG
    await client.stream.aclose()
    await _still_serves(daemon)


async def test_oversize_message_in_fragments_is_refused(edge_daemon: Callable[..., Any]) -> None:
    daemon = await edge_daemon(limits={"max_message_bytes": 65536})
    client = await RawClient.open(_address(daemon))
    await client.send_frame(0x1, b"a" * 40000, fin=False)
    await client.send_frame(0x0, b"", length=40000, fin=False)  # the continuation's header is enough
    assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG
    await client.stream.aclose()


async def test_invalid_utf8_gets_a_1007_close_frame(edge_daemon: Callable[..., Any]) -> None:
    daemon = await edge_daemon()
    client = await RawClient.open(_address(daemon))
    await client.send_frame(0x1, b'{"type": "\xff\xfe"}')
    assert await client.close_code() == CloseCode.INVALID_PAYLOAD
    await client.stream.aclose()
    await _still_serves(daemon)




async def test_http_endpoints_and_edge_counters(edge_daemon: Callable[..., Any]) -> None:
    """/health, /api/v1/stats and /metrics answer in both modes (keep-alive included), and show the door's work."""
    import httpx

    daemon = await edge_daemon(limits={"max_connections": 1})
    async with session(daemon.session_url):
        stream = await _raw(daemon)
        await stream.send_all(_upgrade_request())
        assert (await _read_until_eof(stream)).startswith(b"HTTP/1.1 503")
        await stream.aclose()
        async with httpx.AsyncClient() as http:
            for _ in range(2):
                assert (await http.get(f"{daemon.listening.http_url}/health")).text == "OK"
            stats = (await http.get(f"{daemon.listening.http_url}/api/v1/stats")).json()
            metrics = (await http.get(f"{daemon.listening.http_url}/metrics")).text
    assert stats["edge"] == {"open": 1, "counters": {"refused_at_capacity": 1}}
    assert 'trioscheduler_edge_events_total{event="refused_at_capacity"} 1.0' in metrics
    assert "trioscheduler_connections_open 1.0" in metrics


# 5. Closing a transport never raises.

async def test_websocket_transport_aclose_never_raises_after_a_reset(nursery: trio.Nursery) -> None:
    """A server-side transport whose peer reset mid-connection: aclose (twice) returns quietly."""
    accepted, transports = trio.open_memory_channel[ServerWebSocket](1)

    async def handler(ws: ServerWebSocket) -> None:
        await accepted.send(ws)
        await trio.sleep_forever()

    port = await nursery.start(serve_websockets, handler)
    client = await RawClient.open(("127.0.0.1", port))
    transport = await transports.receive()
    _reset(client.stream)
    await trio.sleep(0.05)
    with trio.fail_after(WAIT):
        await transport.aclose(CloseCode.SLOW_CONSUMER, "bye")
        await transport.aclose()
    nursery.cancel_scope.cancel()


# Parsing at the door.

@given(st.binary(max_size=300))
def test_request_path_of_any_bytes_is_a_path_or_none(data: bytes) -> None:
    path = request_path(data)
    assert path is None or isinstance(path, str)


@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40), st.binary(max_size=50))
def test_request_head_is_read_whole_however_it_is_split(cuts: list[int], after: bytes) -> None:
    head = _upgrade_request()
    wire = head + after

    async def read() -> bytes | None:
        send, receive = trio.testing.memory_stream_one_way_pair()
        position = 0
        for cut in cuts:
            await send.send_all(wire[position:position + cut])
            position += cut
        await send.send_all(wire[position:])
        await send.aclose()
        return await read_request_head(receive)

    got = trio.run(read)
    assert got is not None and got.startswith(head) and wire.startswith(got)


def test_peer_name_of_a_socket_without_a_peer_is_unknown() -> None:
    class Unconnected:
        def __init__(self) -> None:
            self.socket = socket.socket()

    stream = Unconnected()
    try:
        assert peer_name(stream) == "unknown"  # type: ignore[arg-type]  # getpeername: ENOTCONN
    finally:
        stream.socket.close()


async def test_request_head_over_the_bound_is_refused() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * MAX_REQUEST_HEAD_BYTES)
    with pytest.raises(RequestHeadTooLarge):
        await read_request_head(receive)


# 2. The daemon raises its soft descriptor limit and logs the cap it runs with.

@pytest.mark.parametrize(("hard_limit", "warned"), [(None, False), (512, True)])
async def test_daemon_raises_its_fd_limit_and_logs_the_cap(hard_limit: int | None, warned: bool) -> None:
    import os
    import resource
    import signal
    import subprocess
    import sys

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = hard if hard_limit is None else hard_limit

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))

    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trioscheduler", "--port", "0", "--http-port", "0", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT,
        env={**os.environ, "TRIOSCHEDULER_LIMITS_MAX_CONNECTIONS": "1000"}, preexec_fn=low_soft_limit)
    try:
        assert process.stdout is not None and process.stderr is not None
        with trio.fail_after(20):
            assert b"listening" in await process.stdout.receive_some()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await process.wait() == 0
        stderr = b""
        while chunk := await process.stderr.receive_some():
            stderr += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = stderr.decode()
    assert f"connection_cap max_connections=1000 fd_soft_limit={hard} fd_hard_limit={hard}" in text, text
    assert ("connection_cap_exceeds_fd_limit" in text) is warned, text
