"""How the original system's node agent decides what to answer: pure state, no I/O, no clock.

Used by :class:`trioscheduler.sim.SimNode` in ``mode="original"`` so tests and users meet the jobs that such a
node leaves unanswered by design:

- Turn buffering: the audio of jobs that share a buffer key (``turn_id|tgt_lang``, or the job id when the job has
  no turn) is held until a job carries a cut flag (``is_manual_cut`` or ``is_timeout_triggered``) or the held audio
  reaches ``answer_after_ms``. The turn is then answered once, on the job that ended it, with all its audio; the
  jobs held before it get no answer (or, when asked, an empty ``NO_TEXT_ASSIGNED`` one).
- Duplicate suppression: a result whose recognised text equals (whitespace-normalised) the last text sent for that
  session is not sent at all.
- Readiness: a service type is ready only when one of its services runs on a GPU and is running.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = [
    "HeldJob",
    "LastTextFilter",
    "TurnAnswer",
    "TurnBuffer",
    "buffer_key",
    "has_cut_flag",
    "ready_types",
    "service_ready",
]

#: The original's threshold: a turn holding this much audio is processed without a cut flag.
DEFAULT_ANSWER_AFTER_MS = 10000.0


def buffer_key(job: Mapping[str, Any]) -> str:
    """``turn_id|tgt_lang`` when the job has both, else its job id (a job without a turn is a turn of its own)."""
    turn_id, tgt = job.get("turn_id"), job.get("tgt_lang")
    if isinstance(turn_id, str) and turn_id and isinstance(tgt, str) and tgt:
        return f"{turn_id}|{tgt}"
    return str(job.get("job_id"))


def has_cut_flag(job: Mapping[str, Any]) -> bool:
    """The two flags the original's node acts on; ``is_max_duration_triggered`` is not one of them."""
    return job.get("is_manual_cut") is True or job.get("is_timeout_triggered") is True


def service_ready(device: str, status: str) -> bool:
    """The original's readiness rule for one service: running on a GPU."""
    return device == "gpu" and status == "running"


@attrs.frozen
class HeldJob:
    """A job whose audio waits in a turn buffer; it is never answered with text."""

    job_id: str
    utterance_index: int


@attrs.frozen
class TurnAnswer:
    """A turn to answer now: the job that ended it, the whole turn's audio, and the jobs held before it."""

    audio: bytes
    held: tuple[HeldJob, ...]


@attrs.define
class _Turn:
    chunks: list[bytes] = attrs.field(factory=list)
    duration_ms: float = 0.0
    held: list[HeldJob] = attrs.field(factory=list)


@attrs.define
class TurnBuffer:
    """Turn buffers keyed by :func:`buffer_key`. Bounded: a turn holds less than ``answer_after_ms`` of audio
    before its newest job, and at most ``max_turns`` turns are open; opening one more drops the least recently
    used (its held jobs stay unanswered, as they would in a node that cleans up idle buffers)."""

    answer_after_ms: float = DEFAULT_ANSWER_AFTER_MS
    max_turns: int = 1024
    _turns: dict[str, _Turn] = attrs.field(factory=dict)

    @property
    def open_turns(self) -> int:
        return len(self._turns)

    def held_jobs(self) -> list[HeldJob]:
        """Every job currently held, oldest turn first."""
        return [held for turn in self._turns.values() for held in turn.held]

    def offer(self, job: Mapping[str, Any], audio: bytes, duration_ms: float) -> TurnAnswer | None:
        """Add one job's audio; a :class:`TurnAnswer` when the job ends its turn, None when it is held."""
        key = buffer_key(job)
        turn = self._turns.pop(key, None) or _Turn()
        turn.chunks.append(audio)
        turn.duration_ms += duration_ms
        if has_cut_flag(job) or turn.duration_ms >= self.answer_after_ms:
            return TurnAnswer(b"".join(turn.chunks), tuple(turn.held))
        turn.held.append(HeldJob(str(job.get("job_id")), _int(job.get("utterance_index"))))
        self._turns[key] = turn  # re-inserted last: dict order is least recently used first
        while len(self._turns) > self.max_turns:
            del self._turns[next(iter(self._turns))]
        return None

    def forget(self, job_id: str) -> bool:
        """Take a held job out of its turn (a ``job_cancel``); its audio stays in the turn. True if it was held."""
        for turn in self._turns.values():
            for i, held in enumerate(turn.held):
                if held.job_id == job_id:
                    del turn.held[i]
                    return True
        return False


def _normalise(text: str) -> str:
    return " ".join(text.split())


@attrs.define
class LastTextFilter:
    """Remembers the last recognised text sent per session (at most ``max_sessions``, least recently used out)."""

    max_sessions: int = 1024
    _last: dict[str, str] = attrs.field(factory=dict)

    def is_repeat(self, session_id: str, text_asr: str) -> bool:
        text = _normalise(text_asr)
        return bool(text) and self._last.get(session_id) == text

    def sent(self, session_id: str, text_asr: str) -> None:
        text = _normalise(text_asr)
        if not text:
            return
        self._last.pop(session_id, None)
        self._last[session_id] = text
        while len(self._last) > self.max_sessions:
            del self._last[next(iter(self._last))]


def ready_types(services: Iterable[tuple[str, str, str]]) -> dict[str, bool]:
    """``{type: ready}`` from ``(type, device, status)`` triples: a type is ready when any of its services is."""
    ready: dict[str, bool] = {}
    for kind, device, status in services:
        ready[kind] = ready.get(kind, False) or service_ready(device, status)
    return ready


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
