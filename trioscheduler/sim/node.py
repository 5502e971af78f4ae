"""A simulated worker node that speaks the lingua node protocol (``/ws/node``).

It exists so the scheduler can be exercised end to end without GPUs: it registers, heartbeats, and answers every
``job_assign`` with a deterministic ``job_result`` whose text is derived from the job itself (languages, index,
audio length and a hash of the audio), so a test can predict exactly what a client should receive. Such a node
says so in ``node_register``: ``features_supported: {"answers_every_job": true}``.  Misbehaviour
(failures, stalls, duplicates, empty results, crashes) is drawn from a seeded ``random.Random`` so scenario tests
are reproducible.

In ``mode="original"`` it behaves instead like the original system's node agent (:mod:`trioscheduler.sim.original`):
it holds the jobs of a turn until one carries a cut flag, answers the turn once on that job
(:func:`expected_turn_texts`), drops a result that repeats the session's last text, and does not claim
``answers_every_job``. In both modes a service reports ready only when it runs on a GPU (``cpu_services``,
``stopped_services``).

The messages are built as plain dicts on purpose: the simulator plays a *foreign* node and must not share the
daemon's codec, otherwise a codec bug would be invisible on both sides. Its connection layer (register, heartbeat,
dispatch, reconnect) is the node SDK's :class:`trioscheduler.node_agent.NodeAgent`, which builds plain dicts too.

The core (:meth:`SimNode.serve`) only needs a :class:`MessageConnection`: a ``trio_websocket.WebSocketConnection``,
or for socket-free tests one end of ``trioscheduler.transport.memory_transport_pair()``.
"""

from __future__ import annotations

import array
import base64
import collections
import hashlib
import logging
import math
import random
import time
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from trioscheduler.node_agent import (
    CONNECTION_CLOSED,
    DEFAULT_HEARTBEAT_INTERVAL_S,
    DEFAULT_NODE_URL,
    Backoff,
    MessageConnection,
    NodeAgent,
    RegistrationRefused,
)
from trioscheduler.sim.original import (
    DEFAULT_ANSWER_AFTER_MS,
    HeldJob,
    LastTextFilter,
    TurnAnswer,
    TurnBuffer,
    ready_types,
)

__all__ = [
    "CONNECTION_CLOSED",
    "DEFAULT_NODE_URL",
    "MODES",
    "MessageConnection",
    "SimNode",
    "SimNodeBehaviour",
    "SimNodeError",
    "SimNodeStats",
    "abort_connection",
    "audio_hash",
    "expected_texts",
    "expected_turn_texts",
    "fake_tts_pcm16",
    "original_duration_estimate_ms",
]

logger = logging.getLogger(__name__)

SIM_VERSION = "trioscheduler-sim/0.1.0"
SERVICE_TYPES: tuple[str, ...] = ("asr", "nmt", "tts", "semantic")
#: ``every_job``: answers each job (and says so); ``original``: behaves like the original system's node agent.
MODES: tuple[str, ...] = ("every_job", "original")


async def abort_connection(conn: MessageConnection) -> None:
    """Drop the connection the way a crashed process would: no close frame, just the TCP close.

    trio-websocket's ``aclose`` closes the underlying stream in a ``finally`` even when cancelled before the close
    frame goes out, so a pre-cancelled scope turns the polite close into an abrupt one.
    """
    with trio.CancelScope() as scope:
        scope.cancel()
        await conn.aclose()


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------------------------------
# Deterministic fake processing
# --------------------------------------------------------------------------------------------------------------


def audio_hash(audio: bytes) -> str:
    """Six hex digits identifying the audio, so the texts show whether the right bytes reached the node."""
    return hashlib.sha1(audio).hexdigest()[:6]


def original_duration_estimate_ms(n_bytes: int, audio_format: str = "pcm16", sample_rate: int = 16000) -> int:
    """Duration the way the original scheduler estimates it: exact for pcm16, ``bytes/60*20`` for Plan-A opus."""
    if audio_format == "opus":
        return round(n_bytes / 60 * 20)
    return round(n_bytes * 1000 / (2 * max(sample_rate, 1)))


