"""A simulated client that speaks the lingua session protocol (``/ws/session``).

It streams a WAV file the way the web client does (200 ms ``audio_chunk`` messages in real time, base64 pcm16) and
measures what a user feels: the time from the end of an utterance to its result. Like the simulated node it builds
plain dicts, so it checks the daemon from the outside rather than through the daemon's own codec.

Utterance boundaries ("cuts") are the client's to choose:

* ``cut="end"`` (the default): every chunk is sent, silence included, then one empty ``audio_chunk{is_final:true}``.
  The scheduler decides where utterances end.
* ``cut="vad"``: a crude energy VAD, like the web client's: silent chunks are not sent, and the first silent chunk
  after speech sends an empty ``is_final`` chunk, so each phrase becomes one manually cut utterance.

Latency is measured from each cut to the first outcome (``translation_result``, ``missing_result`` or ``error``)
that arrives after it, pairing cuts and outcomes first in, first out. An outcome that arrives while no cut is
waiting was finalized by the scheduler on its own (MaxDuration, pause) at a moment the client cannot see, so its
latency is ``None``.
"""

from __future__ import annotations

import array
import base64
import collections
import json
import logging
import math
import os
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import trio
import trio_websocket

from trioscheduler.node_agent import CONNECTION_CLOSED, WS_MAX_MESSAGE, WS_RECEIVE_BUFFER, MessageConnection

__all__ = [
    "DEFAULT_SESSION_URL",
    "Pcm16Audio",
    "ReceivedPartial",
    "SessionReport",
    "SimClient",
    "SimClientError",
    "UtteranceResult",
    "chunk_rms",
    "default_wav_path",
    "iter_chunks",
    "read_wav",
]

logger = logging.getLogger(__name__)

DEFAULT_SESSION_URL = "ws://127.0.0.1:5010/ws/session"
SIM_CLIENT_VERSION = "trioscheduler-sim/0.1.0"
OUTCOME_TYPES = frozenset({"translation_result", "missing_result", "error"})


# --------------------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------------------


@attrs.frozen
class Pcm16Audio:
    """Little-endian 16-bit mono PCM and its sample rate: the only format the sim client sends."""

    pcm: bytes = attrs.field(repr=lambda pcm: f"<{len(pcm)} bytes>")
    sample_rate: int = 16000

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) * 1000 / (2 * self.sample_rate)

    def chunk_bytes(self, chunk_ms: int = 200) -> int:
        """Bytes in one chunk of ``chunk_ms``: 6400 for 200 ms at 16 kHz."""
        return self.sample_rate * 2 * chunk_ms // 1000

    def chunks(self, chunk_ms: int = 200) -> list[bytes]:
        return list(iter_chunks(self.pcm, self.chunk_bytes(chunk_ms)))


def default_wav_path() -> Path:
    """The shipped clip: two English sentences (espeak-ng), 4.7 s, 16 kHz mono pcm16 (see data/README.md)."""
    return Path(__file__).with_name("data") / "speech.wav"


def read_wav(path: str | os.PathLike[str]) -> Pcm16Audio:
    """Read a 16-bit mono WAV. Anything else is refused, not converted: the sim has no resampler on purpose."""
    with wave.open(os.fspath(path), "rb") as wav:
        if wav.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono, got {wav.getnchannels()} channels")
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit samples, got {8 * wav.getsampwidth()}-bit")
        if wav.getcomptype() != "NONE":
            raise ValueError(f"{path}: expected uncompressed PCM, got {wav.getcomptype()}")
        return Pcm16Audio(wav.readframes(wav.getnframes()), wav.getframerate())


def iter_chunks(pcm: bytes, chunk_bytes: int) -> Iterator[bytes]:
    """Consecutive slices of ``chunk_bytes``; the last one may be shorter (but stays sample-aligned)."""
    if chunk_bytes <= 0 or chunk_bytes % 2:
        raise ValueError(f"chunk_bytes must be a positive even number, got {chunk_bytes}")
    for start in range(0, len(pcm) - len(pcm) % 2, chunk_bytes):
        yield pcm[start : min(start + chunk_bytes, len(pcm) - len(pcm) % 2)]


