"""Every wire message, one frozen attrs class per ``type``; field names are the original's (lingua §2, §3).

Inbound classes declare only what the scheduler reads; unknown extra fields are tolerated by the codec.
Optional fields default to None so that what a client or node omits is told apart from a real value.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

JSONDict = dict[str, Any]


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
    features: JSONDict | None = None
    pairing_code: str | None = None
    tenant_id: str | None = None
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    auto_langs: list[str] | None = None
    enable_streaming_asr: bool | None = None
    partial_update_interval_ms: int | None = None
    trace_id: str | None = None
    audio_format: str = "opus"
    sample_rate: int = 16000
    pipeline: Pipeline | None = None


@attrs.frozen
class AudioChunk:
    TYPE: ClassVar[str] = "audio_chunk"
    session_id: str | None = None
    seq: int | None = None
    is_final: bool = False
    payload: str | None = None
    client_timestamp_ms: float | None = None


@attrs.frozen
class Utterance:
    TYPE: ClassVar[str] = "utterance"
    audio: str
    session_id: str | None = None
    utterance_index: int | None = None
    manual_cut: bool = True
    src_lang: str | None = None
    tgt_lang: str | None = None
    dialect: str | None = None
    features: JSONDict | None = None
    audio_format: str | None = None
    sample_rate: int | None = None
    trace_id: str | None = None
    pipeline: Pipeline | None = None
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None


@attrs.frozen
class ClientHeartbeat:
    TYPE: ClassVar[str] = "client_heartbeat"
    session_id: str | None = None
    timestamp: float | None = None


@attrs.frozen
class TtsStarted:
    TYPE: ClassVar[str] = "tts_started"
    session_id: str | None = None
    trace_id: str | None = None
    group_id: str | None = None
    ts_start_ms: float | None = None


@attrs.frozen
class TtsPlayEnded:
    TYPE: ClassVar[str] = "tts_play_ended"
    session_id: str | None = None
    trace_id: str | None = None
    group_id: str | None = None
    ts_end_ms: float | None = None


@attrs.frozen
class SessionClose:
    TYPE: ClassVar[str] = "session_close"
    session_id: str | None = None
    reason: str | None = None


ClientMessage = (
    SessionInit | AudioChunk | Utterance | ClientHeartbeat | TtsStarted | TtsPlayEnded | SessionClose
)
CLIENT_MESSAGES: tuple[type, ...] = (
    SessionInit, AudioChunk, Utterance, ClientHeartbeat, TtsStarted, TtsPlayEnded, SessionClose,
)
#: Known to the original but outside this scheduler's scope: answered with UNSUPPORTED_FEATURE, not INVALID_MESSAGE.
UNSUPPORTED_CLIENT_TYPES = frozenset({
    "room_create", "room_join", "room_leave", "room_raw_voice_preference",
    "webrtc_offer", "webrtc_answer", "webrtc_ice",
})


# ---------------------------------------------------------------------------------------------- node → scheduler


@attrs.frozen
class LanguageCapabilities:
    asr_languages: list[str] | None = None
    tts_languages: list[str] | None = None
    semantic_languages: list[str] | None = None
    #: The legacy form (F-13): ``{"src": "zh", "tgt": "en"}`` objects or ``"zh:en"`` strings; checked by capability.
    supported_language_pairs: list[Any] | None = None


@attrs.frozen
class CapabilityByType:
    type: str
    ready: bool
    reason: str | None = None


@attrs.frozen
class InstalledService:
    type: str
    service_id: str | None = None
    status: str | None = None


@attrs.frozen
class ResourceUsage:
    cpu_percent: float | None = None
    gpu_percent: float | None = None
    gpu_mem_percent: float | None = None
    mem_percent: float | None = None
    running_jobs: int | None = None


@attrs.frozen
class NodeRegister:
    TYPE: ClassVar[str] = "node_register"
    node_id: str | None = None
    version: str | None = None
    capability_schema_version: str | None = None
    platform: str | None = None
    installed_services: list[InstalledService] | None = None
    capability_by_type: list[CapabilityByType] | None = None
    language_capabilities: LanguageCapabilities | None = None
    #: Accepted at the top level too (some test nodes sent it there), same forms as in language_capabilities.
    supported_language_pairs: list[Any] | None = None
    accept_public_jobs: bool | None = None
    max_concurrent_jobs: int | None = None


@attrs.frozen
class NodeHeartbeat:
    TYPE: ClassVar[str] = "node_heartbeat"
    node_id: str | None = None
    timestamp: float | None = None
    resource_usage: ResourceUsage | None = None
    installed_services: list[InstalledService] | None = None
    capability_by_type: list[CapabilityByType] | None = None
    language_capabilities: LanguageCapabilities | None = None
    supported_language_pairs: list[Any] | None = None


@attrs.frozen
class ResultError:
    code: str = "PROCESSING_ERROR"
    message: str = ""
    details: Any = None


@attrs.frozen
class JobResult:
    TYPE: ClassVar[str] = "job_result"
    job_id: str
    success: bool
    attempt_id: int | None = None
    node_id: str | None = None
    session_id: str | None = None
    utterance_index: int | None = None
    text_asr: str | None = None
    text_translated: str | None = None
    tts_audio: str | None = None
    tts_format: str | None = None
    extra: JSONDict | None = None
    processing_time_ms: float | None = None
    error: ResultError | None = None
    trace_id: str | None = None
    group_id: str | None = None
    part_index: int | None = None
    node_completed_at_ms: float | None = None
    service_timings: JSONDict | None = None
    asr_quality_level: str | None = None
    reason_codes: list[Any] | None = None
    quality_score: float | None = None
    rerun_count: int | None = None
    segments_meta: JSONDict | None = None


@attrs.frozen
class AsrPartialIn:
    TYPE: ClassVar[str] = "asr_partial"
    job_id: str
    text: str = ""
    is_final: bool = False
    node_id: str | None = None
    session_id: str | None = None
    utterance_index: int | None = None
    trace_id: str | None = None


@attrs.frozen
class JobAck:
    TYPE: ClassVar[str] = "job_ack"
    job_id: str
    attempt_id: int | None = None
    node_id: str | None = None


@attrs.frozen
class JobStarted:
    TYPE: ClassVar[str] = "job_started"
    job_id: str
    attempt_id: int | None = None
    node_id: str | None = None


@attrs.frozen
class NodeError:
    TYPE: ClassVar[str] = "node_error"
    node_id: str | None = None
    code: str | None = None
    message: str | None = None
    details: Any = None


@attrs.frozen
class PeerError:
    """``error`` sent by a node: logged, never acted upon."""

    TYPE: ClassVar[str] = "error"
    code: str | None = None
    message: str | None = None
    details: Any = None


NodeMessage = (
    NodeRegister | NodeHeartbeat | JobResult | AsrPartialIn | JobAck | JobStarted | NodeError | PeerError
)
NODE_MESSAGES: tuple[type, ...] = (
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
    extra: JSONDict | None = None
    service_timings: JSONDict | None = None
    network_timings: JSONDict | None = None
    node_id: str | None = None
    group_id: str | None = None
    part_index: int | None = None
    asr_quality_level: str | None = None
    reason_codes: list[Any] | None = None
    quality_score: float | None = None
    rerun_count: int | None = None
    segments_meta: JSONDict | None = None


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
    reason: str
    created_at_ms: int
    trace_id: str | None = None
    job_id: str | None = None


@attrs.frozen
class ErrorMessage:
    TYPE: ClassVar[str] = "error"
    code: str
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
    features: JSONDict | None = None
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


@attrs.frozen
class JobCancel:
    TYPE: ClassVar[str] = "job_cancel"
    job_id: str
    reason: str
    trace_id: str | None = None


OutboundMessage = (
    SessionInitAck | TranslationResult | AsrPartialOut | MissingResult | ErrorMessage | ServerHeartbeat
    | SessionCloseAck | NodeRegisterAck | JobAssign | JobCancel
)
