"""The original's hazards and incidents not covered elsewhere, one scenario each.

Covered in other files: sessions (test_sessions.py), failover and late results (test_failures.py), heartbeats and
legacy pairs (test_nodes_and_pools.py), cuts and turns (test_policy_segmentation.py, test_sessions.py), empty
answers (test_sessions.py), pools without a semantic service (test_policy_capability.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from tests.wire import b64, memory_node, memory_session, pcm, result_for, until
from trioscheduler.app import Scheduler
from trioscheduler.config import Config


async def _start(nursery: trio.Nursery, make_config: Callable[..., Config], **sections: Any) -> Scheduler:
    sections["scheduler"] = {"heartbeat_timeout_seconds": 100_000, **sections.get("scheduler", {})}
    scheduler = Scheduler(make_config(**sections))
    await nursery.start(scheduler.run)
    return scheduler






async def _chunk(client: Any, sid: str, ms: int, is_final: bool = False, fill: int = 1) -> None:
    await client.send(type="audio_chunk", session_id=sid, is_final=is_final, payload=b64(pcm(ms, fill=fill)))


async def test_h3_speech_after_90_s_of_silence_still_makes_a_job(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = await _start(nursery, make_config)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await trio.sleep(90)
    await _chunk(client, sid, 200, is_final=True)
    assign = await node.recv_type("job_assign")
    await node.send(**result_for(assign))
    assert (await client.recv_type("translation_result"))["utterance_index"] == 0


async def test_h4_dispatched_job_is_never_failed_by_the_pending_rule(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = await _start(nursery, make_config,
                             scheduler={"pending_timeout_seconds": 10, "job_timeout_seconds": 30})
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await _chunk(client, sid, 200, is_final=True)
    assign = await node.recv_type("job_assign")
    await trio.sleep(25)  # well past the pending timeout, within the job timeout
    await node.send(**result_for(assign))
    assert (await client.recv_type("translation_result"))["job_id"] == assign["job_id"]


async def test_h6_utterances_one_at_a_time_all_dispatch(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = await _start(nursery, make_config)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    for index in range(3):
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000)
        assign = await node.recv_type("job_assign")
        assert assign["utterance_index"] == index
        await node.send(**result_for(assign))
        assert (await client.recv_type("translation_result"))["utterance_index"] == index


async def test_h11_tts_playback_restarts_the_pause_clock(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = await _start(nursery, make_config, segmentation={"pause_ms": 3000})
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await _chunk(client, sid, 200)
    start = trio.current_time()
    await trio.sleep(2.5)
    await client.send(type="tts_started", session_id=sid, trace_id="t", group_id="g", ts_start_ms=1)
    await trio.sleep(2.5)
    await client.send(type="tts_play_ended", session_id=sid, trace_id="t", group_id="g", ts_end_ms=2)
    assign = await node.recv_type("job_assign")
    assert assign["is_timeout_triggered"] is True
    assert trio.current_time() - start >= 5.0 + 3.0 - 0.01  # the pause counts from the end of playback


async def test_h12_affinity_moves_when_its_node_dies_and_sticks_to_the_new_one(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = await _start(nursery, make_config)
    a = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await _chunk(client, sid, 100, is_final=True)
    await a.send(**result_for(await a.recv_type("job_assign")))
    await client.recv_type("translation_result")
    b = await memory_node(nursery, scheduler, "node-B")
    c = await memory_node(nursery, scheduler, "node-C")
    await a.ws.aclose()
    await trio.sleep(1)
    await _chunk(client, sid, 100, is_final=True)
    got: list[tuple[Any, dict[str, Any]]] = []
    with trio.move_on_after(5):
        async with trio.open_nursery() as race:
            for peer in (b, c):
                async def take(peer: Any = peer) -> None:
                    got.append((peer, await peer.recv_type("job_assign", timeout=100)))
                    race.cancel_scope.cancel()
                race.start_soon(take)
    assert len(got) == 1
    winner, assign = got[0]
    await winner.send(**result_for(assign))
    await client.recv_type("translation_result")
    for index in (2, 3):
        await _chunk(client, sid, 100, is_final=True)
        again = await winner.recv_type("job_assign")
        assert again["utterance_index"] == index
        await winner.send(**result_for(again))
        await client.recv_type("translation_result")


async def test_f3_short_bursts_with_gaps_below_pause_form_one_job(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = await _start(nursery, make_config, segmentation={"pause_ms": 3000})
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    for gap in (0.2, 1.0, 2.9, 0.5):  # 260 ms bursts separated by gaps shorter than pause_ms
        await _chunk(client, sid, 260)
        await trio.sleep(gap)
    await _chunk(client, sid, 260)
    assign = await node.recv_type("job_assign", timeout=10)
    assert assign["audio"] == b64(pcm(260) * 5) and assign["is_timeout_triggered"] is True
    await _chunk(client, sid, 260, fill=9)  # only a gap >= pause_ms split it: a new utterance
    second = await node.recv_type("job_assign", timeout=10)
    assert second["utterance_index"] == 1 and second["audio"] == b64(pcm(260, fill=9))


async def test_f4_f5_jobs_of_one_turn_land_on_one_node(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = await _start(nursery, make_config, segmentation={"max_duration_ms": 1000})
    nodes = {name: await memory_node(nursery, scheduler, name) for name in ("node-A", "node-B", "node-C")}
    client, sid = await memory_session(nursery, scheduler)
    received: list[tuple[str, dict[str, Any]]] = []

    async def watch(name: str, peer: Any) -> None:
        while True:
            received.append((name, await peer.recv_type("job_assign", timeout=1000)))

    async with trio.open_nursery() as watchers:
        for name, peer in nodes.items():
            watchers.start_soon(watch, name, peer)
        for _ in range(3):  # three MaxDuration cuts, then the manual cut that ends the turn
            for _ in range(5):
                await _chunk(client, sid, 200)
        await _chunk(client, sid, 200, is_final=True)
        await until(lambda: len(received) >= 4, 5)
        watchers.cancel_scope.cancel()
    assert len({assign["turn_id"] for _, assign in received}) == 1
    assert len({name for name, _ in received}) == 1


async def test_f11_node_failure_result_is_an_error_without_failover_and_node_stays_usable(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = await _start(nursery, make_config)
    a = await memory_node(nursery, scheduler, "node-A")
    b = await memory_node(nursery, scheduler, "node-B")
    client, sid = await memory_session(nursery, scheduler)
    await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)))
    first: dict[str, Any] = {}
    holder: list[Any] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as race:
            for peer in (a, b):
                async def take(peer: Any = peer) -> None:
                    first.update(await peer.recv_type("job_assign", timeout=100))
                    holder.append(peer)
                    race.cancel_scope.cancel()
                race.start_soon(take)
    peer = holder[0]
    other = b if peer is a else a
    await peer.send(**result_for(first, success=False,
                                 error={"code": "PROCESSING_ERROR", "message": "GPU lease timeout: GPU_USAGE_HIGH"}))
    error = await client.recv_type("error")
    assert error["code"] == "PROCESSING_ERROR" and error["message"].endswith("GPU_USAGE_HIGH")
    await other.nothing_for(5)  # no failover after a failure result
    await client.send(type="utterance", session_id=sid, utterance_index=1, audio=b64(pcm(100)))
    again = await peer.recv_type("job_assign")  # affinity: the same node is still used
    await peer.send(**result_for(again))
    assert (await client.recv_type("translation_result"))["utterance_index"] == 1


async def test_jobs_in_the_middle_of_a_live_turn_do_not_time_out(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    """The original's node answers the jobs of a MaxDuration chain only when the turn ends; a job in
    the middle of a live turn is not late. Its deadline runs from the newest dispatch in the turn."""
    scheduler = await _start(nursery, make_config, segmentation={"max_duration_ms": 1000},
                             scheduler={"job_timeout_seconds": 2})
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    assigns = []
    for _ in range(4):  # a turn of 4 MaxDuration cuts over 6 s: longer than the 2 s job timeout
        for _ in range(5):
            await _chunk(client, sid, 200)
        assigns.append(await node.recv_type("job_assign"))
        await trio.sleep(1.5)
    await _chunk(client, sid, 200, is_final=True)
    assigns.append(await node.recv_type("job_assign"))
    assert len({a["turn_id"] for a in assigns}) == 1
    await trio.sleep(1.5)
    for assign in assigns[:-1]:
        await node.send(**result_for(assign, text_asr="", text_translated="", tts_audio="",
                                     extra={"reason": "NO_TEXT_ASSIGNED"}))
    await node.send(**result_for(assigns[-1]))
    for index in range(4):
        missing = await client.recv_type("missing_result")
        assert missing["utterance_index"] == index and missing["reason"] == "silence_detected"
    assert (await client.recv_type("translation_result"))["utterance_index"] == 4
    assert scheduler.registry.counters["job_timeouts"] == 0
    # Once the turn has ended, its jobs are held to the job timeout again.
    await _chunk(client, sid, 200, is_final=True)
    await node.recv_type("job_assign")
    error = await client.recv_type("error", timeout=30)
    assert error["code"] in ("JOB_TIMEOUT", "NODE_UNAVAILABLE") and error["utterance_index"] == 5
