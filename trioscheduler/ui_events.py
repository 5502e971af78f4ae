"""``ui_event`` progress messages, built from what the registry and the nodes already report. Pure code.

Who sends which event (only to a session whose session_init said ``ui_events: true``; other sessions never get
one and their jobs build none):

- DISPATCHED: the registry, when it queues a job_assign for a node (again on each failover attempt);
- NODE_ACCEPTED: the registry, when the node that holds the job sends ``job_ack`` or ``job_started``;
- ASR_PARTIAL: the session's writer, with each ``asr_partial`` it relays;
- ASR_FINAL, NMT_DONE: the session's writer, as it releases a ``translation_result`` whose text_asr /
  text_translated is not empty;
- ERROR: the session's writer, as it releases an ``error`` for an utterance (``error_code`` is its code).

``elapsed_ms`` counts from when the utterance was finalized (the scheduler's clock).
"""

from __future__ import annotations

from typing import Any

from trioscheduler.protocol import messages as m
from trioscheduler.registry.requests import JobSpec


def _elapsed_ms(finalized_at: float | None, now: float) -> float:
    return 0.0 if finalized_at is None else round(max(0.0, now - finalized_at) * 1000.0, 3)


def job_event(spec: JobSpec, job_id: str, event: m.UiEventName, now: float) -> m.UiEvent:
    """An event of a job the registry holds (DISPATCHED, NODE_ACCEPTED)."""
    return m.UiEvent(trace_id=spec.trace_id, session_id=spec.session_id, job_id=job_id,
                     utterance_index=spec.utterance_index, event=event,
                     elapsed_ms=_elapsed_ms(spec.finalized_at, now))


def partial_event(partial: m.AsrPartialOut, finalized_at: float | None, now: float) -> m.UiEvent:
    return m.UiEvent(trace_id=partial.trace_id, session_id=partial.session_id, job_id=partial.job_id,
                     utterance_index=partial.utterance_index, event="ASR_PARTIAL",
                     elapsed_ms=_elapsed_ms(finalized_at, now))


def outcome_events(message: Any, finalized_at: float | None, now: float) -> list[m.UiEvent]:
    """The events an utterance's outcome stands for: ASR_FINAL and NMT_DONE for a result (each only with its text),
    ERROR for an error; none for a missing_result."""
    elapsed = _elapsed_ms(finalized_at, now)
    kind = type(message)
    if kind is m.TranslationResult:
        events: list[m.UiEvent] = []
        for event, text in (("ASR_FINAL", message.text_asr), ("NMT_DONE", message.text_translated)):
            if text:
                events.append(m.UiEvent(trace_id=message.trace_id, session_id=message.session_id,
                                        job_id=message.job_id, utterance_index=message.utterance_index,
                                        event=event, elapsed_ms=elapsed))  # type: ignore[arg-type]
        return events
    if kind is m.ErrorMessage and message.utterance_index is not None and message.session_id is not None:
        return [m.UiEvent(trace_id=message.trace_id or "", session_id=message.session_id,
                          job_id=message.job_id or "", utterance_index=message.utterance_index, event="ERROR",
                          elapsed_ms=elapsed, status="error", error_code=str(message.code))]
    return []
