"""The node SDK: write a worker node as one async function and let this module speak ``/ws/node``.

    async def handle(job: trioscheduler.node.Job) -> trioscheduler.node.Answer:
        return Answer(text_asr=..., text_translated=..., tts_audio=...)

    await trioscheduler.node.run("ws://127.0.0.1:5010/ws/node", handle, languages=("zh", "en"), capacity=4)

Guarantees of :func:`run`:

- it registers (languages, services, capacity, ``answers_every_job``), heartbeats at the interval the scheduler's
  ack names, and reconnects with exponential backoff and jitter under the node_id the scheduler gave it;
- at most ``capacity`` handlers run at once; a job beyond that is answered at once with success false and
  :data:`OVER_CAPACITY` (a scheduler that honours ``max_concurrent_jobs`` never sends one);
- ``job_cancel`` cancels that job's handler (a trio cancel scope) and no result is sent for it;
- a handler that raises :class:`JobFailed` answers success false with its code, any other exception with
  ``PROCESSING_ERROR``; the node keeps running either way;
- on SIGTERM (or ``stop``) it drains: it reports every service not ready, answers new jobs with :data:`DRAINING`,
  lets the running handlers finish and send their results, then closes and returns.

The messages are plain dicts built here, not the scheduler's codec: a node is a foreign peer of the scheduler.
The connection layer (connect, register, heartbeat, dispatch, reconnect) is :class:`trioscheduler.node_agent.NodeAgent`,
on which the simulated node :class:`trioscheduler.sim.SimNode` is built too; its public names are re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import inspect
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio

from trioscheduler.errors import TrioschedulerError
from trioscheduler.node_agent import (
    CONNECTION_CLOSED,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_NODE_URL,
    Backoff,
    MessageConnection,
    NodeAgent,
    RegistrationRefused,
    describe_exception,
)
from trioscheduler.protocol.messages import Pipeline

__all__ = [
    "BAD_JOB",
    "CONNECTION_CLOSED",
    "DEFAULT_NODE_URL",
    "DEFAULT_SERVICES",
    "DRAINING",
    "DUPLICATE_JOB_ID",
    "OVER_CAPACITY",
    "Answer",
    "Backoff",
    "Job",
    "JobFailed",
    "MessageConnection",
    "NodeAgent",
    "PartialSender",
    "RegistrationRefused",
    "run",
]

logger = logging.getLogger(__name__)

#: What a node built on :func:`run` offers unless told otherwise: the default pipeline's services.
DEFAULT_SERVICES: tuple[str, ...] = ("asr", "nmt", "tts")
PROCESSING_ERROR = "PROCESSING_ERROR"
#: ``error.code`` of a job that arrived while ``capacity`` handlers were running.
OVER_CAPACITY = "NODE_OVER_CAPACITY"
#: ``error.code`` of a job that arrived while the node drains.
DRAINING = "NODE_DRAINING"
#: ``error.code`` of a ``job_assign`` for a job_id this node is running already.
DUPLICATE_JOB_ID = "DUPLICATE_JOB_ID"
#: ``error.code`` of a ``job_assign`` whose audio is not base64 or whose fields have the wrong type.
BAD_JOB = "INVALID_MESSAGE"
CLOSE_TIMEOUT_S = 5.0  # a drained node waits this long for the close handshake
ERROR_MESSAGE_CHARS = 500  # an exception's text in error.message is cut to this


class JobFailed(TrioschedulerError):
    """Raise from a handler to answer its job with success false and this ``code``."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _opt_bool(value: object) -> bool:
    return value is True


# --------------------------------------------------------------------------------------------------------------
# Jobs and answers
# --------------------------------------------------------------------------------------------------------------


