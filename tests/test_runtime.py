"""The daemon's garbage-collector tuning: applied as configured, and undone here so other tests are unaffected."""

from __future__ import annotations

import gc
import resource
from collections.abc import Iterator

import pytest
import trio

from tests.wire import Daemon, registered_node, session
from trioscheduler.config import ServerConfig
from trioscheduler.runtime import FD_RESERVE, fd_limit_fits, raise_fd_limit, tune_garbage_collector


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_freeze_and_threshold_are_applied(restore_gc: None) -> None:
    gc.unfreeze()
    in_force = tune_garbage_collector(ServerConfig(gc_gen0_threshold=12345, gc_gen1_threshold=7, gc_gen2_threshold=99,
                                                   gc_freeze_after_start=True))
    assert gc.get_threshold() == (12345, 7, 99) and in_force["gc_threshold"] == (12345, 7, 99)
    assert gc.get_freeze_count() > 0 and in_force["gc_frozen_objects"] > 0


def test_freeze_can_be_turned_off(restore_gc: None) -> None:
    gc.unfreeze()
    tune_garbage_collector(ServerConfig(gc_freeze_after_start=False))
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (ServerConfig().gc_gen0_threshold, ServerConfig().gc_gen1_threshold,
                                  ServerConfig().gc_gen2_threshold)


async def test_closed_sessions_and_nodes_leave_almost_no_cyclic_garbage(daemon: Daemon) -> None:
    """The raised gc thresholds rest on this: a connection's objects are freed by reference counting when it
    closes, so full collections can be rare without memory piling up. (Both ends live in this process, so the
    count includes the client side's garbage too.)"""
    async def churn(rounds: int) -> None:
        for i in range(rounds):
            async with session(daemon.session_url) as (client, session_id):
                await client.send(type="session_close", session_id=session_id)
                await client.recv_type("session_close_ack")
            async with registered_node(daemon.node_url, f"node-GC{i}"):
                pass
        await trio.sleep(0.2)  # let the server side finish its teardown

    await churn(5)  # warm caches: first-use allocations are not garbage but would blur the count
    gc.collect()
    gc.disable()
    try:
        await churn(40)
        garbage = gc.collect()
    finally:
        gc.enable()
    assert garbage < 40, f"{garbage} objects in cycles after 40 sessions and 40 nodes came and went"


@pytest.fixture
def restore_fd_limit() -> Iterator[tuple[int, int]]:
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield limits
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_soft_fd_limit_is_raised_towards_the_hard_limit(restore_fd_limit: tuple[int, int]) -> None:
    _, hard = restore_fd_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    soft, hard_after = raise_fd_limit()
    assert hard_after == hard and soft > 256
    assert soft == (hard if hard != resource.RLIM_INFINITY else min(hard, soft))


def test_connection_cap_fits_the_fd_limit_with_a_reserve() -> None:
    assert fd_limit_fits(1000, 1000 + FD_RESERVE)
    assert not fd_limit_fits(1001, 1000 + FD_RESERVE)
    assert fd_limit_fits(10**9, resource.RLIM_INFINITY)
