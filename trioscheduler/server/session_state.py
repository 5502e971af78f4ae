"""A session's state and the checks that make it, as pure code: no trio, no I/O.

``new_session_state`` turns a ``session_init`` (or the fields of an ``utterance`` on a socket without one) into the
``SessionState`` the reader keeps; it raises ``ProtocolError`` naming the bad field. ``JobBudget`` is the
per-session bound on what its waiting and running jobs hold.
"""

from __future__ import annotations

import sys
from typing import Any

import attrs

from trioscheduler.config import LimitsConfig, SegmentationConfig
from trioscheduler.groups import UtteranceGroups
from trioscheduler.ids import random_uuid
from trioscheduler.policy.capability import ANY_SOURCE, direction_key, normalise_language, pool_name
from trioscheduler.policy.segmentation import Segmenter
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import ErrorCode, ProtocolError

AUDIO_FORMATS = frozenset({"opus", "pcm16"})
MODES = frozenset({"one_way", "two_way_auto"})


class IndexSet:
    """Indices used so far, in O(gaps) memory: a low-water mark plus the few above it (no set at all while the
    indices come in order, which is every idle and most busy sessions)."""

    __slots__ = ("above", "low")

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


class JobBudget:
    """What one session's jobs hold between submit and outcome: the utterances outstanding and their audio.

    ``refusal`` says whether one more job of ``audio_bytes`` would break a bound (``limits.max_session_outstanding``,
    ``limits.max_session_audio_bytes``); ``hold`` and ``release`` keep the count. Releasing an index not held is a
    no-op, so an outcome and a cancellation of the same index never release twice."""

    __slots__ = ("_held", "audio_bytes")

    def __init__(self) -> None:
        self.audio_bytes = 0
        self._held: dict[int, int] | None = None  # index -> audio bytes; made on first use

    def __len__(self) -> int:
        return len(self._held) if self._held is not None else 0

    def refusal(self, audio_bytes: int, limits: LimitsConfig) -> ProtocolError | None:
        if len(self) >= limits.max_session_outstanding:
            return ProtocolError(
                f"session has {len(self)} utterances without an outcome "
                f"(limits.max_session_outstanding); utterance not scheduled",
                code=ErrorCode.SESSION_OUTSTANDING_LIMIT_EXCEEDED)
        if self.audio_bytes + audio_bytes > limits.max_session_audio_bytes:
            return ProtocolError(
                f"session's waiting and running jobs hold {self.audio_bytes} bytes of audio; {audio_bytes} more "
                f"would exceed limits.max_session_audio_bytes ({limits.max_session_audio_bytes}); "
                f"utterance not scheduled", code=ErrorCode.SESSION_AUDIO_LIMIT_EXCEEDED)
        return None

    def hold(self, index: int, audio_bytes: int) -> None:
        held = self._held
        if held is None:
            held = self._held = {}
        self.audio_bytes += audio_bytes - held.get(index, 0)
        held[index] = audio_bytes

    def release(self, index: int) -> None:
        held = self._held
        if held is not None and (audio_bytes := held.pop(index, None)) is not None:
            self.audio_bytes -= audio_bytes
            if not held:
                self._held = None


@attrs.define
class SessionState:
    """One session on a socket, from its session_init (or implicit utterance) to its session_close."""

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
    jobs: JobBudget = attrs.field(factory=JobBudget)
    #: The session's utterance groups (issue 14), made with its first result.
    groups: UtteranceGroups | None = None


def selection_key_for(src: str, tgt: str, mode: str | None, lang_a: str | None, lang_b: str | None) -> str:
    """src "auto" uses the target (one-way) or the lang_a/lang_b pool (two-way); else the direction src→tgt."""
    src, tgt = normalise_language(src), normalise_language(tgt)
    if src == "auto":
        if mode == "two_way_auto" and lang_a and lang_b:
            return pool_name(normalise_language(lang_a), normalise_language(lang_b))
        return direction_key(ANY_SOURCE, tgt)
    return direction_key(src, tgt)


def check_session_id(state: SessionState, message: Any) -> None:
    """A message naming another session than the connection's is refused (INVALID_SESSION)."""
    session_id = getattr(message, "session_id", None)
    if session_id and session_id != state.session_id:
        raise ProtocolError(f"session_id {session_id!r} is not this connection's session",
                            field="session_id", code=ErrorCode.INVALID_SESSION)


def check_rate_and_mode(kind: str, sample_rate: int, mode: str | None) -> None:
    if not 8000 <= sample_rate <= 192000:
        raise ProtocolError(f"{kind}: sample_rate must be within 8000..192000", field="sample_rate")
    if mode is not None and mode not in MODES:
        raise ProtocolError(f"{kind}: mode must be one of {sorted(MODES)}", field="mode")


def implicit_init(message: m.Utterance) -> m.SessionInit:
    """The session_init an ``utterance`` on a socket without one stands for (the original's API gateway sends
    bare utterances): its own languages, mode and pipeline, pcm16."""
    if not message.src_lang or not message.tgt_lang:
        raise ProtocolError("utterance without session_init must carry src_lang and tgt_lang",
                            field="src_lang" if not message.src_lang else "tgt_lang",
                            code=ErrorCode.INVALID_SESSION)
    return m.SessionInit(
        src_lang=message.src_lang, tgt_lang=message.tgt_lang, mode=message.mode, lang_a=message.lang_a,
        lang_b=message.lang_b, trace_id=message.trace_id, audio_format="pcm16",
        sample_rate=message.sample_rate or m.SampleRate(16000), pipeline=message.pipeline,
    )


def new_session_state(init: m.SessionInit, session_id: str, trace_id: str,
                      segmentation: SegmentationConfig) -> SessionState:
    """The session a valid ``init`` opens; raises ProtocolError naming the first bad field."""
    init = _shared_strings(init)
    for name in ("src_lang", "tgt_lang"):
        if not getattr(init, name).strip():
            raise ProtocolError(f"session_init: {name} must not be empty", field=name)
    audio_format = init.audio_format.strip().lower()
    if audio_format not in AUDIO_FORMATS:
        raise ProtocolError(f"session_init: audio_format must be one of {sorted(AUDIO_FORMATS)}",
                            field="audio_format")
    check_rate_and_mode("session_init", init.sample_rate, init.mode)
    if init.mode == "two_way_auto" and not (init.lang_a and init.lang_b):
        raise ProtocolError("session_init: two_way_auto needs lang_a and lang_b",
                            field="lang_a" if not init.lang_a else "lang_b")
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
            pause_ms=segmentation.pause_ms, max_duration_ms=segmentation.max_duration_ms,
            max_buffer_bytes=segmentation.max_buffer_bytes, new_turn_id=random_uuid,
        ),
        init=init,
    )


#: session_init fields whose values repeat across sessions (languages, platform, client version, audio format).
_SHARED_FIELDS = ("src_lang", "tgt_lang", "client_version", "platform", "dialect", "tenant_id", "mode", "lang_a",
                  "lang_b", "audio_format")


def _shared_strings(init: m.SessionInit) -> m.SessionInit:
    """The session keeps its session_init for its whole life; interned, all sessions share one copy of each of
    these values instead of one per session."""
    shared: dict[str, Any] = {name: sys.intern(value)
                              for name in _SHARED_FIELDS if type(value := getattr(init, name)) is str}
    return attrs.evolve(init, **shared)
