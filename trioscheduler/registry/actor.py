"""The registry task: sole owner of nodes, pools and jobs. It answers requests from its inbox, one at a time.

It never awaits a socket: messages for nodes and sessions go into their channels with ``send_nowait``. A node
whose outbox is full or closed is treated as lost, so a slow node cannot stall scheduling. Deadlines (job,
pending, heartbeat, quarantine) live in one heap and the receive loop wakes for the earliest, so every job ends in
an outcome without a polling scanner.

This module is the loop and the job state machine (waiting → dispatched → done, with failover back to waiting);
the deadlines (timers.py), the waiting queues (waiting.py), the quarantine policy (quarantine.py) and the
messages that end a job (outcomes.py) live beside it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import trio

from trioscheduler.config import Config
from trioscheduler.ids import new_job_id, new_node_id
from trioscheduler.joblog import JobStages, log_job_done, log_outcome_done
from trioscheduler.latency import DISPATCH_BUCKETS, RESULT_BUCKETS, SELECTION_BUCKETS, LatencyHistogram
from trioscheduler.logs import emit
from trioscheduler.policy.capability import NodeCapability, describe_keys
from trioscheduler.policy.selection import (
    MemberList,
    capacity_after_answer,
    capacity_after_timeout,
    choose_node,
    rejection_reasons,
)
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.registry import queries
from trioscheduler.registry import requests as rq
from trioscheduler.registry.node_index import NodeIndex
from trioscheduler.registry.outcomes import (
    error_outcome,
    job_assign,
    merged_outcome,
    partial_message,
    success_outcome,
)
from trioscheduler.registry.ownership import NodeOwners
from trioscheduler.registry.quarantine import failure_trips_quarantine
from trioscheduler.registry.state import Job, JobState, NodeRecord
from trioscheduler.registry.timers import TimerHeap
from trioscheduler.registry.waiting import WaitingJobs
from trioscheduler.timeline import JobHistory
from trioscheduler.ui_events import job_event

log = logging.getLogger("trioscheduler.registry")
INFO, WARNING, DEBUG = logging.INFO, logging.WARNING, logging.DEBUG

FINISHED_MEMORY = 20_000  # finished job ids remembered to tell a late result from a foreign one
DRAIN_BATCH = 512  # requests handled per scheduler trip before yielding

#: The scheduler's own error codes (a node's other codes are counted together).
OWN_CODES: frozenset[str] = frozenset(ErrorCode)

class Registry:
    def __init__(
        self,
        config: Config,
        inbox: trio.MemoryReceiveChannel[Any],
        *,
        notices: rq.Notices | None = None,
        rng: random.Random | None = None,
        node_id_factory: Callable[[], str] = new_node_id,
    ) -> None:
        self._config = config
        self._sched = config.scheduler
        self._inbox = inbox
        #: Gone notices that did not fit in the inbox; share it with the RegistryClient (``RegistryClient(send,
        #: registry.notices)``).
        self.notices = notices if notices is not None else rq.Notices()
        self._rand = (rng or random.Random()).random
        self._new_node_id = node_id_factory
        self.nodes: dict[str, NodeRecord] = {}
        self._node_by_conn: dict[int, str] = {}
        #: Live nodes per index key (pools and directions).
        self.indexes = NodeIndex()
        #: The credential each authenticated node_id belongs to.
        self.owners = NodeOwners(config.limits.node_id_reuse_seconds)
        self.jobs_by_key: dict[tuple[str, int, str], Job] = {}
        self.jobs_by_id: dict[str, Job] = {}
        self.session_jobs: dict[str, set[Job]] = {}
        self.affinity: dict[str, str] = {}
        #: Jobs per open turn_id: a node answers the jobs of a MaxDuration chain only when the turn ends (§3).
        self.turns: dict[str, set[Job]] = {}
        #: The job holding each open turn's slot; the turn's next job on that node takes the slot over.
        self.turn_slot: dict[str, Job] = {}
        self.waiting = WaitingJobs()
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.counters: collections.Counter[str] = collections.Counter()
        #: Time inside choose_node per selection, and finalize → job_assign queued for the node, per dispatch.
        self.selection_latency = LatencyHistogram(SELECTION_BUCKETS)
        self.dispatch_delay = LatencyHistogram(DISPATCH_BUCKETS)
        #: Finalize of an utterance → its job's result (success or failure) accepted from the node.
        self.result_latency = LatencyHistogram(RESULT_BUCKETS)
        self._timers = TimerHeap()
        #: Recent jobs and their timelines, for the HTTP API (registry/queries.py).
        self.history = JobHistory(config.observability.job_history_size)
        self._job_numbers = itertools.count()
        self._handlers: dict[type, Callable[[Any, float], None]] = {
            rq.Submit: self._on_submit,
            rq.CancelJobs: self._on_cancel,
            rq.SessionEnded: self._on_session_ended,
            rq.Register: self._on_register_from_live_link,
            rq.HeartbeatReady: self._on_heartbeat,
            rq.Result: self._on_result,
            rq.Partial: self._on_partial,
            rq.NodeGone: self._on_node_gone,
            rq.Snapshot: self._on_snapshot,
            rq.Accepted: self._on_accepted,
            rq.NodeDrain: self._on_node_drain,
            queries.Query: self._on_query,
        }

    # ------------------------------------------------------------------------------------------ the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        inbox = self._inbox
        timers = self._timers
        notices = self.notices
        while True:
            # One cancel scope serves every wait until a timer is due: its deadline follows the earliest timer and
            # is set only when that changes. (A scope per wait, two per round trip, cost ~12 µs each on this
            # project's 2-core box: bench/README.md.) Only ``receive`` awaits in here, so the deadline can only
            # interrupt a wait, never a request being handled.
            with trio.CancelScope() as wait:
                armed = math.inf
                while True:
                    if notices:
                        self._drain_notices(trio.current_time())
                    deadline = timers.next_deadline()
                    if deadline is not None and deadline <= trio.current_time():
                        self._fire_timers(trio.current_time())
                        deadline = timers.next_deadline()
                    if deadline is None:
                        deadline = math.inf
                    if deadline != armed:
                        wait.deadline = armed = deadline
                    request = await inbox.receive()
                    now = trio.current_time()
                    self.handle(request, now)
                    # Every receive() is a trip through Trio's scheduler; under load one request per trip would leave
                    # the registry one step per batch of all runnable tasks. Drain what is already queued, boundedly.
                    for _ in range(DRAIN_BATCH):
                        try:
                            request = inbox.receive_nowait()
                        except trio.WouldBlock:
                            break
                        self.handle(request, now)

    def _drain_notices(self, now: float) -> None:
        notices = self.notices
        while (notice := notices.take()) is not None:
            self.handle(notice, now)

    def handle(self, request: Any, now: float) -> None:
        """Apply one request; an exception here is a bug, logged, and never kills the registry."""
        try:
            self._handlers[type(request)](request, now)
        except Exception:
            self.counters["registry_internal_errors"] += 1
            log.exception("registry failed to handle %s", type(request).__name__)
            reply = getattr(request, "reply", None)
            if reply is not None and not reply.done:
                reply.set(None)

    # ------------------------------------------------------------------------------------------ timers

    def _schedule(self, deadline: float, kind: str, subject: Any, token: int) -> None:
        self._timers.schedule(deadline, kind, subject, token)

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while (due := timers.pop_due(now)) is not None:
            kind, subject, token = due
            if kind == "job":
                job = self.jobs_by_id.get(subject)
                if job is None or job.timer_token != token:
                    continue  # finished, or re-armed since
                if job.state is JobState.DISPATCHED:
                    self._job_timed_out(job, now)
                elif job.state is JobState.WAITING:
                    self._pending_expired(job, now)
            elif kind == "node":
                node_id, conn_id = subject
                node = self.nodes.get(node_id)
                if node is not None and node.alive and node.link.conn_id == conn_id:
                    self._check_heartbeat(node, now)
            elif kind == "quarantine_end":
                node = self.nodes.get(subject[0])
                if node is not None and node.alive and node.link.conn_id == subject[1]:
                    self._offer_slots(node, now)

    def _arm(self, job: Job, deadline: float) -> None:
        """Timers name jobs by id, never hold them: a finished job (and its audio) is freed at once."""
        job.timer_token += 1
        self._schedule(deadline, "job", job.job_id, job.timer_token)

    # ------------------------------------------------------------------------------------------ sessions

    def _on_submit(self, request: rq.Submit, now: float) -> None:
        if request.reply.abandoned:
            # The session already reported SCHEDULER_BUSY for this utterance: creating the job now would give
            # it a second outcome and reserve a slot nobody waits for.
            self.counters["submits_abandoned"] += 1
            return
        spec = request.spec
        existing = self.jobs_by_key.get((spec.session_id, spec.utterance_index, spec.tgt_lang))
        if existing is not None:
            self.counters["submits_duplicate"] += 1
            request.reply.set(rq.SubmitReply(existing.job_id, "duplicate", existing.node_id))
            return
        job = Job(
            spec=spec,
            sink=request.sink,
            job_id=new_job_id(),
            services=spec.pipeline.required_services(),
            created_at=now,
            stages=JobStages(spec.finalized_at, now, spec.tenant_id),
            number=next(self._job_numbers),
        )
        job.attempt_ids.append(job.job_id)
        self.jobs_by_key[job.key] = job
        self.jobs_by_id[job.job_id] = job
        self.session_jobs.setdefault(spec.session_id, set()).add(job)
        self.counters["jobs_created"] += 1
        queries.record_job(self.history, job)
        self._stage(job, "created", now, selection_key=spec.selection_key, cut=spec.cut_reason,
                    audio_bytes=spec.audio_size)
        self._place(job, now)
        request.reply.set(rq.SubmitReply(job.job_id, job.state.value, job.node_id))

    def _on_cancel(self, request: rq.CancelJobs, now: float) -> None:
        jobs = [job for job in self.session_jobs.get(request.session_id, ())
                if request.indices is None or job.spec.utterance_index in request.indices]
        self._cancel(jobs, request.reason, now)

    def _on_session_ended(self, request: rq.SessionEnded, now: float) -> None:
        self._cancel(list(self.session_jobs.get(request.session_id, ())), "session_closed", now)
        self.session_jobs.pop(request.session_id, None)
        self.affinity.pop(request.session_id, None)

    def _cancel(self, jobs: list[Job], reason: m.JobCancelReason, now: float) -> None:
        """The session no longer wants these jobs: tell their nodes, free the slots, send no outcome."""
        for job in jobs:  # out of the queue first, so a freed slot cannot go to a job being cancelled
            self.waiting.discard(job)
        for job in jobs:
            if job.state is JobState.DISPATCHED:
                self._send_cancel(job, reason)
            self.counters[f"jobs_cancelled_{reason}"] += 1
            self._stage(job, "cancelled", now, reason=reason)
            self._retire(job, now)
            spec = job.spec
            log_job_done(job.stages, session_id=spec.session_id, utterance_index=spec.utterance_index,
                         job_id=job.job_id, trace_id=spec.trace_id, outcome="cancelled", reason=reason)

    # ------------------------------------------------------------------------------------------ placement

    def _place(self, job: Job, now: float) -> None:
        """Dispatch to a node with a free slot, or wait for one until the pending deadline."""
        node = self._select(job, now)
        if node is not None:
            self._dispatch(job, node, now)
            return
        job.state = JobState.WAITING
        job.node_id = None
        self.waiting.add(job)
        self._arm(job, now + self._sched.pending_timeout_seconds)
        self.counters["jobs_waited"] += 1
        self._stage(job, "waiting", now, candidates=self.indexes.size(job.spec.selection_key))

    def _select(self, job: Job, now: float) -> NodeRecord | None:
        members = self.indexes.get(job.spec.selection_key)
        if members is None:
            return None
        holder = self.turn_slot.get(job.spec.turn_id or "")
        started = time.perf_counter()
        node_id = choose_node(
            members,
            self.nodes,  # type: ignore[arg-type]
            services=job.services,
            excluded=job.tried,
            preferred=self.affinity.get(job.spec.session_id),
            handover=holder.node_id if holder is not None and holder.holds_slot else None,
            require_ready=self._sched.require_ready_services,
            now=now,
            rand=self._rand,
        )
        self.selection_latency.observe(time.perf_counter() - started)
        return None if node_id is None else self.nodes[node_id]

    def _dispatch(self, job: Job, node: NodeRecord, now: float) -> None:
        if job.state is JobState.WAITING:
            self.waiting.discard(job)
        job.attempt += 1
        if job.attempt > 1:
            job.job_id = new_job_id()
            job.attempt_ids.append(job.job_id)
            self.jobs_by_id[job.job_id] = job
        job.state = JobState.DISPATCHED
        job.node_id = node.node_id
        job.tried.add(node.node_id)
        job.dispatched_at = now
        turn_id = job.spec.turn_id
        holder = self.turn_slot.get(turn_id) if turn_id else None
        if holder is not None and holder.holds_slot and holder.node_id == node.node_id:
            holder.holds_slot = False  # the turn's slot passes to its newest job: a turn costs one slot
        else:
            node.in_flight += 1
        job.holds_slot = True
        if turn_id:
            self.turn_slot[turn_id] = job
        node.jobs.add(job)
        self.affinity[job.spec.session_id] = node.node_id
        job.stages.selected(now, job.attempt, node.node_id)
        self._stage(job, "selected", now, attempt_id=job.attempt, in_flight=node.in_flight,
                    capacity=node.capacity)
        spec = job.spec
        assign = job_assign(job)
        self.counters["dispatches"] += 1
        self.dispatch_delay.observe(now - spec.finalized_at)
        if job.attempt > 1:
            self.counters["redispatches"] += 1
        self._arm(job, now + self._sched.job_timeout_seconds)
        if spec.turn_id is not None:
            self._extend_turn(job, now)
        ready = node.capability.ready_services
        if ready is not None and not job.services <= ready:
            self._dispatched_unready(job, node, ready)
        if not self._send_to_node(node, Dispatch(assign, spec.finalized_at, job.stages)):
            self._lose_node(node, "outbox_unavailable", now)
        elif spec.ui_events:
            self._ui_event(job, "DISPATCHED", now)

    def _dispatched_unready(self, job: Job, node: NodeRecord, ready: frozenset[str]) -> None:
        """No node with the job's services ready had room: the node serves the language pair (the original's
        rule) and answers what it can. Only reached when require_ready_services is off."""
        self.counters["dispatches_unready"] += 1
        spec = job.spec
        emit(log, INFO, "job_dispatched_unready", session_id=spec.session_id, utterance_index=spec.utterance_index,
             job_id=job.job_id, node_id=node.node_id, trace_id=spec.trace_id,
             missing_services=",".join(sorted(job.services - ready)))

    def _extend_turn(self, job: Job, now: float) -> None:
        """The original's nodes buffer the audio of a MaxDuration chain and answer its jobs together when the turn
        ends, so a job in the middle of a live turn is not late: every dispatched job of the turn gets its
        deadline from the newest dispatch in that turn."""
        turn = self.turns.setdefault(job.spec.turn_id, set())  # type: ignore[arg-type]
        turn.add(job)
        deadline = now + self._sched.job_timeout_seconds
        for other in turn:
            if other is not job and other.state is JobState.DISPATCHED:
                self._arm(other, deadline)

    def _send_to_node(self, node: NodeRecord, item: Any) -> bool:
        try:
            node.link.outbox.send_nowait(item)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _send_cancel(self, job: Job, reason: m.JobCancelReason) -> None:
        node = self.nodes.get(job.node_id or "")
        if node is not None and node.alive:
            self._send_to_node(node, m.JobCancel(job_id=job.job_id, reason=reason, trace_id=job.spec.trace_id))
            self.counters["job_cancels_sent"] += 1

    def _release_slot(self, job: Job, now: float) -> None:
        node = self.nodes.get(job.node_id or "")
        if node is None or job not in node.jobs:
            return
        node.jobs.discard(job)
        if job.holds_slot:
            job.holds_slot = False
            node.in_flight -= 1
            if self.waiting:
                self._offer_slots(node, now)

    def _offer_slots(self, node: NodeRecord, now: float) -> None:
        """The node has room (a slot freed, it registered, its capability changed, its quarantine ended): give
        its free slots to the longest-waiting jobs it may take, over the keys it serves only."""
        waiting = self.waiting
        while waiting and node.alive and node.in_flight < node.capacity and node.quarantined_until <= now:
            job = waiting.first_fit(node, require_ready=self._sched.require_ready_services)
            if job is None:
                return
            self._dispatch(job, node, now)

    # ------------------------------------------------------------------------------------------ failures

    def _job_timed_out(self, job: Job, now: float) -> None:
        """The node stays excluded for this job, even if it re-registers: it may still be working on it, and a
        second assign would double the work (unlike a job lost with its connection, see _lose_node)."""
        node = self.nodes.get(job.node_id or "")
        self.counters["job_timeouts"] += 1
        self._stage(job, "deadline_missed", now, level=WARNING, why="no job_result within job_timeout_seconds",
                    waited_ms=round((now - job.dispatched_at) * 1000.0, 1), attempt_id=job.attempt)
        self._send_cancel(job, "job_timeout")
        held = node.in_flight if node is not None else 0
        self._release_slot(job, now)
        if node is not None:
            self._shrink_capacity(node, held)
        if self.affinity.get(job.spec.session_id) == job.node_id:
            del self.affinity[job.spec.session_id]  # a node that just stalled is no longer preferred
        if node is not None:
            node.jobs_failed += 1
            self._record_failure(node, now)
        job.last_failure = ErrorCode.JOB_TIMEOUT
        self.counters["failovers_job_timeout"] += 1
        self._retry(job, now)

    def _shrink_capacity(self, node: NodeRecord, held: int) -> None:
        """A job of ``node`` timed out while it held ``held`` slots: it gets fewer until it answers again."""
        shrunk = capacity_after_timeout(node.capacity, held)
        if shrunk < node.capacity:
            self.counters["node_capacity_shrinks"] += 1
            emit(log, WARNING, "node_capacity_shrunk", node_id=node.node_id, capacity=shrunk,
                 was=node.capacity, claimed=node.claimed_capacity, held=held)
            node.capacity = shrunk

    def _pending_expired(self, job: Job, now: float) -> None:
        members = self.indexes.get(job.spec.selection_key) or MemberList()
        reasons = rejection_reasons(members, self.nodes, services=job.services,  # type: ignore[arg-type]
                                    excluded=job.tried, require_ready=self._sched.require_ready_services,
                                    now=now)
        waited = self._sched.pending_timeout_seconds
        self._stage(job, "deadline_missed", now, level=WARNING,
                    why=f"no node could take the job within pending_timeout_seconds ({waited:g} s)",
                    selection_key=job.spec.selection_key, candidates=len(members),
                    rejected=",".join(f"{k}:{v}" for k, v in reasons.items()) or "none")
        if job.last_failure == ErrorCode.NO_AVAILABLE_NODE:
            message = (f"no node available for {job.spec.src_lang}->{job.spec.tgt_lang} "
                       f"within {waited:g} s")
        else:
            message = f"no other node could take the job after {job.last_failure}"
        self._fail(job, job.last_failure, message, now, details={"candidates": reasons})

    def _retry(self, job: Job, now: float) -> None:
        """Re-dispatch to a node that has not had this utterance yet, within failover_max_attempts, now or when
        one has room."""
        if job.attempt - 1 >= self._sched.failover_max_attempts:
            self._fail(job, job.last_failure,
                       f"gave up after {job.attempt} attempts (failover_max_attempts="
                       f"{self._sched.failover_max_attempts})", now)
            return
        self._stage(job, "failover", now, reason=str(job.last_failure))
        node = self._select(job, now)
        if node is not None:
            self._dispatch(job, node, now)
            return
        # No eligible node right now: wait like a new job, up to pending_timeout_seconds, for a slot or a node
        # (one that registers later included); if none comes the client gets the last failure's code.
        self._place(job, now)

    def _record_failure(self, node: NodeRecord, now: float) -> None:
        window = self._sched.quarantine_window_seconds
        tripped = failure_trips_quarantine(node.failures, now, window=window,
                                           threshold=self._sched.quarantine_failures)
        if tripped and node.quarantined_until <= now:
            node.quarantined_until = now + self._sched.quarantine_cooldown_seconds
            node.failures.clear()
            self.counters["node_quarantines"] += 1
            emit(log, WARNING, "node_quarantined", node_id=node.node_id,
                 cooldown_s=self._sched.quarantine_cooldown_seconds,
                 failures=self._sched.quarantine_failures, window_s=window)
            self._schedule(node.quarantined_until, "quarantine_end", (node.node_id, node.link.conn_id), 0)

    def _check_heartbeat(self, node: NodeRecord, now: float) -> None:
        timeout = self._sched.heartbeat_timeout_seconds
        pending = node.link.latest_heartbeat  # received, not yet applied: the node is not silent
        if pending is not None and pending[1] > node.last_heartbeat:
            node.last_heartbeat = pending[1]
        # Compare with the deadline exactly as it was scheduled: ``now - last >= timeout`` can round below the
        # timeout at the very deadline and re-arm the same instant forever.
        if now >= node.last_heartbeat + timeout:
            emit(log, WARNING, "node_heartbeat_timeout", node_id=node.node_id,
                 silent_ms=round((now - node.last_heartbeat) * 1000.0, 1), in_flight=node.in_flight)
            self._send_to_node(node, rq.CloseLink("heartbeat_timeout"))
            self._lose_node(node, "heartbeat_timeout", now)
        else:
            self._schedule(node.last_heartbeat + timeout, "node", (node.node_id, node.link.conn_id), 0)

    def _lose_node(self, node: NodeRecord, reason: str, now: float) -> None:
        """Out of every pool at once; its in-flight jobs are re-dispatched now, not after their timeout."""
        if not node.alive:
            return
        node.alive = False
        self.counters[f"nodes_lost_{reason}"] += 1
        removed = self.indexes.unindex(node, node.index_keys)
        if removed:
            self.counters["pools_removed"] += removed
        if self.nodes.get(node.node_id) is node:
            del self.nodes[node.node_id]
        self._node_by_conn.pop(node.link.conn_id, None)
        orphans = sorted(node.jobs, key=lambda j: j.number)  # oldest first, whatever the set's order
        if node.link.credential is not None:
            self.owners.gone(node.node_id, now, [job.key for job in orphans])
        node.jobs.clear()
        node.in_flight = 0
        for job in orphans:
            job.holds_slot = False
        emit(log, WARNING, "node_lost", node_id=node.node_id, reason=reason, in_flight_jobs=len(orphans))
        for job in orphans:
            self._stage(job, "node_lost", now, level=WARNING, reason=reason)
            job.last_failure = ErrorCode.NODE_UNAVAILABLE
            # The job was lost with the connection, not refused by the node: the same node_id on a new
            # connection may take it again. (A job that timed out keeps its node excluded: see _job_timed_out.)
            job.tried.discard(node.node_id)
            job.lost_on |= {node.node_id}
            self.counters["failovers_node_lost"] += 1
            self._retry(job, now)

    # ------------------------------------------------------------------------------------------ outcomes

    def _fail(self, job: Job, code: ErrorCode | m.Code, message: str, now: float, details: Any = None) -> None:
        # A node may report any code: count those under one key, so a node cannot grow the counters.
        self.counters[f"outcome_error_{code if code in OWN_CODES else 'NODE_REPORTED'}"] += 1
        self._finish(job, error_outcome(job, code, message, details), now)

    def _finish(self, job: Job, message: Any, now: float) -> None:
        self._retire(job, now)
        # Staged before the hand-over: the session's writer may deliver it (and stage that) at once.
        self._stage(job, "outcome", now, kind=message.TYPE, code=getattr(message, "code", None),
                    attempts=job.attempt)
        try:
            job.sink.send_nowait(rq.Outcome(job.spec.utterance_index, message, job.job_id, job.stages))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.counters["outcomes_undeliverable"] += 1
            log_outcome_done(job.stages, message, dropped="undeliverable")

    def _retire(self, job: Job, now: float) -> None:
        if job.state is JobState.DONE:
            return
        was_dispatched = job.state is JobState.DISPATCHED
        if job.state is JobState.WAITING:
            self.waiting.discard(job)
        job.state = JobState.DONE
        job.timer_token += 1
        self.jobs_by_key.pop(job.key, None)
        for attempt_id in job.attempt_ids:
            self.jobs_by_id.pop(attempt_id, None)
            self._finished[attempt_id] = None
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)
        jobs = self.session_jobs.get(job.spec.session_id)
        if jobs is not None:
            jobs.discard(job)
        turn_id = job.spec.turn_id or ""
        turn = self.turns.get(turn_id)
        if turn is not None:
            turn.discard(job)
            if not turn:
                del self.turns[turn_id]
        if self.turn_slot.get(turn_id) is job:
            del self.turn_slot[turn_id]
        if was_dispatched:
            self._release_slot(job, now)

    # ------------------------------------------------------------------------------------------ nodes

    def _on_register_from_live_link(self, request: rq.Register, now: float) -> None:
        if request.link.gone:
            # Its gone notice overtook it (the notice went around a full inbox): registering now would leave a
            # node in the pools with no socket behind it.
            self.counters["registrations_from_gone_links"] += 1
            request.reply.set(ProtocolError("the node's connection is gone", field="node_id"))
            return
        self._on_register(request, now)

    def _on_register(self, request: rq.Register, now: float) -> None:
        """Apply a registration whose capability the node's connection already derived: only its keys are
        (re-)indexed here, and one line is logged whatever the node claims."""
        message, link, capability = request.message, request.link, request.capability
        if message.max_concurrent_jobs is not None and message.max_concurrent_jobs < 1:
            request.reply.set(ProtocolError("max_concurrent_jobs must be >= 1", field="max_concurrent_jobs"))
            return
        previous_id = self._node_by_conn.get(link.conn_id)
        node_id = message.node_id or previous_id
        if not node_id:
            node_id = self._new_node_id()
            while node_id in self.nodes or self.owners.holder(node_id, now, self._unsettled) is not None:
                node_id = self._new_node_id()
        owner = self.owners.holder(node_id, now, self._unsettled)
        if owner is not None and owner != link.credential:
            # Another credential's node_id (live, or gone with jobs unsettled): the live node keeps it and its jobs.
            self.counters["node_registrations_refused_id_in_use"] += 1
            emit(log, WARNING, "node_register_refused", node_id=node_id, code=ErrorCode.NODE_ID_IN_USE,
                 peer=link.peer)
            request.reply.set(ProtocolError(f"node_id {node_id!r} belongs to another credential",
                                            field="node_id", code=ErrorCode.NODE_ID_IN_USE))
            return
        if previous_id is not None and previous_id != node_id:
            self._lose_node(self.nodes[previous_id], "re_registered", now)
        existing = self.nodes.get(node_id)
        if existing is not None and existing.link.conn_id != link.conn_id:
            # A reconnect: the old socket is closed and its jobs fail over; one node_id, one live socket.
            self._send_to_node(existing, rq.CloseLink("replaced_by_new_connection"))
            self._lose_node(existing, "replaced_by_reconnect", now)
            existing = None
        capacity = self._claimed_capacity(node_id, message.max_concurrent_jobs, link)
        answers_every_job = (message.features_supported or {}).get("answers_every_job") is True
        if existing is not None:  # the same socket registered again: refresh what it said (a shrink stands)
            shrunk = existing.capacity < existing.claimed_capacity
            existing.claimed_capacity = capacity
            existing.capacity = min(existing.capacity, capacity) if shrunk else capacity
            existing.answers_every_job = answers_every_job
            created, removed = self._reindex(existing, capability, now)
        else:
            node = NodeRecord(
                node_id=node_id, link=link, capacity=capacity, capability=capability,
                index_keys=frozenset(), registered_at=now, last_heartbeat=now,
                answers_every_job=answers_every_job, claimed_capacity=capacity,
            )
            self.nodes[node_id] = node
            self.owners.registered(node_id, link.credential)
            self._node_by_conn[link.conn_id] = node_id
            created, removed = self._reindex(node, capability, now)
            self._schedule(now + self._sched.heartbeat_timeout_seconds, "node", (node_id, link.conn_id), 0)
        node = self.nodes[node_id]
        self._send_to_node(node, m.NodeRegisterAck(
            node_id=node_id, heartbeat_interval_seconds=self._sched.advertised_heartbeat_interval))
        self.counters["node_registrations"] += 1
        pools = capability.pools()
        emit(log, INFO, "node_registered", node_id=node_id, capacity=capacity, pools=describe_keys(pools),
             pool_count=len(pools), pair_count=len(capability.pairs), pools_created=created,
             pools_removed=removed)
        request.reply.set(node_id)
        self._offer_slots(node, now)

    def _claimed_capacity(self, node_id: str, claimed: int | None, link: rq.NodeLink) -> int:
        """The node's max_concurrent_jobs (the default when it says none), clamped to limits.max_node_capacity."""
        capacity = claimed or self._sched.max_concurrent_jobs_per_node
        limit = self._config.limits.max_node_capacity
        if capacity > limit:
            self.counters["node_capacity_clamped"] += 1
            emit(log, WARNING, "node_capacity_clamped", node_id=node_id, claimed=capacity, capacity=limit,
                 peer=link.peer)
            return limit
        return capacity

    def _unsettled(self, key: tuple[str, int, str]) -> bool:
        return key in self.jobs_by_key

    def _on_heartbeat(self, request: rq.HeartbeatReady, now: float) -> None:
        """Liveness and load from the newest heartbeat; a capability the connection derived is only re-indexed."""
        link = request.link
        link.heartbeat_queued = False
        pending, link.latest_heartbeat = link.latest_heartbeat, None
        capability, link.latest_capability = link.latest_capability, None
        node = self.nodes.get(self._node_by_conn.get(link.conn_id) or "")
        if node is None:
            return
        if pending is not None:
            message, received_at = pending
            node.last_heartbeat = max(node.last_heartbeat, received_at)
            if message.resource_usage is not None:
                node.load = message.resource_usage
            self.counters["heartbeats"] += 1
        if capability is None or capability == node.capability:
            return
        created, removed = self._reindex(node, capability, now)
        self.counters["node_capability_changes"] += 1
        pools = capability.pools()
        emit(log, INFO, "node_capability_changed", node_id=node.node_id, pools=describe_keys(pools),
             pool_count=len(pools), pair_count=len(capability.pairs), pools_created=created,
             pools_removed=removed)
        self._offer_slots(node, now)

    def _reindex(self, node: NodeRecord, capability: NodeCapability, now: float) -> tuple[int, int]:
        """Move the node to ``capability``'s index keys and count the pools made. Returns (created, removed).
        A draining node only keeps the capability: it is indexed again when its drain is undone."""
        if node.draining:
            node.capability = capability
            return 0, 0
        created, removed = self.indexes.reindex(node, capability)
        if created:
            self.counters["pools_created"] += created
        if removed:
            self.counters["pools_removed"] += removed
        return created, removed

    def _on_node_gone(self, request: rq.NodeGone, now: float) -> None:
        node_id = self._node_by_conn.get(request.link.conn_id)
        node = self.nodes.get(node_id or "")
        if node is not None and node.link.conn_id == request.link.conn_id:
            self._lose_node(node, request.reason, now)

    def _accepting_node(self, link: rq.NodeLink, job_id: str, attempt_id: int | None) -> tuple[Job | None, str]:
        """The job a node message may act on, or why it may not (late, foreign, unknown, finished)."""
        job = self.jobs_by_id.get(job_id)
        if job is None:
            return None, "finished_job" if job_id in self._finished else "unknown_job"
        if job.job_id != job_id:
            return None, "old_attempt"
        if job.state is not JobState.DISPATCHED:
            return None, "old_attempt"
        if self._node_by_conn.get(link.conn_id) != job.node_id:
            return None, "foreign_node"
        if attempt_id is not None and attempt_id != job.attempt:
            return None, "old_attempt"
        return job, ""

    def _on_result(self, request: rq.Result, now: float) -> None:
        message = request.message
        job, why = self._accepting_node(request.link, message.job_id, message.attempt_id)
        if job is None:
            self.counters[f"results_dropped_{why}"] += 1
            emit(log, WARNING, "result_dropped", reason=why, job_id=message.job_id,
                 node_id=self._node_by_conn.get(request.link.conn_id), session_id=message.session_id,
                 utterance_index=message.utterance_index, attempt_id=message.attempt_id)
            return
        spec = job.spec
        node = self.nodes.get(job.node_id or "")
        if node is not None and node.capacity < node.claimed_capacity:
            node.capacity = capacity_after_answer(node.capacity, node.claimed_capacity)  # it answers again
        if not message.success:
            error = message.error or m.ResultError()
            duplicate = error.code.startswith("DUPLICATE_") or error.message.startswith("DUPLICATE_")
            if duplicate and job.node_id in job.lost_on:
                # Sent again to a node that reconnected after losing the job with its old connection, and the
                # node remembers the utterance: it will not run it. Not the node's failure; go elsewhere now.
                self.counters["results_dropped_duplicate_after_reconnect"] += 1
                job.tried.add(job.node_id)
                self._release_slot(job, now)
                self.counters["failovers_duplicate_after_reconnect"] += 1
                self._retry(job, now)
                return
            if duplicate:
                # The node already has this job id (it refuses a job_id it has seen): not a user-facing
                # error; the job keeps its deadline.
                self.counters["results_dropped_duplicate_reply"] += 1
                emit(log, WARNING, "result_dropped", reason="node_reports_duplicate", job_id=job.job_id,
                     node_id=job.node_id, session_id=spec.session_id, utterance_index=spec.utterance_index)
                return
            if node is not None:
                node.jobs_failed += 1
                self._record_failure(node, now)
            if node is not None and spec.turn_id is not None and not node.answers_every_job:
                self._close_merged(job, now)
            job.stages.result_at = now
            self.result_latency.observe(now - spec.finalized_at)
            self._stage(job, "result", now, success=False, code=error.code)
            self._fail(job, error.code, error.message, now, details=error.details)
            return
        if node is not None:
            node.jobs_done += 1
            if spec.turn_id is not None and not node.answers_every_job:
                self._close_merged(job, now)
        job.stages.result_at = now
        self.result_latency.observe(now - spec.finalized_at)
        self._stage(job, "result", now, success=True)
        outcome = success_outcome(job, message, now)
        self.counters["outcome_result" if outcome.TYPE == m.TranslationResult.TYPE else "outcome_missing_silence"] += 1
        self._finish(job, outcome, now)

    def _close_merged(self, answered: Job, now: float) -> None:
        """The node answered a job of a turn: the turn's earlier jobs it holds without an answer were merged into
        that answer (the original's node buffers a turn's audio and answers the turn once). Each gets its one
        outcome now, frees its slot and is never dispatched again."""
        turn = self.turns.get(answered.spec.turn_id or "")
        if turn is None or len(turn) < 2:
            return
        index = answered.spec.utterance_index
        merged = sorted((job for job in turn if job is not answered and job.state is JobState.DISPATCHED
                         and job.node_id == answered.node_id and job.spec.utterance_index < index),
                        key=lambda job: job.spec.utterance_index)
        for job in merged:
            self.counters["outcome_missing_merged"] += 1
            self._finish(job, merged_outcome(job, index), now)

    def _on_partial(self, request: rq.Partial, now: float) -> None:
        message = request.message
        job, why = self._accepting_node(request.link, message.job_id, None)
        if job is None:
            self.counters[f"partials_dropped_{why}"] += 1
            return
        try:
            job.sink.send_nowait(rq.Passthrough(partial_message(job, message)))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.counters["partials_undeliverable"] += 1

    # ------------------------------------------------------------------------------------------ ui_event (issue 14)

    def _on_accepted(self, request: rq.Accepted, now: float) -> None:
        job, _ = self._accepting_node(request.link, request.job_id, request.attempt_id)
        if job is not None and job.spec.ui_events:
            self._ui_event(job, "NODE_ACCEPTED", now)

    def _ui_event(self, job: Job, event: m.UiEventName, now: float) -> None:
        """Best effort, like a partial: a session that does not read loses progress events, never outcomes."""
        try:
            job.sink.send_nowait(rq.Passthrough(job_event(job.spec, job.job_id, event, now)))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.counters["ui_events_undeliverable"] += 1
    def _on_node_drain(self, request: rq.NodeDrain, now: float) -> None:
        """Drain a node (out of every index, so no new job goes to it; its running jobs finish and free their
        slots as usual) and send it ``node_control`` drain; or undo that (``resume``) and offer it waiting jobs."""
        node = self.nodes.get(request.node_id)
        if node is None or not node.alive:
            request.reply.set(rq.UNKNOWN_NODE)
            return
        if request.draining != node.draining:
            if request.draining:
                removed = self.indexes.unindex(node, node.index_keys)
                node.index_keys = frozenset()
                node.draining = True
                if removed:
                    self.counters["pools_removed"] += removed
            else:
                node.draining = False
                self._reindex(node, node.capability, now)
            command: m.NodeControlCommand = "drain" if node.draining else "resume"
            self.counters[f"nodes_{command}"] += 1
            self._send_to_node(node, m.NodeControl(command=command, reason=f"operator_{command}"))
            emit(log, WARNING, f"node_{command}", node_id=node.node_id, in_flight=node.in_flight,
                 jobs=len(node.jobs))
            if not node.draining:
                self._offer_slots(node, now)
        request.reply.set(node.draining)

    # ------------------------------------------------------------------------------------------ visibility

    def _on_query(self, request: queries.Query, now: float) -> None:
        queries.answer(self, request, now)

    def _on_snapshot(self, request: rq.Snapshot, now: float) -> None:
        if request.reply.abandoned:
            return
        request.reply.set(self.snapshot(now, detail=request.detail))

    def snapshot(self, now: float, *, detail: bool = False) -> dict[str, Any]:
        """Plain data (also the future HTTP API). With ``detail``, every job and the size of every job table."""
        nodes = [
            {
                "node_id": node.node_id,
                "state": _node_state(node, now),
                "in_flight": node.in_flight,
                "capacity": node.claimed_capacity,
                "effective_capacity": node.capacity,
                "slot_holders": sum(1 for job in node.jobs if job.holds_slot),
                "jobs": len(node.jobs),
                "pools": sorted(node.capability.pools()),
                "pairs": sorted(f"{s}>{t}" for s, t in node.capability.pairs),
                "ready_services": None if node.capability.ready_services is None
                else sorted(node.capability.ready_services),
                "quarantined": node.quarantined_until > now,
                "draining": node.draining,
                "quarantined_for_s": max(0.0, round(node.quarantined_until - now, 3))
                if math.isfinite(node.quarantined_until) else 0.0,
                "last_heartbeat_age_s": round(now - node.last_heartbeat, 3),
                "jobs_done": node.jobs_done,
                "jobs_failed": node.jobs_failed,
            }
            for node in self.nodes.values()
        ]
        pools = self.indexes.pools()
        in_flight_by_key: collections.Counter[str] = collections.Counter(
            job.spec.selection_key for job in self.jobs_by_key.values() if job.state is JobState.DISPATCHED)
        dispatched = sum(in_flight_by_key.values())
        snapshot = {
            "nodes": nodes,
            "pools": pools,
            "jobs": {"dispatched": dispatched, "waiting": len(self.waiting), "total": len(self.jobs_by_key)},
            "waiting_by_key": self.waiting.per_key(),
            "in_flight_by_key": dict(in_flight_by_key),
            "slots": {"in_flight": sum(n.in_flight for n in self.nodes.values()),
                      "capacity": sum(n.capacity for n in self.nodes.values())},
            "sessions_with_jobs": sum(1 for jobs in self.session_jobs.values() if jobs),
            "inbox_pending": self._inbox.statistics().current_buffer_used,
            "counters": dict(self.counters),
            "latency": {"selection_seconds": self.selection_latency.snapshot(),
                        "dispatch_delay_seconds": self.dispatch_delay.snapshot(),
                        "result_seconds": self.result_latency.snapshot()},
        }
        if detail:
            snapshot["job_list"] = [_job_view(job) for job in self.jobs_by_key.values()]
            snapshot["held"] = {
                "nodes": len(self.nodes),
                "node_conns": len(self._node_by_conn),
                "indexes": len(self.indexes),
                "jobs_by_key": len(self.jobs_by_key),
                "jobs_by_id": len(self.jobs_by_id),
                "waiting": len(self.waiting),
                "session_jobs": sum(len(jobs) for jobs in self.session_jobs.values()),
                "sessions": len(self.session_jobs),
                "affinity": len(self.affinity),
                "turns": len(self.turns),
                "turn_slot": len(self.turn_slot),
                "notices": len(self.notices),
            }
        return snapshot

    def _stage(self, job: Job, stage: str, now: float, *, level: int = DEBUG, **fields: Any) -> None:
        """A stage line: ``debug``, or ``warning`` for trouble (deadline missed, node lost); the ``info`` summary
        is the job's one ``job_done`` line (joblog.py). Every stage also goes on the job's timeline."""
        job.stages.timeline.append((stage, now, job.node_id, job.attempt, fields or None))
        if log.isEnabledFor(level):
            spec = job.spec
            emit(log, level, f"job_{stage}", session_id=spec.session_id, utterance_index=spec.utterance_index,
                 job_id=job.job_id, node_id=job.node_id, trace_id=spec.trace_id,
                 elapsed_ms=round((now - spec.finalized_at) * 1000.0, 3), **fields)


def _node_state(node: NodeRecord, now: float) -> str:
    if node.draining:
        return "draining"
    if node.quarantined_until > now:
        return "quarantined"
    return "full" if node.in_flight >= node.capacity else "ready"


def _job_view(job: Job) -> dict[str, Any]:
    spec = job.spec
    return {
        "job_id": job.job_id,
        "session_id": spec.session_id,
        "utterance_index": spec.utterance_index,
        "tgt_lang": spec.tgt_lang,
        "selection_key": spec.selection_key,
        "tenant_id": spec.tenant_id,
        "state": job.state.value,
        "node_id": job.node_id,
        "attempt": job.attempt,
        "holds_slot": job.holds_slot,
    }


class Dispatch:
    """Outbox item: a job_assign, when its utterance was finalized and the job's stage times (stamped dispatched
    by whoever writes it: the node's outbox at once, or the node's writer)."""

    __slots__ = ("assign", "finalized_at", "stages", "payload")

    def __init__(self, assign: m.JobAssign, finalized_at: float, stages: JobStages) -> None:
        self.assign = assign
        self.finalized_at = finalized_at
        self.stages = stages
        #: The job_assign encoded, once the outbox has encoded it.
        self.payload: bytes | None = None
