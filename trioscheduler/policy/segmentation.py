"""Cutting a session's audio stream into utterances: pure state, time passed in, ids from an injected factory.

The original's hazards fixed here: the chunk that triggers a cut is appended first (the original cut first and
lost that chunk); an empty buffer never cuts (the original sent empty jobs and bumped the index); the pause timer
restarts with every chunk of audio and the first chunk after a pause cut starts a new utterance instead of a
one-chunk job; a MaxDuration chain shares one turn_id (the original keyed pending audio per job, so a node could
not join the pieces of one sentence).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable

import attrs

OPUS_FRAME_MS = 20.0


class CutReason(enum.Enum):
    IS_FINAL = "is_final"
    PAUSE = "pause"
    MAX_DURATION = "max_duration"
    MAX_BUFFER = "max_buffer"
    SESSION_CLOSE = "session_close"


#: Cuts in the middle of speech keep the turn open, so the node keeps buffering under one turn_id.
TURN_CONTINUES = frozenset({CutReason.MAX_DURATION, CutReason.MAX_BUFFER})


@attrs.frozen
class Cut:
    audio: bytes
    reason: CutReason
    duration_ms: float
    turn_id: str
    chunks: int

    @property
    def is_manual_cut(self) -> bool:
        return self.reason is CutReason.IS_FINAL

    @property
    def is_timeout_triggered(self) -> bool:
        return self.reason is CutReason.PAUSE

    @property
    def is_max_duration_triggered(self) -> bool:
        return self.reason is CutReason.MAX_DURATION


def pcm16_duration_ms(payload: bytes, sample_rate: int) -> float:
    return len(payload) * 1000.0 / (2 * sample_rate)


class EmptyOpusPacket(ValueError):
    """The payload declares a zero-length packet: an opus packet is at least one byte (RFC 6716 §3), so this is not
    the length-prefixed framing. (The original's web client, switched to pcm16 without saying so, sent 256 ms of
    silence, 8,192 zero bytes, that parse as 4,096 empty packets: 81.9 s of "audio".)"""


def opus_packet_count(payload: bytes) -> int:
    """Packets in the original's framing, ``[u16 little-endian length][packet]`` repeated; raises ValueError (its
    subclass EmptyOpusPacket for a zero-length packet)."""
    count = 0
    pos = 0
    end = len(payload)
    while pos < end:
        if pos + 2 > end:
            raise ValueError(f"truncated opus length prefix at byte {pos}")
        (length,) = struct.unpack_from("<H", payload, pos)
        if not length:
            raise EmptyOpusPacket(f"opus packet {count} at byte {pos} declares zero length")
        pos += 2 + length
        if pos > end:
            raise ValueError(f"opus packet {count} declares {length} bytes past the end of the payload")
        count += 1
    return count


def unframed_opus_duration_ms(payload: bytes) -> float:
    """The original scheduler's estimate, bytes / 60 × 20 ms (±40 %): used only for opus payloads that are not in
    the length-prefixed framing, so a client sending raw packets still gets its cuts instead of losing audio."""
    return len(payload) / 60.0 * OPUS_FRAME_MS


def audio_duration_ms(payload: bytes, audio_format: str, sample_rate: int) -> float:
    """Opus: one 20 ms frame per packet (the web client's VOIP framing); pcm16: exact. Raises ValueError
    (EmptyOpusPacket for a payload that is not opus framing because it declares an empty packet)."""
    if audio_format == "opus":
        return opus_packet_count(payload) * OPUS_FRAME_MS
    return pcm16_duration_ms(payload, sample_rate)


@attrs.define
class Segmenter:
    pause_ms: float
    max_duration_ms: float
    max_buffer_bytes: int
    new_turn_id: Callable[[], str]
    _chunks: list[bytes] = attrs.field(factory=list)
    _bytes: int = 0
    _duration_ms: float = 0.0
    _last_audio_at: float | None = None
    _turn_id: str | None = None

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def buffered_ms(self) -> float:
        return self._duration_ms

    def pause_deadline(self) -> float | None:
        """When the pause timer fires: while audio is buffered, or while a turn is open (a pause ends the turn
        even when a MaxDuration cut left nothing buffered); None otherwise."""
        if self._last_audio_at is None or not (self._bytes or self._turn_id):
            return None
        return self._last_audio_at + self.pause_ms / 1000.0

    def push(self, payload: bytes, duration_ms: float, is_final: bool, now: float) -> Cut | None:
        """Append first, then decide; the explicit is_final wins over the limits when several apply."""
        if payload:
            self._chunks.append(payload)
            self._bytes += len(payload)
            self._duration_ms += duration_ms
            self._last_audio_at = now
        if is_final:
            if not self._bytes:
                self._turn_id = None  # the client ended the turn; nothing is left to send for it
            return self._cut(CutReason.IS_FINAL)
        if self._duration_ms >= self.max_duration_ms:
            return self._cut(CutReason.MAX_DURATION)
        if self._bytes >= self.max_buffer_bytes:
            return self._cut(CutReason.MAX_BUFFER)
        return None

    def on_timer(self, now: float) -> Cut | None:
        deadline = self.pause_deadline()
        if deadline is None or now < deadline:
            return None
        if not self._bytes:  # an empty buffer never cuts; the pause only ends the open turn
            self._turn_id = None
            self._last_audio_at = None
            return None
        return self._cut(CutReason.PAUSE)

    def restart_pause_clock(self, now: float) -> None:
        """TTS playback started or ended on the client: the silence so far was listening, not a pause."""
        if self._bytes:
            self._last_audio_at = now

    def flush(self) -> Cut | None:
        return self._cut(CutReason.SESSION_CLOSE)

    def _cut(self, reason: CutReason) -> Cut | None:
        if not self._bytes:
            return None
        turn_id = self._turn_id or self.new_turn_id()
        self._turn_id = turn_id if reason in TURN_CONTINUES else None
        cut = Cut(
            audio=b"".join(self._chunks),
            reason=reason,
            duration_ms=self._duration_ms,
            turn_id=turn_id,
            chunks=len(self._chunks),
        )
        self._chunks = []
        self._bytes = 0
        self._duration_ms = 0.0
        if self._turn_id is None:
            self._last_audio_at = None
        return cut
