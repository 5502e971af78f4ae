"""The one ``info`` line per job, ``job_done``: when each stage was reached, the job's ids and its outcome.

A job's :class:`JobStages` travels with it. The registry stamps created, selected and result; whoever writes the
job_assign of the job's current attempt (the node's outbox at once, or the node's writer) stamps dispatched; the
record then rides on the ``Outcome`` to the session's writer (its ``send_nowait`` when it writes the outcome at once,
or its task), which logs the line once it has written the outcome (delivered). A job that has no outcome to deliver
(cancelled, or its session's writer gone) gets its line from the registry or, for an outcome still queued when the
connection ends, from the writer (``dropped=undeliverable``).

Guarantees: every job the registry created gets exactly one ``job_done`` line (at ``info``, logger
``trioscheduler.jobs``); every time in it is in ms since the utterance was finalized; nothing is formatted when
``info`` is off for that logger.

``JobStages.timeline`` is the job's whole history for the HTTP API (``/api/v1/jobs/{job_id}``, see
trioscheduler/timeline.py): one tuple ``(stage, trio time, node_id, attempt, fields)`` appended per stage, by the
registry, the node's outbox or writer (dispatched) and the session's writer (delivered); nothing is formatted on
the way.
"""

from __future__ import annotations

import logging
from typing import Any

from trioscheduler.logs import emit_fields

log = logging.getLogger("trioscheduler.jobs")
INFO = logging.INFO


#: One timeline entry: stage name, trio time, node_id, attempt (0 before the first dispatch), the stage's fields.
TimelineEntry = tuple[str, float, str | None, int, dict[str, Any] | None]


class JobStages:
    """When a job reached each stage (trio clock), and the node and attempt of its latest dispatch.

    ``selected_at`` and ``dispatched_at`` are those of the latest attempt; a stage not reached is None.
    ``timeline`` lists every stage reached, in order, every attempt's included."""

    __slots__ = ("finalized_at", "created_at", "selected_at", "dispatched_at", "result_at", "attempt", "node_id",
                 "timeline", "tenant_id")

    def __init__(self, finalized_at: float, created_at: float, tenant_id: str | None = None) -> None:
        self.finalized_at = finalized_at
        #: The session's tenant (None: none), for the job_done line.
        self.tenant_id = tenant_id
        self.created_at = created_at
        self.selected_at: float | None = None
        self.dispatched_at: float | None = None
        self.result_at: float | None = None
        self.attempt = 0
        self.node_id: str | None = None
        self.timeline: list[TimelineEntry] = []

    def selected(self, now: float, attempt: int, node_id: str) -> None:
        """A new attempt: its dispatch is not written yet."""
        self.selected_at = now
        self.dispatched_at = None
        self.attempt = attempt
        self.node_id = node_id

    def dispatched(self, now: float, attempt: int) -> None:
        """The job_assign of ``attempt`` was written; a late write of an older attempt changes nothing."""
        if attempt == self.attempt:
            self.dispatched_at = now
            self.timeline.append(("dispatched", now, self.node_id, attempt, None))

    def delivered(self, now: float) -> None:
        """The session's writer has written the job's outcome to its client."""
        self.timeline.append(("delivered", now, self.node_id, self.attempt, None))


def _ms(since: float, at: float | None) -> float | None:
    return None if at is None else (at - since) * 1000.0


def log_job_done(stages: JobStages, *, session_id: str | None, utterance_index: int, job_id: str | None,
                 trace_id: str | None, outcome: str, code: str | None = None, reason: str | None = None,
                 delivered_at: float | None = None, dropped: str | None = None) -> None:
    """The job's ``job_done`` line; call it once per job, where the job ends (see the module docstring)."""
    if not log.isEnabledFor(INFO):
        return
    since = stages.finalized_at
    emit_fields(log, INFO, "job_done", {
        "session_id": session_id, "utterance_index": utterance_index, "job_id": job_id, "node_id": stages.node_id,
        "tenant_id": stages.tenant_id, "trace_id": trace_id, "attempts": stages.attempt, "outcome": outcome,
        "code": code, "reason": reason, "created_ms": (stages.created_at - since) * 1000.0,
        "selected_ms": _ms(since, stages.selected_at), "dispatched_ms": _ms(since, stages.dispatched_at),
        "result_ms": _ms(since, stages.result_at), "delivered_ms": _ms(since, delivered_at), "dropped": dropped})


def log_outcome_done(stages: JobStages, message: Any, *, delivered_at: float | None = None,
                     dropped: str | None = None) -> None:
    """``job_done`` for a job that ended in ``message`` (translation_result, missing_result or error)."""
    if not log.isEnabledFor(INFO):
        return
    kind = message.TYPE
    if kind == "translation_result":
        outcome, code, reason = "result", None, None
    elif kind == "missing_result":
        outcome, code, reason = "missing", None, message.reason
    else:
        outcome, code, reason = "error", message.code, None
    log_job_done(stages, session_id=message.session_id, utterance_index=message.utterance_index,
                 job_id=message.job_id, trace_id=message.trace_id, outcome=outcome, code=code, reason=reason,
                 delivered_at=delivered_at, dropped=dropped)
