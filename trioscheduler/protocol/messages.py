"""Every wire message, one frozen attrs class per ``type``; field names are the original lingua scheduler's.

Inbound classes declare only what the scheduler reads; unknown extra fields are tolerated by the codec. A field
without a default is required on the wire: the original requires it too and its clients and nodes always send it.
Optional fields default to None so that what a peer omits is told apart from a real value.

The field types are the wire contract, checked by the codec in one pass (docs/protocol.md §1):

- ``Id``: a printable string (no control characters, no newline) of at most ``MAX_ID_LENGTH`` characters.
- ``Code``: an error code from a peer, same rule as ``Id``.
- ``Count``: an index or a count, an integer ``0 <= n < 2**31``.
- ``SampleRate``: an integer within ``8000..192000`` (Hz).
- ``Literal[...]``: one of the listed strings, exactly; only the audio formats are read case-insensitively and
  without surrounding spaces (``" PCM16"`` decodes to ``"pcm16"``), as this scheduler always accepted them.
- ``JSONObject``, ``list[Any]``, ``Any``: free-form JSON, bounded in size and depth (``[limits]``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NewType

import attrs

from trioscheduler.protocol.errors import ErrorCode

#: Free-form JSON object (features, extra, service_timings, segments_meta...): passed through, never interpreted
#: beyond a few keys; its encoded size is bounded by ``limits.max_free_form_bytes``.
JSONObject = dict[str, Any]

MAX_ID_LENGTH = 128
Id = NewType("Id", str)
Code = NewType("Code", str)
Count = NewType("Count", int)
SampleRate = NewType("SampleRate", int)
COUNT_LIMIT = 2**31
SAMPLE_RATE_RANGE = (8000, 192000)

#: ``session_init.audio_format``: what the streamed ``audio_chunk`` payloads are.
StreamAudioFormat = Literal["opus", "pcm16"]
#: ``utterance.audio_format``: one whole utterance, forwarded to the node as sent.
UtteranceAudioFormat = Literal["opus", "pcm16", "wav"]
Mode = Literal["one_way", "two_way_auto"]
MissingResultReason = Literal["silence_detected", "gap_timeout", "merged", "session_closed"]
JobCancelReason = Literal["job_timeout", "gap_timeout", "session_closed", "already_released"]


@attrs.frozen
class Pipeline:
    use_asr: bool = True
    use_nmt: bool = True
    use_tts: bool = True
    use_semantic: bool = False
    use_tone: bool = False

    def required_services(self) -> frozenset[str]:
        wanted = (
            ("asr", self.use_asr),
            ("nmt", self.use_nmt),
            ("tts", self.use_tts),
            ("semantic", self.use_semantic),
            ("tone", self.use_tone),
        )
        return frozenset(name for name, on in wanted if on)


DEFAULT_PIPELINE = Pipeline()


# ---------------------------------------------------------------------------------------------- client → scheduler


@attrs.frozen
class SessionInit:
    TYPE: ClassVar[str] = "session_init"
    src_lang: str
    tgt_lang: str
    client_version: str | None = None
    platform: str | None = None
    dialect: str | None = None
    features: JSONObject | None = None
    pairing_code: str | None = None
    tenant_id: Id | None = None
    mode: Mode | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    auto_langs: list[str] | None = None
    enable_streaming_asr: bool | None = None
    partial_update_interval_ms: Count | None = None
    trace_id: Id | None = None
    audio_format: StreamAudioFormat = "opus"
    sample_rate: SampleRate = SampleRate(16000)
    pipeline: Pipeline | None = None
    #: Progress events (``ui_event``) for this session's utterances; off unless asked for.
    ui_events: bool | None = None


@attrs.frozen
class AudioChunk:
    TYPE: ClassVar[str] = "audio_chunk"
    is_final: bool
    session_id: Id | None = None
    seq: Count | None = None
    payload: str | None = None
    client_timestamp_ms: float | None = None


@attrs.frozen
class Utterance:
    """The fields the original requires besides ``audio`` fall back to the session's values here (an utterance
    may override them); when present they are checked like session_init's."""

    TYPE: ClassVar[str] = "utterance"
    audio: str
    session_id: Id | None = None
    utterance_index: Count | None = None
    manual_cut: bool = True
    src_lang: str | None = None
    tgt_lang: str | None = None
    dialect: str | None = None
    features: JSONObject | None = None
    audio_format: UtteranceAudioFormat | None = None
    sample_rate: SampleRate | None = None
    trace_id: Id | None = None
    pipeline: Pipeline | None = None
    mode: Mode | None = None
    lang_a: str | None = None
    lang_b: str | None = None