def expected_texts(
    src_lang: str,
    tgt_lang: str,
    utterance_index: int,
    audio: bytes,
    audio_format: str = "pcm16",
    sample_rate: int = 16000,
) -> tuple[str, str]:
    """The (text_asr, text_translated) a :class:`SimNode` answers for this job; tests use it to predict results."""
    ms = original_duration_estimate_ms(len(audio), audio_format, sample_rate)
    tail = f"utt {utterance_index} ({len(audio)} B, {ms} ms) #{audio_hash(audio)}"
    return f"[{src_lang}] {tail}", f"[{tgt_lang}] {tail}"


def expected_turn_texts(
    src_lang: str, tgt_lang: str, audio: bytes, audio_format: str = "pcm16", sample_rate: int = 16000
) -> tuple[str, str]:
    """The (text_asr, text_translated) a ``mode="original"`` node answers for a turn whose audio is ``audio``.

    Like a real recogniser, the text depends on the audio only, so the same audio twice gives the same text.
    """
    ms = original_duration_estimate_ms(len(audio), audio_format, sample_rate)
    tail = f"turn ({len(audio)} B, {ms} ms) #{audio_hash(audio)}"
    return f"[{src_lang}] {tail}", f"[{tgt_lang}] {tail}"


def fake_tts_pcm16(digest: str, duration_ms: int = 40, sample_rate: int = 16000) -> bytes:
    """A short sine tone whose pitch comes from the audio hash: deterministic, tiny, and audibly "something"."""
    freq = 220 + int(digest[:4], 16) % 660
    n = sample_rate * duration_ms // 1000
    samples = array.array("h", (round(4000 * math.sin(2 * math.pi * freq * i / sample_rate)) for i in range(n)))
    if samples.itemsize != 2:  # pragma: no cover - every CPython we run on has a 2-byte short
        raise RuntimeError("array('h') is not 16-bit on this platform")
    return samples.tobytes()


# --------------------------------------------------------------------------------------------------------------
# Configuration and counters
# --------------------------------------------------------------------------------------------------------------


def _str_tuple(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):  # "zh,en" would otherwise become ("z", "h", ",", ...)
        return tuple(v.strip() for v in values.split(",") if v.strip())
    return tuple(values)


def _services_list(instance: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    unknown = set(value) - set(SERVICE_TYPES)
    if unknown:
        raise ValueError(f"{attribute.name}: unknown service types {sorted(unknown)}, known: {list(SERVICE_TYPES)}")


def _rate(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


@attrs.frozen
class SimNodeBehaviour:
    """How a simulated node behaves. Frozen so one behaviour can be shared by many nodes in a test.

    The per-job outcome is one draw from the node's seeded RNG: ``stall_rate``, then ``failure_rate``, then
    ``empty_rate`` slice up [0, 1) and the rest succeeds; ``duplicate_rate`` is a second, independent draw that
    makes an answered job answered twice.
    """

    languages: tuple[str, ...] = attrs.field(default=("zh", "en"), converter=_str_tuple)
    max_concurrent_jobs: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    delay_s: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    failure_rate: float = attrs.field(default=0.0, validator=_rate)
    stall_rate: float = attrs.field(default=0.0, validator=_rate)
    duplicate_rate: float = attrs.field(default=0.0, validator=_rate)
    empty_rate: float = attrs.field(default=0.0, validator=_rate)
    #: Abort the connection (no close frame) right after the Nth job_assign this node ever receives; fires once.
    crash_after_jobs: int | None = None
    seed: int = 0
    send_partials: bool = False
    #: Overrides ``heartbeat_interval_seconds`` from the ack, so tests can heartbeat every 50 ms.
    heartbeat_interval_override: float | None = None
    #: Also reject a second job for the same (session_id, utterance_index), as the original node does. Off by
    #: default because only retry-to-the-same-node scenarios want it.
    reject_duplicate_utterance: bool = False
    #: How many received/sent messages to keep for inspection; 0 keeps none.
    record_limit: int = attrs.field(default=1000, validator=attrs.validators.ge(0))
    version: str = SIM_VERSION
    #: One of :data:`MODES`.
    mode: str = attrs.field(default="every_job", validator=attrs.validators.in_(MODES))
    #: ``mode="original"``: a turn holding this much audio is answered without a cut flag.
    answer_after_ms: float = attrs.field(default=DEFAULT_ANSWER_AFTER_MS, validator=attrs.validators.gt(0.0))
    #: ``mode="original"``: after answering a turn, send each job held before it an empty result with
    #: ``extra.reason: "NO_TEXT_ASSIGNED"`` (the original does for some of them); off: they are never answered.
    no_text_assigned: bool = False
    #: Service types that run on the CPU: reported not ready (the original's rule), still served.
    cpu_services: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_services_list)
    #: Service types whose service is stopped: reported not ready; a stopped ``tts`` gives text-only results.
    stopped_services: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_services_list)

    def __attrs_post_init__(self) -> None:
        if self.stall_rate + self.failure_rate + self.empty_rate > 1.0 + 1e-9:
            raise ValueError("stall_rate + failure_rate + empty_rate must not exceed 1")
        if self.crash_after_jobs is not None and self.crash_after_jobs < 1:
            raise ValueError("crash_after_jobs must be >= 1")