def chunk_rms(chunk: bytes) -> float:
    """Root mean square of a pcm16 chunk; the VAD's only input."""
    samples = array.array("h")
    samples.frombytes(chunk[: len(chunk) - len(chunk) % 2])
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


# --------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------


@attrs.frozen
class UtteranceResult:
    """One outcome the session received: a ``translation_result``, ``missing_result`` or ``error``."""

    kind: str
    utterance_index: int | None
    job_id: str | None
    text_asr: str
    text_translated: str
    tts_audio_bytes: int
    #: From the cut this outcome answered to its arrival; None if it answered no cut (see the module docstring).
    latency_ms: float | None
    #: Arrival, in ms since session_init was sent.
    received_at_ms: float
    error_code: str | None = None
    error_message: str | None = None
    reason: str | None = None  # missing_result's reason
    message: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.kind == "translation_result"


@attrs.frozen
class ReceivedPartial:
    """An ``asr_partial`` as the client saw it."""

    utterance_index: int | None
    text: str
    is_final: bool
    received_at_ms: float


@attrs.frozen
class SessionReport:
    """Everything one session produced, for printing or asserting."""

    session_id: str
    trace_id: str | None
    init_ack: dict[str, Any] = attrs.field(eq=False, repr=False)
    results: tuple[UtteranceResult, ...]
    partials: tuple[ReceivedPartial, ...]
    #: Anything else the scheduler sent (ui_event, server_heartbeat, ...), decoded.
    other: tuple[dict[str, Any], ...] = attrs.field(eq=False, repr=False)
    chunks_sent: int
    audio_bytes_sent: int
    cuts: int
    close_acked: bool
    closed_by_peer: bool
    duration_ms: float

    @property
    def translations(self) -> tuple[UtteranceResult, ...]:
        return tuple(r for r in self.results if r.kind == "translation_result")

    @property
    def missing(self) -> tuple[UtteranceResult, ...]:
        return tuple(r for r in self.results if r.kind == "missing_result")

    @property
    def errors(self) -> tuple[UtteranceResult, ...]:
        return tuple(r for r in self.results if r.kind == "error")

    @property
    def latencies_ms(self) -> tuple[float, ...]:
        return tuple(r.latency_ms for r in self.results if r.latency_ms is not None)