@attrs.frozen
class ClientHeartbeat:
    TYPE: ClassVar[str] = "client_heartbeat"
    session_id: Id | None = None
    timestamp: float | None = None


@attrs.frozen
class TtsStarted:
    TYPE: ClassVar[str] = "tts_started"
    session_id: Id | None = None
    trace_id: Id | None = None
    group_id: Id | None = None
    ts_start_ms: float | None = None


@attrs.frozen
class TtsPlayEnded:
    TYPE: ClassVar[str] = "tts_play_ended"
    session_id: Id | None = None
    trace_id: Id | None = None
    group_id: Id | None = None
    ts_end_ms: float | None = None


@attrs.frozen
class SessionClose:
    TYPE: ClassVar[str] = "session_close"
    session_id: Id | None = None
    reason: str | None = None


ClientMessage = SessionInit | AudioChunk | Utterance | ClientHeartbeat | TtsStarted | TtsPlayEnded | SessionClose
CLIENT_MESSAGES: tuple[type[ClientMessage], ...] = (
    SessionInit, AudioChunk, Utterance, ClientHeartbeat, TtsStarted, TtsPlayEnded, SessionClose,
)
#: Known to the original but outside this scheduler's scope: answered with UNSUPPORTED_FEATURE, not INVALID_MESSAGE.
#: (None now: the room and WebRTC messages are in protocol/rooms.py.)
UNSUPPORTED_CLIENT_TYPES: frozenset[str] = frozenset()


# ---------------------------------------------------------------------------------------------- node → scheduler


@attrs.frozen
class LanguageCapabilities:
    asr_languages: list[str] | None = None
    tts_languages: list[str] | None = None
    semantic_languages: list[str] | None = None
    #: The legacy form: ``{"src": "zh", "tgt": "en"}`` objects or ``"zh:en"`` strings; checked by capability.
    supported_language_pairs: list[Any] | None = None


@attrs.frozen
class CapabilityByType:
    type: str
    ready: bool
    reason: str | None = None


@attrs.frozen
class InstalledService:
    type: str
    service_id: Id | None = None
    status: str | None = None


@attrs.frozen
class ResourceUsage:
    cpu_percent: float | None = None
    gpu_percent: float | None = None
    gpu_mem_percent: float | None = None
    mem_percent: float | None = None
    running_jobs: Count | None = None


@attrs.frozen
class NodeRegister:
    """The capability fields stay optional (a node that reports no readiness is assumed ready, docs/protocol.md
    §4.1); what the original requires besides them is hardware inventory this scheduler never reads."""

    TYPE: ClassVar[str] = "node_register"
    node_id: Id | None = None
    version: str | None = None
    capability_schema_version: str | None = None
    platform: str | None = None
    installed_services: list[InstalledService] | None = None
    capability_by_type: list[CapabilityByType] | None = None
    language_capabilities: LanguageCapabilities | None = None
    #: Accepted at the top level too (some test nodes sent it there), same forms as in language_capabilities.
    supported_language_pairs: list[Any] | None = None
    accept_public_jobs: bool | None = None
    max_concurrent_jobs: Count | None = None
    #: The node's feature flags; the scheduler reads only ``answers_every_job`` (docs/protocol.md §3.1, §3.3).
    features_supported: JSONObject | None = None


