"""Issue 10, point 6: TLS on both listeners (wss:// and https://), with a certificate from a test CA (trustme)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket
import trustme

from tests.auth_wire import bearer, init_session, open_peer, refused_status, register
from tests.wire import b64, pcm, result_for, start_daemon
from trioscheduler.config import Config, ConfigError, ServerConfig
from trioscheduler.tls import server_ssl_context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return {"tls_cert": str(cert_path), "tls_key": str(key_path)}


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("mode", ["two_listeners", "one_port"])
async def test_wss_session_and_node_round_trip_and_https_health(
        mode: str, nursery: trio.Nursery, make_config: Callable[..., Config], tls_files: dict[str, str],
        client_context: ssl.SSLContext) -> None:
    server: dict[str, object] = dict(tls_files)
    if mode == "one_port":
        port = _free_port()
        server.update(port=port, http_port=port)
    daemon = await start_daemon(nursery, make_config(
        server=server, auth={"node_tokens": ["n"], "api_keys": {"k": "t"}, "admin_tokens": ["a"]}))
    assert daemon.session_url.startswith("wss://") and daemon.listening.http_url.startswith("https://")
    async with open_peer(daemon.node_url, bearer("n"), ssl_context=client_context) as node, \
            open_peer(daemon.session_url + "?token=k", ssl_context=client_context) as client:
        node_id = await register(node, "node-TLS1")
        sid = await init_session(client)
        await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000)
        assign = await node.recv_type("job_assign")
        await node.send(**result_for(assign, node_id=node_id))
        result = await client.recv_type("translation_result")
        assert result["session_id"] == sid and result["text_translated"] == "translated 0"
    # refusals are answered over TLS too
    assert await refused_status(daemon.node_url, ssl_context=client_context) == 401
    async with httpx.AsyncClient(verify=client_context) as http:
        assert (await http.get(f"{daemon.listening.http_url}/health")).text == "OK"
        stats = await http.get(f"{daemon.listening.http_url}/api/v1/stats", headers={"authorization": "Bearer a"})
        assert stats.status_code == 200
    # a client that does not trust the certificate, and one that speaks plain WebSocket, get nowhere
    with pytest.raises(trio_websocket.HandshakeError):
        async with open_peer(daemon.session_url, ssl_context=ssl.create_default_context()):
            pass
    with pytest.raises(trio_websocket.HandshakeError):
        async with open_peer(daemon.session_url.replace("wss://", "ws://", 1)):
            pass
    async with open_peer(daemon.session_url, bearer("k"), ssl_context=client_context) as client:
        await init_session(client)  # and the door goes on serving


def test_cert_and_key_must_come_together_and_be_usable(tls_files: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        server_ssl_context(ServerConfig(tls_cert=tls_files["tls_cert"]))
    with pytest.raises(ConfigError, match="cannot read"):
        server_ssl_context(ServerConfig(tls_cert=str(tmp_path / "absent.pem"), tls_key=tls_files["tls_key"]))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a usable PEM"):
        server_ssl_context(ServerConfig(tls_cert=str(garbage), tls_key=tls_files["tls_key"]))
    assert server_ssl_context(ServerConfig()) is None
    assert server_ssl_context(ServerConfig(**tls_files)) is not None
