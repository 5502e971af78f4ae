"""A session socket's part in rooms: its room messages go to the room owner, and while it is in a room with
listeners its finalized utterances fan out, one job per listening language (docs/protocol.md "Rooms").

Made on a socket's first room message, so a session that never uses rooms pays nothing. Guarantees:

- a room request that cannot be queued within ``rooms.request_deadline_ms`` is answered ``room_error
  ROOMS_BUSY``; an utterance whose plan is not answered in time gets ``error SCHEDULER_BUSY`` (its outcome);
- each language's job is idempotent per (session, utterance_index, tgt_lang) in the registry, and has every
  failure semantic of a job: its outcome (result, missing_result or error) goes to that language's listeners;
- the speaker never gets its fanned-out utterance's outcome; its writer is told the index is settled, and the
  utterance counts against the speaker's bounds until every language has its outcome;
- a session that ends leaves its room; its utterances still without an outcome are reported missing to their
  listeners (its jobs are cancelled by its end). ``closing`` first waits for them, up to the close deadline.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from trioscheduler.config import Config
from trioscheduler.logs import emit
from trioscheduler.protocol import messages as m
from trioscheduler.protocol import rooms as rm
from trioscheduler.protocol.errors import ErrorCode
from trioscheduler.registry.requests import JobSpec, Outcome, Passthrough, RegistryClient
from trioscheduler.rooms.codes import RoomErrorCode
from trioscheduler.rooms.delivery import RoomUtterance
from trioscheduler.rooms.owner import MemberRequest, RoomsClient
from trioscheduler.server.outcome_writer import OutcomeWriter, Send, Settled
from trioscheduler.server.session_state import SessionState, selection_key_for

log = logging.getLogger("trioscheduler.rooms")
DEBUG = logging.DEBUG


class SessionPort:
    """What the room owner holds of one socket: where its messages go, and the room it is in (set and cleared by
    the owner only)."""

    __slots__ = ("_writer", "room_code")

    def __init__(self, writer: OutcomeWriter) -> None:
        self._writer = writer
        self.room_code: str | None = None

    def deliver(self, message: Any) -> bool:
        """Into the socket's writer inbox, never blocking; False once the socket is ending (its writer closes a
        client that does not read)."""
        try:
            self._writer.send_nowait(Send(message))
        except trio.ClosedResourceError:
            return False
        except RuntimeError:
            return False  # the scheduler is stopping: the nursery writers run in takes no new task
        return True

    def offer(self, message: Any) -> bool:
        """Best effort: dropped (False) when the socket's writer inbox is full or closed, so another member's
        flood of signalling can never close this socket as a slow consumer."""
        try:
            self._writer.send_nowait(Passthrough(message))
        except (trio.WouldBlock, trio.ClosedResourceError, RuntimeError):
            return False
        return True


class SessionRooms:
    __slots__ = ("_client", "_registry", "_config", "_writer", "_counters", "port", "_live", "_settled")

    def __init__(self, client: RoomsClient, registry: RegistryClient, config: Config, writer: OutcomeWriter,
                 counters: Any) -> None:
        self._client = client
        self._registry = registry
        self._config = config
        self._writer = writer
        self._counters = counters
        self.port = SessionPort(writer)
        #: This session's fanned-out utterances still without every outcome.
        self._live: set[RoomUtterance] = set()
        #: Set when ``_live`` empties while ``closing`` waits.
        self._settled: trio.Event | None = None

    @property
    def in_room(self) -> bool:
        return self.port.room_code is not None

    def footprint(self) -> int:
        return len(self._live)

    async def handle(self, state: SessionState, message: rm.RoomClientMessage) -> None:
        """Hand a room message to the owner (which answers the session through its writer)."""
        port = self.port
        request = MemberRequest(port, state.session_id, message)
        deadline = trio.current_time() + self._config.rooms.request_deadline_ms / 1000.0
        if not await self._client.post(request, deadline):
            self._counters["room_requests_busy"] += 1
            port.deliver(rm.RoomError(code=RoomErrorCode.ROOMS_BUSY,
                                      message=f"{message.TYPE} not taken within rooms.request_deadline_ms; "
                                              "nothing changed"))

    async def submit(self, state: SessionState, spec: JobSpec) -> bool:
        """Fan the utterance out when someone in the room listens; False: it is the speaker's own (not in a room,
        or nobody else has a preferred language). The caller already holds its budget and announced its index."""
        index = spec.utterance_index
        deadline = spec.finalized_at + self._config.rooms.request_deadline_ms / 1000.0
        answered, plan = await self._client.plan(state.session_id, index, deadline)
        if not answered:
            self._counters["room_plans_busy"] += 1
            self._writer.send_nowait(Outcome(index, m.ErrorMessage(
                code=ErrorCode.SCHEDULER_BUSY, message="rooms busy: utterance not scheduled",
                session_id=spec.session_id, utterance_index=index, trace_id=spec.trace_id), ""))
            return True
        if not plan:
            return False
        jobs = state.jobs
        live = self._live

        def done(utterance: RoomUtterance) -> None:
            live.discard(utterance)
            jobs.release(utterance.index)
            if not live and self._settled is not None:
                self._settled.set()

        utterance = RoomUtterance(state.session_id, index, spec.trace_id, done)
        sinks = [(language, utterance.add_language(listeners, self._partials if not utterance.sinks else None))
                 for language, listeners in plan.items()]
        live.add(utterance)
        self._writer.send_nowait(Settled(index))
        self._counters["room_utterances"] += 1
        if log.isEnabledFor(DEBUG):
            emit(log, DEBUG, "room_utterance", session_id=state.session_id, utterance_index=index,
                 trace_id=spec.trace_id, languages=",".join(plan),
                 listeners=sum(len(listeners) for listeners in plan.values()))
        submit_by = spec.finalized_at + self._config.scheduler.selection_deadline_ms / 1000.0
        for language, sink in sinks:
            language_spec = language_job(spec, state, language)
            if await self._registry.submit(language_spec, sink, submit_by) is None:
                self._counters["scheduler_busy"] += 1
                sink.send_nowait(Outcome(index, m.ErrorMessage(
                    code=ErrorCode.SCHEDULER_BUSY, message="scheduler busy: utterance not scheduled",
                    session_id=spec.session_id, utterance_index=index, trace_id=spec.trace_id), ""))
        return True

    def _partials(self, item: Any) -> None:
        """The speaker sees its own partial transcript (from one language's job)."""
        self._writer.send_nowait(item)

    async def closing(self, deadline: float) -> None:
        """session_close: wait (at most until ``deadline``) for the fanned-out utterances' outcomes, then leave."""
        if self._live:
            settled = self._settled = trio.Event()
            with trio.move_on_at(deadline):
                await settled.wait()
            self._settled = None

    def ended(self, session_id: str) -> None:
        """The session ended (closed, or its socket is gone): leave the room, and report what is still owed to its
        listeners as missing. Never blocks."""
        for utterance in list(self._live):
            utterance.abandon()
        self._live.clear()
        self._client.session_gone_nowait(session_id)


def language_job(spec: JobSpec, state: SessionState, language: str) -> JobSpec:
    """The utterance's job for one listening language: its own target, the nodes that serve it, and its own turn
    (an original node buffers a turn's audio across jobs: two languages must never share one)."""
    init = state.init
    two_way = init.mode == "two_way_auto" and language in (init.lang_a, init.lang_b)
    return attrs.evolve(
        spec, tgt_lang=language,
        selection_key=selection_key_for(spec.src_lang, language, init.mode if two_way else None, init.lang_a,
                                        init.lang_b),
        turn_id=None if spec.turn_id is None else f"{spec.turn_id}:{language}")