@attrs.frozen
class NodeHeartbeat:
    """A heartbeat that omits a capability field keeps the previous value (docs/protocol.md §3.1)."""

    TYPE: ClassVar[str] = "node_heartbeat"
    node_id: Id | None = None
    timestamp: float | None = None
    resource_usage: ResourceUsage | None = None
    installed_services: list[InstalledService] | None = None
    capability_by_type: list[CapabilityByType] | None = None
    language_capabilities: LanguageCapabilities | None = None
    supported_language_pairs: list[Any] | None = None


@attrs.frozen
class ResultError:
    code: Code = Code(ErrorCode.PROCESSING_ERROR)
    message: str = ""
    details: Any = None


@attrs.frozen
class JobResult:
    TYPE: ClassVar[str] = "job_result"
    job_id: Id
    success: bool
    attempt_id: Count | None = None
    node_id: Id | None = None
    session_id: Id | None = None
    utterance_index: Count | None = None
    text_asr: str | None = None
    text_translated: str | None = None
    tts_audio: str | None = None
    tts_format: str | None = None
    extra: JSONObject | None = None
    processing_time_ms: float | None = None
    error: ResultError | None = None
    trace_id: Id | None = None
    group_id: Id | None = None
    part_index: Count | None = None
    node_completed_at_ms: float | None = None
    service_timings: JSONObject | None = None
    asr_quality_level: str | None = None
    reason_codes: list[Any] | None = None
    quality_score: float | None = None
    rerun_count: Count | None = None
    segments_meta: JSONObject | None = None


@attrs.frozen
class AsrPartialIn:
    TYPE: ClassVar[str] = "asr_partial"
    job_id: Id
    text: str = ""
    is_final: bool = False
    node_id: Id | None = None
    session_id: Id | None = None
    utterance_index: Count | None = None
    trace_id: Id | None = None


@attrs.frozen
class JobAck:
    TYPE: ClassVar[str] = "job_ack"
    job_id: Id
    attempt_id: Count | None = None
    node_id: Id | None = None


@attrs.frozen
class JobStarted:
    TYPE: ClassVar[str] = "job_started"
    job_id: Id
    attempt_id: Count | None = None
    node_id: Id | None = None


@attrs.frozen
class NodeError:
    TYPE: ClassVar[str] = "node_error"
    node_id: Id | None = None
    code: Code | None = None
    message: str | None = None
    details: Any = None


@attrs.frozen
class PeerError:
    """``error`` sent by a node: logged, never acted upon."""

    TYPE: ClassVar[str] = "error"
    code: Code | None = None
    message: str | None = None
    details: Any = None


NodeMessage = NodeRegister | NodeHeartbeat | JobResult | AsrPartialIn | JobAck | JobStarted | NodeError | PeerError
NODE_MESSAGES: tuple[type[NodeMessage], ...] = (
    NodeRegister, NodeHeartbeat, JobResult, AsrPartialIn, JobAck, JobStarted, NodeError, PeerError,
)


# ---------------------------------------------------------------------------------------------- scheduler → client


@attrs.frozen
class SessionInitAck:
    TYPE: ClassVar[str] = "session_init_ack"
    session_id: str
    trace_id: str
    message: str = "session created"
    protocol_version: str = "1.0"
    use_binary_frame: bool = False
    negotiated_codec: str = "opus"
    negotiated_audio_format: str = "opus"
    negotiated_sample_rate: int = 16000
    negotiated_channel_count: int = 1
    assigned_node_id: str | None = None


@attrs.frozen
class TranslationResult:
    TYPE: ClassVar[str] = "translation_result"
    session_id: str
    utterance_index: int
    job_id: str
    text_asr: str
    text_translated: str
    tts_audio: str
    tts_format: str
    trace_id: str
    scheduler_sent_at_ms: int
    extra: JSONObject | None = None
    service_timings: JSONObject | None = None
    network_timings: JSONObject | None = None
    node_id: str | None = None
    group_id: str | None = None
    part_index: int | None = None
    asr_quality_level: str | None = None
    reason_codes: list[Any] | None = None
    quality_score: float | None = None
    rerun_count: int | None = None
    segments_meta: JSONObject | None = None


