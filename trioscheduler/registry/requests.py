"""What other tasks may ask of the registry, and the one client object they ask through.

Each request that needs an answer carries a Reply: a value slot plus a trio.Event made for a waiter (cheaper than a
reply channel). A waiter that gives up (its deadline passed, or it was cancelled) marks the Reply abandoned; the
registry checks that flag before doing anything, and the waiter checks ``done`` after its deadline, so a
reservation is never made for nobody.

Gone notices (a session ended, a node's socket is gone) are never lost: the client's ``*_nowait`` methods put them
in the inbox when it has room, and otherwise in a ``Notices`` queue the registry drains on every loop iteration.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Protocol

import attrs
import trio

from trioscheduler.config import LimitsConfig
from trioscheduler.joblog import JobStages
from trioscheduler.policy.capability import (
    DEFAULT_LIMITS,
    CapabilityClaim,
    NodeCapability,
    claim_of_heartbeat,
    claim_of_register,
)
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import base64_decoded_size
from trioscheduler.protocol.errors import CloseCode, ProtocolError
from trioscheduler.protocol.messages import Pipeline


class Sink(Protocol):
    """Where a job's outcome and partials go: a session's writer inbox (or, in tests, a memory channel). It must
    not block; it raises trio.ClosedResourceError (or BrokenResourceError, WouldBlock) when it cannot take more."""

    def send_nowait(self, value: Any) -> None: ...


@attrs.define(eq=False)
class Reply:
    value: Any = None
    done: bool = False
    abandoned: bool = False
    #: Made by the first ``wait``: a request nobody waits on (``submit_nowait``) costs no Event.
    _event: trio.Event | None = None

    def set(self, value: Any) -> None:
        self.value = value
        self.done = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Until ``set`` has run (a checkpoint, as ``trio.Event.wait``, when it already has)."""
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()


class Outbox(Protocol):
    """Where the registry puts messages for one node: it must not block; it raises trio.WouldBlock when full and
    trio.ClosedResourceError (or BrokenResourceError) once the socket is going away."""

    def send_nowait(self, value: Any) -> None: ...

    def close(self) -> None: ...


@attrs.define(eq=False)
class NodeLink:
    """One node socket as the registry sees it: an id, an outbox the node's writer task drains, and a heartbeat
    mailbox.

    The mailbox holds only the newest heartbeat and, when the node's capability changed, the newest capability
    (derived by the connection, never by the registry). At most one HeartbeatReady per link is ever in the
    registry's inbox, so however fast nodes heartbeat, job requests wait behind at most one entry per node."""

    conn_id: int
    outbox: Outbox
    peer: str = ""
    #: The credential the socket authenticated with (None: authentication off); a node_id belongs to it.
    credential: str | None = None
    latest_heartbeat: tuple[m.NodeHeartbeat, float] | None = None
    heartbeat_queued: bool = False
    #: A capability to apply with the next heartbeat (None: unchanged). Only the newest is kept.
    latest_capability: NodeCapability | None = None
    #: What this socket last claimed, as handed to the registry: the base a heartbeat's fields are laid over.
    #: Kept for the connection; the registry never reads it.
    claim: CapabilityClaim | None = None
    #: Set by ``RegistryClient.node_gone_nowait``: the socket is gone, so a registration from it that the registry
    #: reads after the notice (it may overtake requests still in the inbox) is refused.
    gone: bool = False


@attrs.frozen
class CloseLink:
    """Outbox item: close this node socket (replaced by a reconnect, or its heartbeats stopped) with ``code``."""

    reason: str
    code: CloseCode = CloseCode.NORMAL


