"""Process-wide tuning for the daemon, applied once it listens (never by the library or the tests' servers).

CPython's cyclic collector pauses the whole process; a full collection walks every tracked object, and at start-up
most of those are modules, classes and functions that live forever. Freezing them and letting the young generation
grow before it is collected cuts both the pauses that reach the p99 of an utterance and the collector's CPU share.
"""

from __future__ import annotations

import gc

from trioscheduler.config import ServerConfig


def tune_garbage_collector(server: ServerConfig) -> dict[str, object]:
    """Apply the ``gc_*`` settings; returns what is now in force (for the start-up log)."""
    gc.set_threshold(server.gc_gen0_threshold, server.gc_gen1_threshold, server.gc_gen2_threshold)
    if server.gc_freeze_after_start:
        gc.collect()  # start-up garbage is freed now rather than kept forever by the freeze
        gc.freeze()
    return {"gc_threshold": gc.get_threshold(), "gc_frozen_objects": gc.get_freeze_count()}