@attrs.frozen
class AsrPartialOut:
    TYPE: ClassVar[str] = "asr_partial"
    session_id: str
    utterance_index: int
    job_id: str
    text: str
    is_final: bool
    trace_id: str


@attrs.frozen
class MissingResult:
    TYPE: ClassVar[str] = "missing_result"
    session_id: str
    utterance_index: int
    reason: MissingResultReason
    created_at_ms: int
    trace_id: str | None = None
    job_id: str | None = None
    #: With reason "merged": the utterance whose answer covered this one's audio (its node answered the turn once).
    merged_into: int | None = None


@attrs.frozen
class ErrorMessage:
    TYPE: ClassVar[str] = "error"
    #: The scheduler's own ErrorCode, or the code a node reported for its job, passed through.
    code: ErrorCode | Code
    message: str
    details: Any = None
    #: The field at fault for bad input (also in ``details.field``, where the original kept details).
    field: str | None = None
    session_id: str | None = None
    utterance_index: int | None = None
    job_id: str | None = None
    trace_id: str | None = None


@attrs.frozen
class ServerHeartbeat:
    TYPE: ClassVar[str] = "server_heartbeat"
    session_id: str
    timestamp: int


@attrs.frozen
class SessionCloseAck:
    TYPE: ClassVar[str] = "session_close_ack"
    session_id: str


# ---------------------------------------------------------------------------------------------- scheduler → node


@attrs.frozen
class NodeRegisterAck:
    TYPE: ClassVar[str] = "node_register_ack"
    node_id: str
    heartbeat_interval_seconds: float
    message: str = "registered"
    status: str = "registering"


@attrs.frozen
class JobAssign:
    TYPE: ClassVar[str] = "job_assign"
    job_id: str
    attempt_id: int
    session_id: str
    utterance_index: int
    src_lang: str
    tgt_lang: str
    pipeline: Pipeline
    audio: str
    audio_format: str
    sample_rate: int
    trace_id: str
    enable_streaming_asr: bool = True
    partial_update_interval_ms: int = 1000
    dialect: str | None = None
    features: JSONObject | None = None
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    auto_langs: list[str] | None = None
    padding_ms: int | None = None
    turn_id: str | None = None
    #: The original omits each flag when false; so do we (encode drops None).
    is_manual_cut: bool | None = None
    is_timeout_triggered: bool | None = None
    is_max_duration_triggered: bool | None = None
    #: The recent text of the session's open utterance group (groups.py); omitted when there is none.
    context_text: str | None = None
    #: The session's tenant (identities, claims and tenants); omitted when None. The original's nodes ignore it.
    tenant_id: str | None = None


@attrs.frozen
class JobCancel:
    TYPE: ClassVar[str] = "job_cancel"
    job_id: str
    reason: JobCancelReason
    trace_id: str | None = None



# ---------------------------------------------------------------------------------------------- issue 14: ui_event

UiEventName = Literal["DISPATCHED", "NODE_ACCEPTED", "ASR_PARTIAL", "ASR_FINAL", "NMT_DONE", "ERROR"]


@attrs.frozen
class UiEvent:
    """Progress of one utterance, sent only to a session whose session_init asked (``ui_events: true``)."""

    TYPE: ClassVar[str] = "ui_event"
    trace_id: str
    session_id: str
    job_id: str
    utterance_index: int
    event: UiEventName
    #: Since the utterance was finalized, in milliseconds.
    elapsed_ms: float
    status: Literal["ok", "error"] = "ok"
    error_code: str | None = None
# -- operations (drain) ------------------------------------------------------------------------------------------

#: node_control commands this scheduler sends: stop taking new jobs (running ones finish), or take them again.
NodeControlCommand = Literal["drain", "resume"]


@attrs.frozen
class NodeControl:
    """The original's ``node_control`` (command, reason?): its type lets any command string through; this
    scheduler sends ``drain`` when an operator drains the node and ``resume`` when the drain is undone."""

    TYPE: ClassVar[str] = "node_control"
    command: NodeControlCommand
    reason: str | None = None
