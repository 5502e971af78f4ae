"""One client socket: a reader task that decodes and segments, and a writer task that owns ordering and the socket.

The reader cuts utterances and hands each to the registry under ``selection_deadline_ms``; the writer is the only
task that writes to the socket, so acks, partials and in-order outcomes never interleave. Outcomes come from the
registry into the writer's inbox with ``send_nowait``; the registry never waits on a client.

The writer runs only while it has work: the first item queued starts it, and it ends once nothing is queued, owed
or timed. An idle session (most of them, at scale) is then its reader alone, without a second task, a channel or a
nursery: writers run in the scheduler's nursery for session tasks, which they never fail (a writer's crash is raised
by its session's handler, which logs it and closes that socket only).
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import time
from typing import Any

import attrs
import trio

from trioscheduler.config import Config
from trioscheduler.ids import new_session_id, random_uuid
from trioscheduler.logs import emit
from trioscheduler.policy.capability import ANY_SOURCE, direction_key, normalise_language, pool_name
from trioscheduler.policy.ordering import Added, Release, ResultOrderer
from trioscheduler.policy.segmentation import (Cut, CutReason, Segmenter, audio_duration_ms,
                                               unframed_opus_duration_ms)
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import CLIENT_CODEC, base64_size, decode_base64, encode, encode_wire, to_wire
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.registry.requests import JobSpec, Outcome, Passthrough, RegistryClient
from trioscheduler.transport import Transport, TransportClosed

log = logging.getLogger("trioscheduler.session")
INFO, WARNING = logging.INFO, logging.WARNING

AUDIO_FORMATS = frozenset({"opus", "pcm16"})
UTTERANCE_AUDIO_FORMATS = frozenset({"opus", "pcm16", "wav"})
MODES = frozenset({"one_way", "two_way_auto"})
#: How far ahead of the next expected index a client-chosen utterance_index may jump.
MAX_INDEX_AHEAD = 256
#: Frames kept while a session_close waits; beyond this the socket is simply not read until the close is done.
MAX_FRAMES_DURING_CLOSE = 64
#: How long a writer with nothing left to do waits for more before it ends: a session exchanging messages keeps
#: its writer (starting one per round trip cost ~8 µs in a closed loop), an idle one loses it after this.
WRITER_LINGER_SECONDS = 1.0


#: What the writer's inbox returns when the writer has nothing left to do (it ends; the next item starts one).
_SETTLED = object()


def wall_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------- writer items


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
class CloseSession:
    """session_close: deliver every outcome owed, then session_close_ack, then set ``done``."""

    session_id: str
    done: trio.Event


class SessionMetrics:
    """Counters across all sessions, read by /api/v1/stats and /metrics."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        #: Open session connections, for footprint checks in tests and fault-injection runs.
        self.live: set[SessionConnection] = set()

    @property
    def active(self) -> int:
        return len(self.live)


class IndexSet:
    """Indices used so far, in O(gaps) memory: a low-water mark plus the few above it (no set at all while the
    indices come in order, which is every idle and most busy sessions: an empty set is 216 bytes)."""

    __slots__ = ("low", "above")

    def __init__(self) -> None:
        self.low = 0
        self.above: set[int] | None = None

    def __contains__(self, index: int) -> bool:
        return index < self.low or (self.above is not None and index in self.above)

    def __len__(self) -> int:
        """How many indices are held above the low-water mark."""
        return len(self.above) if self.above is not None else 0

    def add(self, index: int) -> None:
        if index < self.low:
            return
        above = self.above
        if index != self.low:
            if above is None:
                above = self.above = set()
            above.add(index)
            return
        self.low += 1
        if above is not None:
            while self.low in above:
                above.discard(self.low)
                self.low += 1
            if not above:
                self.above = None


@attrs.define
class SessionState:
    session_id: str
    trace_id: str
    src_lang: str
    tgt_lang: str
    selection_key: str
    audio_format: str
    sample_rate: int
    pipeline: m.Pipeline
    segmenter: Segmenter
    init: m.SessionInit
    next_index: int = 0
    used: IndexSet = attrs.field(factory=IndexSet)


