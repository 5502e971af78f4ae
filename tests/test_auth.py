"""Issue 10, point 1: authentication at the door, over real sockets, in both listener modes. A refused handshake
gets its HTTP status before any WebSocket opens; an admitted socket's handler gets the credential's Principal."""

from __future__ import annotations

import hashlib
import socket
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from tests.auth_wire import bearer, init_session, open_peer, refused_status, register
from tests.wire import Daemon, b64, pcm, result_for, until
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.server.listener import serve
from trioscheduler.transport import Transport

NODE_TOKEN = "node-secret-1"
KEY_A = "key/a+b=c&d"  # characters a query string must percent-encode
KEY_B = "key-b"
ADMIN = "admin-secret"
AUTH = {"node_tokens": [NODE_TOKEN], "api_keys": {KEY_A: "tenant-a", KEY_B: "tenant-b"}, "admin_tokens": [ADMIN]}


class RecordingScheduler(Scheduler):
    """The real scheduler, noting the Principal the door hands each socket."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.principals: list[tuple[str, Principal]] = []

    async def handle_session(self, transport: Transport, principal: Principal = ANONYMOUS) -> None:
        self.principals.append(("session", principal))
        await super().handle_session(transport, principal)

    async def handle_node(self, transport: Transport, principal: Principal = ANONYMOUS) -> None:
        self.principals.append(("node", principal))
        await super().handle_node(transport, principal)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(params=("two_listeners", "one_port"))
async def start(request: pytest.FixtureRequest, nursery: trio.Nursery,
                make_config: Callable[..., Config]) -> Callable[..., Any]:
    async def start_daemon(**sections: dict[str, Any]) -> Daemon:
        if request.param == "one_port":
            port = _free_port()
            sections["server"] = {**sections.get("server", {}), "port": port, "http_port": port}
        config = make_config(**sections)
        scheduler = RecordingScheduler(config)
        listening = await nursery.start(lambda task_status: serve(config, scheduler=scheduler,
                                                                  task_status=task_status))
        return Daemon(scheduler, listening)

    return start_daemon


def _principals(daemon: Daemon) -> list[tuple[str, Principal]]:
    assert isinstance(daemon.scheduler, RecordingScheduler)
    return daemon.scheduler.principals


async def test_no_credential_401_wrong_credential_403_before_any_websocket(start: Callable[..., Any]) -> None:
    daemon = await start(auth=AUTH)
    for url in (daemon.node_url, daemon.session_url):
        assert await refused_status(url) == 401
        assert await refused_status(url, bearer("not-a-credential")) == 403
        assert await refused_status(f"{url}?token=not-a-credential") == 403
        assert await refused_status(url, (b"authorization", b"Basic dXNlcjpwYXNz")) == 401
    # a credential of the other kind is a wrong one
    assert await refused_status(daemon.node_url, bearer(KEY_B)) == 403
    assert await refused_status(daemon.session_url, bearer(NODE_TOKEN)) == 403
    assert await refused_status(daemon.session_url, bearer(ADMIN)) == 403
    counters = daemon.scheduler.edge.counters
    assert counters["refused_unauthenticated"] == 4 and counters["refused_forbidden"] == 7
    assert _principals(daemon) == [] and daemon.scheduler.edge.open == 0


async def test_admitted_sockets_carry_their_principal_and_work(start: Callable[..., Any]) -> None:
    daemon = await start(auth=AUTH, segmentation={"pause_ms": 300})
    async with open_peer(daemon.node_url, bearer(NODE_TOKEN)) as node, \
            open_peer(f"{daemon.session_url}?token={urllib.parse.quote(KEY_A, safe='')}") as client_a, \
            open_peer(daemon.session_url, bearer(KEY_B)) as client_b:
        node_id = await register(node, "node-AUTH1")
        sid = await init_session(client_a)
        await init_session(client_b)
        await client_a.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)),
                            audio_format="pcm16", sample_rate=16000)
        assign = await node.recv_type("job_assign")
        await node.send(**result_for(assign, node_id=node_id))
        assert (await client_a.recv_type("translation_result"))["session_id"] == sid
    kinds = {principal.tenant_id: (kind, principal) for kind, principal in _principals(daemon)}
    node_kind, node_principal = kinds[None]
    (_, principal_a), (_, principal_b) = kinds["tenant-a"], kinds["tenant-b"]
    assert node_kind == "node" and node_principal.tenant_id is None
    credentials = [p.credential for p in (node_principal, principal_a, principal_b)]
    assert all(credentials) and len(set(credentials)) == 3  # one stable id per credential
    for credential, secret in zip(credentials, (NODE_TOKEN, KEY_A, KEY_B), strict=True):
        assert credential is not None
        assert secret not in credential and credential not in hashlib.sha256(secret.encode()).hexdigest()


async def test_sha256_form_admits_the_secret_it_hashes(start: Callable[..., Any]) -> None:
    digest = hashlib.sha256(NODE_TOKEN.encode()).hexdigest().upper()  # hex in either case
    key_digest = hashlib.sha256(KEY_B.encode()).hexdigest()
    daemon = await start(auth={"node_tokens": [f"sha256:{digest}"], "api_keys": {f"sha256:{key_digest}": "t"}})
    async with open_peer(daemon.node_url, bearer(NODE_TOKEN)) as node:
        assert await register(node, "node-HASHED1") == "node-HASHED1"
    async with open_peer(daemon.session_url, bearer(KEY_B)) as client:
        await init_session(client)
    # the digest itself is not a credential
    assert await refused_status(daemon.node_url, bearer(f"sha256:{digest}")) == 403
    assert await refused_status(daemon.node_url, bearer(digest)) == 403
    assert [p.tenant_id for _, p in _principals(daemon)] == [None, "t"]


async def test_a_kind_without_credentials_admits_nobody_once_auth_is_on(start: Callable[..., Any]) -> None:
    daemon = await start(auth={"api_keys": {KEY_B: "t"}})  # no node_tokens
    assert await refused_status(daemon.node_url) == 401
    assert await refused_status(daemon.node_url, bearer(KEY_B)) == 403
    async with open_peer(daemon.session_url, bearer(KEY_B)) as client:
        await init_session(client)


async def test_two_different_credentials_in_one_handshake_are_refused(start: Callable[..., Any]) -> None:
    daemon = await start(auth=AUTH)
    assert await refused_status(f"{daemon.session_url}?token={KEY_B}", bearer(NODE_TOKEN)) == 400
    assert await refused_status(f"{daemon.session_url}?token={KEY_B}&token={KEY_B}x") == 400
    async with open_peer(f"{daemon.session_url}?token={KEY_B}", bearer(KEY_B)) as client:  # the same twice
        await init_session(client)


async def test_without_credentials_on_loopback_every_socket_is_anonymous(start: Callable[..., Any]) -> None:
    daemon = await start()
    async with open_peer(daemon.node_url, bearer("anything")) as node, open_peer(daemon.session_url) as client:
        await register(node)
        await init_session(client)
    assert _principals(daemon) == [("node", ANONYMOUS), ("session", ANONYMOUS)]


async def test_stats_needs_an_admin_token_when_auth_is_on(start: Callable[..., Any]) -> None:
    daemon = await start(auth=AUTH)
    http = daemon.listening.http_url
    async with open_peer(daemon.node_url, bearer(NODE_TOKEN)) as node, httpx.AsyncClient() as client:
        await register(node, "node-SECRETID")
        unauthenticated = await client.get(f"{http}/api/v1/stats")
        assert unauthenticated.status_code == 401 and b"node-SECRETID" not in unauthenticated.content
        for token in (NODE_TOKEN, KEY_B):
            wrong = await client.get(f"{http}/api/v1/stats", headers={"authorization": f"Bearer {token}"})
            assert wrong.status_code == 403 and b"node-SECRETID" not in wrong.content
        by_header = await client.get(f"{http}/api/v1/stats", headers={"authorization": f"Bearer {ADMIN}"})
        by_query = await client.get(f"{http}/api/v1/stats", params={"token": ADMIN})
        assert by_header.status_code == by_query.status_code == 200
        assert [n["node_id"] for n in by_header.json()["nodes"]] == ["node-SECRETID"]
        assert (await client.get(f"{http}/health")).status_code == 200
        assert (await client.get(f"{http}/metrics")).status_code == 200


async def test_connections_per_address_429_and_freed_places_are_reused(start: Callable[..., Any]) -> None:
    daemon = await start(limits={"connections_per_address": 2, "connections_per_address_exempt": ["10.0.0.0/8"]})
    async with open_peer(daemon.session_url) as first, open_peer(daemon.node_url) as second:
        await init_session(first)
        await register(second)
        assert await refused_status(daemon.session_url) == 429
        assert await refused_status(daemon.node_url) == 429
        assert daemon.scheduler.edge.counters["refused_per_address"] == 2
        assert daemon.scheduler.edge.open == 2
    await until(lambda: daemon.scheduler.edge.open == 0)
    async with open_peer(daemon.session_url) as again:
        await init_session(again)


async def test_a_non_ascii_secret_matches_in_the_header_and_the_query(start: Callable[..., Any]) -> None:
    daemon = await start(auth={"api_keys": {"clé-ünïcode": "t"}})
    async with open_peer(daemon.session_url, (b"authorization", "Bearer clé-ünïcode".encode())) as by_header, \
            open_peer(f"{daemon.session_url}?token={urllib.parse.quote('clé-ünïcode')}") as by_query:
        await init_session(by_header)
        await init_session(by_query)
    assert await refused_status(daemon.session_url, (b"authorization", "Bearer clé-ünïcode".encode("latin-1"))) \
        == 403


async def test_exempt_peers_are_not_held_to_the_per_address_cap(start: Callable[..., Any]) -> None:
    daemon = await start(limits={"connections_per_address": 1, "connections_per_address_exempt": ["127.0.0.0/8"]})
    async with open_peer(daemon.session_url) as first, open_peer(daemon.session_url) as second:
        await init_session(first)
        await init_session(second)
    assert daemon.scheduler.edge.counters["refused_per_address"] == 0


async def test_loopback_is_held_to_the_per_address_cap_by_default(start: Callable[..., Any]) -> None:
    """The issue's case, on this host: one address opening more sessions than ``connections_per_address``."""
    daemon = await start(limits={"connections_per_address": 3})
    async with open_peer(daemon.session_url) as a, open_peer(daemon.session_url) as b, \
            open_peer(daemon.session_url) as c:
        for peer in (a, b, c):
            await init_session(peer)
        assert await refused_status(daemon.session_url) == 429
    assert daemon.scheduler.edge.counters["refused_per_address"] == 1
