"""Issue 10, points 1 and 6, as an operator meets them: a public bind without credentials does not start (unless
--insecure, which warns), credentials and TLS come from the config file and the flags."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import trio
import trustme

from tests.auth_wire import bearer, open_peer, refused_status, register
from tests.wire import ROOT, exit_and_rest, start_daemon_process


async def _stop(process: trio.Process) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    code, stderr = await exit_and_rest(process, process.stderr)
    return code, stderr.decode()


def test_a_public_bind_without_credentials_refuses_to_start_saying_why() -> None:
    done = subprocess.run([sys.executable, "-m", "trioscheduler", "--host", "0.0.0.0", "--port", "0",
                           "--http-port", "0"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to listen on '0.0.0.0' without authentication" in done.stderr
    assert "--insecure" in done.stderr and "listening" not in done.stdout


async def test_insecure_starts_open_and_warns() -> None:
    process, urls = await start_daemon_process("--host", "0.0.0.0", "--port", "0", "--http-port", "0",
                                               "--insecure", "--log-level", "warning")
    node_url = urls.group(2).replace("0.0.0.0", "127.0.0.1", 1)
    async with open_peer(node_url) as node:
        await register(node)
    code, stderr = await _stop(process)
    assert code == 0
    assert "insecure_bind host=0.0.0.0" in stderr, stderr


async def test_credentials_from_the_config_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "secure.toml"
    config.write_text('[auth]\nnode_tokens = ["from-file"]\nadmin_tokens = ["adm"]\n'
                      '[auth.api_keys]\n"key-1" = "tenant-1"\n')
    process, urls = await start_daemon_process(
        "--host", "0.0.0.0", "--config", str(config), "--port", "0", "--http-port", "0", "--log-level", "warning",
        env={"TRIOSCHEDULER_AUTH_ADMIN_TOKENS": '["from-env"]'})
    session_url, node_url, http_url = (url.replace("0.0.0.0", "127.0.0.1", 1) for url in urls.groups())
    try:
        assert await refused_status(node_url) == 401
        assert await refused_status(session_url, bearer("from-file")) == 403
        async with open_peer(node_url, bearer("from-file")) as node:
            await register(node)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{http_url}/api/v1/stats", params={"token": "adm"})).status_code == 403
            assert (await http.get(f"{http_url}/api/v1/stats", params={"token": "from-env"})).status_code == 200
    finally:
        code, stderr = await _stop(process)
    assert code == 0 and "from-file" not in stderr and "from-env" not in stderr


async def test_tls_flags(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trioscheduler", "--port", "0", "--http-port", "0", "--log-level", "warning",
         "--tls-cert", str(tmp_path / "both.pem"), "--tls-key", str(tmp_path / "both.pem")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None
    line = b""
    with trio.fail_after(20):
        while b"\n" not in line:
            chunk = await process.stdout.receive_some()
            assert chunk, line
            line += chunk
    words = line.decode().split()
    session_url, node_url, http_url = words[3], words[5], words[7]
    assert session_url.startswith("wss://") and http_url.startswith("https://"), line
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with open_peer(node_url, ssl_context=context) as node:
        await register(node)
    async with httpx.AsyncClient(verify=context) as http:
        assert (await http.get(f"{http_url}/health")).text == "OK"
    code, _ = await _stop(process)
    assert code == 0


def test_tls_cert_without_key_stops_startup() -> None:
    done = subprocess.run([sys.executable, "-m", "trioscheduler", "--port", "0", "--tls-cert", "x.pem"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2 and "server.tls_cert and server.tls_key must be set together" in done.stderr
