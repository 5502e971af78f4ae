"""The daemon's garbage-collector tuning: applied as configured, and undone here so other tests are unaffected."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from trioscheduler.config import ServerConfig
from trioscheduler.runtime import tune_garbage_collector


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
    in_force = tune_garbage_collector(ServerConfig(gc_gen0_threshold=12345, gc_freeze_after_start=True))
    assert gc.get_threshold()[0] == 12345 and in_force["gc_threshold"] == gc.get_threshold()
    assert gc.get_freeze_count() > 0 and in_force["gc_frozen_objects"] > 0


def test_freeze_can_be_turned_off(restore_gc: None) -> None:
    gc.unfreeze()
    older = gc.get_threshold()[1:]
    tune_garbage_collector(ServerConfig(gc_gen0_threshold=700, gc_freeze_after_start=False))
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, *older)