@attrs.define
class SimNodeStats:
    """Counters a test asserts on. They survive reconnects, like the node process they simulate."""

    registrations: int = 0
    heartbeats_sent: int = 0
    jobs_received: int = 0  # every job_assign, duplicates included
    jobs_answered: int = 0  # jobs that got at least one job_result (rejections included)
    results_sent: int = 0  # job_result messages, duplicates counted twice
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    jobs_empty: int = 0
    jobs_stalled: int = 0
    jobs_duplicated: int = 0
    jobs_cancelled: int = 0  # job_cancel that hit a pending job
    cancels_unmatched: int = 0  # job_cancel for a job that was unknown or already answered
    duplicate_job_ids: int = 0
    duplicate_utterances: int = 0
    partials_sent: int = 0
    running: int = 0  # accepted and not yet answered: processing, queued for a slot, or stalled
    max_running: int = 0
    #: Jobs that arrived while ``max_concurrent_jobs`` were already running: the scheduler oversubscribed us.
    over_capacity: int = 0
    crashes: int = 0
    #: ``mode="original"``: jobs whose audio went into a turn buffer without an answer.
    jobs_held: int = 0
    #: ``mode="original"``: results not sent because their text repeated the session's last one.
    results_suppressed: int = 0
    #: ``mode="original"``: empty ``NO_TEXT_ASSIGNED`` results sent for held jobs.
    no_text_assigned_sent: int = 0


class SimNodeError(RegistrationRefused):
    """Registration failed: the scheduler refused us or hung up before ``node_register_ack``."""


@attrs.frozen
class _Outcome:
    kind: str  # "success" | "failure" | "empty" | "stall"
    duplicate: bool