@attrs.frozen
class Job:
    """One ``job_assign``, with its audio decoded from base64 (``audio_format`` says what the bytes are: pcm16,
    opus in the original's length-prefixed framing — :func:`trioscheduler.opus.decode` — or wav)."""

    job_id: str
    attempt_id: int
    session_id: str
    utterance_index: int
    src_lang: str
    tgt_lang: str
    audio: bytes = attrs.field(repr=lambda audio: f"<{len(audio)} bytes>")
    audio_format: str = "pcm16"
    sample_rate: int = 16000
    trace_id: str = ""
    pipeline: Pipeline = attrs.field(factory=Pipeline)
    dialect: str | None = None
    features: Mapping[str, Any] | None = None
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    turn_id: str | None = None
    is_manual_cut: bool = False
    is_timeout_triggered: bool = False
    is_max_duration_triggered: bool = False

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Job:
        """The job a ``job_assign`` dict describes; ValueError when its ids or audio are malformed."""
        job_id = message.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("job_assign without job_id")
        audio_text = message.get("audio") or ""
        if not isinstance(audio_text, str):
            raise ValueError("job_assign.audio is not a string")
        try:
            audio = base64.b64decode(audio_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"job_assign.audio is not base64: {exc}") from None
        raw_pipeline = message.get("pipeline")
        pipeline = Pipeline()
        if isinstance(raw_pipeline, Mapping):
            pipeline = Pipeline(**{f.name: raw_pipeline[f.name] is True
                                   for f in attrs.fields(Pipeline) if f.name in raw_pipeline})
        features = message.get("features")
        return cls(
            job_id=job_id,
            attempt_id=_int(message.get("attempt_id"), 1),
            session_id=str(message.get("session_id") or ""),
            utterance_index=_int(message.get("utterance_index")),
            src_lang=str(message.get("src_lang") or ""),
            tgt_lang=str(message.get("tgt_lang") or ""),
            audio=audio,
            audio_format=str(message.get("audio_format") or "pcm16"),
            sample_rate=_int(message.get("sample_rate"), 16000),
            trace_id=str(message.get("trace_id") or ""),
            pipeline=pipeline,
            dialect=_opt_str(message.get("dialect")),
            features=features if isinstance(features, Mapping) else None,
            mode=_opt_str(message.get("mode")),
            lang_a=_opt_str(message.get("lang_a")),
            lang_b=_opt_str(message.get("lang_b")),
            turn_id=_opt_str(message.get("turn_id")),
            is_manual_cut=_opt_bool(message.get("is_manual_cut")),
            is_timeout_triggered=_opt_bool(message.get("is_timeout_triggered")),
            is_max_duration_triggered=_opt_bool(message.get("is_max_duration_triggered")),
        )


