"""The sole writer of one client socket: its inbox, in-order release of outcomes, and the close handshake.

Acks, partials and outcomes never interleave because only this writer writes to the socket. The registry and
the session's reader hand it items with ``send_nowait``, which never blocks. Guarantees:

- every index the reader announced (``Expect``) gets exactly one message: its outcome, or ``missing_result`` once
  its gap wait (``gap_timeout``) or the close deadline (``session_closed``) is over. They go in ``utterance_index``
  order, except that with ``results.ordering = "bounded"`` an outcome waits for lower indices at most
  ``results.max_hold_ms`` (policy/ordering.py);
- ``CloseSession`` is answered with ``session_close_ack`` once every outcome owed is delivered, or at its deadline
  (``results.close_wait_seconds`` after session_close) with the outcomes that arrived delivered and every index
  still owed reported as ``missing_result{reason: "session_closed"}``; its ``done`` event is set whenever the
  writer can no longer answer it (socket gone, crash, slow consumer);
- the inbox holds at most ``limits.max_send_queue`` items: an item that finds it full means the client is not
  reading its socket, which is closed with CloseCode.SLOW_CONSUMER (then the session's jobs are cancelled by its
  teardown); only a partial, which is best effort, is dropped instead;
- a crash is kept for the session's handler to raise (it logs it); the client first gets ``error`` with
  INTERNAL_ERROR and the socket is closed with CloseCode.INTERNAL_ERROR.

An outcome that arrives while the writer task is not busy (not running, or waiting for work), with nothing but
``Expect``s queued ahead of it, is handled by ``send_nowait`` itself: released in order and written at once when the
socket takes it without waiting (``Transport.send_nowait``); whatever the socket cannot take at once goes to the
writer task. So an in-order outcome costs its session no task switch.

The writer task runs only while it has work: the first item that needs it starts it (an ``Expect`` never does), and
it ends once nothing is queued or timed for WRITER_LINGER_SECONDS. It runs in a nursery shared by all sessions,
which it never fails.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
from typing import Any

import attrs
import trio

from trioscheduler.config import Config
from trioscheduler.groups import Placement, UtteranceGroups, new_group_id
from trioscheduler.joblog import log as job_log
from trioscheduler.joblog import log_outcome_done
from trioscheduler.logs import emit
from trioscheduler.policy.ordering import Added, Release, ResultOrderer
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import EncodeError, encode, encode_wire, to_wire
from trioscheduler.protocol.errors import CloseCode, ErrorCode
from trioscheduler.registry.requests import Outcome, Passthrough, RegistryClient
from trioscheduler.server.session_state import SessionState
from trioscheduler.transport import Transport, TransportClosed
from trioscheduler.ui_events import outcome_events, partial_event
from trioscheduler.wallclock import wall_ms

log = logging.getLogger("trioscheduler.server.session_socket")
DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR

#: How long a writer with nothing left to do waits for more before it ends: a session exchanging messages keeps
#: its writer, an idle one loses it after this.
WRITER_LINGER_SECONDS = 1.0
#: How long closing a socket may take (a peer that does not read cannot take the close frame).
CLOSE_TIMEOUT_SECONDS = 1.0

#: What the inbox returns when the writer has nothing left to do (it ends; the next item starts one).
_SETTLED = object()



@attrs.frozen
class Send:
    """Send at once, unordered: acks, heartbeats, errors not tied to an utterance."""

    message: Any


@attrs.frozen
class Expect:
    """The reader accepted this index: the writer owes it exactly one outcome."""

    utterance_index: int
    finalized_at: float


@attrs.frozen
class Settled:
    """Rooms: the index's outcome went to the room's listeners, never to this speaker. It takes the index's place
    in the release order and sends nothing."""

    utterance_index: int


@attrs.frozen
class CloseSession:
    """session_close: deliver every outcome owed (or, at ``deadline``, what arrived, the rest reported missing),
    then session_close_ack, then set ``done``."""

    session_id: str
    done: trio.Event
    deadline: float
    #: A drain's close (trioscheduler/drain.py): no session_close_ack, and what is owed at ``deadline`` becomes
    #: ``error`` SCHEDULER_DRAINING rather than missing_result.
    drain: bool = False


@attrs.define(eq=False)
class _Out:
    """What one released index puts on the wire (its outcome and any ui_event frames, encoded), and what to record
    once it is written. ``payloads`` shrinks to what is still unwritten when the socket takes only part."""

    payloads: list[bytes]
    message: Any
    index: int
    job_id: str | None
    stages: Any
    finalized_at: float | None


@attrs.frozen
class Unwritten:
    """Frames ``send_nowait`` released but the socket could not take at once: the writer writes them, after
    flushing the part of a frame the socket holds (``flush_first``)."""

    outs: list[_Out]
    flush_first: bool


class OutcomeWriter:
    """One socket's writer. The session sets ``session`` to its current SessionState (None between sessions)."""

    __slots__ = ("_transport", "_registry", "_config", "_counters", "_tasks", "session", "crash", "closed",
                 "_queue", "_wakeup", "_running", "_scope", "_orderer", "_owed", "_closing", "_close_deadline",
                 "_closed_sessions")

    def __init__(self, transport: Transport, registry: RegistryClient, config: Config,
                 counters: collections.Counter[str], tasks: trio.Nursery) -> None:
        self._transport = transport
        self._registry = registry
        self._config = config
        self._counters = counters
        #: Where the writer task and the job cancellations it asks for run: the scheduler's, shared by sessions.
        self._tasks = tasks
        self.session: SessionState | None = None
        #: The exception the writer crashed with, for the session's handler to raise.
        self.crash: Exception | None = None
        #: Nothing more is accepted: the socket is gone or closing.
        self.closed = False
        self._queue: list[Any] = []
        self._wakeup: trio.Event | None = None
        self._running = False
        self._scope: trio.CancelScope | None = None
        #: Outcomes waiting for lower indices (made with the session's first utterance), index -> finalized_at
        #: for each outcome still owed, and the session_close being completed.
        self._orderer: ResultOrderer[Any] | None = None
        self._owed: dict[int, float] = {}
        self._closing: CloseSession | None = None
        self._close_deadline = math.inf
        #: Sessions this socket closed: their late outcomes must not reach the next session's orderer.
        self._closed_sessions: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        """Whether the writer task exists now; false for an idle session."""
        return self._running

    def footprint(self) -> dict[str, int]:
        return {
            "outcomes_held": self._orderer.pending_count if self._orderer is not None else 0,
            "outcomes_released_ahead": self._orderer.ahead_count if self._orderer is not None else 0,
            # An Expect still queued is owed too (the writer takes it with its next item).
            "outcomes_owed": len(self._owed) + sum(type(item) is Expect for item in self._queue),
            "writer_queue": len(self._queue),
        }

    # ------------------------------------------------------------------------------------------ inbox

    def send_nowait(self, item: Any) -> None:
        """The inbox, for the reader and the registry (this is the sink of the session's jobs): queue the item
        and wake the writer, or start one. Never blocks; raises trio.ClosedResourceError once the connection is
        ending (the registry counts the item undeliverable), including when this item would fill the queue, and
        trio.WouldBlock for a partial (``Passthrough``) that finds the queue full."""
        if self.closed:
            raise trio.ClosedResourceError("session connection is closed")
        queue = self._queue
        if len(queue) >= self._config.limits.max_send_queue:
            if type(item) is Passthrough:
                # A partial is best effort: a burst of them (one registry step can relay many) is dropped, and
                # counted by the registry, rather than taken for a client that does not read.
                raise trio.WouldBlock
            self._slow_consumer()
            raise trio.ClosedResourceError("session connection is closed: its client does not read")
        kind = type(item)
        if kind is Outcome:
            session = self.session
            if session is not None and item.message.session_id == session.session_id:
                session.jobs.release(item.utterance_index)
            if (self._wakeup is not None or not self._running) and self._deliver_now(item):
                return
        queue.append(item)
        if kind is not Expect:
            # An Expect alone asks nothing of the writer (no send, no deadline of its own): it is taken with the
            # next item, and saves a wake per utterance.
            self._wake()

    def _wake(self) -> None:
        """Wake the writer task waiting for work, or start one; a busy writer sees the queue when it is done."""
        if self._wakeup is not None:
            self._wakeup.set()
        elif not self._running:
            self._running = True
            self._tasks.start_soon(self._run)

    def _deliver_now(self, item: Outcome) -> bool:
        """Handle ``item`` here, for a writer task that is not busy: take the queued Expects, then the outcome, and
        write what it releases without waiting. False (nothing done) when the writer must handle it: anything but
        Expects is queued, a close is under way, the socket holds unwritten bytes, or its session was closed."""
        queue = self._queue
        if (self._closing is not None or self._transport.pending
                or item.message.session_id in self._closed_sessions):
            return False
        for queued in queue:
            if type(queued) is not Expect:
                return False
        try:
            for queued in queue:
                self._take_expect(queued)
            queue.clear()
            outs = self._take_outcome(item)
            if outs:
                self._write_now(outs)
            orderer = self._orderer
            if orderer is not None and orderer.deadline() is not None:
                self._wake()  # an outcome is held: the writer times its wait
        except Exception as exc:  # a bug here is this session's, never the caller's (the registry)
            self.crash = exc
            self.end()
            self._tasks.start_soon(self.fail, exc, "writer")
        return True

    def _write_now(self, outs: list[_Out]) -> None:
        """Write ``outs`` in order, as far as the socket takes them without waiting; the rest goes to the writer."""
        transport = self._transport
        for i, out in enumerate(outs):
            payloads = out.payloads
            for j, payload in enumerate(payloads):
                if not transport.send_nowait(payload):
                    out.payloads = payloads[j:]
                    self._hand_to_writer(Unwritten(outs[i:], flush_first=False))
                    return
                if transport.pending:
                    out.payloads = payloads[j + 1:]
                    self._hand_to_writer(Unwritten(outs[i:], flush_first=True))
                    return
            self._written(out)

    def _hand_to_writer(self, item: Unwritten) -> None:
        self._queue.insert(0, item)  # ahead of anything queued meanwhile: it was released first
        self._wake()

    def end(self) -> None:
        """The connection is ending: accept nothing more, wake a waiting writer (it ends), answer a pending close.
        Outcomes still queued are dropped, each with its ``job_done`` line (``dropped=undeliverable``)."""
        self.closed = True
        for item in self._queue:
            if type(item) is Outcome and item.stages is not None:
                log_outcome_done(item.stages, item.message, dropped="undeliverable")
            elif type(item) is Unwritten:
                for out in item.outs:
                    if out.stages is not None:
                        log_outcome_done(out.stages, out.message, dropped="undeliverable")
        self._queue.clear()
        if self._wakeup is not None:
            self._wakeup.set()
        if self._closing is not None:
            self._closing.done.set()

    def _slow_consumer(self) -> None:
        session = self.session
        self._counters["sessions_closed_slow_consumer"] += 1
        emit(log, WARNING, "session_slow_consumer", session_id=session.session_id if session else None,
             peer=self._transport.peer, queued=len(self._queue),
             why="the client does not read its socket: limits.max_send_queue reached; closing with "
                 f"{int(CloseCode.SLOW_CONSUMER)}")
        self.end()
        if self._scope is not None:
            self._scope.cancel()  # a send blocked on the socket would hold the close back
        self._tasks.start_soon(self._close_transport, CloseCode.SLOW_CONSUMER, "slow consumer")

    # ------------------------------------------------------------------------------------------ task

    async def _run(self) -> None:
        """The writer task. It never raises: when the socket is gone, or on a crash (kept in ``crash``), it
        closes the socket, which ends the session's reader."""
        try:
            with trio.CancelScope() as self._scope:
                await self._write_loop()
        except TransportClosed:
            self.end()
            await self._close_transport(CloseCode.NORMAL, "")
        except Exception as exc:
            self.crash = exc
            await self.fail(exc, "writer")
        finally:
            self._scope = None
            self._running = False

    async def close(self, code: CloseCode, reason: str) -> None:
        """End the connection from the session's side: accept nothing more and close the socket with ``code``."""
        self.end()
        await self._close_transport(code, reason)

    async def fail(self, exc: Exception, task: str) -> None:
        """A crash of the session's ``task``: tell the client (``error`` INTERNAL_ERROR) and close the socket with
        CloseCode.INTERNAL_ERROR. The session's handler raises the exception, which logs its traceback."""
        self.end()
        session = self.session
        session_id = session.session_id if session is not None else None
        self._counters["sessions_crashed"] += 1
        emit(log, ERROR, "session_crashed", task=task, session_id=session_id, peer=self._transport.peer,
             error=f"{type(exc).__name__}: {exc}")
        # The socket may be what failed, or be gone: the close below still ends the session.
        with (trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_SECONDS),
              contextlib.suppress(Exception)):
            await self._transport.send_message(encode(m.ErrorMessage(
                code=ErrorCode.INTERNAL_ERROR, message="internal error in the scheduler; session closed",
                session_id=session_id)))
        await self._close_transport(CloseCode.INTERNAL_ERROR, "internal error")

    async def _close_transport(self, code: CloseCode, reason: str) -> None:
        """Runs in the shared nursery too, so nothing may escape it."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_SECONDS):
            try:
                await self._transport.aclose(code, reason)
            except Exception:
                log.exception("closing session socket of %s failed", self._transport.peer)

    async def _next_item(self) -> Any:
        """The next queued item, None when the gap or close deadline came first, or ``_SETTLED`` when there is
        nothing left to wait for (nothing queued, owed or timed) and nothing came for WRITER_LINGER_SECONDS: then
        the writer ends, and the next item starts another. The check and the end are one step (no checkpoint
        between), so no item is ever left unseen."""
        queue = self._queue
        if self.closed:
            return _SETTLED
        if not queue:
            deadline = self._next_deadline()
            settled = deadline == math.inf
            if settled:
                deadline = trio.current_time() + WRITER_LINGER_SECONDS
            wakeup = self._wakeup = trio.Event()
            try:
                with trio.move_on_at(deadline):
                    await wakeup.wait()
            finally:
                self._wakeup = None
            if self.closed:  # end() may have run while this task waited (mypy narrowed it before the await)
                return _SETTLED  # type: ignore[unreachable]
            if not queue:
                # An outcome delivered by send_nowait meanwhile may have left something timed.
                return _SETTLED if settled and self._next_deadline() == math.inf else None
        return queue.pop(0)

    def _next_deadline(self) -> float:
        """When the writer has something to release without being woken (inf: nothing timed)."""
        orderer = self._orderer
        wait = orderer.deadline() if orderer is not None else None
        return self._close_deadline if wait is None else min(wait, self._close_deadline)

    async def _write_loop(self) -> None:
        """Releases outcomes in utterance_index order (or as the bounded hold allows), each exactly once."""
        owed = self._owed
        while True:
            item = await self._next_item()
            if item is _SETTLED:
                return
            orderer = self._orderer
            match item:
                case Send():
                    await self._send(item.message)
                case Outcome():
                    if item.message.session_id in self._closed_sessions:
                        # Raced the close: the session already had its outcome for this index and its ack.
                        self._counters["outcomes_dropped_after_close"] += 1
                        if item.stages is not None:
                            log_outcome_done(item.stages, item.message, dropped="after_close")
                        continue
                    await self._write_outs(self._take_outcome(item))
                case Unwritten():
                    if item.flush_first:
                        await self._transport.flush()
                    await self._write_outs(item.outs)
                case Settled():
                    if orderer is None:
                        orderer = self._orderer = self._new_orderer()
                    if orderer.add(item.utterance_index, item, trio.current_time()) is Added.ACCEPTED:
                        await self._release(orderer.ready())
                case Passthrough():
                    if getattr(item.message, "session_id", None) in self._closed_sessions:
                        self._counters["outcomes_dropped_after_close"] += 1
                        continue
                    await self._send(item.message)
                    if type(item.message) is m.AsrPartialOut and self._wants_ui_events():
                        await self._send(partial_event(item.message, owed.get(item.message.utterance_index),
                                                       trio.current_time()))
                case Expect():
                    self._take_expect(item)
                case CloseSession():
                    self._closing = item
                    self._close_deadline = item.deadline
                case None:
                    await self._on_deadline(orderer)
            orderer = self._orderer
            closing = self._closing
            if closing is not None and not owed:
                if orderer is not None:
                    await self._release(orderer.drain())
                if not closing.drain:
                    await self._send(m.SessionCloseAck(session_id=closing.session_id))
                self._closed_sessions += (closing.session_id,)
                closing.done.set()
                self._closing = None
                self._close_deadline = math.inf
                self._orderer = None  # the next session on this socket starts from index 0

    def _take_expect(self, item: Expect) -> None:
        orderer = self._orderer
        if orderer is None:
            orderer = self._orderer = self._new_orderer()
        if not orderer.is_released(item.utterance_index):
            self._owed[item.utterance_index] = item.finalized_at
        else:
            # Already released (as missing, after its gap wait): the job could only produce a second outcome, so
            # stop it at once.
            self._counters["utterances_already_released"] += 1
            self._cancel_job(item.utterance_index, "already_released")

    def _take_outcome(self, item: Outcome) -> list[_Out]:
        """Hand the outcome to the orderer; what it releases now, encoded (empty if it is held or dropped)."""
        orderer = self._orderer
        if orderer is None:
            orderer = self._orderer = self._new_orderer()
        added = orderer.add(item.utterance_index, item, trio.current_time())
        if added is Added.ACCEPTED:
            return self._prepare(orderer.ready())
        self._counters[f"outcomes_dropped_{added.value}"] += 1
        emit(log, WARNING, "outcome_dropped", reason=added.value, session_id=item.message.session_id,
             utterance_index=item.utterance_index, job_id=item.job_id)
        if item.stages is not None:
            log_outcome_done(item.stages, item.message, dropped=added.value)
        return []

    async def _on_deadline(self, orderer: ResultOrderer[Any] | None) -> None:
        """A hold, a gap wait or the close deadline is over: release what it held back (holes as missing). At the
        close deadline, the outcomes that arrived are delivered and every index still owed is reported
        ``session_closed``; its job is cancelled by the session's end, which follows the ack."""
        now = trio.current_time()
        owed = self._owed
        if orderer is not None:
            await self._release(orderer.expire(now))
        if self._closing is None or now < self._close_deadline:
            return
        released = orderer.drain() if orderer is not None else []
        after = orderer.next_index if orderer is not None else 0
        released += [Release(index, None) for index in sorted(owed) if index >= after]
        await self._release(released, missing_reason="session_closed", drain=self._closing.drain)
        owed.clear()

    def _new_orderer(self) -> ResultOrderer[Any]:
        results = self._config.results
        return ResultOrderer(gap_timeout=results.gap_timeout_seconds, max_hold=results.max_hold_seconds)

    def _cancel_job(self, index: int, why: m.JobCancelReason) -> None:
        """Stop the job of ``index`` without waiting for the registry (the writer must not block on its inbox);
        what it held no longer counts against the session's bounds."""
        session = self.session
        if session is None:
            return
        session.jobs.release(index)
        self._tasks.start_soon(self._cancel_jobs_task, session.session_id, (index,), why)

    async def _cancel_jobs_task(self, session_id: str, indices: tuple[int, ...],
                                why: m.JobCancelReason) -> None:
        """Runs in the nursery shared by all sessions, so nothing may escape it."""
        try:
            await self._registry.cancel_jobs(session_id, indices, why)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the registry is gone: the scheduler is stopping
        except Exception:
            log.exception("cancelling jobs of session %s failed", session_id)

    def _wants_ui_events(self) -> bool:
        session = self.session
        return session is not None and bool(session.init.ui_events)

    def _place_in_group(self, session: SessionState, text: str, now: float) -> Placement:
        """Issue 14: the result joins the session's utterance group (groups.py), made with its first result."""
        groups = session.groups
        if groups is None:
            config = self._config.groups
            groups = session.groups = UtteranceGroups(config.window_ms / 1000.0, config.max_parts,
                                                      config.max_context_chars, new_group_id)
        return groups.add(text, now)

    def _encode(self, message: Any, group: Placement | None = None) -> bytes | None:
        """The message's frame. A message that cannot be encoded is that message's failure, never the socket's: an
        outcome becomes ``error INTERNAL_ERROR`` for its utterance (still exactly one outcome), anything else is
        logged and dropped (None). ``group`` is a translation_result's place in its utterance group."""
        try:
            if type(message) is m.TranslationResult:
                wire = to_wire(message)
                wire["scheduler_sent_at_ms"] = wall_ms()  # when it leaves, not when the registry built it
                if group is not None:
                    wire["group_id"] = group.group_id
                    wire["part_index"] = group.part_index
                return encode_wire(wire)
            return encode(message)
        except EncodeError as exc:
            self._counters["messages_unencodable"] += 1
            index = getattr(message, "utterance_index", None)
            emit(log, ERROR, "message_unencodable", kind=message.TYPE, session_id=getattr(message, "session_id", None),
                 utterance_index=index, error=str(exc))
            if index is None or type(message) is m.AsrPartialOut:
                return None
            return encode(m.ErrorMessage(
                code=ErrorCode.INTERNAL_ERROR, message=f"the {message.TYPE} for this utterance could not be encoded",
                session_id=message.session_id, utterance_index=index, job_id=getattr(message, "job_id", None),
                trace_id=getattr(message, "trace_id", None)))

    async def _send(self, message: Any) -> None:
        """Write one message (see ``_encode``)."""
        payload = self._encode(message)
        if payload is not None:
            await self._transport.send_message(payload)

    async def _release(self, released: list[Any], missing_reason: m.MissingResultReason = "gap_timeout",
                       drain: bool = False) -> None:
        await self._write_outs(self._prepare(released, missing_reason, drain))

    async def _write_outs(self, outs: list[_Out]) -> None:
        send = self._transport.send_message
        for out in outs:
            for payload in out.payloads:
                await send(payload)
            self._written(out)

    def _prepare(self, released: list[Any], missing_reason: m.MissingResultReason = "gap_timeout",
                 drain: bool = False) -> list[_Out]:
        """The frames of each released index, in order: its outcome (a missing_result or, at a drain, an error
        for a hole) and its ui_events."""
        session = self.session
        owed = self._owed
        now = trio.current_time()
        ui_events = session is not None and bool(session.init.ui_events)
        outs: list[_Out] = []
        for release in released:
            index = release.utterance_index
            finalized_at = owed.pop(index, None)
            if release.outcome is None:
                if session is None:
                    continue
                message: Any = self._draining_error(session, index) if drain else \
                    self._missing(session, index, missing_reason, finalized_at is not None)
                job_id = None
                stages = None
            elif type(release.outcome) is Settled:
                continue
            else:
                message = release.outcome.message
                job_id = release.outcome.job_id
                stages = release.outcome.stages
                if release.ahead:
                    self._counters["outcomes_released_ahead"] += 1
                if release.late:
                    self._counters["outcomes_released_late"] += 1
            group = None
            if (type(message) is m.TranslationResult and session is not None
                    and message.session_id == session.session_id and message.text_asr.strip()):
                group = self._place_in_group(session, message.text_asr.strip(), now)
            payload = self._encode(message, group)
            payloads = [] if payload is None else [payload]
            if ui_events:
                for event in outcome_events(message, finalized_at, now):
                    event_payload = self._encode(event)
                    if event_payload is not None:
                        payloads.append(event_payload)
            outs.append(_Out(payloads, message, index, job_id, stages, finalized_at))
        return outs

    def _written(self, out: _Out) -> None:
        """Count and log an index's outcome once its frames are written."""
        message = out.message
        self._counters[f"delivered_{message.TYPE}"] += 1
        stages = out.stages
        if stages is not None:
            now = trio.current_time()
            stages.delivered(now)
            if job_log.isEnabledFor(INFO):
                log_outcome_done(stages, message, delivered_at=now)
        if log.isEnabledFor(DEBUG):
            finalized_at = out.finalized_at
            emit(log, DEBUG, "job_delivered", session_id=getattr(message, "session_id", None),
                 utterance_index=out.index, job_id=out.job_id, node_id=getattr(message, "node_id", None),
                 trace_id=getattr(message, "trace_id", None), kind=message.TYPE,
                 elapsed_ms=None if finalized_at is None
                 else round((trio.current_time() - finalized_at) * 1000.0, 3))

    def _draining_error(self, session: SessionState, index: int) -> m.ErrorMessage:
        """The outcome of an index still owed at the drain deadline (its job is cancelled by the session's end)."""
        self._counters["outcome_error_SCHEDULER_DRAINING"] += 1
        emit(log, WARNING, "job_deadline_missed", session_id=session.session_id, utterance_index=index,
             trace_id=session.trace_id, stage="drain", why="no outcome within server.drain_timeout_seconds")
        return m.ErrorMessage(code=ErrorCode.SCHEDULER_DRAINING,
                              message="scheduler draining: no outcome within server.drain_timeout_seconds",
                              session_id=session.session_id, utterance_index=index, trace_id=session.trace_id)

    def _missing(self, session: SessionState, index: int, reason: m.MissingResultReason,
                 owed: bool) -> m.MissingResult:
        """The ``missing_result`` of an index released without an outcome; a gap-timed-out job still running is
        cancelled (its result could only be dropped now)."""
        self._counters[f"outcome_missing_{reason}"] += 1
        if reason == "gap_timeout":
            if owed:
                self._cancel_job(index, "gap_timeout")
            why = "no outcome within gap_timeout_seconds of a later index's outcome"
            stage = "result_gap"
        else:
            why = "no outcome within close_wait_seconds of session_close"
            stage = "session_close"
        emit(log, WARNING, "job_deadline_missed", session_id=session.session_id, utterance_index=index,
             trace_id=session.trace_id, stage=stage, why=why)
        return m.MissingResult(session_id=session.session_id, utterance_index=index, reason=reason,
                               created_at_ms=wall_ms(), trace_id=session.trace_id)
