"""Process-wide tuning for the daemon (never applied by the library or the tests' servers): the file-descriptor
limit at start, the garbage collector once it listens.

CPython's cyclic collector pauses the whole process; a full collection walks every tracked object, and at start-up
most of those are modules, classes and functions that live forever. Freezing them and letting the young generation
grow before it is collected cuts both the pauses that reach the p99 of an utterance and the collector's CPU share.
"""

from __future__ import annotations

import contextlib
import gc
import resource

from trioscheduler.config import ServerConfig

#: Descriptors the process needs besides one per WebSocket connection: listeners, standard streams, the event
#: loop's own, HTTP scrapes, and connections still at the door (bounded by the handshake deadline).
FD_RESERVE = 256
#: Where the soft limit is raised to when the hard limit is unlimited.
FD_CEILING_WHEN_UNLIMITED = 1 << 20


def fd_limit_fits(max_connections: int, soft_limit: int) -> bool:
    """Whether ``max_connections`` open WebSockets (one descriptor each) and FD_RESERVE fit ``soft_limit``."""
    return soft_limit == resource.RLIM_INFINITY or max_connections + FD_RESERVE <= soft_limit


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or FD_CEILING_WHEN_UNLIMITED) where the OS allows; never
    lowers it, never raises. Returns the (soft, hard) limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_CEILING_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        # A refusal (e.g. above the kernel's per-process ceiling) keeps what we have.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def tune_garbage_collector(server: ServerConfig) -> dict[str, object]:
    """Apply the ``gc_*`` settings; returns what is now in force (for the start-up log)."""
    gc.set_threshold(server.gc_gen0_threshold, server.gc_gen1_threshold, server.gc_gen2_threshold)
    if server.gc_freeze_after_start:
        gc.collect()  # start-up garbage is freed now rather than kept forever by the freeze
        gc.freeze()
    return {"gc_threshold": gc.get_threshold(), "gc_frozen_objects": gc.get_freeze_count()}