def selection_key_for(src: str, tgt: str, mode: str | None, lang_a: str | None, lang_b: str | None) -> str:
    """src "auto" uses the target (one-way) or the lang_a/lang_b pool (two-way); else the direction src→tgt."""
    src, tgt = normalise_language(src), normalise_language(tgt)
    if src == "auto":
        if mode == "two_way_auto" and lang_a and lang_b:
            return pool_name(normalise_language(lang_a), normalise_language(lang_b))
        return direction_key(ANY_SOURCE, tgt)
    return direction_key(src, tgt)


class SessionConnection:
    __slots__ = ("_transport", "_registry", "_config", "_metrics", "_state", "_orderer", "_owed", "_queue",
                 "_wakeup", "_writer_running", "_closed", "_tasks", "_crash", "_closing", "_close_deadline",
                 "_early_frames", "_closed_sessions")

    def __init__(
        self,
        transport: Transport,
        registry: RegistryClient,
        config: Config,
        metrics: SessionMetrics,
        tasks: trio.Nursery,
    ) -> None:
        self._transport = transport
        self._registry = registry
        self._config = config
        self._metrics = metrics
        self._state: SessionState | None = None
        #: Writer-owned: outcomes waiting for lower indices (made with the session's first utterance), index ->
        #: finalized_at for each outcome still owed, and the session_close being completed.
        self._orderer: ResultOrderer[Any] | None = None
        self._owed: dict[int, float] = {}
        self._closing: CloseSession | None = None
        self._close_deadline = math.inf
        #: The writer's inbox (see send_nowait): items in arrival order, the Event it parks on when it has nothing
        #: to do but wait for an item or a deadline, and whether a writer task is running.
        self._queue: list[Any] = []
        self._wakeup: trio.Event | None = None
        self._writer_running = False
        self._closed = False
        #: Where the writer (and the job cancellations it asks for) run: the scheduler's, not one per session.
        self._tasks = tasks
        self._crash: Exception | None = None
        #: Frames read while a session_close waited for its outcomes, handled once it is done (a list made on first
        #: use: an idle session should not pay for a container it almost never uses).
        self._early_frames: list[str | bytes] | None = None
        #: Sessions this socket closed: their late outcomes must not reach the next session's orderer.
        self._closed_sessions: tuple[str, ...] = ()

    def _new_orderer(self) -> ResultOrderer[Any]:
        return ResultOrderer(gap_timeout=self._config.results.gap_timeout_seconds)

    def footprint(self) -> dict[str, int]:
        """What this session holds beyond its idle size; all zero once its utterances are settled."""
        state = self._state
        return {
            "buffered_bytes": state.segmenter.buffered_bytes if state else 0,
            "indices_above_low_water": len(state.used) if state else 0,
            "outcomes_held": self._orderer.pending_count if self._orderer is not None else 0,
            "outcomes_owed": len(self._owed),
            "writer_queue": len(self._queue),
        }

    @property
    def writer_running(self) -> bool:
        """Whether the writer task exists now; false for an idle session (see the module docstring)."""
        return self._writer_running

    async def run(self) -> None:
        """The reader, in the connection's handler task; returns when the socket is gone, raises what crashed."""
        self._metrics.live.add(self)
        try:
            await self._reader()
            if self._crash is not None:
                raise self._crash
        finally:
            self._metrics.live.discard(self)
            self._closed = True  # no writer starts after this, and a waiting one ends
            self._queue.clear()
            if self._wakeup is not None:
                self._wakeup.set()
            if self._state is not None:
                self._registry.session_ended_nowait(self._state.session_id)
                emit(log, INFO, "session_ended", session_id=self._state.session_id, reason="socket_closed")

    # ------------------------------------------------------------------------------------------ reader

    async def _reader(self) -> None:
        transport = self._transport
        while True:
            state = self._state
            deadline = state.segmenter.pause_deadline() if state is not None else None
            early = self._early_frames
            if early:
                frame = early.pop(0)
            elif deadline is None:
                try:
                    frame = await transport.get_message()
                except TransportClosed:
                    return
            else:
                frame = None
                with trio.move_on_at(deadline):
                    try:
                        frame = await transport.get_message()
                    except TransportClosed:
                        return
                if frame is None:
                    assert state is not None
                    cut = state.segmenter.on_timer(trio.current_time())
                    if cut is not None:
                        await self._submit_cut(state, cut)
                    continue
            try:
                message = CLIENT_CODEC.decode(frame)
                await self._handle(message)
            except TransportClosed:
                return
            except ProtocolError as exc:
                self._metrics.counters[f"client_errors_{exc.code}"] += 1
                self._send_now(exc.to_message(session_id=self._state.session_id if self._state else None,
                                              utterance_index=exc.utterance_index))
            frame = message = None  # not kept alive by this frame while the socket is quiet (an idle session)

    async def _handle(self, message: Any) -> None:
        if isinstance(message, m.SessionInit):
            self._on_init(message)
            return
        state = self._state
        if isinstance(message, m.Utterance):
            try:
                if state is None:
                    state = self._implicit_session(message)
                self._check_session_id(state, message)
                await self._on_utterance(state, message)
            except ProtocolError as exc:
                exc.utterance_index = message.utterance_index  # the client can tell which utterance failed
                raise
            return
        if state is None:
            raise ProtocolError(f"{message.TYPE} before session_init: no session on this connection",
                                field="session_id", code=ErrorCode.INVALID_SESSION)
        self._check_session_id(state, message)
        if isinstance(message, m.AudioChunk):
            await self._on_audio_chunk(state, message)
        elif isinstance(message, m.ClientHeartbeat):
            self._send_now(m.ServerHeartbeat(session_id=state.session_id, timestamp=wall_ms()))
        elif isinstance(message, (m.TtsStarted, m.TtsPlayEnded)):
            state.segmenter.restart_pause_clock(trio.current_time())
        elif isinstance(message, m.SessionClose):
            await self._on_close(state, message)

    @staticmethod
    def _check_session_id(state: SessionState, message: Any) -> None:
        session_id = getattr(message, "session_id", None)
        if session_id and session_id != state.session_id:
            raise ProtocolError(f"session_id {session_id!r} is not this connection's session",
                                field="session_id", code=ErrorCode.INVALID_SESSION)

    def _on_init(self, message: m.SessionInit) -> None:
        if self._state is not None:
            raise ProtocolError("session already initialised on this connection; send session_close first",
                                field="type")
        state = self._new_state(message, new_session_id(), message.trace_id or random_uuid())
        self._state = state
        self._metrics.counters["sessions_started"] += 1
        emit(log, INFO, "session_started", session_id=state.session_id, trace_id=state.trace_id,
             src_lang=state.src_lang, tgt_lang=state.tgt_lang, audio_format=state.audio_format,
             selection_key=state.selection_key, peer=self._transport.peer)
        self._send_now(m.SessionInitAck(
            session_id=state.session_id, trace_id=state.trace_id,
            negotiated_codec=state.audio_format, negotiated_audio_format=state.audio_format,
            negotiated_sample_rate=state.sample_rate,
        ))

    def _implicit_session(self, message: m.Utterance) -> SessionState:
        """An ``utterance`` on a socket without session_init (the original's API gateway, H-8): a session for
        this socket from the utterance's own fields, so its result has somewhere to go."""
        if not message.src_lang or not message.tgt_lang:
            raise ProtocolError("utterance without session_init must carry src_lang and tgt_lang",
                                field="src_lang" if not message.src_lang else "tgt_lang",
                                code=ErrorCode.INVALID_SESSION)
        init = m.SessionInit(
            src_lang=message.src_lang, tgt_lang=message.tgt_lang, mode=message.mode, lang_a=message.lang_a,
            lang_b=message.lang_b, trace_id=message.trace_id, audio_format="pcm16",
            sample_rate=message.sample_rate or 16000, pipeline=message.pipeline,
        )
        session_id = message.session_id or new_session_id()
        state = self._new_state(init, session_id, message.trace_id or random_uuid())
        self._state = state
        self._metrics.counters["sessions_implicit"] += 1
        emit(log, INFO, "session_started", session_id=session_id, implicit=True, peer=self._transport.peer)
        return state

    def _new_state(self, init: m.SessionInit, session_id: str, trace_id: str) -> SessionState:
        init = _shared_strings(init)
        for name in ("src_lang", "tgt_lang"):
            if not getattr(init, name).strip():
                raise ProtocolError(f"session_init: {name} must not be empty", field=name)
        audio_format = init.audio_format.strip().lower()
        if audio_format not in AUDIO_FORMATS:
            raise ProtocolError(f"session_init: audio_format must be one of {sorted(AUDIO_FORMATS)}",
                                field="audio_format")
        _check_rate_and_mode("session_init", init.sample_rate, init.mode)
        if init.mode == "two_way_auto" and not (init.lang_a and init.lang_b):
            raise ProtocolError("session_init: two_way_auto needs lang_a and lang_b",
                                field="lang_a" if not init.lang_a else "lang_b")
        seg = self._config.segmentation
        return SessionState(
            session_id=session_id,
            trace_id=trace_id,
            src_lang=init.src_lang,
            tgt_lang=init.tgt_lang,
            selection_key=selection_key_for(init.src_lang, init.tgt_lang, init.mode, init.lang_a, init.lang_b),
            audio_format=audio_format,
            sample_rate=init.sample_rate,
            pipeline=init.pipeline or m.DEFAULT_PIPELINE,
            segmenter=Segmenter(
                pause_ms=seg.pause_ms, max_duration_ms=seg.max_duration_ms,
                max_buffer_bytes=seg.max_buffer_bytes, new_turn_id=random_uuid,
            ),
            init=init,
        )

    async def _on_audio_chunk(self, state: SessionState, message: m.AudioChunk) -> None:
        payload = decode_base64(message.payload or "", "payload")
        try:
            duration = audio_duration_ms(payload, state.audio_format, state.sample_rate)
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
        if not base64_size(message.audio, "audio"):
            raise ProtocolError("utterance: audio is empty", field="audio")
        audio_format = (message.audio_format or state.audio_format).strip().lower()
        if audio_format not in UTTERANCE_AUDIO_FORMATS:
            raise ProtocolError(f"utterance: audio_format must be one of {sorted(UTTERANCE_AUDIO_FORMATS)}",
                                field="audio_format")
        sample_rate = message.sample_rate or state.sample_rate
        _check_rate_and_mode("utterance", sample_rate, message.mode)
        index = message.utterance_index
        if index is None:
            index = state.next_index
        elif index < 0 or index > state.next_index + MAX_INDEX_AHEAD:
            raise ProtocolError(f"utterance: utterance_index {index} is out of range "
                                f"(next expected {state.next_index}, at most {MAX_INDEX_AHEAD} ahead)",
                                field="utterance_index")
        if index in state.used:
            self._metrics.counters["utterances_duplicate"] += 1
            emit(log, INFO, "utterance_duplicate_ignored", session_id=state.session_id, utterance_index=index)
            return
        src = message.src_lang or state.src_lang
        tgt = message.tgt_lang or state.tgt_lang
        init = state.init
        mode = message.mode or init.mode
        lang_a, lang_b = message.lang_a or init.lang_a, message.lang_b or init.lang_b
        manual = message.manual_cut
        spec = JobSpec(
            session_id=state.session_id,
            utterance_index=index,
            trace_id=message.trace_id or state.trace_id,
            src_lang=src,
            tgt_lang=tgt,
            selection_key=selection_key_for(src, tgt, mode, lang_a, lang_b),
            pipeline=message.pipeline or state.pipeline,
            audio=b"",  # forwarded as the client's base64 (audio_b64), never decoded here
            audio_format=audio_format,
            sample_rate=sample_rate,
            turn_id=random_uuid(),
            cut_reason="utterance",
            finalized_at=trio.current_time(),
            padding_ms=self._config.segmentation.padding_manual_ms if manual
            else self._config.segmentation.padding_auto_ms,
            is_manual_cut=manual,
            dialect=message.dialect or init.dialect,
            features=message.features if message.features is not None else init.features,
            mode=mode,
            lang_a=lang_a,
            lang_b=lang_b,
            auto_langs=init.auto_langs,
            **_streaming_asr(init),
            tenant_id=init.tenant_id,
            audio_b64=message.audio,
        )
        await self._submit(state, spec)

    async def _submit_cut(self, state: SessionState, cut: Cut) -> None:
        seg = self._config.segmentation
        init = state.init
        padding = {CutReason.IS_FINAL: seg.padding_manual_ms, CutReason.MAX_BUFFER: None}.get(
            cut.reason, seg.padding_auto_ms)
        spec = JobSpec(
            session_id=state.session_id,
            utterance_index=state.next_index,
            trace_id=state.trace_id,
            src_lang=state.src_lang,
            tgt_lang=state.tgt_lang,
            selection_key=state.selection_key,
            pipeline=state.pipeline,
            audio=cut.audio,
            audio_format=state.audio_format,
            sample_rate=state.sample_rate,
            turn_id=cut.turn_id,
            cut_reason=cut.reason.value,
            finalized_at=trio.current_time(),
            padding_ms=padding,
            is_manual_cut=cut.is_manual_cut,
            is_timeout_triggered=cut.is_timeout_triggered,
            is_max_duration_triggered=cut.is_max_duration_triggered,
            dialect=init.dialect,
            features=init.features,
            mode=init.mode,
            lang_a=init.lang_a,
            lang_b=init.lang_b,
            auto_langs=init.auto_langs,
            **_streaming_asr(init),
            tenant_id=init.tenant_id,
        )
        emit(log, INFO, "job_finalized", session_id=state.session_id, utterance_index=spec.utterance_index,
             trace_id=spec.trace_id, reason=cut.reason.value, audio_bytes=len(cut.audio),
             audio_ms=round(cut.duration_ms, 1), chunks=cut.chunks, turn_id=cut.turn_id, elapsed_ms=0.0)
        await self._submit(state, spec)

    async def _submit(self, state: SessionState, spec: JobSpec) -> None:
        """Hand the utterance to the registry; if it cannot answer in time, the utterance gets SCHEDULER_BUSY."""
        index = spec.utterance_index
        state.used.add(index)
        state.next_index = max(state.next_index, index + 1)
        self._metrics.counters["utterances_finalized"] += 1
        self.send_nowait(Expect(index, spec.finalized_at))
        deadline_ms = self._config.scheduler.selection_deadline_ms
        reply = await self._registry.submit(spec, self, spec.finalized_at + deadline_ms / 1000.0)
        if reply is not None:
            return
        self._metrics.counters["scheduler_busy"] += 1
        emit(log, WARNING, "job_deadline_missed", session_id=spec.session_id, utterance_index=index,
             trace_id=spec.trace_id, stage="registry_submit",
             why=f"registry did not answer within selection_deadline_ms ({deadline_ms:g} ms)",
             elapsed_ms=round((trio.current_time() - spec.finalized_at) * 1000.0, 3))
        self.send_nowait(Outcome(index, m.ErrorMessage(
            code=ErrorCode.SCHEDULER_BUSY,
            message=f"scheduler busy: no answer within {deadline_ms:g} ms; utterance not scheduled",
            session_id=spec.session_id, utterance_index=index, trace_id=spec.trace_id,
        ), ""))

    async def _on_close(self, state: SessionState, message: m.SessionClose) -> None:
        """Flush first (H-7): the buffered audio's outcome reaches the client before session_close_ack."""
        cut = state.segmenter.flush()
        if cut is not None:
            await self._submit_cut(state, cut)
        done = trio.Event()
        self.send_nowait(CloseSession(state.session_id, done))
        await self._wait_watching_socket(done)
        await self._registry.session_ended(state.session_id)
        emit(log, INFO, "session_ended", session_id=state.session_id, reason=message.reason or "session_close")
        self._state = None

    async def _wait_watching_socket(self, done: trio.Event) -> None:
        """Wait for ``done`` while still reading the socket, so a client that vanishes mid-close has its jobs
        cancelled at once; frames that arrive meanwhile (a pipelined session_init, say) are kept for later.
        Raises TransportClosed when the socket went away."""
        gone = False

        async def read_ahead(cancel_scope: trio.CancelScope) -> None:
            nonlocal gone
            early = self._early_frames
            if early is None:
                early = self._early_frames = []
            try:
                while len(early) < MAX_FRAMES_DURING_CLOSE:
                    early.append(await self._transport.get_message())
            except TransportClosed:
                gone = True
                cancel_scope.cancel()

        async with trio.open_nursery() as race:
            race.start_soon(read_ahead, race.cancel_scope)
            await done.wait()
            race.cancel_scope.cancel()
        if gone:
            raise TransportClosed

    def _send_now(self, message: Any) -> None:
        self.send_nowait(Send(message))

    # ------------------------------------------------------------------------------------------ writer

    def send_nowait(self, item: Any) -> None:
        """The writer's inbox, for the reader and the registry (this is the sink of the session's jobs): queue the
        item and wake the writer, or start one. Never blocks; raises trio.ClosedResourceError once the connection
        is ending (the registry counts the item undeliverable)."""
        if self._closed:
            raise trio.ClosedResourceError("session connection is closed")
        self._queue.append(item)
        if self._wakeup is not None:
            self._wakeup.set()
        elif not self._writer_running:
            self._writer_running = True
            self._tasks.start_soon(self._writer)

    async def _writer(self) -> None:
        """Sole writer of the socket. It runs in a nursery shared by all sessions, so it never raises: when the
        socket is gone, or on a crash (kept for run() to raise), it closes the socket, which ends the reader."""
        try:
            await self._write_loop()
        except TransportClosed:
            await self._end_reader()
        except Exception as exc:
            self._crash = exc
            await self._end_reader()
        finally:
            self._writer_running = False

    async def _end_reader(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self._transport.aclose()

    async def _next_item(self) -> Any:
        """The next queued item, None when the gap or close deadline came first, or ``_SETTLED`` when there is
        nothing left to wait for (nothing queued, owed or timed) and nothing came for WRITER_LINGER_SECONDS: then
        the writer ends, and the next item starts another. The check and the end are one step (no checkpoint
        between), so no item is ever left unseen."""
        queue = self._queue
        if self._closed:
            return _SETTLED
        if not queue:
            orderer = self._orderer
            gap = orderer.gap_deadline() if orderer is not None else None
            deadline = self._close_deadline if gap is None else min(gap, self._close_deadline)
            settled = deadline == math.inf and not self._owed
            if settled:
                deadline = trio.current_time() + WRITER_LINGER_SECONDS
            wakeup = self._wakeup = trio.Event()
            try:
                if deadline == math.inf:
                    await wakeup.wait()
                else:
                    with trio.move_on_at(deadline):
                        await wakeup.wait()
            finally:
                self._wakeup = None
            if self._closed:
                return _SETTLED
            if not queue:
                return _SETTLED if settled else None
        return queue.pop(0)

    async def _write_loop(self) -> None:
        """Releases outcomes strictly in utterance_index order, each exactly once."""
        owed = self._owed
        while True:
            item = await self._next_item()
            if item is _SETTLED:
                return
            orderer = self._orderer
            now = trio.current_time()
            if item is None:
                released = orderer.expire(now) if orderer is not None else []
                give_up = self._closing is not None and now >= self._close_deadline
                if give_up and orderer is not None:
                    released += orderer.drain()
                    released += [Release(index, None) for index in sorted(owed) if index >= orderer.next_index]
                await self._release(released, owed)
                if give_up:
                    owed.clear()
            elif type(item) is Outcome or type(item) is Passthrough:
                if getattr(item.message, "session_id", None) in self._closed_sessions:
                    # Raced the close: the session already had its outcome for this index and its ack.
                    self._metrics.counters["outcomes_dropped_after_close"] += 1
                    continue
                if type(item) is Passthrough:
                    await self._transport.send_message(encode(item.message))
                    continue
                if orderer is None:
                    orderer = self._orderer = self._new_orderer()
                added = orderer.add(item.utterance_index, item, now)
                if added is Added.ACCEPTED:
                    await self._release(orderer.ready(), owed)
                else:
                    self._metrics.counters[f"outcomes_dropped_{added.value}"] += 1
                    emit(log, WARNING, "outcome_dropped", reason=added.value,
                         session_id=getattr(item.message, "session_id", None),
                         utterance_index=item.utterance_index, job_id=item.job_id)
            elif type(item) is Send:
                await self._transport.send_message(encode(item.message))
            elif type(item) is Expect:
                if orderer is None:
                    orderer = self._orderer = self._new_orderer()
                if item.utterance_index >= orderer.next_index:
                    owed[item.utterance_index] = item.finalized_at
                else:
                    # Already released (as missing, after its gap wait): the job could only produce a second
                    # outcome, so stop it at once.
                    self._metrics.counters["utterances_already_released"] += 1
                    state = self._state
                    if state is not None:
                        self._cancel_jobs(state.session_id, (item.utterance_index,), "already_released")
            elif type(item) is CloseSession:
                self._closing = item
                self._close_deadline = now + self._max_job_lifetime()
            closing = self._closing
            if closing is not None and not owed:
                if orderer is not None:
                    await self._release(orderer.drain(), owed)
                await self._transport.send_message(encode(m.SessionCloseAck(session_id=closing.session_id)))
                self._closed_sessions += (closing.session_id,)
                closing.done.set()
                self._closing = None
                self._close_deadline = math.inf
                self._orderer = None  # the next session on this socket starts from index 0

    def _cancel_jobs(self, session_id: str, indices: tuple[int, ...], why: str) -> None:
        """Tell the registry without waiting for it (the writer must not block on the registry's inbox)."""
        self._tasks.start_soon(self._cancel_jobs_task, session_id, indices, why)

    async def _cancel_jobs_task(self, session_id: str, indices: tuple[int, ...], why: str) -> None:
        """Runs in the nursery shared by all sessions, so nothing may escape it."""
        try:
            await self._registry.cancel_jobs(session_id, indices, why)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the registry is gone: the scheduler is stopping
        except Exception:
            log.exception("cancelling jobs of session %s failed", session_id)

    async def _release(self, released: list[Any], owed: dict[int, float]) -> None:
        state = self._state
        now = trio.current_time()
        for release in released:
            index = release.index
            finalized_at = owed.pop(index, None)
            if release.outcome is None:
                if state is None:
                    continue
                self._metrics.counters["outcome_missing_gap_timeout"] += 1
                message: Any = m.MissingResult(session_id=state.session_id, utterance_index=index,
                                               reason="gap_timeout", created_at_ms=wall_ms(),
                                               trace_id=state.trace_id)
                if finalized_at is not None:
                    # Still running somewhere: stop it, its result could only be dropped now.
                    self._cancel_jobs(state.session_id, (index,), "gap_timeout")
                emit(log, WARNING, "job_deadline_missed", session_id=state.session_id, utterance_index=index,
                     trace_id=state.trace_id, stage="result_gap",
                     why="no outcome within gap_timeout_seconds of a later index's outcome")
                job_id = None
            else:
                message = release.outcome.message
                job_id = release.outcome.job_id
            if type(message) is m.TranslationResult:
                wire = to_wire(message)
                wire["scheduler_sent_at_ms"] = wall_ms()  # when it leaves, not when the registry built it
                await self._transport.send_message(encode_wire(wire))
            else:
                await self._transport.send_message(encode(message))
            self._metrics.counters[f"delivered_{message.TYPE}"] += 1
            if log.isEnabledFor(INFO):
                emit(log, INFO, "job_delivered", session_id=getattr(message, "session_id", None),
                     utterance_index=index, job_id=job_id, node_id=getattr(message, "node_id", None),
                     trace_id=getattr(message, "trace_id", None), kind=message.TYPE,
                     elapsed_ms=None if finalized_at is None else round((now - finalized_at) * 1000.0, 3))

    def _max_job_lifetime(self) -> float:
        """The longest a job can take in the registry (waits, then every attempt times out), plus slack."""
        sched = self._config.scheduler
        attempts = sched.failover_max_attempts + 1
        return attempts * (sched.pending_timeout_seconds + sched.job_timeout_seconds) + 5.0


#: session_init fields whose values repeat across sessions (languages, platform, client version, audio format).
_SHARED_FIELDS = ("src_lang", "tgt_lang", "client_version", "platform", "dialect", "tenant_id", "mode", "lang_a",
                  "lang_b", "audio_format")


def _shared_strings(init: m.SessionInit) -> m.SessionInit:
    """The session keeps its session_init for its whole life; with one copy of "zh", "en", "web"... per session
    that is ~300 bytes of every idle session. Interned, all sessions share each value."""
    shared = {name: sys.intern(value) for name in _SHARED_FIELDS if type(value := getattr(init, name)) is str}
    return attrs.evolve(init, **shared)


def _check_rate_and_mode(kind: str, sample_rate: int, mode: str | None) -> None:
    if not 8000 <= sample_rate <= 192000:
        raise ProtocolError(f"{kind}: sample_rate must be within 8000..192000", field="sample_rate")
    if mode is not None and mode not in MODES:
        raise ProtocolError(f"{kind}: mode must be one of {sorted(MODES)}", field="mode")


def _streaming_asr(init: m.SessionInit) -> dict[str, Any]:
    """The session's partial-result settings for job_assign; the original's defaults when it gave none."""
    return {
        "enable_streaming_asr": True if init.enable_streaming_asr is None else init.enable_streaming_asr,
        "partial_update_interval_ms": 1000 if init.partial_update_interval_ms is None
        else init.partial_update_interval_ms,
    }

