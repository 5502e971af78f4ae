"""The registry's records. Only the registry task touches them; nothing else imports this module."""

from __future__ import annotations

import collections
import enum
import math

import attrs
import pybase64

from trioscheduler.joblog import JobStages
from trioscheduler.policy.capability import NodeCapability
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import ErrorCode
from trioscheduler.registry.requests import JobSpec, NodeLink, Sink


class JobState(enum.Enum):
    WAITING = "waiting"  # no node could take it yet; waits for a slot until its pending deadline
    DISPATCHED = "dispatched"  # job_assign queued to a node; waits for the result until the job deadline
    DONE = "done"  # its one outcome was handed to the session (or the session gave it up)


@attrs.define(eq=False)
class NodeRecord:
    node_id: str
    link: NodeLink
    #: Effective capacity, what selection reads: ``claimed_capacity`` until a job times out, then less until the
    #: node answers again (policy/selection.py, capacity_after_timeout and capacity_after_answer).
    capacity: int
    capability: NodeCapability
    index_keys: frozenset[str]
    registered_at: float
    last_heartbeat: float
    alive: bool = True
    in_flight: int = 0
    quarantined_until: float = -math.inf
    failures: collections.deque[float] = attrs.field(factory=collections.deque)
    jobs: set[Job] = attrs.field(factory=set)
    load: m.ResourceUsage | None = None
    jobs_done: int = 0
    jobs_failed: int = 0
    #: The node said it answers every job (features_supported.answers_every_job): its unanswered jobs of a turn are
    #: never closed as merged.
    answers_every_job: bool = False
    #: An operator drained it: out of every index (no new job), its running jobs finish (registry/node_drain.py).
    draining: bool = False
    #: What the node claimed (max_concurrent_jobs), clamped to limits.max_node_capacity; set at registration.
    claimed_capacity: int = 0

    def serves(self, services: frozenset[str]) -> bool:
        return self.capability.serves(services)


@attrs.define(eq=False)
class Job:
    """One utterance's journey; each dispatch is an attempt with its own job_id (nodes refuse a seen job_id)."""

    spec: JobSpec
    sink: Sink
    job_id: str
    services: frozenset[str]
    created_at: float
    #: When it reached each stage, for its ``job_done`` line; handed on with its outcome.
    stages: JobStages
    #: Order of creation in the registry: ties in time are broken by it.
    number: int = 0
    state: JobState = JobState.WAITING
    attempt: int = 0
    attempt_ids: list[str] = attrs.field(factory=list)
    node_id: str | None = None
    #: Nodes that had this job and may not have it again (a node lost with its connection is taken out again).
    tried: set[str] = attrs.field(factory=set)
    #: Nodes whose connection was lost while they had this job: they may take it again on a new connection.
    lost_on: frozenset[str] = frozenset()
    dispatched_at: float = 0.0
    #: Whether this job holds a slot on its node; the jobs of one turn on one node share a single slot.
    holds_slot: bool = False
    #: Bumped on every state change so stale timer entries are recognised and skipped.
    timer_token: int = 0
    #: The error code the client gets if the job is given up: why it last failed.
    last_failure: ErrorCode = ErrorCode.NO_AVAILABLE_NODE
    _audio_b64: str | None = None

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.spec.session_id, self.spec.utterance_index, self.spec.tgt_lang)

    def audio_b64(self) -> str:
        """Base64 once per job, not once per attempt."""
        if self._audio_b64 is None:
            self._audio_b64 = self.spec.audio_b64 or pybase64.b64encode(self.spec.audio).decode("ascii")
        return self._audio_b64
