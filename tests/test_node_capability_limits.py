"""Issue 8 point 3: what a node may claim is bounded, refused before any quadratic work, derived in the node's own
connection task (never in the registry's), and logged in a bounded number of lines."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from tests.wire import Daemon, connect, heartbeat, memory_node, node_register, start_daemon
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.policy import capability
from trioscheduler.registry import actor

WAIT = 10.0


def languages(count: int, prefix: str = "l") -> tuple[str, ...]:
    return tuple(f"{prefix}{i:03d}" for i in range(count))


async def _stats(daemon: Daemon) -> dict[str, Any]:
    stats = await daemon.scheduler.stats()
    assert stats is not None
    return stats


@pytest.mark.parametrize(("field", "claim"), [
    ("language_capabilities.asr_languages", {"languages": languages(65)}),
    ("language_capabilities", {"languages": languages(33)}),  # 33 × 33 pairs > max_node_pairs (1024)
    ("capability_by_type", {"capability_by_type": [{"type": f"svc{i}", "ready": True} for i in range(33)]}),
    ("installed_services", {"installed_services": [{"type": f"svc{i}"} for i in range(33)]}),
    ("supported_language_pairs", {"languages": (), "supported_language_pairs": ["a:b"] * 1025}),
    ("language_capabilities.asr_languages[1]", {"languages": ("en", "x" * 36)}),
])
async def test_claim_over_a_bound_is_refused_naming_the_field_and_the_node_stays(
        daemon: Daemon, field: str, claim: dict[str, Any]) -> None:
    """Refused like a malformed claim: an error, no registration, the socket open for a claim that fits."""
    async with connect(daemon.node_url) as node:
        await node.send(**node_register(**claim))
        error = await node.recv_type("error")
        assert error["code"] == "CAPABILITY_LIMIT_EXCEEDED"
        assert error["field"] == error["details"]["field"] == field
        assert "limits." in error["message"]
        stats = await _stats(daemon)
        assert stats["nodes"] == [] and stats["pools"] == {}
        await node.send(**node_register())
        ack = await node.recv_type("node_register_ack")
        assert (await _stats(daemon))["pools"] == {"en-zh": [ack["node_id"]]}


async def test_thousand_language_claim_is_refused_without_reaching_the_registry(daemon: Daemon) -> None:
    """The field report's 1,000-language claim took the registry 14.8 s and 1 GB; now it never gets there."""
    async with connect(daemon.node_url) as node:
        await node.send(**node_register(languages=languages(1000)))
        error = await node.recv_type("error", timeout=WAIT)
        assert error["code"] == "CAPABILITY_LIMIT_EXCEEDED"
        assert error["field"] == "language_capabilities.asr_languages"
    stats = await _stats(daemon)
    assert "node_registrations" not in stats["counters"] and stats["nodes"] == []


async def test_largest_claim_within_the_bounds_registers(daemon: Daemon) -> None:
    async with connect(daemon.node_url) as node:
        await node.send(**node_register(languages=languages(32)))  # 32 × 32 = max_node_pairs
        ack = await node.recv_type("node_register_ack")
        stats = await _stats(daemon)
        assert len(stats["pools"]) == 32 * 31 // 2
        [record] = stats["nodes"]
        assert record["node_id"] == ack["node_id"] and len(record["pairs"]) == 1024


async def test_bounds_are_configurable(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(limits={"max_node_languages": 2}))
    async with connect(daemon.node_url) as node:
        await node.send(**node_register(languages=("en", "zh", "ja")))
        error = await node.recv_type("error")
        assert error["code"] == "CAPABILITY_LIMIT_EXCEEDED" and "max_node_languages = 2" in error["message"]
        await node.send(**heartbeat("node-X"))
        assert (await node.recv_type("error"))["field"] == "type"  # not registered


async def test_heartbeat_over_a_bound_is_refused_and_the_previous_capability_stands(daemon: Daemon) -> None:
    async with connect(daemon.node_url) as node:
        await node.send(**node_register())
        node_id = (await node.recv_type("node_register_ack"))["node_id"]
        for _ in range(2):  # a repeat of the refused claim is refused again, not taken as unchanged
            await node.send(**heartbeat(node_id, languages=languages(200)))
            error = await node.recv_type("error")
            assert error["code"] == "CAPABILITY_LIMIT_EXCEEDED"
            assert error["field"] == "language_capabilities.asr_languages"
        stats = await _stats(daemon)
        assert stats["pools"] == {"en-zh": [node_id]} and stats["counters"]["heartbeats"] >= 1  # liveness counts


