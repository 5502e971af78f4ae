"""Issue 10, point 5: browsers. A WebSocket handshake whose Origin is not allowed gets 403 before it opens; a
handshake without an Origin header (not a browser) is never refused for it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.auth_wire import init_session, open_peer, refused_status, register
from tests.wire import start_daemon
from trioscheduler.auth import OriginPolicy
from trioscheduler.config import Config, ServerConfig


def origin(value: str) -> tuple[bytes, bytes]:
    return (b"origin", value.encode())


async def test_loopback_without_a_list_accepts_any_origin(nursery: trio.Nursery,
                                                          make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config())
    async with open_peer(daemon.session_url, origin("https://anywhere.example")) as client:
        await init_session(client)


async def test_an_origin_outside_the_list_gets_403(nursery: trio.Nursery,
                                                   make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(
        server={"allowed_origins": ["https://app.example", "http://localhost:3000"]}))
    for url in (daemon.session_url, daemon.node_url):
        assert await refused_status(url, origin("https://evil.example")) == 403
        assert await refused_status(url, origin("https://app.example.evil.example")) == 403
        assert await refused_status(url, origin("null")) == 403
    # two Origin headers that differ are refused even if one is allowed
    assert await refused_status(daemon.session_url, origin("https://app.example"), origin("https://evil.example")) \
        == 403
    assert daemon.scheduler.edge.counters["refused_origin"] == 7
    async with open_peer(daemon.session_url, origin("https://APP.example/")) as listed, \
            open_peer(daemon.session_url, origin("http://localhost:3000")) as other, \
            open_peer(daemon.node_url) as no_origin:
        await init_session(listed)
        await init_session(other)
        await register(no_origin)


async def test_off_loopback_without_a_list_no_browser_origin_is_accepted(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    # every interface, open (auth.insecure): the listener is reached through 127.0.0.1
    daemon = await start_daemon(nursery, make_config(server={"host": "0.0.0.0"}, auth={"insecure": True}))
    port = daemon.listening.port
    session_url = f"ws://127.0.0.1:{port}/ws/session"
    assert await refused_status(session_url, origin("https://app.example")) == 403
    assert await refused_status(f"ws://127.0.0.1:{port}/ws/node", origin("http://127.0.0.1")) == 403
    async with open_peer(session_url) as client:
        await init_session(client)


@pytest.mark.parametrize(("host", "listed", "checks"), [
    ("127.0.0.1", [], False), ("::1", [], False), ("localhost", [], False), ("127.0.0.2", [], False),
    ("0.0.0.0", [], True), ("::", [], True), ("10.0.0.5", [], True), ("scheduler.example", [], True),
    ("127.0.0.1", ["https://a.example"], True), ("0.0.0.0", ["*"], False),
])
def test_origin_policy_by_host_and_list(host: str, listed: list[str], checks: bool) -> None:
    policy = OriginPolicy.from_config(ServerConfig(host=host, allowed_origins=tuple(listed)))
    assert policy.checks is checks
    assert policy.allows([]) is True
    assert policy.allows(["https://b.example"]) is (not checks)
