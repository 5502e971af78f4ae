"""The bounded hold (results.ordering "bounded", results.max_hold_ms) at the connection level, under MockClock:
a later outcome is not held behind an earlier job that is never answered, and the earlier index still gets its
one outcome later. ``results.ordering = "strict"`` keeps strict order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from tests.wire import b64, memory_node, memory_session, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config


def _config(make_config: Callable[..., Config], **results: Any) -> Config:
    """Test nodes here do not heartbeat, and jobs never time out on their own within a test."""
    return make_config(scheduler={"heartbeat_timeout_seconds": 100_000, "job_timeout_seconds": 1000},
                       results={"gap_timeout_seconds": 30, **results})


async def _two_jobs(nursery: trio.Nursery, scheduler: Scheduler) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    for index in range(2):
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000)
    first, second = await node.recv_type("job_assign"), await node.recv_type("job_assign")
    assert (first["utterance_index"], second["utterance_index"]) == (0, 1)
    return node, client, first, second


async def _counters(scheduler: Scheduler) -> dict[str, int]:
    stats = await scheduler.stats()
    assert stats is not None
    return stats["sessions"]["counters"]  # type: ignore[no-any-return]


async def test_later_result_released_after_max_hold_and_the_earlier_one_delivered_late(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config))
    node, client, first, second = await _two_jobs(nursery, scheduler)
    await node.send(**result_for(second))
    start = trio.current_time()
    result = await client.recv_type("translation_result", timeout=5)
    assert result["utterance_index"] == 1
    assert 1.0 <= trio.current_time() - start < 1.1  # held max_hold_ms (1000) for index 0, not gap_timeout
    await trio.sleep(5)
    await node.send(**result_for(first))  # the earlier job answers after all: delivered, not dropped
    late = await client.recv_type("translation_result", timeout=5)
    assert late["utterance_index"] == 0 and late["text_translated"] == "translated 0"
    await client.nothing_for(60)  # one outcome each: no gap_timeout for index 0 afterwards
    counters = await _counters(scheduler)
    assert counters["outcomes_released_ahead"] == 1 and counters["outcomes_released_late"] == 1


async def test_earlier_job_never_answered_gets_gap_timeout_after_the_later_result(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config))
    node, client, first, second = await _two_jobs(nursery, scheduler)
    await node.send(**result_for(second))
    start = trio.current_time()
    assert (await client.recv_type("translation_result", timeout=5))["utterance_index"] == 1
    assert trio.current_time() - start < 1.1
    missing = await client.recv_type("missing_result", timeout=60)
    assert missing["utterance_index"] == 0 and missing["reason"] == "gap_timeout"
    assert 30 <= trio.current_time() - start < 31
    cancel = await node.recv_type("job_cancel")
    assert cancel["job_id"] == first["job_id"] and cancel["reason"] == "gap_timeout"
    await client.nothing_for(60)


async def test_a_short_hold_releases_in_arrival_order(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config, max_hold_ms=1))
    node, client, first, second = await _two_jobs(nursery, scheduler)
    await node.send(**result_for(second))
    start = trio.current_time()
    assert (await client.recv_type("translation_result", timeout=5))["utterance_index"] == 1
    assert trio.current_time() - start < 0.01
    await node.send(**result_for(first))
    assert (await client.recv_type("translation_result", timeout=5))["utterance_index"] == 0


async def test_strict_ordering_holds_the_later_result_until_the_gap_timeout(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(_config(make_config, ordering="strict"))
    node, client, _first, second = await _two_jobs(nursery, scheduler)
    await node.send(**result_for(second))
    start = trio.current_time()
    missing = await client.recv_type("missing_result", timeout=60)
    assert missing["utterance_index"] == 0 and missing["reason"] == "gap_timeout"
    assert 30 <= trio.current_time() - start < 31
    assert (await client.recv_type("translation_result"))["utterance_index"] == 1
    counters = await _counters(scheduler)
    assert "outcomes_released_ahead" not in counters and "outcomes_released_late" not in counters
