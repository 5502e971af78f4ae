"""Issue 15: the original-like simulated node (``SimNodeBehaviour(mode="original")``) against the daemon.

First its own behaviour, over real WebSockets (the daemon on 127.0.0.1 port 0): it holds a job with no cut flag,
answers a turn once on its ending job, may close held jobs with NO_TEXT_ASSIGNED, drops a repeated text. These
checks look at what the node sent, not at how the daemon orders results, so they hold whatever the ordering.

Then the end-to-end cases of issue 15 against this node, over in-memory transports under MockClock so the time
bounds are exact: a later result is not held behind a job the node never answers, a turn answered on its last job
closes its earlier jobs without a re-dispatch, session_close is acked within ``results.close_wait_seconds``, and a
node whose TTS is stopped still gets jobs. Every wait has a deadline, so a bug fails instead of hanging.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
import trio_websocket

from tests.wire import WAIT, Peer, b64, memory_session, pcm, session, start_daemon
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.demo import demo_nodes
from trioscheduler.sim import SimNode, SimNodeBehaviour, expected_turn_texts
from trioscheduler.transport import memory_transport_pair

ROOT = Path(__file__).resolve().parent.parent
OUTCOMES = ("translation_result", "missing_result", "error")
#: Messages a session may get besides outcomes while these tests wait for one.
NOT_OUTCOMES = ("server_heartbeat", "asr_partial")
#: Defaults of the keys issue 15 adds: ``results.max_hold_ms`` and ``results.close_wait_seconds``.
MAX_HOLD_S = 1.0
CLOSE_WAIT_S = 5.0
#: Streamed-audio segmentation for turn tests: a max-duration cut (no flag the original acts on) every 400 ms.
SHORT_TURNS = {"max_duration_ms": 400.0, "pause_ms": 60_000.0}


def original(**overrides: Any) -> SimNodeBehaviour:
    return SimNodeBehaviour(mode="original", **overrides)


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for a condition on a node's counters (they move in the node's own task)."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


def results_sent(node: SimNode) -> list[dict[str, Any]]:
    """The job_results the node has sent (recorded once each send returns)."""
    return [m for m in node.sent if m["type"] == "job_result"]


async def utterance(client: Peer, sid: str, index: int, audio: bytes, manual_cut: bool) -> None:
    await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(audio),
                      audio_format="pcm16", sample_rate=16000, manual_cut=manual_cut)


async def stream(client: Peer, sid: str, chunks: list[bytes], is_final: bool) -> None:
    """200 ms chunks; the last one carries ``is_final``."""
    for i, chunk in enumerate(chunks):
        await client.send(type="audio_chunk", session_id=sid, seq=i, payload=b64(chunk),
                          is_final=is_final and i == len(chunks) - 1)


async def outcome(client: Peer, timeout: float = WAIT) -> dict[str, Any]:
    return await client.recv_type(*OUTCOMES, timeout=timeout, skip=NOT_OUTCOMES)


# ------------------------------------------------------------------------------------ the node, real sockets


async def test_original_node_holds_an_unflagged_utterance_and_answers_a_flagged_one(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config())
    node = SimNode(original())
    await nursery.start(node.run, daemon.node_url)
    async with session(daemon.session_url, audio_format="pcm16") as (client, sid):
        await utterance(client, sid, 0, pcm(300, fill=1), manual_cut=False)
        await until(lambda: node.stats.jobs_held == 1)
        await utterance(client, sid, 1, pcm(300, fill=2), manual_cut=True)
        await until(lambda: len(results_sent(node)) == 1)
        assert [r["utterance_index"] for r in results_sent(node)] == [1]
        assert results_sent(node)[0]["text_asr"] == expected_turn_texts("zh", "en", pcm(300, fill=2))[0]
        assert [h.utterance_index for h in node.held_jobs] == [0]
        assert not [m for m in node.received if m["type"] == "error"]


async def test_original_node_answers_a_streamed_turn_once_on_its_final_chunk(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(segmentation=SHORT_TURNS))
    node = SimNode(original())
    await nursery.start(node.run, daemon.node_url)
    chunks = [pcm(200, fill=i + 1) for i in range(3)]
    async with session(daemon.session_url, audio_format="pcm16") as (client, sid):
        await stream(client, sid, chunks, is_final=True)  # cut at 400 ms (turn goes on), then is_final
        await until(lambda: len(results_sent(node)) == 1)
        assigns = [m for m in node.received if m["type"] == "job_assign"]
        assert [a["utterance_index"] for a in assigns] == [0, 1]
        assert assigns[0]["turn_id"] == assigns[1]["turn_id"]
        assert not assigns[0].get("is_manual_cut") and assigns[1]["is_manual_cut"] is True
        (answer,) = results_sent(node)
        assert answer["utterance_index"] == 1
        assert answer["text_asr"] == expected_turn_texts("zh", "en", b"".join(chunks))[0]
        assert node.stats.jobs_held == 1


async def test_original_node_closes_held_jobs_with_no_text_assigned_and_each_utterance_gets_one_outcome(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(segmentation=SHORT_TURNS))
    node = SimNode(original(no_text_assigned=True))
    await nursery.start(node.run, daemon.node_url)
    async with session(daemon.session_url, audio_format="pcm16") as (client, sid):
        await stream(client, sid, [pcm(200, fill=i + 1) for i in range(3)], is_final=True)
        await until(lambda: len(results_sent(node)) == 2)
        empty = results_sent(node)[-1]
        assert empty["utterance_index"] == 0 and empty["extra"] == {"reason": "NO_TEXT_ASSIGNED"}
        first, second = await outcome(client), await outcome(client)
        assert first["utterance_index"] == 0 and first["type"] != "error"
        assert second["utterance_index"] == 1 and second["type"] == "translation_result"
        await client.send(type="session_close", session_id=sid)
        await client.recv_type("session_close_ack", skip=NOT_OUTCOMES)  # nothing else was owed
        assert not [m for m in node.received if m["type"] == "error"]


async def test_original_node_drops_a_repeated_text_through_the_daemon(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config())
    node = SimNode(original())
    await nursery.start(node.run, daemon.node_url)
    async with session(daemon.session_url, audio_format="pcm16") as (client, sid):
        same = pcm(300, fill=9)
        await utterance(client, sid, 0, same, manual_cut=True)
        assert (await outcome(client))["type"] == "translation_result"
        await utterance(client, sid, 1, same, manual_cut=True)
        await until(lambda: node.stats.results_suppressed == 1)
        assert [r["utterance_index"] for r in results_sent(node)] == [0]


# ------------------------------------------------------------------------ issue 15 end to end, MockClock


def _config(make_config: Callable[..., Config], **sections: dict[str, Any]) -> Config:
    """Default timeouts (what users run with); sim nodes heartbeat, so they stay alive as the clock jumps."""
    return make_config(**sections)


async def memory_sim_node(nursery: trio.Nursery, scheduler: Scheduler, behaviour: SimNodeBehaviour,
                          node_id: str) -> SimNode:
    """A registered SimNode over an in-memory transport (no socket), so MockClock can drive time."""
    node = SimNode(behaviour, node_id=node_id)
    server_side, node_side = memory_transport_pair("node")
    nursery.start_soon(scheduler.handle_node, server_side)
    await nursery.start(node.serve, node_side)
    return node


async def test_a_later_result_is_released_within_the_hold_while_an_earlier_job_is_never_answered(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config))
    await nursery.start(scheduler.run)
    node = await memory_sim_node(nursery, scheduler, original(), "node-ORIG0001")
    client, sid = await memory_session(nursery, scheduler)
    await utterance(client, sid, 0, pcm(300, fill=1), manual_cut=False)  # held by the node, never answered
    await utterance(client, sid, 1, pcm(300, fill=2), manual_cut=True)
    await until(lambda: node.stats.results_sent == 1)
    answered_at = trio.current_time()
    first = await outcome(client, timeout=120)
    assert (first["type"], first["utterance_index"]) == ("translation_result", 1)
    assert trio.current_time() - answered_at <= MAX_HOLD_S + 0.05
    late = await outcome(client, timeout=600)  # utterance 0 still gets exactly one outcome
    assert late["utterance_index"] == 0 and late["type"] in ("missing_result", "error")
    await client.nothing_for(120)


async def test_a_turn_answered_on_its_last_job_closes_its_earlier_jobs_without_redispatch(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config, segmentation=SHORT_TURNS))
    await nursery.start(scheduler.run)
    nodes = [await memory_sim_node(nursery, scheduler, original(), f"node-ORIG000{i}") for i in (1, 2)]
    client, sid = await memory_session(nursery, scheduler)
    await stream(client, sid, [pcm(200, fill=i + 1) for i in range(3)], is_final=True)
    merged = await outcome(client, timeout=120)
    assert merged["type"] == "missing_result" and merged["utterance_index"] == 0
    assert merged["reason"] == "merged" and merged["merged_into"] == 1
    answer = await outcome(client)
    assert (answer["type"], answer["utterance_index"]) == ("translation_result", 1)
    await client.nothing_for(200)  # well past job_timeout_seconds: no failover of the merged job
    assert sum(n.stats.jobs_received for n in nodes) == 2


async def test_session_close_is_acked_within_close_wait_against_the_original_node(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config))
    await nursery.start(scheduler.run)
    await memory_sim_node(nursery, scheduler, original(), "node-ORIG0001")
    client, sid = await memory_session(nursery, scheduler)
    await stream(client, sid, [pcm(200, fill=i + 1) for i in range(3)], is_final=False)  # buffered, not cut
    closed_at = trio.current_time()
    await client.send(type="session_close", session_id=sid)
    before_ack = []
    while (message := await client.recv(timeout=600))["type"] != "session_close_ack":
        before_ack.append(message)
    assert trio.current_time() - closed_at <= CLOSE_WAIT_S + 0.05
    assert not [m for m in before_ack if m["type"] == "error" and m.get("code") == "JOB_TIMEOUT"]


async def test_a_node_with_a_stopped_tts_still_gets_jobs(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config))
    await nursery.start(scheduler.run)
    node = await memory_sim_node(nursery, scheduler, original(stopped_services="tts"), "node-ORIG0001")
    client, sid = await memory_session(nursery, scheduler)
    await utterance(client, sid, 0, pcm(300), manual_cut=True)
    answer = await outcome(client, timeout=120)
    assert (answer["type"], answer["utterance_index"]) == ("translation_result", 0), answer
    assert answer["text_translated"] and node.stats.jobs_received == 1


# ------------------------------------------------------------------------------------ example and demo


def _sim_node_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sim_node_example", ROOT / "examples" / "sim_node.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sim_node_example_selects_the_original_behaviour() -> None:
    example = _sim_node_example()
    (ours,) = example.build_nodes(example.parse_args([]))
    assert ours.behaviour.mode == "every_job"
    nodes = example.build_nodes(example.parse_args(
        ["--mode", "original", "--count", "2", "--cpu-services", "tts", "--stopped-services", "semantic",
         "--no-text-assigned", "--answer-after-ms", "5000"]))
    for node in nodes:
        b = node.behaviour
        assert (b.mode, b.cpu_services, b.stopped_services) == ("original", ("tts",), ("semantic",))
        assert b.no_text_assigned and b.answer_after_ms == 5000
    with pytest.raises(SystemExit):
        example.parse_args(["--cpu-services", "gpu"])
    with pytest.raises(SystemExit):
        example.parse_args(["--mode", "fast"])


def test_demo_nodes_follow_the_node_mode() -> None:
    assert {n.behaviour.mode for n in demo_nodes()} == {"every_job"}
    assert not any(n.behaviour.cpu_services for n in demo_nodes())
    originals = demo_nodes("original")
    assert {n.behaviour.mode for n in originals} == {"original"}
    assert [n.behaviour.cpu_services for n in originals] == [(), (), ("tts",)]
    with pytest.raises(ValueError):
        demo_nodes("fast")


def test_demo_runs_with_original_nodes() -> None:
    done = subprocess.run([sys.executable, "-m", "trioscheduler", "demo", "--node-mode", "original"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "original's node agent" in done.stdout and "tts on CPU (reported not ready)" in done.stdout
    assert "0 errors" in done.stdout and "held unanswered" in done.stdout


async def test_sim_node_example_presents_its_token(nursery: trio.Nursery,
                                                   make_config: Callable[..., Config]) -> None:
    """``examples/sim_node.py --token`` registers with a scheduler that has ``[auth] node_tokens``; without it the
    door refuses the handshake."""
    daemon = await start_daemon(nursery, make_config(auth={"node_tokens": ["node-secret"]}))
    example = _sim_node_example()
    (node,) = example.build_nodes(example.parse_args(["--token", "node-secret", "--node-id", "node-TOK1"]))
    assert await nursery.start(node.run, daemon.node_url) == "node-TOK1"
    (anonymous,) = example.build_nodes(example.parse_args(["--node-id", "node-TOK2"]))
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        await anonymous.run(daemon.node_url)
    assert refused.value.status_code == 401
