"""Issue 11, points 4 and the demo: the daemon as a process. SIGTERM drains (every finalized utterance gets its
outcome, sessions close with 1012, exit status 0); a second signal stops at once; ``demo --keep`` prints the
dashboard URL and serves until Ctrl-C."""

from __future__ import annotations

import signal

import httpx
import trio

from tests.test_drain import SERVICE_RESTART, StreamRecord, stream_until_closed
from tests.wire import WAIT, b64, exit_and_rest, pcm, session, start_daemon_process, until
from trioscheduler.sim import SimNode, SimNodeBehaviour


async def _wait_exit(process: trio.Process) -> tuple[int, str]:
    code, out = await exit_and_rest(process, process.stdout, 30)
    return code, out.decode()


async def test_sigterm_drains_streaming_sessions_and_exits_0(nursery: trio.Nursery) -> None:
    process, urls = await start_daemon_process("--port", "0", "--http-port", "0", "--log-level", "warning")
    session_url, node_url, http_url = urls.groups()
    node = SimNode(SimNodeBehaviour(delay_s=0.03, max_concurrent_jobs=8), node_id="node-TERM1")
    await nursery.start(node.run, node_url)
    records = [StreamRecord() for _ in range(3)]
    async with trio.open_nursery() as clients:
        for record in records:
            clients.start_soon(stream_until_closed, session_url, record)
        await until(lambda: all(len(record.outcomes) >= 2 for record in records))
        process.send_signal(signal.SIGTERM)
    code, stdout = await _wait_exit(process)
    assert code == 0
    assert "SIGTERM received, draining" in stdout and "drained, exiting" in stdout
    for record in records:
        assert record.close_code == SERVICE_RESTART
        indices = [outcome["utterance_index"] for outcome in record.outcomes]
        assert indices == list(range(len(indices)))
        assert {outcome["type"] for outcome in record.outcomes} == {"translation_result"}
    async with httpx.AsyncClient() as http:
        try:
            await http.get(f"{http_url}/health")
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the HTTP listener still answers after the process exited")


async def test_a_second_signal_while_draining_stops_at_once() -> None:
    process, urls = await start_daemon_process("--port", "0", "--http-port", "0", "--log-level", "warning",
                                               env={"TRIOSCHEDULER_SERVER_DRAIN_TIMEOUT_SECONDS": "600"})
    session_url, _, http_url = urls.groups()
    async with session(session_url, audio_format="pcm16") as (client, session_id), httpx.AsyncClient() as http:
        # Audio buffered and never cut: the session never reaches a boundary, so the drain would last 600 s.
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)), is_final=False)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            while (await http.get(f"{http_url}/ready")).status_code != 503:
                await trio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        code, stdout = await _wait_exit(process)
    assert code == 0
    assert "SIGTERM received, shutting down" in stdout
