"""Issue 2, points 2 and 3: node registration, heartbeats, removal, capacity and pools, over real WebSockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio_websocket

from tests.wire import (
    Daemon,
    b64,
    connect,
    heartbeat,
    node_register,
    pcm,
    registered_node,
    result_for,
    session,
    start_daemon,
)
from trioscheduler.config import Config


async def _pools(daemon: Daemon) -> dict[str, list[str]]:
    stats = await daemon.scheduler.stats()
    assert stats is not None
    return stats["pools"]


async def _wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(0.01)


async def test_register_ack_generates_id_and_tells_heartbeat_interval(daemon: Daemon) -> None:
    async with connect(daemon.node_url) as node:
        await node.send(**node_register())
        ack = await node.recv_type("node_register_ack")
        assert ack["node_id"].startswith("node-") and len(ack["node_id"]) == 13
        assert ack["node_id"][5:] == ack["node_id"][5:].upper()
        assert ack["heartbeat_interval_seconds"] == 15
        assert ack["status"] == "registering"


async def test_register_reuses_node_id_and_tolerates_unknown_fields(daemon: Daemon) -> None:
    async with connect(daemon.node_url) as node:
        await node.send(**node_register("node-CAFE0001", future_field={"x": 1}, rerun_metrics={}))
        ack = await node.recv_type("node_register_ack")
        assert ack["node_id"] == "node-CAFE0001"
        assert await _pools(daemon) == {"en-zh": ["node-CAFE0001"]}


async def test_field_report_pool_en_zh_serves_both_directions(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url, languages=("zh", "en")) as (node, node_id):
        assert await _pools(daemon) == {"en-zh": [node_id]}
        for src, tgt in (("zh", "en"), ("en", "zh")):
            async with session(daemon.session_url, src, tgt, audio_format="pcm16") as (client, sid):
                await client.send(type="audio_chunk", session_id=sid, seq=1, is_final=True,
                                  payload=b64(pcm(200)))
                assign = await node.recv_type("job_assign")
                assert (assign["src_lang"], assign["tgt_lang"]) == (src, tgt)
                await node.send(**result_for(assign))
                await client.recv_type("translation_result")


async def test_three_languages_make_three_pools_and_pools_go_with_nodes(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url, languages=("zh", "en", "ja")) as (_, a):
        async with registered_node(daemon.node_url, languages=("en", "fr")) as (_, b):
            assert await _pools(daemon) == {"en-ja": [a], "en-zh": [a], "ja-zh": [a], "en-fr": [b]}
        await _wait_for(lambda: _pools_equal(daemon, {"en-ja": [a], "en-zh": [a], "ja-zh": [a]}))
    await _wait_for(lambda: _pools_equal(daemon, {}))


async def _pools_equal(daemon: Daemon, expected: dict[str, list[str]]) -> bool:
    return await _pools(daemon) == expected


async def test_legacy_supported_language_pairs_and_uppercase_types(daemon: Daemon) -> None:
    """A test node sent supported_language_pairs and "ASR"; the original created no pool."""
    message = node_register(languages=())
    message["language_capabilities"] = {"supported_language_pairs": [{"src": "zh", "tgt": "en"}, "en:zh"]}
    message["capability_by_type"] = [{"type": t, "ready": True} for t in ("ASR", "NMT", "TTS")]
    async with connect(daemon.node_url) as node:
        await node.send(**message)
        ack = await node.recv_type("node_register_ack")
        assert await _pools(daemon) == {"en-zh": [ack["node_id"]]}


async def test_malformed_capability_gets_explicit_error_and_connection_survives(daemon: Daemon) -> None:
    message = node_register()
    message["language_capabilities"] = {"supported_language_pairs": ["zh-en"]}
    async with connect(daemon.node_url) as node:
        await node.send(**message)
        error = await node.recv_type("error")
        assert error["code"] == "INVALID_CAPABILITY_SCHEMA"
        assert error["details"]["field"] == "language_capabilities.supported_language_pairs[0]"
        await node.send(**node_register())
        await node.recv_type("node_register_ack")


async def test_not_ready_service_keeps_node_out_of_pools(daemon: Daemon) -> None:
    message = node_register()
    message["capability_by_type"] = [{"type": "asr", "ready": False, "reason": "loading"},
                                     {"type": "nmt", "ready": True}, {"type": "tts", "ready": True}]
    async with connect(daemon.node_url) as node:
        await node.send(**message)
        ack = await node.recv_type("node_register_ack")
        assert await _pools(daemon) == {}
        ready = heartbeat(ack["node_id"])
        await node.send(**ready)
        await _wait_for(lambda: _pools_equal(daemon, {"en-zh": [ack["node_id"]]}))


async def test_heartbeat_updates_languages_and_empty_lists_leave_pools(daemon: Daemon) -> None:
    """A heartbeat with empty lists must not leave the node selectable for its old pairs."""
    async with registered_node(daemon.node_url) as (node, node_id):
        await node.send(**heartbeat(node_id, languages=("en", "de")))
        await _wait_for(lambda: _pools_equal(daemon, {"de-en": [node_id]}))
        await node.send(**heartbeat(node_id, languages=()))
        await _wait_for(lambda: _pools_equal(daemon, {}))
        stats = await daemon.scheduler.stats()
        assert stats is not None and [n["node_id"] for n in stats["nodes"]] == [node_id]


async def test_heartbeat_before_register_is_an_error(daemon: Daemon) -> None:
    async with connect(daemon.node_url) as node:
        await node.send(**heartbeat("node-NOPE0000"))
        error = await node.recv_type("error")
        assert error["code"] == "INVALID_MESSAGE" and error["details"]["field"] == "type"


async def test_silent_node_is_removed_and_closed(nursery: trio.Nursery,
                                                 make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(
        scheduler={"heartbeat_interval_seconds": 0.1, "heartbeat_timeout_seconds": 0.4}))
    async with registered_node(daemon.node_url) as (node, node_id):
        for _ in range(5):  # heartbeats keep it alive past the timeout
            await node.send(**heartbeat(node_id))
            await trio.sleep(0.1)
        assert await _pools(daemon) == {"en-zh": [node_id]}
        await _wait_for(lambda: _pools_equal(daemon, {}), timeout=3)
        with trio.fail_after(3), pytest.raises(trio_websocket.ConnectionClosed):  # the scheduler closed the socket
            await node.read_until_closed()


async def test_capacity_from_register_or_default(nursery: trio.Nursery,
                                                 make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(scheduler={"max_concurrent_jobs_per_node": 2}))
    async with registered_node(daemon.node_url, "node-A", capacity=3) as (_, a), \
            registered_node(daemon.node_url, "node-B") as (_, b):
        stats = await daemon.scheduler.stats()
        assert stats is not None
        assert {n["node_id"]: n["capacity"] for n in stats["nodes"]} == {a: 3, b: 2}


async def test_capacity_is_never_exceeded_and_waiting_job_takes_freed_slot(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url, capacity=1) as (node, _), \
            session(daemon.session_url, audio_format="pcm16") as (client, sid):
        for i in range(2):
            await client.send(type="utterance", session_id=sid, utterance_index=i, audio=b64(pcm(100)),
                              audio_format="pcm16", sample_rate=16000, manual_cut=True)
        first = await node.recv_type("job_assign")
        await node.nothing_for(0.3)  # the second waits: capacity 1
        await node.send(**result_for(first))
        second = await node.recv_type("job_assign")
        assert (first["utterance_index"], second["utterance_index"]) == (0, 1)
        await node.send(**result_for(second))
        assert (await client.recv_type("translation_result"))["utterance_index"] == 0
        assert (await client.recv_type("translation_result"))["utterance_index"] == 1


async def test_socket_close_removes_node(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url) as (_, node_id):
        assert await _pools(daemon) == {"en-zh": [node_id]}
    await _wait_for(lambda: _pools_equal(daemon, {}))


async def test_top_level_supported_language_pairs_are_accepted(daemon: Daemon) -> None:
    message = node_register(languages=())
    message["supported_language_pairs"] = ["zh:en", {"src": "en", "tgt": "zh"}]
    async with connect(daemon.node_url) as node:
        await node.send(**message)
        ack = await node.recv_type("node_register_ack")
        assert await _pools(daemon) == {"en-zh": [ack["node_id"]]}
        message["supported_language_pairs"] = [7]
        message["node_id"] = ack["node_id"]
        await node.send(**message)
        error = await node.recv_type("error")
        assert error["code"] == "INVALID_CAPABILITY_SCHEMA"
        assert error["field"] == error["details"]["field"] == "supported_language_pairs[0]"


@pytest.mark.parametrize(("usage", "field"), [({"cpu_percent": "high"}, "resource_usage.cpu_percent"),
                                              ({"running_jobs": 1.5}, "resource_usage.running_jobs"),
                                              ({"mem_percent": True}, "resource_usage.mem_percent"),
                                              ([1, 2], "resource_usage")])
async def test_bad_load_in_a_repeated_heartbeat_is_an_error_and_the_node_stays(
        daemon: Daemon, usage: Any, field: str) -> None:
    """A heartbeat that repeats the last capability skips the full decode; its resource_usage is still checked
    like any other field, and a bad one is answered with an error naming it, the socket kept open."""
    async with registered_node(daemon.node_url) as (node, node_id):
        await node.send(**heartbeat(node_id))
        await node.send(**{**heartbeat(node_id), "resource_usage": usage})
        error = await node.recv_type("error", skip=("node_heartbeat_ack",))
        assert error["code"] == "INVALID_MESSAGE" and error["details"]["field"] == field
        await node.send(**heartbeat(node_id))  # still registered and heard
        await _wait_for(lambda: _pools_equal(daemon, {"en-zh": [node_id]}))
        stats = await daemon.scheduler.stats()
        assert stats is not None and stats["connections_crashed"] == 0