@attrs.frozen
class JobSpec:
    """One finalized utterance as the session hands it over; the registry turns it into job_assign messages."""

    session_id: str
    utterance_index: int
    trace_id: str
    src_lang: str
    tgt_lang: str
    selection_key: str
    pipeline: Pipeline
    audio: bytes
    audio_format: str
    sample_rate: int
    turn_id: str | None
    cut_reason: str
    finalized_at: float
    padding_ms: int | None = None
    is_manual_cut: bool = False
    is_timeout_triggered: bool = False
    is_max_duration_triggered: bool = False
    dialect: str | None = None
    features: dict[str, Any] | None = None
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    auto_langs: list[str] | None = None
    enable_streaming_asr: bool = True
    partial_update_interval_ms: int = 1000
    tenant_id: str | None = None
    #: The client's own base64 when it sent the whole utterance (then ``audio`` is empty): forwarded as is.
    audio_b64: str | None = None
    #: Issue 14: the session asked for ui_event progress messages; the recent text of its open utterance group.
    ui_events: bool = False
    context_text: str | None = None

    @property
    def audio_size(self) -> int:
        return len(self.audio) if self.audio_b64 is None else base64_decoded_size(self.audio_b64)


@attrs.frozen
class Outcome:
    """The one terminal message for an utterance, sent to the session's writer for in-order release."""

    utterance_index: int
    message: m.TranslationResult | m.MissingResult | m.ErrorMessage
    job_id: str
    #: The job's stage times, for the ``job_done`` line the writer logs once it delivered (None: no job).
    stages: JobStages | None = None


@attrs.frozen
class Passthrough:
    """A message the session sends at once, unordered (asr_partial)."""

    message: Any


@attrs.frozen
class SubmitReply:
    job_id: str
    state: str  # "dispatched" | "waiting" | "duplicate"
    node_id: str | None = None


# ------------------------------------------------------------------------------------------------ requests


@attrs.define(eq=False)
class Submit:
    spec: JobSpec
    sink: Sink
    reply: Reply


@attrs.define(eq=False)
class CancelJobs:
    session_id: str
    indices: tuple[int, ...] | None  # None: every job of the session
    reason: m.JobCancelReason


@attrs.define(eq=False)
class SessionEnded:
    session_id: str


@attrs.define(eq=False)
class Register:
    """A node_register with the capability already derived (in the node's connection task)."""

    link: NodeLink
    message: m.NodeRegister
    capability: NodeCapability
    received_at: float
    reply: Reply


@attrs.define(eq=False)
class HeartbeatReady:
    """The link's mailbox has a heartbeat to apply."""

    link: NodeLink


@attrs.define(eq=False)
class Result:
    link: NodeLink
    message: m.JobResult
    received_at: float


@attrs.define(eq=False)
class Partial:
    link: NodeLink
    message: m.AsrPartialIn


@attrs.define(eq=False)
class Accepted:
    """A node's job_ack or job_started (issue 14: NODE_ACCEPTED for sessions that asked for ui_events)."""

    link: NodeLink
    job_id: str
    attempt_id: int | None


@attrs.define(eq=False)
class NodeGone:
    link: NodeLink
    reason: str


@attrs.define(eq=False)
class Snapshot:
    reply: Reply
    #: Also list every job and the size of every job table (tests, operators' detail view); off for metrics.
    detail: bool = False


#: NodeDrain's reply when no live node has the id; RegistryClient's answer when the registry did not answer.
UNKNOWN_NODE = "unknown_node"
NO_ANSWER = "no_answer"


@attrs.define(eq=False)
class NodeDrain:
    """An operator drains a node (no new jobs; its running jobs finish) or undoes it. The reply is the node's
    drain state afterwards (True or False), or UNKNOWN_NODE."""

    node_id: str
    draining: bool
    reply: Reply


class Notices:
    """Gone notices that did not fit in the registry's inbox. The client appends, the registry task drains it on
    every loop iteration; unbounded, but it holds at most one notice per connection that ended."""

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: collections.deque[SessionEnded | NodeGone] = collections.deque()

    def post(self, notice: SessionEnded | NodeGone) -> None:
        self._queue.append(notice)

    def take(self) -> SessionEnded | NodeGone | None:
        return self._queue.popleft() if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)


