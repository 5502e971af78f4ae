"""Issue 2, points 1 and 10: the daemon as an operator runs it, and the demo as a newcomer runs it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.wire import ROOT, connect, exit_and_rest, node_register, start_daemon_process


async def _stop(process: trio.Process, signum: int) -> tuple[int, bytes]:
    process.send_signal(signum)
    return await exit_and_rest(process, process.stderr)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_daemon_prints_where_it_listens_serves_health_and_stops_cleanly(signum: int) -> None:
    process, urls = await start_daemon_process("--port", "0", "--http-port", "0", "--log-level", "warning")
    _, node_url, http_url = urls.groups()
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{http_url}/health")
        assert response.status_code == 200 and response.text == "OK"
        stats = (await http.get(f"{http_url}/api/v1/stats")).json()
        assert stats["nodes"] == [] and stats["sessions"]["active"] == 0
        async with connect(node_url) as node:
            await node.send(**node_register("node-METRICS1"))
            await node.recv_type("node_register_ack")
            metrics = (await http.get(f"{http_url}/metrics")).text
            assert 'trioscheduler_nodes{state="ready"} 1.0' in metrics and "trioscheduler_pools 1.0" in metrics
    code, stderr = await _stop(process, signum)
    assert code == 0, stderr
    assert b"Traceback" not in stderr


async def test_environment_variables_and_config_file_set_keys(tmp_path: Path) -> None:
    config = tmp_path / "trioscheduler.toml"
    config.write_text('[server]\nport = 0\nhttp_port = 0\n[scheduler]\nheartbeat_interval_seconds = 2.5\n')
    process, urls = await start_daemon_process("--config", str(config), "--log-level", "warning",
                                 env={"TRIOSCHEDULER_SCHEDULER_HEARTBEAT_INTERVAL_SECONDS": "7.5"})
    async with connect(urls.group(2)) as node:
        await node.send(**node_register())
        assert (await node.recv_type("node_register_ack"))["heartbeat_interval_seconds"] == 7.5
    code, _ = await _stop(process, signal.SIGINT)
    assert code == 0


async def test_one_port_carries_websockets_and_http() -> None:
    with trio.socket.socket() as probe:  # a free port to give both servers
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process, urls = await start_daemon_process("--port", str(port), "--http-port", str(port), "--log-level", "warning")
    assert urls.group(1) == f"ws://127.0.0.1:{port}/ws/session" and urls.group(3) == f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{urls.group(3)}/health")).text == "OK"
    async with connect(urls.group(2)) as node:
        await node.send(**node_register("node-ONEPORT1"))
        assert (await node.recv_type("node_register_ack"))["node_id"] == "node-ONEPORT1"
    async with connect(urls.group(1)) as client:
        await client.send(type="session_init", src_lang="zh", tgt_lang="en")
        await client.recv_type("session_init_ack")
    code, _ = await _stop(process, signal.SIGTERM)
    assert code == 0


@pytest.mark.parametrize(("content", "key"), [
    ("[scheduler]\nmax_concurrent_jobs_per_node = 0\n", "scheduler.max_concurrent_jobs_per_node"),
    ("[segmentation]\npause = 3\n", "segmentation.pause"),
    ("[results]\ngap_timeout_seconds = \"soon\"\n", "results.gap_timeout_seconds"),
])
def test_bad_config_stops_startup_naming_the_key(tmp_path: Path, content: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    done = subprocess.run([sys.executable, "-m", "trioscheduler", "--config", str(path)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2
    assert key in done.stderr


def test_demo_runs_the_whole_system() -> None:
    done = subprocess.run([sys.executable, "-m", "trioscheduler", "demo"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\[zh->en\] utterance 0: +\d+\.\d ms", done.stdout), done.stdout
    assert re.search(r"\[en->zh\] utterance 0: +\d+\.\d ms", done.stdout), done.stdout
    assert "0 errors" in done.stdout


async def test_examples_sim_node_and_stream_client_against_the_daemon() -> None:
    process, urls = await start_daemon_process("--port", "0", "--http-port", "0", "--log-level", "warning")
    node = await trio.lowlevel.open_process(
        [sys.executable, "examples/sim_node.py", "--scheduler", urls.group(2), "--count", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient() as http:
            with trio.fail_after(20):
                # Another process: its HTTP stats are all there is to watch.
                while len((await http.get(f"{urls.group(3)}/api/v1/stats")).json()["nodes"]) < 2:
                    await trio.sleep(0.05)
        client = await trio.run_process(
            [sys.executable, "examples/stream_client.py", "--scheduler", urls.group(1), "--no-realtime",
             "--cut", "vad"], cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
        output = client.stdout.decode()
        assert client.returncode == 0, output + client.stderr.decode()
        assert re.search(r"\d+(\.\d+)? ms", output), output
        assert "translation_result" in output or "[en]" in output, output
    finally:
        node.kill()
        await node.wait()
        await _stop(process, signal.SIGINT)
