"""One gateway utterance through the registry: submit its job, wait for its one outcome.

The registry's guarantees hold as for a session's job (placement, failover, NO_AVAILABLE_NODE after
``scheduler.pending_timeout_seconds``, JOB_TIMEOUT after the attempts); on top, the wait is bounded by the caller's
deadline. Whoever calls ``run_job`` ends the job's session with the registry when done with it
(``session_ended_nowait``), which cancels whatever is left.
"""

from __future__ import annotations

from typing import Any

import trio

from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import ErrorCode
from trioscheduler.registry.requests import JobSpec, Outcome, RegistryClient


class OneShotSink:
    """The sink of one job: keeps its outcome, drops partials and progress events. Never blocks."""

    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.outcome: Outcome | None = None
        self.done = trio.Event()

    def send_nowait(self, value: Any) -> None:
        if type(value) is Outcome and self.outcome is None:
            self.outcome = value
            self.done.set()


async def run_job(registry: RegistryClient, spec: JobSpec, *, selection_deadline: float,
                  deadline: float) -> Any:
    """The job's outcome message (translation_result, missing_result or error); ``error`` SCHEDULER_BUSY when the
    registry did not take it by ``selection_deadline``, JOB_TIMEOUT when no outcome came by ``deadline``."""
    sink = OneShotSink()
    ids: dict[str, Any] = {"session_id": spec.session_id, "utterance_index": spec.utterance_index,
                           "trace_id": spec.trace_id}
    reply = await registry.submit(spec, sink, selection_deadline)
    if reply is None:
        return m.ErrorMessage(code=ErrorCode.SCHEDULER_BUSY,
                              message="scheduler busy: the registry did not take the job in time", **ids)
    with trio.move_on_at(deadline):
        await sink.done.wait()
    if sink.outcome is None:
        await registry.cancel_jobs(spec.session_id, (spec.utterance_index,), "job_timeout")
        return m.ErrorMessage(code=ErrorCode.JOB_TIMEOUT, job_id=reply.job_id,
                              message="no outcome within gateway.request_timeout_seconds", **ids)
    return sink.outcome.message