async def _put(inbox: trio.MemorySendChannel[Any], request: Any) -> None:
    """``await inbox.send(request)``, without its checkpoint when the inbox has room and the caller is not
    cancelled. For callers whose next step is a wait (a reply, the socket's next message), which checkpoints
    anyway: the checkpoint in ``send`` cost them a task switch per request."""
    if trio.current_effective_deadline() != -math.inf:  # -inf: cancelled; send raises before queueing, as ever
        try:
            inbox.send_nowait(request)
            return
        except trio.WouldBlock:
            pass
    await inbox.send(request)


async def ask_at(inbox: trio.MemorySendChannel[Any], request: Any, reply: Reply, deadline: float) -> bool:
    """Put ``request`` (which answers through ``reply``) in ``inbox`` and wait for the answer. False when none came
    by ``deadline`` or the caller was cancelled: the request is then marked abandoned, so its owner skips it (a
    submit nobody waits for must not become a job, a plan nobody waits for must open no slot)."""
    try:
        with trio.move_on_at(deadline):
            await _put(inbox, request)
            await reply.wait()
    finally:
        if not reply.done:
            reply.abandoned = True
    return reply.done


class RegistryClient:
    """The only way into the registry: every call is a message on its bounded inbox (or, for gone notices that do
    not fit, on the registry's ``Notices``)."""

    def __init__(self, inbox: trio.MemorySendChannel[Any], notices: Notices) -> None:
        self._inbox = inbox
        self._notices = notices

    async def submit(
        self, spec: JobSpec, sink: Sink, deadline: float
    ) -> SubmitReply | None:
        """None when the registry did not answer by ``deadline`` (the caller reports SCHEDULER_BUSY); then the
        request is abandoned and the registry will not create the job."""
        request = Submit(spec, sink, Reply())
        if await ask_at(self._inbox, request, request.reply, deadline):
            return request.reply.value  # type: ignore[no-any-return]
        return None

    def submit_nowait(self, spec: JobSpec, sink: Sink) -> Reply | None:
        """Put the submit in the inbox without waiting for its answer, which lands in the returned Reply (the
        caller watches ``done`` and marks it ``abandoned`` past its deadline; server/unanswered.py); None when
        the inbox is full (then ``submit`` waits for room, by a deadline)."""
        request = Submit(spec, sink, Reply())
        try:
            self._inbox.send_nowait(request)
        except trio.WouldBlock:
            return None
        return request.reply

    async def cancel_jobs(self, session_id: str, indices: tuple[int, ...] | None,
                          reason: m.JobCancelReason) -> None:
        await self._inbox.send(CancelJobs(session_id, indices, reason))

    async def session_ended(self, session_id: str) -> None:
        await self._inbox.send(SessionEnded(session_id))

    def session_ended_nowait(self, session_id: str) -> None:
        """Tell the registry the session is gone: its jobs are cancelled and their slots freed. Never blocks,
        never lost (safe in a ``finally`` of a cancelled task); applied once."""
        self._post_notice(SessionEnded(session_id))

    def node_gone_nowait(self, link: NodeLink, reason: str) -> None:
        """Tell the registry the node's socket is gone: it leaves every pool and its jobs fail over. Never blocks,
        never lost; a registration from this link that the registry has not applied yet is refused."""
        link.gone = True
        self._post_notice(NodeGone(link, reason))

    def _post_notice(self, notice: SessionEnded | NodeGone) -> None:
        try:
            self._inbox.send_nowait(notice)
        except trio.WouldBlock:
            # The inbox is full, so the registry is not asleep: it drains the notices on its next iteration.
            self._notices.post(notice)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the registry is gone: there is nothing left to tell

    async def register(self, link: NodeLink, message: m.NodeRegister,
                       limits: LimitsConfig = DEFAULT_LIMITS) -> Any:
        """The node_id, or a ProtocolError. The capability is derived here, in the caller's task, within
        ``limits``; a claim over a bound or malformed is refused without asking the registry."""
        try:
            claim = claim_of_register(message, limits)
        except ProtocolError as exc:
            return exc
        request = Register(link, message, claim.capability, trio.current_time(), Reply())
        await self._inbox.send(request)
        await request.reply.wait()
        if isinstance(request.reply.value, str):
            link.claim = claim
        return request.reply.value

    def post_heartbeat(self, link: NodeLink, message: m.NodeHeartbeat, received_at: float,
                       claim: CapabilityClaim | None = None) -> bool:
        """Leave the heartbeat (and ``claim``'s capability, when the caller derived a changed one) in the link's
        mailbox, replacing older ones not yet applied. False when the registry could not be told because its
        inbox is full: then ``await notify_heartbeat(link)``."""
        link.latest_heartbeat = (message, received_at)
        if claim is not None:
            link.claim = claim
            link.latest_capability = claim.capability
        if link.heartbeat_queued:
            return True
        try:
            self._inbox.send_nowait(HeartbeatReady(link))
        except trio.WouldBlock:
            return False
        link.heartbeat_queued = True
        return True

    async def notify_heartbeat(self, link: NodeLink) -> None:
        if link.heartbeat_queued or link.latest_heartbeat is None:
            return
        link.heartbeat_queued = True  # before the await: the registry may consume it before send() returns
        try:
            await self._inbox.send(HeartbeatReady(link))
        except BaseException:
            link.heartbeat_queued = False
            raise

    async def heartbeat(self, link: NodeLink, message: m.NodeHeartbeat, received_at: float,
                        limits: LimitsConfig = DEFAULT_LIMITS) -> ProtocolError | None:
        """Post a heartbeat, its capability derived here when it changed. Liveness and load count even when the
        capability is refused: then the error is returned and the previous capability stands."""
        try:
            claim, error = claim_of_heartbeat(link.claim, message, limits), None
        except ProtocolError as exc:
            claim, error = None, exc
        if not self.post_heartbeat(link, message, received_at, claim):
            await self.notify_heartbeat(link)
        return error

    async def result(self, link: NodeLink, message: m.JobResult) -> None:
        await _put(self._inbox, Result(link, message, trio.current_time()))

    async def partial(self, link: NodeLink, message: m.AsrPartialIn) -> None:
        await self._inbox.send(Partial(link, message))

    async def accepted(self, link: NodeLink, job_id: str, attempt_id: int | None) -> None:
        await self._inbox.send(Accepted(link, job_id, attempt_id))

    async def node_gone(self, link: NodeLink, reason: str) -> None:
        await self._inbox.send(NodeGone(link, reason))

    async def ask(self, request: Any, reply: Reply, timeout: float) -> bool:
        """Put ``request`` (which answers through ``reply``) in the inbox and wait for the answer; False when none
        came within ``timeout`` seconds or the caller was cancelled: the request is abandoned then."""
        return await ask_at(self._inbox, request, reply, trio.current_time() + timeout)

    async def snapshot(self, timeout: float = 2.0, *, detail: bool = False) -> dict[str, Any] | None:
        return await self._ask(Snapshot(Reply(), detail), timeout)  # type: ignore[no-any-return]

    async def set_node_draining(self, node_id: str, draining: bool, timeout: float = 2.0) -> bool | str:
        """Drain the node or undo it. Returns its drain state afterwards, UNKNOWN_NODE when no live node has
        ``node_id``, or NO_ANSWER when the registry did not answer within ``timeout``."""
        answer = await self._ask(NodeDrain(node_id, draining, Reply()), timeout)
        return NO_ANSWER if answer is None else answer

    async def _ask(self, request: Any, timeout: float) -> Any:
        """Send ``request`` (which has a ``reply``) and wait for its answer, at most ``timeout`` in all."""
        if await ask_at(self._inbox, request, request.reply, trio.current_time() + timeout):
            return request.reply.value
        return None


def open_registry_channel(size: int) -> tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]]:
    return trio.open_memory_channel(size if size > 0 else math.inf)
