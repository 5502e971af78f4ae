"""Recent jobs and their timelines, for ``/api/v1/jobs`` and ``/api/v1/jobs/{job_id}``.

The registry adds a ``JobRecord`` when it creates a job; the record keeps the job's ids and languages and its
``JobStages`` (joblog.py), whose ``timeline`` list the registry and the writers append to as the job goes. It never
holds the job itself, so a finished job's audio is freed at once. ``JobHistory`` keeps the newest
``observability.job_history_size`` records and forgets the oldest first.

The views are pure functions of a record, the trio time of the read and the wall clock's offset from it: a stage's
time is stored on trio's clock (cheap, and what the registry already has) and shown as wall-clock ms.
"""

from __future__ import annotations

import collections
from typing import Any

from trioscheduler.joblog import JobStages

#: Stages that end a job: the outcome handed to the session (or to nobody), or its cancellation.
TERMINAL_STAGES = frozenset({"outcome", "cancelled"})


class JobRecord:
    """What the API shows of one job: its ids (one per attempt, a list the job appends to), its session and
    languages, and its stages."""

    __slots__ = ("job_ids", "session_id", "utterance_index", "src_lang", "tgt_lang", "selection_key", "trace_id",
                 "stages")

    def __init__(self, job_ids: list[str], session_id: str, utterance_index: int, src_lang: str, tgt_lang: str,
                 selection_key: str, trace_id: str, stages: JobStages) -> None:
        self.job_ids = job_ids
        self.session_id = session_id
        self.utterance_index = utterance_index
        self.src_lang = src_lang
        self.tgt_lang = tgt_lang
        self.selection_key = selection_key
        self.trace_id = trace_id
        self.stages = stages


class JobHistory:
    """The newest ``size`` job records, by their first job_id; a later attempt's job_id finds its record too."""

    __slots__ = ("_records", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._records: collections.OrderedDict[str, JobRecord] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: JobRecord) -> None:
        """Keep ``record``, forgetting the oldest one past ``size`` (nothing is kept when ``size`` is 0)."""
        if self.size <= 0:
            return
        records = self._records
        records[record.job_ids[0]] = record
        while len(records) > self.size:
            records.popitem(last=False)

    def find(self, job_id: str) -> JobRecord | None:
        """The record holding ``job_id`` as any of its attempts' ids, or None when it is not (or no longer) kept."""
        record = self._records.get(job_id)
        if record is not None:
            return record
        for candidate in self._records.values():  # a failover's new id: bounded by ``size``, on a read only
            if job_id in candidate.job_ids:
                return candidate
        return None

    def recent(self, limit: int) -> list[JobRecord]:
        """At most ``limit`` records, newest first."""
        out: list[JobRecord] = []
        for record in reversed(self._records.values()):
            if len(out) >= limit:
                break
            out.append(record)
        return out


# ------------------------------------------------------------------------------------------------ views


def wall_ms_of(t: float, offset: float) -> int:
    """Wall-clock ms since the epoch of trio time ``t``, given ``offset`` = wall seconds − trio seconds."""
    return int((t + offset) * 1000.0)


def _attempt_job_id(record: JobRecord, attempt: int) -> str:
    ids = record.job_ids
    return ids[min(max(attempt, 1), len(ids)) - 1]


def _outcome(record: JobRecord) -> tuple[str, str | None, float | None]:
    """(outcome, code or reason, trio time it ended): outcome is "result", "missing", "error", "cancelled" or
    "in_progress" (no terminal stage yet)."""
    for stage, at, _node, _attempt, fields in reversed(record.stages.timeline):
        if stage not in TERMINAL_STAGES:
            continue
        fields = fields or {}
        if stage == "cancelled":
            return "cancelled", fields.get("reason"), at
        kind = fields.get("kind")
        if kind == "translation_result":
            return "result", None, at
        if kind == "missing_result":
            return "missing", None, at
        return "error", fields.get("code"), at
    return "in_progress", None, None


def _delivered_at(record: JobRecord) -> float | None:
    for stage, at, _node, _attempt, _fields in reversed(record.stages.timeline):
        if stage == "delivered":
            return at
    return None


def job_summary(record: JobRecord, offset: float) -> dict[str, Any]:
    """One line of ``/api/v1/jobs``: ids, languages, node, attempts, outcome and latency (finalize → delivered,
    or → outcome when it was not delivered; None while in progress)."""
    stages = record.stages
    outcome, code, ended_at = _outcome(record)
    delivered_at = _delivered_at(record)
    end = delivered_at if delivered_at is not None else ended_at
    return {
        "job_id": record.job_ids[0],
        "last_job_id": record.job_ids[-1],
        "session_id": record.session_id,
        "utterance_index": record.utterance_index,
        "src_lang": record.src_lang,
        "tgt_lang": record.tgt_lang,
        "node_id": stages.node_id,
        "attempts": stages.attempt,
        "outcome": outcome,
        "code": code,
        "delivered": delivered_at is not None,
        "finalized_at_ms": wall_ms_of(stages.finalized_at, offset),
        "latency_ms": None if end is None else round((end - stages.finalized_at) * 1000.0, 3),
    }


def job_timeline(record: JobRecord, offset: float) -> dict[str, Any]:
    """``/api/v1/jobs/{job_id}``: the summary, every attempt (job_id, node) and every stage in order with its wall
    time in ms, its ms since the utterance was finalized, its attempt's job_id and node, and its fields."""
    stages = record.stages
    finalized_at = stages.finalized_at
    timeline: list[dict[str, Any]] = [{
        "stage": "finalized", "at_ms": wall_ms_of(finalized_at, offset), "elapsed_ms": 0.0, "attempt": 0,
        "job_id": record.job_ids[0], "node_id": None}]
    attempts: dict[int, dict[str, Any]] = {}
    for stage, at, node_id, attempt, fields in stages.timeline:
        entry: dict[str, Any] = {
            "stage": stage, "at_ms": wall_ms_of(at, offset),
            "elapsed_ms": round((at - finalized_at) * 1000.0, 3), "attempt": attempt,
            "job_id": _attempt_job_id(record, attempt), "node_id": node_id}
        if fields:
            entry["fields"] = fields
        timeline.append(entry)
        if stage == "selected":
            attempts[attempt] = {"attempt": attempt, "job_id": entry["job_id"], "node_id": node_id,
                                 "selected_at_ms": entry["at_ms"]}
    return {**job_summary(record, offset), "job_ids": list(record.job_ids), "trace_id": record.trace_id,
            "selection_key": record.selection_key, "attempt_list": [attempts[a] for a in sorted(attempts)],
            "timeline": timeline}