class SimClientError(Exception):
    """The session could not start: the scheduler answered session_init with ``error`` or hung up."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------------------------
# Per-session state (lives only inside one run_session call)
# --------------------------------------------------------------------------------------------------------------


@attrs.define
class _Session:
    t0: float
    session_id: str = ""
    trace_id: str | None = None
    init_ack: dict[str, Any] = attrs.field(factory=dict)
    results: list[UtteranceResult] = attrs.field(factory=list)
    partials: list[ReceivedPartial] = attrs.field(factory=list)
    other: list[dict[str, Any]] = attrs.field(factory=list)
    seq: int = 0
    chunks_sent: int = 0
    audio_bytes_sent: int = 0
    cuts: int = 0
    unanswered_cuts: collections.deque[float] = attrs.field(factory=collections.deque)
    streaming_done: bool = False
    closed_by_peer: bool = False
    close_acked: bool = False
    all_answered: trio.Event = attrs.field(factory=trio.Event)
    close_done: trio.Event = attrs.field(factory=trio.Event)

    def since_start_ms(self, t: float) -> float:
        return (t - self.t0) * 1000

    def check_all_answered(self) -> None:
        if (self.streaming_done and not self.unanswered_cuts) or self.closed_by_peer:
            self.all_answered.set()


# --------------------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------------------


@attrs.frozen
class SimClient:
    """A fake web client. Frozen: it is only configuration; every session keeps its own state.

    >>> audio = read_wav(default_wav_path())
    >>> # report = await SimClient(src_lang="en", tgt_lang="zh").run("ws://127.0.0.1:5010/ws/session", audio)
    """

    src_lang: str = "zh"
    tgt_lang: str = "en"
    chunk_ms: int = attrs.field(default=200, validator=attrs.validators.gt(0))
    #: Pace chunks at the speed of speech; False sends everything as fast as the socket takes it.
    realtime: bool = True
    cut: Literal["end", "vad"] = attrs.field(default="end", validator=attrs.validators.in_(("end", "vad")))
    #: RMS below which a chunk counts as silence in ``cut="vad"`` (pcm16 full scale is 32767).
    vad_threshold: float = 200.0
    #: After the last cut, how long to wait for outstanding outcomes before sending session_close.
    result_timeout_s: float = 10.0
    #: How long to wait for session_close_ack (results flushed on close still arrive meanwhile).
    close_timeout_s: float = 5.0
    client_version: str = SIM_CLIENT_VERSION
    platform: str = "web"
    trace_id: str | None = None
    #: Called with every outcome as it arrives, e.g. to print it live.
    on_result: Callable[[UtteranceResult], None] | None = attrs.field(default=None, eq=False)

    async def run(self, url: str, audio: Pcm16Audio) -> SessionReport:
        """Open a WebSocket to ``url``, run one session, close the socket."""
        async with trio_websocket.open_websocket_url(
            url, receive_buffer_size=WS_RECEIVE_BUFFER, max_message_size=WS_MAX_MESSAGE
        ) as ws:
            return await self.run_session(ws, audio)

    async def run_session(self, conn: MessageConnection, audio: Pcm16Audio) -> SessionReport:
        """init → stream → wait for outcomes → close, on an open connection that the caller keeps owning.

        Raises :class:`SimClientError` if the session cannot start; once it has started, a peer hang-up ends it
        early and shows as ``closed_by_peer`` in the report instead of an exception.
        """
        state = _Session(t0=trio.current_time())
        try:
            await self._init(conn, state, audio.sample_rate)
        except CONNECTION_CLOSED as exc:
            raise SimClientError("connection closed before session_init_ack") from exc
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop, conn, state)
            try:
                await self._stream(conn, state, audio)
                await self._finish(conn, state)
            except CONNECTION_CLOSED:
                state.closed_by_peer = True
            nursery.cancel_scope.cancel()
        return SessionReport(
            session_id=state.session_id,
            trace_id=state.trace_id,
            init_ack=state.init_ack,
            results=tuple(state.results),
            partials=tuple(state.partials),
            other=tuple(state.other),
            chunks_sent=state.chunks_sent,
            audio_bytes_sent=state.audio_bytes_sent,
            cuts=state.cuts,
            close_acked=state.close_acked,
            closed_by_peer=state.closed_by_peer,
            duration_ms=state.since_start_ms(trio.current_time()),
        )

    # ---- steps -------------------------------------------------------------------------------------------

    async def _init(self, conn: MessageConnection, state: _Session, sample_rate: int) -> None:
        init: dict[str, Any] = {
            "type": "session_init",
            "client_version": self.client_version,
            "platform": self.platform,
            "src_lang": self.src_lang,
            "tgt_lang": self.tgt_lang,
            "audio_format": "pcm16",
            "sample_rate": sample_rate,
        }
        if self.trace_id is not None:
            init["trace_id"] = self.trace_id
        await _send(conn, init)
        while True:
            message = await _receive(conn)
            if message is None:
                continue
            kind = message.get("type")
            if kind == "session_init_ack":
                break
            if kind == "error":
                raise SimClientError(
                    f"session_init refused: {message.get('code')}: {message.get('message')}", message.get("code")
                )
            state.other.append(message)
        session_id = message.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise SimClientError("session_init_ack without session_id")
        state.session_id = session_id
        state.trace_id = message.get("trace_id")
        state.init_ack = message

    async def _stream(self, conn: MessageConnection, state: _Session, audio: Pcm16Audio) -> None:
        chunk_s = self.chunk_ms / 1000
        start = trio.current_time()
        in_speech = False
        for k, chunk in enumerate(audio.chunks(self.chunk_ms)):
            if state.closed_by_peer:
                return
            if self.realtime:
                # Chunk k is complete once its audio has been "captured", i.e. at the end of its 200 ms.
                await trio.sleep_until(start + (k + 1) * chunk_s)
            if self.cut == "end" or chunk_rms(chunk) >= self.vad_threshold:
                await self._send_chunk(conn, state, chunk, is_final=False)
                in_speech = True
            elif in_speech:
                await self._send_cut(conn, state)
                in_speech = False
        if self.cut == "end" or in_speech:
            await self._send_cut(conn, state)
        state.streaming_done = True
        state.check_all_answered()

    async def _finish(self, conn: MessageConnection, state: _Session) -> None:
        with trio.move_on_after(self.result_timeout_s):
            await state.all_answered.wait()
        if state.unanswered_cuts:
            logger.warning("session %s: %d cut(s) unanswered after %.1f s", state.session_id,
                           len(state.unanswered_cuts), self.result_timeout_s)
        await _send(conn, {"type": "session_close", "session_id": state.session_id, "reason": "client_done"})
        with trio.move_on_after(self.close_timeout_s):
            await state.close_done.wait()

    async def _send_chunk(self, conn: MessageConnection, state: _Session, chunk: bytes, *, is_final: bool) -> None:
        await _send(
            conn,
            {
                "type": "audio_chunk",
                "session_id": state.session_id,
                "seq": state.seq,
                "is_final": is_final,
                "payload": base64.b64encode(chunk).decode("ascii"),
                "client_timestamp_ms": int(time.time() * 1000),
            },
        )
        state.seq += 1
        state.chunks_sent += 1
        state.audio_bytes_sent += len(chunk)

    async def _send_cut(self, conn: MessageConnection, state: _Session) -> None:
        """The web client's end-of-utterance: an empty final chunk. Latency is measured from here."""
        await self._send_chunk(conn, state, b"", is_final=True)
        state.cuts += 1
        state.unanswered_cuts.append(trio.current_time())

    async def _receive_loop(self, conn: MessageConnection, state: _Session) -> None:
        while True:
            try:
                message = await _receive(conn)
            except CONNECTION_CLOSED:
                state.closed_by_peer = True
                state.check_all_answered()
                state.close_done.set()  # nothing more will come; let _finish stop waiting
                return
            if message is None:
                continue
            now = trio.current_time()
            kind = message.get("type")
            if kind in OUTCOME_TYPES:
                self._on_outcome(state, message, now)
            elif kind == "asr_partial":
                state.partials.append(
                    ReceivedPartial(_opt_int(message.get("utterance_index")), str(message.get("text") or ""),
                            bool(message.get("is_final")), state.since_start_ms(now))
                )
            elif kind == "session_close_ack":
                state.close_acked = True
                state.close_done.set()
            else:
                state.other.append(message)

    def _on_outcome(self, state: _Session, message: dict[str, Any], now: float) -> None:
        kind = str(message["type"])
        latency_ms = (now - state.unanswered_cuts.popleft()) * 1000 if state.unanswered_cuts else None
        tts = message.get("tts_audio") or ""
        result = UtteranceResult(
            kind=kind,
            utterance_index=_opt_int(message.get("utterance_index")),
            job_id=message.get("job_id") or None,
            text_asr=str(message.get("text_asr") or ""),
            text_translated=str(message.get("text_translated") or ""),
            tts_audio_bytes=len(tts) * 3 // 4 - tts.count("=", -2) if isinstance(tts, str) else 0,
            latency_ms=latency_ms,
            received_at_ms=state.since_start_ms(now),
            error_code=message.get("code") if kind == "error" else None,
            error_message=message.get("message") if kind == "error" else None,
            reason=message.get("reason") if kind == "missing_result" else None,
            message=message,
        )
        state.results.append(result)
        state.check_all_answered()
        if self.on_result is not None:
            self.on_result(result)


# --------------------------------------------------------------------------------------------------------------
# Wire helpers
# --------------------------------------------------------------------------------------------------------------


async def _send(conn: MessageConnection, message: dict[str, Any]) -> None:
    await conn.send_message(json.dumps(message, separators=(",", ":"), ensure_ascii=False))


async def _receive(conn: MessageConnection) -> dict[str, Any] | None:
    raw = await conn.get_message()
    if isinstance(raw, bytes):
        return None  # the protocol is text frames only; binary is ignored, as by the original
    try:
        message = json.loads(raw)
    except ValueError:
        logger.warning("ignoring a frame that is not JSON: %.80r", raw)
        return None
    return message if isinstance(message, dict) else None


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
