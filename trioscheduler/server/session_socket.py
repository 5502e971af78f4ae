"""One client socket: the reader, which decodes, segments and submits, over an ``OutcomeWriter`` that owns the
socket's writes.

The reader is the connection's handler task. It answers each message by its class; cuts utterances (pause timers
included) and hands each to the registry under ``selection_deadline_ms``; refuses, with an outcome of its own, an
utterance past the session's bounds (``limits.max_session_outstanding``, ``limits.max_session_audio_bytes``);
closes a socket that opens no first session within ``limits.handshake_timeout_seconds`` (CloseCode.HANDSHAKE_TIMEOUT);
and on session_close waits for the writer's ack while it keeps reading, at most ``limits.max_message_bytes`` of
frames, so a client that vanishes mid-close is still seen. Whenever it ends, the registry is told the session is
gone, without a deadline that could lose the notice.

Sessions are opened through the Scheduler's ``SessionDirectory``: a session_id another socket holds or let go within
``limits.session_id_reuse_seconds`` is never adopted (SESSION_ID_IN_USE), and a tenant holds at most
``limits.sessions_per_tenant`` sessions. Every frame is charged to the socket's ``TokenBucket`` before it is decoded:
over ``limits.messages_per_second`` it is dropped (RATE_LIMITED), and a debt over ``limits.messages_burst`` closes the
socket (CloseCode.RATE_LIMITED).

An idle session is its reader alone: the writer runs only while it has work, in the nursery the scheduler holds
for all sessions (a nursery per session would cost every idle session its own; see docs/architecture.md).
"""

from __future__ import annotations

import collections
import logging
import math
import sys
from typing import Any

import attrs
import trio

from trioscheduler.config import Config
from trioscheduler.drain import DrainControl
from trioscheduler.ids import new_session_id, random_uuid
from trioscheduler.logs import emit
from trioscheduler.policy.segmentation import Cut, EmptyOpusPacket, audio_duration_ms, unframed_opus_duration_ms
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import client_codec, decode_base64
from trioscheduler.protocol.errors import CloseCode, ErrorCode, ProtocolError
from trioscheduler.protocol.rooms import ROOM_CLIENT_MESSAGES
from trioscheduler.ratelimit import ACCEPT, REFUSE, TokenBucket, closing_reason, refusal_text
from trioscheduler.registry.requests import JobSpec, Outcome, RegistryClient
from trioscheduler.rooms.owner import RoomsClient
from trioscheduler.rooms.session_side import SessionRooms
from trioscheduler.server.jobspec import build_job_spec, utterance_index
from trioscheduler.server.outcome_writer import CloseSession, Expect, OutcomeWriter, Send
from trioscheduler.server.session_state import SessionState, check_session_id, implicit_init, new_session_state
from trioscheduler.server.unanswered import UnansweredSubmits
from trioscheduler.session_directory import SessionDirectory
from trioscheduler.transport import Transport, TransportClosed
from trioscheduler.wallclock import wall_ms

__all__ = ["SessionConnection", "SessionMetrics"]

log = logging.getLogger("trioscheduler.server.session_socket")
INFO, WARNING, DEBUG = logging.INFO, logging.WARNING, logging.DEBUG