@attrs.frozen
class Answer:
    """What a handler returns for a successful job. Empty texts tell the scheduler no speech was found (the
    client then gets ``missing_result``). ``extra`` is passed to the client as is."""

    text_asr: str = ""
    text_translated: str = ""
    tts_audio: bytes = attrs.field(default=b"", repr=lambda audio: f"<{len(audio)} bytes>")
    tts_format: str = "pcm16"
    extra: Mapping[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        """The ``job_result`` fields this answer sets."""
        fields: dict[str, Any] = {
            "text_asr": self.text_asr,
            "text_translated": self.text_translated,
            "tts_audio": base64.b64encode(self.tts_audio).decode("ascii"),
            "tts_format": self.tts_format,
        }
        if self.extra is not None:
            fields["extra"] = dict(self.extra)
        return fields


#: Fields of ``job_result`` that identify the job: set by the SDK, never taken from a handler's dict.
_IDENTITY_FIELDS = frozenset({"type", "job_id", "attempt_id", "node_id", "session_id", "utterance_index"})


def answer_fields(answer: Answer | Mapping[str, Any]) -> dict[str, Any]:
    """The ``job_result`` fields of what a handler returned: an :class:`Answer`, or a dict of ``job_result``
    fields (``tts_audio`` may be bytes, encoded here, or base64 text). TypeError for anything else."""
    if isinstance(answer, Answer):
        return answer.fields()
    if not isinstance(answer, Mapping):
        raise TypeError(f"a handler must return an Answer or a dict of job_result fields, not {type(answer).__name__}")
    fields = {key: value for key, value in answer.items() if key not in _IDENTITY_FIELDS}
    tts = fields.get("tts_audio")
    if isinstance(tts, (bytes, bytearray, memoryview)):
        fields["tts_audio"] = base64.b64encode(tts).decode("ascii")
    fields.setdefault("success", True)
    return fields


#: ``await partial(text, is_final=False)``: sends an ``asr_partial`` for the job being handled.
PartialSender = Callable[..., Awaitable[None]]
Handler = Callable[..., Awaitable[Answer | Mapping[str, Any]]]


def _wants_partials(handle: Handler) -> bool:
    """A handler that takes two positional parameters gets a :data:`PartialSender` as its second."""
    try:
        parameters = inspect.signature(handle).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


# --------------------------------------------------------------------------------------------------------------
# A node from a handler
# --------------------------------------------------------------------------------------------------------------


def _language_tuple(values: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(values, str):  # "zh,en" would otherwise become ("z", "h", ",", ...)
        return tuple(v.strip() for v in values.split(",") if v.strip())
    return tuple(values)


@attrs.define(eq=False)
class HandlerNode(NodeAgent):
    """The node :func:`run` runs: each job goes to ``handle`` in a cancel scope of its own."""

    handle: Handler
    languages: tuple[str, ...] = attrs.field(converter=_language_tuple)
    capacity: int = attrs.field(validator=attrs.validators.ge(1))
    node_id: str | None = None
    token: str | None = None
    services: tuple[str, ...] = attrs.field(default=DEFAULT_SERVICES, converter=_language_tuple)
    version: str = "trioscheduler-node/0.1.0"
    #: Heartbeat this often instead of what the ack says (tests).
    heartbeat_override_s: float | None = None
    #: Languages the node speaks and writes, when not the ``languages`` it hears (empty: the same).
    targets: tuple[str, ...] = attrs.field(default=(), converter=_language_tuple)
    heartbeat_interval_s: float = attrs.field(default=DEFAULT_HEARTBEAT_INTERVAL_S, init=False)
    running: int = attrs.field(default=0, init=False)
    draining: bool = attrs.field(default=False, init=False)
    #: Set once the node drains and no handler runs any more.
    drained: trio.Event = attrs.field(factory=trio.Event, init=False)
    #: Set on every registration; a test waits on it after a reconnect.
    registrations: int = attrs.field(default=0, init=False)
    _pending: dict[str, trio.CancelScope] = attrs.field(factory=dict, init=False)
    _conn: MessageConnection | None = attrs.field(default=None, init=False)
    _wants_partials: bool = attrs.field(init=False)

    @_wants_partials.default
    def _wants_partials_default(self) -> bool:
        return _wants_partials(self.handle)

    # ---- what it says ----------------------------------------------------------------------------------------

    def _capabilities(self) -> list[dict[str, Any]]:
        return [{"type": kind, "ready": not self.draining} for kind in self.services]

    def _language_capabilities(self) -> dict[str, Any]:
        langs = list(self.languages)
        targets = list(self.targets) if self.targets else langs
        return {"asr_languages": langs, "tts_languages": targets, "semantic_languages": targets}

    def _installed(self) -> list[dict[str, Any]]:
        return [{"service_id": f"{kind}-0", "type": kind, "status": "running"} for kind in self.services]

    def register_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "node_register"}
        if self.node_id is not None:
            message["node_id"] = self.node_id
        message.update(
            version=self.version,
            capability_schema_version="2.0",
            platform=sys.platform,
            installed_services=self._installed(),
            capability_by_type=self._capabilities(),
            features_supported={"answers_every_job": True},
            accept_public_jobs=True,
            language_capabilities=self._language_capabilities(),
            max_concurrent_jobs=self.capacity,
        )
        return message

    def heartbeat_message(self) -> dict[str, Any]:
        return {
            "type": "node_heartbeat",
            "node_id": self.node_id,
            "timestamp": _now_ms(),
            "resource_usage": {"running_jobs": self.running},
            "installed_services": self._installed(),
            "capability_by_type": self._capabilities(),
            "language_capabilities": self._language_capabilities(),
        }

    def heartbeat_period(self) -> float:
        return self.heartbeat_override_s or self.heartbeat_interval_s

    def on_registered(self, node_id: str) -> None:
        self.registrations += 1
        logger.info("node %s registered (languages %s, capacity %d)", node_id, ",".join(self.languages),
                    self.capacity)

    def on_connected(self, conn: MessageConnection | None) -> None:
        self._conn = conn

    def on_connection_end(self) -> None:
        self._pending.clear()

    # ---- jobs ------------------------------------------------------------------------------------------------

    def _result(self, message: Mapping[str, Any], success: bool) -> dict[str, Any]:
        return {
            "type": "job_result",
            "job_id": message.get("job_id"),
            "attempt_id": message.get("attempt_id", 1),
            "node_id": self.node_id,
            "session_id": message.get("session_id"),
            "utterance_index": message.get("utterance_index"),
            "success": success,
            "trace_id": message.get("trace_id"),
        }

    def _failure(self, message: Mapping[str, Any], code: str, text: str) -> dict[str, Any]:
        result = self._result(message, False)
        result.update(error={"code": code, "message": text[:ERROR_MESSAGE_CHARS]}, node_completed_at_ms=_now_ms())
        return result

    async def on_job_assign(self, conn: MessageConnection, message: dict[str, Any], nursery: trio.Nursery) -> bool:
        job_id = message.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            logger.warning("node %s: job_assign without job_id ignored", self.node_id)
            return True
        if self.draining:
            await self.send(conn, self._failure(message, DRAINING, "the node is draining"))
            return True
        if job_id in self._pending:  # a DUPLICATE_ code: the scheduler drops the reply and keeps its job
            await self.send(conn, self._failure(message, DUPLICATE_JOB_ID, "this job_id is running here"))
            return True
        if self.running >= self.capacity:
            await self.send(conn, self._failure(message, OVER_CAPACITY, f"{self.running} jobs running"))
            return True
        try:
            job = Job.from_message(message)
        except ValueError as exc:
            await self.send(conn, self._failure(message, BAD_JOB, str(exc)))
            return True
        scope = trio.CancelScope()
        self._pending[job_id] = scope
        self.running += 1
        nursery.start_soon(self._job, conn, job, message, scope)
        return True

    def on_job_cancel(self, message: dict[str, Any]) -> None:
        job_id = message.get("job_id")
        scope = self._pending.get(job_id) if isinstance(job_id, str) else None
        if scope is not None:
            logger.info("node %s: job %s cancelled (%s)", self.node_id, job_id, message.get("reason"))
            scope.cancel()

    async def _job(self, conn: MessageConnection, job: Job, message: dict[str, Any], scope: trio.CancelScope) -> None:
        started = trio.current_time()
        try:
            with scope:
                result = await self._answer(conn, job, message)
            if scope.cancelled_caught:
                return
            result.setdefault("processing_time_ms", round((trio.current_time() - started) * 1000))
            result.setdefault("node_completed_at_ms", _now_ms())
            await self.send(conn, result)
        finally:
            if self._pending.get(job.job_id) is scope:
                del self._pending[job.job_id]
            self.running -= 1
            if self.draining and self.running == 0:
                self.drained.set()

    async def _answer(self, conn: MessageConnection, job: Job, message: dict[str, Any]) -> dict[str, Any]:
        """The job_result for ``job``: the handler's answer, or a failure with the code its exception names."""
        try:
            if self._wants_partials:
                answer = await self.handle(job, self._partial_sender(conn, job))
            else:
                answer = await self.handle(job)
            fields = answer_fields(answer)
        except JobFailed as exc:
            logger.info("node %s: job %s failed: %s", self.node_id, job.job_id, exc)
            return self._failure(message, exc.code, exc.message or exc.code)
        except Exception as exc:
            logger.exception("node %s: job %s: the handler raised", self.node_id, job.job_id)
            return self._failure(message, PROCESSING_ERROR, describe_exception(exc))
        result = self._result(message, True)
        result.update(fields)
        return result

    def _partial_sender(self, conn: MessageConnection, job: Job) -> PartialSender:
        async def partial(text: str, is_final: bool = False) -> None:
            await self.send(conn, {
                "type": "asr_partial", "job_id": job.job_id, "node_id": self.node_id, "session_id": job.session_id,
                "utterance_index": job.utterance_index, "text": text, "is_final": is_final,
                "trace_id": job.trace_id,
            })

        return partial

    # ---- draining --------------------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Take no new job, tell the scheduler so (every service not ready), let running handlers finish."""
        if self.draining:
            return
        self.draining = True
        logger.info("node %s: draining, %d job(s) running", self.node_id, self.running)
        if self.running == 0:
            self.drained.set()
        conn = self._conn
        if conn is not None:
            await self.send(conn, self.heartbeat_message())


async def run(
    url: str,
    handle: Handler,
    *,
    languages: Sequence[str] | str = ("zh", "en"),
    capacity: int = 4,
    node_id: str | None = None,
    token: str | None = None,
    services: Sequence[str] = DEFAULT_SERVICES,
    drain_signals: Sequence[signal.Signals] = (signal.SIGTERM,),
    stop: trio.Event | None = None,
    backoff: Backoff | None = None,
    heartbeat_override_s: float | None = None,
    targets: Sequence[str] | str = (),
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a worker node at ``url`` (the scheduler's ``/ws/node``) whose jobs ``handle`` answers, until it has
    drained (after one of ``drain_signals`` or ``stop``). See the module docstring for what it guarantees.

    ``handle(job)`` (or ``handle(job, partial)`` to send ``asr_partial``s) returns an :class:`Answer` or a dict of
    ``job_result`` fields. ``drain_signals=()`` installs no signal handler (tests, or a program that owns its
    signals and sets ``stop`` instead). ``task_status.started(node_id)`` fires on the first registration.
    """
    node = HandlerNode(handle, languages=languages, capacity=capacity, node_id=node_id, token=token,
                       services=services, heartbeat_override_s=heartbeat_override_s, targets=targets)
    async with trio.open_nursery() as nursery:
        if drain_signals:
            nursery.start_soon(_drain_on_signals, node, tuple(drain_signals))
        if stop is not None:
            nursery.start_soon(_drain_on_event, node, stop)
        nursery.start_soon(_stop_when_drained, node, nursery.cancel_scope)
        registered = await nursery.start(functools.partial(node.run_forever, url, backoff=backoff))
        task_status.started(registered)


async def _stop_when_drained(node: HandlerNode, scope: trio.CancelScope) -> None:
    await node.drained.wait()
    conn = node._conn
    if conn is not None:
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await conn.aclose()
    logger.info("node %s: drained, stopping", node.node_id)
    scope.cancel()


async def _drain_on_signals(node: HandlerNode, signals: tuple[signal.Signals, ...]) -> None:
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            logger.info("node %s: %s received", node.node_id, signal.Signals(signum).name)
            await node.drain()


async def _drain_on_event(node: HandlerNode, stop: trio.Event) -> None:
    await stop.wait()
    await node.drain()
