"""Read-only questions the HTTP API asks the registry, answered in the registry task from its inbox.

A ``Query`` carries a view: a pure function of the registry and the trio time that returns plain data (or
``NOT_FOUND``). The registry applies it like any request, so an answer never races a change; :func:`ask` waits
for it under a deadline and abandons it after, so a wedged registry costs the asker its deadline, never a hang.

Every view is bounded: lists are cut at ``observability.api_max_items`` and the job history at
``observability.job_history_size``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from trioscheduler.registry.requests import RegistryClient, Reply
from trioscheduler.timeline import JobHistory, JobRecord, job_summary, job_timeline, wall_ms_of

if TYPE_CHECKING:
    from trioscheduler.registry.actor import Registry
    from trioscheduler.registry.state import Job, NodeRecord

#: A view's answer when the id it was asked about is not known (the API's 404).
NOT_FOUND = "not_found"
#: Timeline stages that count as a node's failure in its "recent failures".
FAILURE_STAGES = frozenset({"deadline_missed", "node_lost", "failover"})

View = Callable[["Registry", float], Any]


class RegistryUnavailable(Exception):
    """The registry did not answer within the deadline (or failed on the question): the API's 503."""


@attrs.define(eq=False)
class Query:
    view: View
    reply: Reply = attrs.field(factory=Reply)


def answer(registry: Registry, request: Query, now: float) -> None:
    """The registry's handler for a ``Query``: nothing is computed for an asker that gave up."""
    if request.reply.abandoned:
        return
    request.reply.set(request.view(registry, now))


async def ask(client: RegistryClient, view: View, timeout: float) -> Any:
    """``view``'s answer from the registry task; raises RegistryUnavailable when none came within ``timeout``
    seconds (the inbox full or the registry wedged) or the view failed there (it answers None then)."""
    request = Query(view)
    done = await client.ask(request, request.reply, timeout)
    if not done or request.reply.value is None:
        raise RegistryUnavailable("the registry did not answer" if not done else "the registry failed to answer")
    return request.reply.value


def record_job(history: JobHistory, job: Job) -> None:
    """Keep a new job's record (its ids list and stages are the job's own, shared, so they stay current)."""
    if history.size <= 0:
        return
    spec = job.spec
    history.add(JobRecord(job.attempt_ids, spec.session_id, spec.utterance_index, spec.src_lang, spec.tgt_lang,
                          spec.selection_key, spec.trace_id, job.stages))


def _offset(now: float) -> float:
    """Wall seconds minus trio seconds, to show trio times as wall-clock ms."""
    return time.time() - now


# ------------------------------------------------------------------------------------------------ nodes


def _node_view(node: NodeRecord, now: float, offset: float) -> dict[str, Any]:
    from trioscheduler.registry.actor import _node_state  # the registry's own notion of a node's state

    capability = node.capability
    languages = sorted({lang for pair in capability.pairs for lang in pair})
    load = node.load
    return {
        "node_id": node.node_id,
        "state": _node_state(node, now),
        "capacity": node.capacity,
        "in_flight": node.in_flight,
        "jobs": len(node.jobs),
        "languages": languages,
        "pools": sorted(capability.pools()),
        "pairs": sorted(f"{s}>{t}" for s, t in capability.pairs),
        "ready_services": None if capability.ready_services is None else sorted(capability.ready_services),
        "registered_at_ms": wall_ms_of(node.registered_at, offset),
        "last_heartbeat_ms": wall_ms_of(node.last_heartbeat, offset),
        "last_heartbeat_age_s": round(now - node.last_heartbeat, 3),
        "quarantined_until_ms": wall_ms_of(node.quarantined_until, offset)
        if math.isfinite(node.quarantined_until) and node.quarantined_until > now else None,
        "jobs_done": node.jobs_done,
        "jobs_failed": node.jobs_failed,
        "load": None if load is None else {"cpu_percent": load.cpu_percent, "mem_percent": load.mem_percent,
                                           "running_jobs": load.running_jobs},
    }


def nodes_view(registry: Registry, now: float) -> dict[str, Any]:
    offset = _offset(now)
    nodes = [_node_view(node, now, offset) for node in registry.nodes.values()]
    return {"count": len(nodes), "nodes": nodes, "pools": registry.indexes.pools()}


def node_detail(node_id: str, max_items: int) -> View:
    """``/api/v1/nodes/{node_id}``: the node, its jobs now and its recent failures (newest first) from the job
    history: timeouts, lost connections and failovers away from it, and failed results."""

    def view(registry: Registry, now: float) -> Any:
        node = registry.nodes.get(node_id)
        if node is None:
            return NOT_FOUND
        offset = _offset(now)
        detail = _node_view(node, now, offset)
        detail["in_flight_jobs"] = [
            {"job_id": job.job_id, "session_id": job.spec.session_id, "utterance_index": job.spec.utterance_index,
             "attempt": job.attempt, "holds_slot": job.holds_slot}
            for job in sorted(node.jobs, key=lambda job: job.number)[:max_items]]
        detail["failure_times_ms"] = [wall_ms_of(at, offset) for at in node.failures]
        detail["recent_failures"] = _recent_failures(registry.history, node_id, offset, max_items)
        return detail

    return view


def _recent_failures(history: JobHistory, node_id: str, offset: float, limit: int) -> list[dict[str, Any]]:
    failures: list[dict[str, Any]] = []
    for record in history.recent(history.size):
        for stage, at, stage_node, attempt, fields in reversed(record.stages.timeline):
            failed = stage in FAILURE_STAGES or (stage == "result" and fields and fields.get("success") is False)
            if failed and stage_node == node_id:
                failures.append({"stage": stage, "at_ms": wall_ms_of(at, offset), "attempt": attempt,
                                 "job_id": record.job_ids[min(max(attempt, 1), len(record.job_ids)) - 1],
                                 "session_id": record.session_id, "fields": fields})
                if len(failures) >= limit:
                    return failures
    return failures


# ------------------------------------------------------------------------------------------------ jobs


def jobs_view(limit: int) -> View:
    def view(registry: Registry, now: float) -> Any:
        history = registry.history
        offset = _offset(now)
        return {"kept": len(history), "history_size": history.size,
                "jobs": [job_summary(record, offset) for record in history.recent(limit)]}

    return view


def job_detail(job_id: str) -> View:
    def view(registry: Registry, now: float) -> Any:
        record = registry.history.find(job_id)
        if record is None:
            return NOT_FOUND
        detail = job_timeline(record, _offset(now))
        job = registry.jobs_by_id.get(job_id)
        detail["state"] = job.state.value if job is not None else "done"
        return detail

    return view


# ------------------------------------------------------------------------------------------------ sessions


def session_jobs(session_id: str, max_items: int) -> View:
    """What the registry knows of a session: the node it prefers (the node used last) and its jobs now."""

    def view(registry: Registry, now: float) -> Any:
        jobs = sorted(registry.session_jobs.get(session_id, ()), key=lambda job: job.number)[:max_items]
        return {
            "node_used": registry.affinity.get(session_id),
            "jobs": [{"job_id": job.job_id, "utterance_index": job.spec.utterance_index,
                      "tgt_lang": job.spec.tgt_lang, "state": job.state.value, "node_id": job.node_id,
                      "attempt": job.attempt} for job in jobs],
        }

    return view


__all__ = ["NOT_FOUND", "Query", "RegistryUnavailable", "answer", "ask", "job_detail", "jobs_view", "node_detail",
           "nodes_view", "record_job", "session_jobs"]