class SessionMetrics:
    """Counters across all sessions, read by /api/v1/stats and /metrics."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        #: Open session connections, for footprint checks in tests and fault-injection runs.
        self.live: set[SessionConnection] = set()

    @property
    def active(self) -> int:
        return len(self.live)


class SessionConnection:
    __slots__ = ("_transport", "_registry", "_config", "_codec", "_metrics", "_state", "_writer", "_early_frames",
                 "_handshake_deadline", "_principal", "_directory", "_holder", "_bucket", "_drain", "_wait_scope",
                 "_rooms_client", "_rooms", "_unanswered")

    def __init__(
        self,
        transport: Transport,
        registry: RegistryClient,
        config: Config,
        metrics: SessionMetrics,
        tasks: trio.Nursery,
        principal: Principal = ANONYMOUS,
        directory: SessionDirectory | None = None,
        rooms: RoomsClient | None = None,
        *,
        drain: DrainControl | None = None,
    ) -> None:
        self._transport = transport
        #: The scheduler's drain (trioscheduler/drain.py), and the reader's current wait, which a drain wakes.
        self._drain = drain
        self._wait_scope: trio.CancelScope | None = None
        #: Who this socket acts as (set by the door; ANONYMOUS when authentication is off).
        self._principal = principal
        self._registry = registry
        self._config = config
        self._codec = client_codec(config.limits)
        self._metrics = metrics
        self._state: SessionState | None = None
        self._writer = OutcomeWriter(transport, registry, config, metrics.counters, tasks)
        #: Frames read while a session_close waited for its outcomes, handled once it is done (a list made on first
        #: use: an idle session should not pay for a container it almost never uses).
        self._early_frames: list[str | bytes] | None = None
        #: By when the socket must open its first session; infinite once it has.
        self._handshake_deadline = trio.current_time() + config.limits.handshake_timeout_seconds
        #: The session ids of all sockets (the Scheduler's); a socket alone gets a directory of its own.
        self._directory = directory if directory is not None else SessionDirectory(config.limits)
        #: This socket's token in the directory.
        self._holder = self._directory.new_holder()
        limits = config.limits
        self._bucket = TokenBucket(limits.messages_per_second, limits.messages_burst, trio.current_time())
        #: The room owner (None: rooms are off), and this socket's part in rooms, made on its first room message.
        self._rooms_client = rooms
        self._rooms: SessionRooms | None = None
        #: Submits the registry has not answered yet (made on the first submit: an idle session holds none).
        self._unanswered: UnansweredSubmits | None = None

    def footprint(self) -> dict[str, int]:
        """What this session holds beyond its idle size; all zero once its utterances are settled."""
        state = self._state
        return {
            "buffered_bytes": state.segmenter.buffered_bytes if state else 0,
            "indices_above_low_water": len(state.used) if state else 0,
            "jobs_outstanding": len(state.jobs) if state else 0,
            "jobs_audio_bytes": state.jobs.audio_bytes if state else 0,
            **self._writer.footprint(),
        }

    @property
    def state(self) -> SessionState | None:
        """The open session (None before its session_init and between sessions); read by the HTTP API."""
        return self._state

    @property
    def peer(self) -> str:
        return self._transport.peer

    @property
    def writer_running(self) -> bool:
        """Whether the writer task exists now; false for an idle session."""
        return self._writer.running

    async def run(self) -> None:
        """The reader, in the connection's handler task; returns when the socket is gone, raises what crashed
        (after the client got INTERNAL_ERROR and the socket was closed with CloseCode.INTERNAL_ERROR)."""
        metrics, writer = self._metrics, self._writer
        metrics.live.add(self)
        try:
            await self._reader()
        except Exception as exc:
            if writer.crash is None:
                await writer.fail(exc, "reader")
            raise
        finally:
            if self._unanswered is not None:
                self._unanswered.abandon_all()
            metrics.live.discard(self)
            if self._drain is not None:
                self._drain.session_closed()
            writer.end()  # no writer starts after this, and a waiting one ends
            state = self._state
            if state is not None:
                self._registry.session_ended_nowait(state.session_id)
                if self._rooms is not None:
                    self._rooms.ended(state.session_id)
                self._directory.release(state.session_id, self._holder, state.init.tenant_id, trio.current_time())
                emit(log, INFO, "session_ended", session_id=state.session_id, reason="socket_closed")
        if writer.crash is not None:
            raise writer.crash

    # ------------------------------------------------------------------------------------------ reader

    async def _reader(self) -> None:
        transport = self._transport
        while True:
            state = self._state
            drain = self._drain
            if drain is not None and drain.draining and (state is None or drain.expired
                                                         or state.segmenter.buffered_bytes == 0):
                await self._close_for_drain(drain, state)
                return
            unanswered = self._unanswered
            if unanswered:
                self._expire_submits(unanswered)
            if state is None:
                deadline: float | None = self._handshake_deadline
                if deadline == math.inf:
                    deadline = None
            else:
                deadline = state.segmenter.pause_deadline()
                if unanswered:
                    answer_by = unanswered.next_deadline()
                    if answer_by is not None and (deadline is None or answer_by < deadline):
                        deadline = answer_by
            early = self._early_frames
            if early:
                frame = early.pop(0)
                if not early:
                    self._early_frames = None
            else:
                frame = None
                with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as self._wait_scope:
                    try:
                        frame = await transport.get_message()
                    except TransportClosed:
                        return
                self._wait_scope = None
                if frame is None:
                    if deadline is None or trio.current_time() < deadline:
                        continue  # woken by a drain: the top of the loop decides
                    if state is None:
                        await self._handshake_timed_out()
                        return
                    cut = state.segmenter.on_timer(trio.current_time())
                    if cut is not None:
                        await self._submit_cut(state, cut)
                    continue
            try:
                assert frame is not None
                verdict = self._bucket.take(trio.current_time())
                if verdict != ACCEPT:
                    if verdict == REFUSE:
                        self._rate_limited()
                        continue
                    await self._rate_limit_close()
                    return
                try:
                    await self._handle(self._codec.decode(frame))
                except ProtocolError as exc:
                    self._metrics.counters[f"client_errors_{exc.code}"] += 1
                    self._send_now(exc.to_message(session_id=self._state.session_id if self._state else None,
                                                  utterance_index=exc.utterance_index))
            except (TransportClosed, trio.ClosedResourceError):
                return  # the socket is gone, or the writer closed it (slow consumer, crash)
            frame = None  # not kept alive by this frame while the socket is quiet (an idle session)

    def _rate_limited(self) -> None:
        """The frame came over ``limits.messages_per_second``: it is dropped unread and the client told so."""
        limits = self._config.limits
        self._metrics.counters["messages_rate_limited"] += 1
        self._send_now(ProtocolError(
            refusal_text(limits.messages_per_second, limits.messages_burst), code=ErrorCode.RATE_LIMITED,
        ).to_message(session_id=self._state.session_id if self._state else None))

    async def _rate_limit_close(self) -> None:
        limits = self._config.limits
        self._metrics.counters["sessions_closed_rate_limited"] += 1
        emit(log, WARNING, "session_rate_limited", peer=self._transport.peer,
             session_id=self._state.session_id if self._state else None,
             why=closing_reason("limits.messages_per_second", limits.messages_per_second, "limits.messages_burst",
                                limits.messages_burst, int(CloseCode.RATE_LIMITED)))
        await self._writer.close(CloseCode.RATE_LIMITED, "rate limited")

    async def _handshake_timed_out(self) -> None:
        timeout = self._config.limits.handshake_timeout_seconds
        self._metrics.counters["sessions_handshake_timeout"] += 1
        emit(log, WARNING, "session_handshake_timeout", peer=self._transport.peer,
             why=f"no session_init or utterance within limits.handshake_timeout_seconds ({timeout:g} s); "
                 f"closing with {int(CloseCode.HANDSHAKE_TIMEOUT)}")
        await self._writer.close(CloseCode.HANDSHAKE_TIMEOUT, "handshake timeout")

    async def _handle(self, message: Any) -> None:
        state = self._state
        match message:
            case m.Utterance():
                try:
                    if state is None:
                        state = self._open(implicit_init(message), message.session_id, implicit=True)
                    check_session_id(state, message)
                    await self._on_utterance(state, message)
                except ProtocolError as exc:
                    exc.utterance_index = message.utterance_index  # the client can tell which utterance failed
                    raise
                return
            case m.SessionInit():
                if state is not None:
                    raise ProtocolError("session already initialised on this connection; send session_close first",
                                        field="type")
                self._open(message, None, implicit=False)
                return
        if state is None:
            raise ProtocolError(f"{message.TYPE} before session_init: no session on this connection",
                                field="session_id", code=ErrorCode.INVALID_SESSION)
        check_session_id(state, message)
        match message:
            case m.AudioChunk():
                await self._on_audio_chunk(state, message)
            case m.ClientHeartbeat():
                self._send_now(m.ServerHeartbeat(session_id=state.session_id, timestamp=wall_ms()))
            case m.TtsStarted() | m.TtsPlayEnded():
                now = trio.current_time()
                state.segmenter.restart_pause_clock(now)
                if state.groups is not None:
                    state.groups.touch(message.group_id, now)
            case m.SessionClose():
                await self._on_close(state, message)
            case _ if type(message) in ROOM_CLIENT_MESSAGES:
                await self._on_room_message(state, message)

    def _open(self, init: m.SessionInit, session_id: str | None, *, implicit: bool) -> SessionState:
        """Start the session ``init`` describes, under ``session_id`` or a fresh one (ProtocolError if it is
        invalid, its id taken or its tenant full); a session_init gets its ack."""
        principal, directory, now = self._principal, self._directory, trio.current_time()
        if principal.credential is None:  # without authentication, session_init's tenant_id is a label
            tenant_id = init.tenant_id
        else:  # authenticated, the tenant is the API key's, whatever session_init says
            tenant_id = None if principal.tenant_id is None else m.Id(principal.tenant_id)
        if tenant_id != init.tenant_id:
            init = attrs.evolve(init, tenant_id=tenant_id)
        if session_id is None:
            session_id = directory.unused_id(new_session_id, now)
        state = new_session_state(init, session_id, init.trace_id or random_uuid(), self._config.segmentation)
        refusal = directory.claim(session_id, self._holder, state.init.tenant_id, now)
        if refusal is not None:
            self._metrics.counters[f"sessions_refused_{refusal}"] += 1
            emit(log, WARNING, "session_refused", session_id=session_id, code=refusal, tenant_id=tenant_id,
                 peer=self._transport.peer)
            if refusal == ErrorCode.SESSION_ID_IN_USE:
                raise ProtocolError(f"session_id {session_id!r} is in use or was in use recently: open a session "
                                    "with session_init, or use another id", field="session_id", code=refusal)
            raise ProtocolError(f"tenant has {self._config.limits.sessions_per_tenant} sessions open "
                                "(limits.sessions_per_tenant): session refused", code=refusal)
        self._state = self._writer.session = state
        self._handshake_deadline = math.inf
        counters = self._metrics.counters
        if implicit:
            counters["sessions_implicit"] += 1
            emit(log, INFO, "session_started", session_id=session_id, implicit=True, peer=self._transport.peer)
            return state
        counters["sessions_started"] += 1
        emit(log, INFO, "session_started", session_id=state.session_id, trace_id=state.trace_id,
             src_lang=state.src_lang, tgt_lang=state.tgt_lang, audio_format=state.audio_format,
             selection_key=state.selection_key, peer=self._transport.peer)
        self._send_now(m.SessionInitAck(
            session_id=state.session_id, trace_id=state.trace_id,
            negotiated_codec=state.audio_format, negotiated_audio_format=state.audio_format,
            negotiated_sample_rate=state.sample_rate,
        ))
        return state

    async def _on_audio_chunk(self, state: SessionState, message: m.AudioChunk) -> None:
        payload = decode_base64(message.payload or "", "payload")
        try:
            duration = audio_duration_ms(payload, state.audio_format, state.sample_rate)
        except EmptyOpusPacket as exc:
            # Issue 14: not opus framing, and not known to be audio time either (the original's client sent pcm16
            # silence as "opus"): kept, counted as unframed, and adds nothing to the utterance's duration, so it
            # cannot force a max-duration cut (max_buffer_bytes still bounds it).
            duration = 0.0
            self._metrics.counters["opus_payloads_unframed"] += 1
            self._metrics.counters["opus_payloads_empty_packets"] += 1
            emit(log, WARNING, "opus_payload_unframed", session_id=state.session_id, error=str(exc),
                 bytes=len(payload), estimated_ms=0.0)
        except ValueError as exc:
            # Not in the length-prefixed framing. The original never checked it, so rejecting would lose the
            # audio of clients that worked with it: keep the bytes, estimate as the original did, and say so.
            duration = unframed_opus_duration_ms(payload)
            self._metrics.counters["opus_payloads_unframed"] += 1
            emit(log, WARNING, "opus_payload_unframed", session_id=state.session_id, error=str(exc),
                 bytes=len(payload), estimated_ms=round(duration, 1))
        cut = state.segmenter.push(payload, duration, message.is_final, trio.current_time())
        if cut is not None:
            await self._submit_cut(state, cut)
        elif message.is_final:
            self._metrics.counters["empty_finalize_skipped"] += 1
            emit(log, INFO, "finalize_skipped", session_id=state.session_id, reason="empty_buffer",
                 utterance_index=state.next_index, trace_id=state.trace_id)

    async def _on_utterance(self, state: SessionState, message: m.Utterance) -> None:
        index = utterance_index(state, message)
        if index in state.used:
            self._metrics.counters["utterances_duplicate"] += 1
            emit(log, INFO, "utterance_duplicate_ignored", session_id=state.session_id, utterance_index=index)
            return
        spec = build_job_spec(state, self._config.segmentation, index, trio.current_time(), message, random_uuid())
        if log.isEnabledFor(DEBUG):
            emit(log, DEBUG, "job_finalized", session_id=state.session_id, utterance_index=index,
                 trace_id=spec.trace_id, reason=spec.cut_reason, audio_bytes=spec.audio_size, elapsed_ms=0.0)
        await self._submit(state, spec)

    async def _submit_cut(self, state: SessionState, cut: Cut) -> None:
        spec = build_job_spec(state, self._config.segmentation, state.next_index, trio.current_time(), cut)
        emit(log, DEBUG, "job_finalized", session_id=state.session_id, utterance_index=spec.utterance_index,
             trace_id=spec.trace_id, reason=cut.reason.value, audio_bytes=len(cut.audio),
             audio_ms=round(cut.duration_ms, 1), chunks=cut.chunks, turn_id=cut.turn_id, elapsed_ms=0.0)
        await self._submit(state, spec)

    async def _submit(self, state: SessionState, spec: JobSpec) -> None:
        """Hand the utterance to the registry, or refuse it when the session's bounds are reached; its outcome
        is owed either way. If the registry cannot answer in time, the utterance gets SCHEDULER_BUSY."""
        index = spec.utterance_index
        state.used.add(index)
        state.next_index = max(state.next_index, index + 1)
        counters = self._metrics.counters
        counters["utterances_finalized"] += 1
        writer = self._writer
        writer.send_nowait(Expect(index, spec.finalized_at))
        audio_bytes = spec.audio_size
        refusal = state.jobs.refusal(audio_bytes, self._config.limits)
        if refusal is not None:
            counters[f"utterances_refused_{refusal.code}"] += 1
            emit(log, INFO, "utterance_refused", session_id=spec.session_id, utterance_index=index,
                 trace_id=spec.trace_id, code=refusal.code, outstanding=len(state.jobs),
                 audio_bytes_held=state.jobs.audio_bytes)
            writer.send_nowait(Outcome(index, refusal.to_message(
                session_id=spec.session_id, utterance_index=index, trace_id=spec.trace_id), ""))
            return
        state.jobs.hold(index, audio_bytes)
        rooms = self._rooms
        if rooms is not None and rooms.in_room and await rooms.submit(state, spec):
            return
        answer_by = spec.finalized_at + self._config.scheduler.selection_deadline_ms / 1000.0
        registry = self._registry
        submitted = registry.submit_nowait(spec, writer)
        if submitted is not None:  # the reader goes back to its socket; the answer is checked by answer_by
            unanswered = self._unanswered
            if unanswered is None:
                unanswered = self._unanswered = UnansweredSubmits()
            unanswered.add(answer_by, submitted, spec)
            return
        if await registry.submit(spec, writer, answer_by) is None:  # the inbox was full: wait for room
            self._scheduler_busy(spec)

    def _expire_submits(self, unanswered: UnansweredSubmits) -> None:
        """Every submit the registry did not answer by its deadline is abandoned and gets SCHEDULER_BUSY."""
        for spec in unanswered.expired(trio.current_time()):
            self._scheduler_busy(spec)

    def _scheduler_busy(self, spec: JobSpec) -> None:
        """The registry did not take the utterance within ``selection_deadline_ms``: its outcome is SCHEDULER_BUSY
        (the submit was abandoned, so no job will be made of it)."""
        deadline_ms = self._config.scheduler.selection_deadline_ms
        index = spec.utterance_index
        self._metrics.counters["scheduler_busy"] += 1
        emit(log, WARNING, "job_deadline_missed", session_id=spec.session_id, utterance_index=index,
             trace_id=spec.trace_id, stage="registry_submit",
             why=f"registry did not answer within selection_deadline_ms ({deadline_ms:g} ms)",
             elapsed_ms=round((trio.current_time() - spec.finalized_at) * 1000.0, 3))
        self._writer.send_nowait(Outcome(index, m.ErrorMessage(
            code=ErrorCode.SCHEDULER_BUSY,
            message=f"scheduler busy: no answer within {deadline_ms:g} ms; utterance not scheduled",
            session_id=spec.session_id, utterance_index=index, trace_id=spec.trace_id,
        ), ""))

    async def _on_close(self, state: SessionState, message: m.SessionClose) -> None:
        """Flush first: the buffered audio's outcome reaches the client before session_close_ack, unless it takes
        longer than ``results.close_wait_seconds`` from now (then it is reported missing, not waited for)."""
        deadline = trio.current_time() + self._config.results.close_wait_seconds
        cut = state.segmenter.flush()
        if cut is not None:
            await self._submit_cut(state, cut)
        if self._rooms is not None:
            await self._rooms.closing(deadline)
        done = trio.Event()
        self._writer.send_nowait(CloseSession(state.session_id, done, deadline))
        await self._read_while_closing(done)
        if self._writer.closed:
            raise TransportClosed  # the writer ended without the ack: the socket is gone
        self._registry.session_ended_nowait(state.session_id)
        if self._rooms is not None:
            self._rooms.ended(state.session_id)
        self._directory.release(state.session_id, self._holder, state.init.tenant_id, trio.current_time())
        if self._unanswered is not None:
            self._unanswered.abandon_all()  # the session is over: none of its submits may still become a job
        emit(log, INFO, "session_ended", session_id=state.session_id, reason=message.reason or "session_close")
        self._state = self._writer.session = None

    async def _read_while_closing(self, done: trio.Event) -> None:
        """Wait for ``done`` while still reading the socket, so a client that vanishes mid-close has its jobs
        cancelled at once. Frames that arrive meanwhile (a pipelined session_init, say) are kept for later, up to
        ``limits.max_message_bytes`` of them; past that the socket is not read until the close is done (the
        writer's end, if the client is gone, also sets ``done``). Raises TransportClosed when the socket went
        away."""
        budget = self._config.limits.max_message_bytes
        early = self._early_frames
        if early is None:
            early = self._early_frames = []
        held = sum(map(sys.getsizeof, early))
        gone = False

        async def read_ahead(cancel_scope: trio.CancelScope) -> None:
            nonlocal gone, held
            try:
                while held < budget:
                    frame = await self._transport.get_message()
                    early.append(frame)
                    held += sys.getsizeof(frame)
            except TransportClosed:
                gone = True
                cancel_scope.cancel()

        async with trio.open_nursery() as race:
            race.start_soon(read_ahead, race.cancel_scope)
            await done.wait()
            race.cancel_scope.cancel()
        if not early:
            self._early_frames = None
        if gone:
            raise TransportClosed

    # ------------------------------------------------------------------------------------------ drain

    def wake_for_drain(self) -> None:
        """A drain started or reached its deadline: a reader waiting for a frame looks at it now."""
        scope = self._wait_scope
        if scope is not None:
            scope.cancel()

    async def _close_for_drain(self, drain: DrainControl, state: SessionState | None) -> None:
        """At an utterance boundary (or the drain deadline): read no more audio, deliver every outcome owed (those
        still owed at the deadline, and a cut of what was buffered then, as SCHEDULER_DRAINING errors), then close
        with CloseCode.SERVICE_RESTART. A socket without a session gets ``error`` SCHEDULER_DRAINING first."""
        counters = self._metrics.counters
        writer = self._writer
        now = trio.current_time()
        try:
            if state is None:
                counters["sessions_refused_draining"] += 1
                self._send_now(m.ErrorMessage(code=ErrorCode.SCHEDULER_DRAINING,
                                              message="scheduler draining: open the session on another scheduler"))
            else:
                cut = state.segmenter.flush() if drain.expired else None
                if cut is not None:
                    self._refuse_for_drain(state, now)
                counters["sessions_drained"] += 1
                emit(log, INFO, "session_draining", session_id=state.session_id, at_deadline=drain.expired,
                     cut_at_deadline=cut is not None, jobs_outstanding=len(state.jobs))
            done = trio.Event()
            deadline = now if drain.expired else drain.deadline
            writer.send_nowait(CloseSession(state.session_id if state else "", done, deadline, drain=True))
            await self._read_while_closing(done)
        except (TransportClosed, trio.ClosedResourceError):
            return
        await writer.close(CloseCode.SERVICE_RESTART, "scheduler draining")

    def _refuse_for_drain(self, state: SessionState, now: float) -> None:
        """The audio buffered at the drain deadline, cut: its outcome is SCHEDULER_DRAINING (it is not scheduled)."""
        index = state.next_index
        state.used.add(index)
        state.next_index = index + 1
        self._metrics.counters["utterances_finalized"] += 1
        self._writer.send_nowait(Expect(index, now))
        self._writer.send_nowait(Outcome(index, m.ErrorMessage(
            code=ErrorCode.SCHEDULER_DRAINING, message="scheduler draining: utterance cut at the drain deadline, "
                                                       "not scheduled",
            session_id=state.session_id, utterance_index=index, trace_id=state.trace_id), ""))
    async def _on_room_message(self, state: SessionState, message: Any) -> None:
        rooms = self._rooms
        if rooms is None:
            if self._rooms_client is None:
                raise ProtocolError(f"message type '{message.TYPE}' is not supported here: rooms are off",
                                    field="type", code=ErrorCode.UNSUPPORTED_FEATURE)
            rooms = self._rooms = SessionRooms(self._rooms_client, self._registry, self._config, self._writer,
                                               self._metrics.counters)
        await rooms.handle(state, message)

    def _send_now(self, message: Any) -> None:
        self._writer.send_nowait(Send(message))