# --------------------------------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class SimNode(NodeAgent):
    """A fake worker node. One instance may serve several connections in turn and keeps its node_id and counters.

    Its connection layer (register, heartbeat, dispatch, reconnect) is the node SDK's :class:`NodeAgent`; what it
    registers and how it answers jobs are its own.

    >>> node = SimNode(SimNodeBehaviour(delay_s=0.05), node_id="node-SIM00001")
    >>> # await nursery.start(node.run, "ws://127.0.0.1:5010/ws/node")  -> "node-SIM00001"
    """

    behaviour: SimNodeBehaviour = attrs.field(factory=SimNodeBehaviour)
    #: Sent in node_register when set (reconnect); replaced by the id in node_register_ack.
    node_id: str | None = None
    stats: SimNodeStats = attrs.field(factory=SimNodeStats, init=False)
    received: collections.deque[dict[str, Any]] = attrs.field(init=False)
    sent: collections.deque[dict[str, Any]] = attrs.field(init=False)
    job_ids_seen: set[str] = attrs.field(factory=set, init=False)
    heartbeat_interval_s: float = attrs.field(default=DEFAULT_HEARTBEAT_INTERVAL_S, init=False)
    _utterances_seen: set[tuple[str, int]] = attrs.field(factory=set, init=False)
    _rng: random.Random = attrs.field(init=False)
    _pending: dict[str, trio.CancelScope] = attrs.field(factory=dict, init=False)
    _limiter: trio.CapacityLimiter = attrs.field(init=False)
    _turns: TurnBuffer = attrs.field(init=False)
    _last_text: LastTextFilter = attrs.field(factory=LastTextFilter, init=False)

    @received.default
    def _received_default(self) -> collections.deque[dict[str, Any]]:
        return collections.deque(maxlen=self.behaviour.record_limit)

    @sent.default
    def _sent_default(self) -> collections.deque[dict[str, Any]]:
        return collections.deque(maxlen=self.behaviour.record_limit)

    @_rng.default
    def _rng_default(self) -> random.Random:
        return random.Random(self.behaviour.seed)

    @_limiter.default
    def _limiter_default(self) -> trio.CapacityLimiter:
        return trio.CapacityLimiter(self.behaviour.max_concurrent_jobs)

    @_turns.default
    def _turns_default(self) -> TurnBuffer:
        return TurnBuffer(answer_after_ms=self.behaviour.answer_after_ms)

    @property
    def held_jobs(self) -> list[HeldJob]:
        """``mode="original"``: the jobs held in turn buffers now, never to be answered with text."""
        return self._turns.held_jobs()

    # ---- public entry points -----------------------------------------------------------------------------

    refused = SimNodeError

    async def run(
        self, url: str = DEFAULT_NODE_URL, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect once and serve until the connection ends; ``task_status.started(node_id)`` once registered."""
        await self.run_once(url, task_status=task_status)

    async def run_forever(  # type: ignore[override]
        self,
        url: str = DEFAULT_NODE_URL,
        *,
        min_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        jitter: float = 0.0,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like the real node agent: reconnect with doubling backoff whenever the scheduler goes away (no jitter
        unless asked, so a scenario replays the same). The backoff resets after every successful registration;
        ``task_status`` fires on the first one."""
        backoff = Backoff(min_s=min_backoff_s, max_s=max_backoff_s, jitter=jitter)
        await NodeAgent.run_forever(self, url, backoff=backoff, rng=random.Random(self.behaviour.seed),
                                    task_status=task_status)

    # ---- the connection layer's hooks --------------------------------------------------------------------

    def heartbeat_period(self) -> float:
        return self.behaviour.heartbeat_interval_override or self.heartbeat_interval_s

    def on_registered(self, node_id: str) -> None:
        self.stats.registrations += 1
        logger.info("node %s registered (languages %s)", node_id, ",".join(self.behaviour.languages))

    def on_heartbeat_sent(self) -> None:
        self.stats.heartbeats_sent += 1

    def on_connection_end(self) -> None:
        self._pending.clear()

    async def on_job_assign(self, conn: MessageConnection, message: dict[str, Any], nursery: trio.Nursery) -> bool:
        return await self._on_job_assign(conn, message, nursery)

    def on_job_cancel(self, message: dict[str, Any]) -> None:
        self._on_job_cancel(message)

    # ---- registration and heartbeats ---------------------------------------------------------------------

    def _services(self) -> list[dict[str, Any]]:
        b = self.behaviour
        return [
            {
                "service_id": f"sim-{kind}",
                "type": kind,
                "device": "cpu" if kind in b.cpu_services else "gpu",
                "status": "stopped" if kind in b.stopped_services else "running",
                "version": b.version,
            }
            for kind in SERVICE_TYPES
        ]

    def _capabilities(self) -> list[dict[str, Any]]:
        ready = ready_types((s["type"], s["device"], s["status"]) for s in self._services())
        return [{"type": kind, "ready": ready[kind]} for kind in SERVICE_TYPES]

    def _languages(self) -> dict[str, Any]:
        langs = list(self.behaviour.languages)
        return {"asr_languages": langs, "tts_languages": langs, "semantic_languages": langs}

    def register_message(self) -> dict[str, Any]:
        """The ``node_register`` this node sends; the optional fields of the original schema are present too."""
        message: dict[str, Any] = {"type": "node_register"}
        if self.node_id is not None:
            message["node_id"] = self.node_id
        message.update(
            version=self.behaviour.version,
            capability_schema_version="2.0",
            platform="linux",
            hardware={"cpu_cores": 8, "memory_gb": 32, "gpus": [{"name": "SimGPU", "memory_gb": 24}]},
            installed_models=[],
            installed_services=self._services(),
            capability_by_type=self._capabilities(),
            features_supported={"answers_every_job": True} if self.behaviour.mode == "every_job" else {},
            accept_public_jobs=True,
            language_capabilities=self._languages(),
            max_concurrent_jobs=self.behaviour.max_concurrent_jobs,
        )
        return message

    def heartbeat_message(self) -> dict[str, Any]:
        running = self.stats.running
        return {
            "type": "node_heartbeat",
            "node_id": self.node_id,
            "timestamp": _now_ms(),
            "resource_usage": {
                "cpu_percent": min(100.0, 5.0 + 90.0 * running / self.behaviour.max_concurrent_jobs),
                "mem_percent": 30.0,
                "running_jobs": running,
            },
            "installed_services": self._services(),
            "capability_by_type": self._capabilities(),
            "language_capabilities": self._languages(),
        }

    # ---- receiving ---------------------------------------------------------------------------------------

    async def receive(self, conn: MessageConnection) -> dict[str, Any] | None:
        message = await NodeAgent.receive(self, conn)
        if message is not None and self.behaviour.record_limit:
            self.received.append(message)
        return message

    def _on_job_cancel(self, message: dict[str, Any]) -> None:
        job_id = message.get("job_id")
        scope = self._pending.get(job_id) if isinstance(job_id, str) else None
        if scope is None:
            if isinstance(job_id, str) and self._turns.forget(job_id):
                self.stats.jobs_cancelled += 1  # its audio stays in the turn, as in the original's buffer
                return
            self.stats.cancels_unmatched += 1
            return
        scope.cancel()
        self.stats.jobs_cancelled += 1
        logger.info("node %s: job %s cancelled (%s)", self.node_id, job_id, message.get("reason"))

    async def _on_job_assign(self, conn: MessageConnection, job: dict[str, Any], nursery: trio.Nursery) -> bool:
        """Accept or reject one job; False means this node just crashed on purpose."""
        self.stats.jobs_received += 1
        job_id = job.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            logger.warning("node %s: job_assign without job_id ignored", self.node_id)
            return True
        if job_id in self.job_ids_seen:
            self.stats.duplicate_job_ids += 1
            await self._reject(conn, job, "DUPLICATE_JOB_ID")
            return True
        self.job_ids_seen.add(job_id)
        slot = (str(job.get("session_id")), _int(job.get("utterance_index")))
        if self.behaviour.reject_duplicate_utterance:
            if slot in self._utterances_seen:
                self.stats.duplicate_utterances += 1
                await self._reject(conn, job, "DUPLICATE_UTTERANCE_INDEX")
                return True
            self._utterances_seen.add(slot)

        crash_at = self.behaviour.crash_after_jobs
        if crash_at is not None and self.stats.jobs_received == crash_at:
            self.stats.crashes += 1
            logger.warning("node %s: crashing on purpose after %d jobs", self.node_id, crash_at)
            await abort_connection(conn)
            return False

        turn: TurnAnswer | None = None
        if self.behaviour.mode == "original":
            turn = self._turns.offer(job, *_job_audio(job))
            if turn is None:
                self.stats.jobs_held += 1
                logger.info("node %s: job %s utt %s held in its turn", self.node_id, job_id,
                            job.get("utterance_index"))
                return True

        if self.stats.running >= self.behaviour.max_concurrent_jobs:
            self.stats.over_capacity += 1
        self.stats.running += 1
        self.stats.max_running = max(self.stats.max_running, self.stats.running)
        outcome = self._draw_outcome()
        scope = trio.CancelScope()
        self._pending[job_id] = scope
        nursery.start_soon(self._job, conn, job, outcome, scope, turn)
        return True

    def _draw_outcome(self) -> _Outcome:
        b = self.behaviour
        u = self._rng.random()
        duplicate = self._rng.random() < b.duplicate_rate  # always drawn, so one knob never shifts the others
        if u < b.stall_rate:
            kind = "stall"
        elif u < b.stall_rate + b.failure_rate:
            kind = "failure"
        elif u < b.stall_rate + b.failure_rate + b.empty_rate:
            kind = "empty"
        else:
            kind = "success"
        return _Outcome(kind, duplicate and kind != "stall")

    # ---- answering ---------------------------------------------------------------------------------------

    def _result_base(self, job: dict[str, Any], success: bool) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "job_result",
            "job_id": job.get("job_id"),
            "attempt_id": job.get("attempt_id", 1),
            "node_id": self.node_id,
            "session_id": job.get("session_id"),
            "utterance_index": job.get("utterance_index"),
            "success": success,
        }
        return message

    async def _reject(self, conn: MessageConnection, job: dict[str, Any], reason: str) -> None:
        message = self._result_base(job, False)
        message.update(
            error={"code": "PROCESSING_ERROR", "message": reason},
            processing_time_ms=0,
            trace_id=job.get("trace_id"),
            node_completed_at_ms=_now_ms(),
        )
        logger.info("node %s: job %s rejected: %s", self.node_id, job.get("job_id"), reason)
        self._count_answer("rejected", 1, +1)
        if not await self.send(conn, message):
            self._count_answer("rejected", 1, -1)

    async def _job(
        self,
        conn: MessageConnection,
        job: dict[str, Any],
        outcome: _Outcome,
        scope: trio.CancelScope,
        turn: TurnAnswer | None,
    ) -> None:
        job_id = str(job["job_id"])
        try:
            with scope:
                if outcome.kind == "stall":
                    # Never answered and holds no slot: the scheduler has to time it out (or cancel it).
                    self.stats.jobs_stalled += 1
                    logger.info("node %s: job %s stalls", self.node_id, job_id)
                    await trio.sleep_forever()
                async with self._limiter:
                    await self._process(conn, job, outcome, turn)
        finally:
            self._pending.pop(job_id, None)
            self.stats.running -= 1

    async def _process(
        self, conn: MessageConnection, job: dict[str, Any], outcome: _Outcome, turn: TurnAnswer | None
    ) -> None:
        """Answer one job; ``turn`` (``mode="original"``) is the turn it ends, answered with all its audio."""
        started = trio.current_time()
        src = str(job.get("src_lang", ""))
        tgt = str(job.get("tgt_lang", ""))
        index = _int(job.get("utterance_index"))
        audio_format = str(job.get("audio_format") or "pcm16")
        sample_rate = _int(job.get("sample_rate"), 16000)
        if turn is None:
            audio = _decode_audio(job)
            text_asr, text_translated = expected_texts(src, tgt, index, audio, audio_format, sample_rate)
        else:
            audio = turn.audio
            text_asr, text_translated = expected_turn_texts(src, tgt, audio, audio_format, sample_rate)
        delay = self.behaviour.delay_s

        if self.behaviour.send_partials and outcome.kind == "success":
            await trio.sleep(delay / 2)
            partial = {
                "type": "asr_partial",
                "job_id": job.get("job_id"),
                "node_id": self.node_id,
                "session_id": job.get("session_id"),
                "utterance_index": job.get("utterance_index"),
                "text": text_asr[: max(1, len(text_asr) // 2)],
                "is_final": False,
                "trace_id": job.get("trace_id"),
            }
            self.stats.partials_sent += 1
            if not await self.send(conn, partial):
                self.stats.partials_sent -= 1
            await trio.sleep(delay - delay / 2)
        else:
            await trio.sleep(delay)

        elapsed_ms = round((trio.current_time() - started) * 1000)
        delay_ms = round(delay * 1000)
        asr_ms = round(delay_ms * 0.6)
        nmt_ms = round(delay_ms * 0.25)
        message = self._result_base(job, outcome.kind != "failure")
        if outcome.kind == "failure":
            message["error"] = {"code": "PROCESSING_ERROR", "message": "simulated processing failure"}
        else:
            empty = outcome.kind == "empty"
            tts = b"" if empty or "tts" in self.behaviour.stopped_services else fake_tts_pcm16(audio_hash(audio))
            timings = {"asr_ms": asr_ms, "nmt_ms": nmt_ms, "tts_ms": delay_ms - asr_ms - nmt_ms}
            extra: dict[str, Any] = {"service_timings": timings}
            if empty:
                extra["reason"] = "ASR_EMPTY"
            message.update(
                text_asr="" if empty else text_asr,
                text_translated="" if empty else text_translated,
                tts_audio=base64.b64encode(tts).decode("ascii"),
                tts_format="pcm16",
                extra=extra,
            )
        message.update(processing_time_ms=elapsed_ms, trace_id=job.get("trace_id"), node_completed_at_ms=_now_ms())
        for key in ("group_id", "part_index"):
            if job.get(key) is not None:
                message[key] = job[key]

        session_id = str(job.get("session_id"))
        if turn is not None and outcome.kind == "success" and self._last_text.is_repeat(session_id, text_asr):
            self.stats.results_suppressed += 1
            logger.info("node %s: job %s utt %s: text repeats the last one sent, not sent", self.node_id,
                        job.get("job_id"), index)
            return
        # Counters move before each send: a memory peer can see the message before this task resumes.
        sent = 0
        for _ in range(2 if outcome.duplicate else 1):
            self._count_answer(outcome.kind, sent + 1, +1)
            if not await self.send(conn, message):
                self._count_answer(outcome.kind, sent + 1, -1)
                break
            sent += 1
        if turn is not None and sent:
            if outcome.kind == "success":
                self._last_text.sent(session_id, text_asr)
            if self.behaviour.no_text_assigned:
                await self._send_no_text_assigned(conn, job, turn.held)
        logger.info(
            "node %s: job %s utt %s %s->%s %d B -> %s%s in %d ms",
            self.node_id,
            job.get("job_id"),
            index,
            src,
            tgt,
            len(audio),
            outcome.kind,
            " x2" if sent == 2 else "",
            elapsed_ms,
        )

    async def _send_no_text_assigned(
        self, conn: MessageConnection, job: dict[str, Any], held: tuple[HeldJob, ...]
    ) -> None:
        """One empty result per job held before the turn's end, sent after the turn's answer with that answer's
        ``attempt_id`` and ``trace_id``, as the original does."""
        for earlier in held:
            message = self._result_base(job, True)
            message.update(
                job_id=earlier.job_id,
                utterance_index=earlier.utterance_index,
                text_asr="",
                text_translated="",
                tts_audio="",
                tts_format="pcm16",
                extra={"reason": "NO_TEXT_ASSIGNED"},
                processing_time_ms=0,
                trace_id=job.get("trace_id"),
                node_completed_at_ms=_now_ms(),
            )
            self.stats.no_text_assigned_sent += 1
            self.stats.results_sent += 1
            if not await self.send(conn, message):
                self.stats.no_text_assigned_sent -= 1
                self.stats.results_sent -= 1
                return

    def _count_answer(self, kind: str, copy: int, sign: int) -> None:
        """Count the ``copy``-th job_result of a job (``sign`` -1 takes it back when the send failed)."""
        stats = self.stats
        stats.results_sent += sign
        if copy == 2:
            stats.jobs_duplicated += sign
            return
        stats.jobs_answered += sign
        if kind == "failure":
            stats.jobs_failed += sign
        elif kind == "empty":
            stats.jobs_empty += sign
        elif kind == "success":
            stats.jobs_succeeded += sign

    async def send(self, conn: MessageConnection, message: dict[str, Any], *, swallow_closed: bool = True) -> bool:
        """Send one message; False if the connection is gone (the receive loop notices and ends the session)."""
        if not await NodeAgent.send(self, conn, message, swallow_closed=swallow_closed):
            return False
        if self.behaviour.record_limit:
            self.sent.append(message)
        return True


def _decode_audio(job: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(job.get("audio") or "")
    except ValueError:
        return b""


def _job_audio(job: dict[str, Any]) -> tuple[bytes, float]:
    """The job's audio and its duration in ms, as the original's turn buffer measures it."""
    audio = _decode_audio(job)
    duration = original_duration_estimate_ms(
        len(audio), str(job.get("audio_format") or "pcm16"), _int(job.get("sample_rate"), 16000)
    )
    return audio, float(duration)


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