@contextlib.contextmanager
def derivations_watched(monkeypatch: pytest.MonkeyPatch, registry: actor.Registry) -> Iterator[list[bool]]:
    """Record every derive_capability call, True for one made while the registry handles a request."""
    calls: list[bool] = []
    inside = [False]
    real_derive = capability.derive_capability
    real_handle = registry.handle

    def derive(*args: Any, **kwargs: Any) -> capability.NodeCapability:
        calls.append(inside[0])
        return real_derive(*args, **kwargs)

    def handle(request: Any, now: float) -> None:
        inside[0] = True
        try:
            real_handle(request, now)
        finally:
            inside[0] = False

    monkeypatch.setattr(capability, "derive_capability", derive)
    monkeypatch.setattr(actor, "derive_capability", derive, raising=False)
    monkeypatch.setattr(registry, "handle", handle)
    yield calls


async def test_alternating_capability_heartbeats_are_derived_by_the_connection_not_the_registry(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, autojump_clock: Any) -> None:
    """The field report's node alternated two 300-language lists at 5 Hz and held every client's median at
    3.3 s: the registry crossed the lists on each heartbeat. Now the connection derives; the registry diffs keys."""
    config = Config()
    scheduler = Scheduler(config)
    await nursery.start(scheduler.run)
    first, second = languages(30, "a"), languages(30, "b")
    with derivations_watched(monkeypatch, scheduler.registry) as calls:
        node = await memory_node(nursery, scheduler, "node-alt", languages=first)
        for beat in range(10):
            await node.send(**heartbeat("node-alt", languages=second if beat % 2 == 0 else first))
            await trio.sleep(0.2)
        snapshot = await scheduler.stats()
    assert snapshot is not None
    assert calls == [False] * 11  # one per claim (the registration, then each change), none in the registry
    assert len(snapshot["pools"]) == 30 * 29 // 2 and all(pool.startswith("a") for pool in snapshot["pools"])
    assert snapshot["counters"]["node_capability_changes"] == 10


async def test_a_repeated_capability_is_not_derived_again(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, autojump_clock: Any) -> None:
    scheduler = Scheduler(Config())
    await nursery.start(scheduler.run)
    with derivations_watched(monkeypatch, scheduler.registry) as calls:
        node = await memory_node(nursery, scheduler, "node-same")
        for _ in range(5):
            await node.send(**heartbeat("node-same"))
            await trio.sleep(1)
        snapshot = await scheduler.stats()
    assert calls == [False]
    assert snapshot is not None and snapshot["counters"]["heartbeats"] == 5


async def test_log_lines_per_registration_do_not_grow_with_the_claim(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, autojump_clock: Any) -> None:
    """The field report's run wrote ~1M lines, a pool_created per key. Now: one line per registration, per
    capability change and per loss, whatever the node claims."""
    scheduler = Scheduler(Config())
    await nursery.start(scheduler.run)
    caplog.set_level(logging.INFO, logger="trioscheduler")
    node = await memory_node(nursery, scheduler, "node-big", languages=languages(32, "a"))
    registry_lines = [r for r in caplog.records if r.name == "trioscheduler.registry"]
    assert [r.getMessage().split()[0] for r in registry_lines] == ["node_registered"]
    line = registry_lines[0].getMessage()
    assert "pool_count=496" in line and "pair_count=1024" in line and "pools_created=496" in line
    assert len(line) < 400
    caplog.clear()
    await node.send(**heartbeat("node-big", languages=languages(32, "b")))
    await trio.sleep(1)
    assert [r.getMessage().split()[0] for r in caplog.records
            if r.name == "trioscheduler.registry"] == ["node_capability_changed"]
    caplog.clear()
    await node.ws.aclose()
    await trio.sleep(1)
    assert len([r for r in caplog.records if r.name == "trioscheduler.registry"]) <= 1
    assert scheduler.registry.counters["pools_removed"] == 2 * 496
    assert not scheduler.registry.indexes
