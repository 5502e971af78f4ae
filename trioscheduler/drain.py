"""Draining the whole scheduler: refuse new sessions, close each open one at an utterance boundary, then stop.

A drain starts on SIGTERM or ``POST /api/v1/drain`` (:meth:`DrainControl.request`). From then on:

- the door refuses ``/ws/session`` upgrades with HTTP 503, and a socket already open without a session gets
  ``error`` SCHEDULER_DRAINING and is closed with CloseCode.SERVICE_RESTART (1012);
- each open session keeps being served until it reaches an utterance boundary (no audio buffered); then it reads
  nothing more, delivers every outcome it owes, and is closed with 1012 (server/session_socket.py);
- at ``server.drain_timeout_seconds`` after the start, sessions still open cut what they buffered, every outcome
  they still owe is sent as ``error`` SCHEDULER_DRAINING, and they are closed with 1012;
- once no session is left (or a short grace after the deadline), :func:`run_drain` cancels the scope it was given:
  the listeners stop and the process exits 0.

No finalized utterance is lost: every index a session accepted gets exactly one outcome before its socket closes.
``/ready`` is 503 while draining and before the listeners are up.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

import trio

from trioscheduler.logs import emit

log = logging.getLogger("trioscheduler.drain")

#: After the drain deadline, how long sessions get to write the errors they owe and close before the stop.
DRAIN_FLUSH_GRACE_SECONDS = 2.0
#: Once no session is left, how long HTTP answers being written (the drain request's own among them) get before
#: the listeners stop.
DRAIN_EXIT_GRACE_SECONDS = 0.5


class Drainable(Protocol):
    """A session socket as the drain sees it."""

    def wake_for_drain(self) -> None: ...


class DrainControl:
    """The scheduler's drain state, one per Scheduler; touched by trio tasks of one thread only.

    ``draining`` and ``expired`` are plain attributes: the session reader reads them on every frame."""

    __slots__ = ("timeout", "listening", "draining", "expired", "deadline", "reason", "started", "_closed")

    def __init__(self, timeout: float) -> None:
        #: ``server.drain_timeout_seconds``.
        self.timeout = timeout
        #: The listeners are up (set by server/listener.py's serve); /ready needs it.
        self.listening = False
        #: A drain was requested: new sessions are refused, open ones close at their next boundary.
        self.draining = False
        #: The drain deadline is over: sessions still open flush what they owe as errors and close.
        self.expired = False
        #: When the drain deadline falls (trio clock); infinite while not draining.
        self.deadline = math.inf
        self.reason: str | None = None
        #: Set once a drain was requested.
        self.started = trio.Event()
        #: Set (and replaced) whenever a session ends while draining.
        self._closed = trio.Event()

    @property
    def ready(self) -> bool:
        """What /ready says: listening and not draining."""
        return self.listening and not self.draining

    def session_closed(self) -> None:
        """A session socket ended (called after it left ``SessionMetrics.live``): wakes the drain task."""
        if self.draining:
            self._closed.set()
            self._closed = trio.Event()

    async def until_no_session(self, sessions: Callable[[], Iterable[Drainable]]) -> None:
        """Return once ``sessions()`` is empty (checked whenever a session ends)."""
        while any(True for _ in sessions()):
            await self._closed.wait()

    def request(self, reason: str) -> bool:
        """Start the drain (its deadline counts from now). Returns False if one was already running."""
        if self.draining:
            return False
        self.draining = True
        self.reason = reason
        self.deadline = trio.current_time() + self.timeout
        self.started.set()
        return True


def wake_all(sessions: Iterable[Drainable]) -> None:
    for session in list(sessions):
        session.wake_for_drain()


async def run_drain(drain: DrainControl, sessions: Callable[[], Iterable[Drainable]],
                    stop: trio.CancelScope) -> None:
    """Wait for a drain to be requested, run it (see the module docstring), then cancel ``stop``.
    ``sessions`` returns the open session sockets whenever it is called."""
    await drain.started.wait()
    open_sessions = list(sessions())
    emit(log, logging.WARNING, "drain_started", reason=drain.reason, sessions=len(open_sessions),
         timeout_s=drain.timeout)
    wake_all(open_sessions)
    with trio.move_on_at(drain.deadline):
        await drain.until_no_session(sessions)
    left = len(list(sessions()))
    if left:
        drain.expired = True
        emit(log, logging.WARNING, "drain_deadline", sessions_left=left,
             why="server.drain_timeout_seconds is over: what they owe is flushed as SCHEDULER_DRAINING errors")
        wake_all(sessions())
        with trio.move_on_after(DRAIN_FLUSH_GRACE_SECONDS):
            await drain.until_no_session(sessions)
    emit(log, logging.WARNING, "drain_finished", sessions_flushed=left, sessions_left=len(list(sessions())))
    await trio.sleep(DRAIN_EXIT_GRACE_SECONDS)
    stop.cancel()


async def watch_signals(signals: AsyncIterator[int], drain: DrainControl,
                        stop: trio.CancelScope,
                        announce: Callable[[str], None] = lambda text: print(text, flush=True)) -> None:
    """The daemon's signals: the first SIGTERM starts a drain; SIGINT, or any signal once draining, stops at once.
    ``signals`` is what ``trio.open_signal_receiver`` yields."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGTERM and drain.request("SIGTERM"):
            announce(f"trioscheduler: {name} received, draining (at most {drain.timeout:g} s; "
                     f"send it again to stop at once)")
            continue
        announce(f"trioscheduler: {name} received, shutting down")
        stop.cancel()
        return
