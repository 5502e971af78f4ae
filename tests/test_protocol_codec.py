"""The wire codec: CLIENT_CODEC / NODE_CODEC decode, encode / to_wire. Field names are the original scheduler's."""

from __future__ import annotations

import base64
import enum
import json
import math
import typing
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.refusals import accepted_or_refused
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import CLIENT_CODEC, NODE_CODEC, encode, to_wire
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.protocol.rooms import ROOM_CLIENT_MESSAGES

PIPELINE = {"use_asr": True, "use_nmt": True, "use_tts": False, "use_semantic": True, "use_tone": False}
FEATURES = {"emotion_detection": True, "speech_rate_detection": False}
EXTRA = {"unknown_future_field": {"nested": [1, 2, 3]}, "another": None}

# ------------------------------------------------------------------------------------------ original field names

CLIENT_FRAMES: dict[str, dict[str, Any]] = {
    "session_init": {
        "client_version": "web-1.4.2", "platform": "web", "src_lang": "zh", "tgt_lang": "en", "dialect": "zh-CN",
        "features": FEATURES, "pairing_code": "123456", "tenant_id": "t1", "mode": "two_way_auto",
        "lang_a": "zh", "lang_b": "en", "auto_langs": ["zh", "en"], "enable_streaming_asr": True,
        "partial_update_interval_ms": 1000, "trace_id": "tr-1",
    },
    "audio_chunk": {"session_id": "s-0A1B2C3D", "seq": 7, "is_final": False, "payload": "AAEC",
                    "client_timestamp_ms": 1712345678901},
    "utterance": {
        "session_id": "s-0A1B2C3D", "utterance_index": 3, "manual_cut": True, "src_lang": "zh", "tgt_lang": "en",
        "dialect": "zh-CN", "features": FEATURES, "audio": "AAEC", "audio_format": "pcm16", "sample_rate": 16000,
        "trace_id": "tr-2", "pipeline": PIPELINE, "mode": "one_way", "lang_a": "zh", "lang_b": "en",
        "auto_langs": ["zh"], "enable_streaming_asr": False, "partial_update_interval_ms": 500,
    },
    "client_heartbeat": {"session_id": "s-0A1B2C3D", "timestamp": 1712345678901},
    "tts_started": {"session_id": "s-0A1B2C3D", "trace_id": "tr-3", "group_id": "g-1", "ts_start_ms": 1712345678000},
    "tts_play_ended": {"session_id": "s-0A1B2C3D", "trace_id": "tr-3", "group_id": "g-1", "ts_end_ms": 1712345679000},
    "session_close": {"session_id": "s-0A1B2C3D", "reason": "user_left"},
}

SERVICES = [{"service_id": "faster-whisper", "type": "asr", "device": "gpu", "status": "running", "version": "1",
             "model_id": "m", "engine": "ct2", "mem_mb": 900, "warmup_ms": 1200, "last_error": None}]
CAPS = [{"type": "asr", "ready": True, "ready_impl_ids": ["faster-whisper"]},
        {"type": "tts", "ready": False, "reason": "loading"}]
LANGS = {"asr_languages": ["en", "zh"], "semantic_languages": ["zh"], "tts_languages": ["en", "zh"],
         "semantic_core_ready": True}

NODE_FRAMES: dict[str, dict[str, Any]] = {
    "node_register": {
        "node_id": "node-0A1B2C3D", "version": "2.1.0", "capability_schema_version": "2.0", "platform": "windows",
        "hardware": {"cpu_cores": 16, "memory_gb": 64, "gpus": [{"name": "RTX 4090", "memory_gb": 24}]},
        "installed_models": [{"model_id": "m", "kind": "asr", "version": "1", "enabled": True}],
        "installed_services": SERVICES, "capability_by_type": CAPS, "features_supported": FEATURES,
        "advanced_features": ["x"], "accept_public_jobs": True, "language_capabilities": LANGS,
        "max_concurrent_jobs": 4,
    },
    "node_heartbeat": {
        "node_id": "node-0A1B2C3D", "timestamp": 1712345678901,
        "resource_usage": {"cpu_percent": 12.5, "gpu_percent": 40, "gpu_mem_percent": 55.5, "mem_percent": 30,
                           "running_jobs": 2},
        "installed_models": [], "installed_services": SERVICES, "capability_by_type": CAPS,
        "rerun_metrics": {"totalReruns": 1, "successfulReruns": 1, "failedReruns": 0, "timeoutReruns": 0,
                          "qualityImprovements": 0},
        "asr_metrics": {}, "processing_metrics": {"serviceEfficiencies": {"faster-whisper": 1.2}},
        "language_capabilities": LANGS,
    },
    "job_result": {
        "job_id": "job-1", "attempt_id": 2, "node_id": "node-0A1B2C3D", "session_id": "s-0A1B2C3D",
        "utterance_index": 4, "success": False, "text_asr": "你好", "text_translated": "hello", "tts_audio": "",
        "tts_format": "opus", "extra": {"reason": "ASR_EMPTY", "emotion": None}, "processing_time_ms": 812,
        "error": {"code": "PROCESSING_ERROR", "message": "GPU lease timeout: GPU_USAGE_HIGH",
                  "details": {"service_id": "x"}},
        "trace_id": "tr-4", "group_id": "g", "part_index": 0, "node_completed_at_ms": 1712345678901,
        "service_timings": {"asr_ms": 100}, "asr_quality_level": "good", "reason_codes": ["A"],
        "quality_score": 0.9, "rerun_count": 0, "segments_meta": {"count": 1, "max_gap": 0.1, "avg_duration": 1.0},
    },
    "asr_partial": {"job_id": "job-1", "node_id": "node-0A1B2C3D", "session_id": "s-0A1B2C3D", "utterance_index": 4,
                    "text": "你", "is_final": False, "trace_id": "tr-4"},
    "job_ack": {"job_id": "job-1", "attempt_id": 1, "node_id": "node-0A1B2C3D", "session_id": "s", "trace_id": "t"},
    "job_started": {"job_id": "job-1", "attempt_id": 1, "node_id": "node-0A1B2C3D", "session_id": "s",
                    "trace_id": "t"},
    "node_error": {"node_id": "node-0A1B2C3D", "code": "MODEL_NOT_AVAILABLE", "message": "no model",
                   "details": {"service_id": "x", "reason": "missing"}},
    "error": {"code": "PROCESSING_ERROR", "message": "boom", "details": None},
}


def _check_fields(obj: Any, data: dict[str, Any]) -> None:
    """Every declared field present in ``data`` decoded to the same JSON value."""
    for field in attrs.fields(type(obj)):
        if field.name not in data:
            continue
        value = getattr(obj, field.name)
        if attrs.has(type(value)):
            _check_fields(value, data[field.name])
        elif isinstance(value, list) and value and attrs.has(type(value[0])):
            for item, raw in zip(value, data[field.name], strict=True):
                _check_fields(item, raw)
        else:
            assert value == data[field.name], field.name


@pytest.mark.parametrize("kind", sorted(CLIENT_FRAMES))
def test_client_messages_decode_from_the_original_field_names(kind: str) -> None:
    data = {"type": kind, **CLIENT_FRAMES[kind], **EXTRA}
    msg = CLIENT_CODEC.decode(json.dumps(data))
    assert kind == msg.TYPE and type(msg) in m.CLIENT_MESSAGES
    _check_fields(msg, data)


@pytest.mark.parametrize("kind", sorted(NODE_FRAMES))
def test_node_messages_decode_from_the_original_field_names(kind: str) -> None:
    data = {"type": kind, **NODE_FRAMES[kind], **EXTRA}
    msg = NODE_CODEC.decode(json.dumps(data))
    assert kind == msg.TYPE and type(msg) in m.NODE_MESSAGES
    _check_fields(msg, data)


def test_decoded_details_are_usable() -> None:
    init = CLIENT_CODEC.decode(json.dumps({"type": "session_init", **CLIENT_FRAMES["session_init"]}))
    assert init.audio_format == "opus" and init.sample_rate == 16000 and init.pipeline is None
    utt = CLIENT_CODEC.decode(json.dumps({"type": "utterance", **CLIENT_FRAMES["utterance"]}))
    assert utt.pipeline.required_services() == {"asr", "nmt", "semantic"}
    hb = NODE_CODEC.decode(json.dumps({"type": "node_heartbeat", **NODE_FRAMES["node_heartbeat"]}))
    assert hb.resource_usage.running_jobs == 2 and hb.capability_by_type[1].ready is False
    res = NODE_CODEC.decode(json.dumps({"type": "job_result", **NODE_FRAMES["job_result"]}))
    assert res.error.message == "GPU lease timeout: GPU_USAGE_HIGH" and res.processing_time_ms == 812.0


def test_minimal_messages_decode_with_defaults() -> None:
    chunk = CLIENT_CODEC.decode('{"type":"audio_chunk","session_id":"s","is_final":true,"payload":""}')
    assert chunk.is_final is True and chunk.payload == ""
    assert CLIENT_CODEC.decode('{"type":"audio_chunk","is_final":false}').payload is None
    assert NODE_CODEC.decode('{"type":"node_register"}').node_id is None
    assert NODE_CODEC.decode('{"type":"job_result","job_id":"j","success":true}').error is None


# ------------------------------------------------------------------------------------------ errors naming the field


#: The smallest utterance the original's clients send: every field it requires.
UTTERANCE = {"type": "utterance", "session_id": "s", "utterance_index": 0, "manual_cut": True, "src_lang": "zh",
             "tgt_lang": "en", "audio": "AAEC", "audio_format": "pcm16", "sample_rate": 16000}

FIELD_ERRORS = [
    (CLIENT_CODEC, {"type": "session_init", "tgt_lang": "en"}, "src_lang"),
    (CLIENT_CODEC, {"type": "session_init", "src_lang": "zh"}, "tgt_lang"),
    (CLIENT_CODEC, {"type": "session_init", "src_lang": 1, "tgt_lang": "en"}, "src_lang"),
    (CLIENT_CODEC, {"type": "session_init", "src_lang": "zh", "tgt_lang": "en", "sample_rate": "16000"},
     "sample_rate"),
    (CLIENT_CODEC, {"type": "session_init", "src_lang": "zh", "tgt_lang": "en", "sample_rate": 16000.5},
     "sample_rate"),
    (CLIENT_CODEC, {"type": "session_init", "src_lang": "zh", "tgt_lang": "en", "features": [1]}, "features"),
    (CLIENT_CODEC, {"type": "session_init", "src_lang": "zh", "tgt_lang": "en", "enable_streaming_asr": 1},
     "enable_streaming_asr"),
    (CLIENT_CODEC, {"type": "audio_chunk"}, "is_final"),
    (CLIENT_CODEC, {"type": "audio_chunk", "is_final": "yes"}, "is_final"),
    (CLIENT_CODEC, {"type": "audio_chunk", "is_final": 0}, "is_final"),
    (CLIENT_CODEC, {"type": "audio_chunk", "is_final": True, "seq": "7"}, "seq"),
    (CLIENT_CODEC, {"type": "audio_chunk", "is_final": True, "seq": True}, "seq"),
    (CLIENT_CODEC, {"type": "audio_chunk", "is_final": True, "payload": 5}, "payload"),
    (CLIENT_CODEC, {"type": "audio_chunk", "is_final": True, "client_timestamp_ms": "now"}, "client_timestamp_ms"),
    (CLIENT_CODEC, {**UTTERANCE, "audio": None}, "audio"),
    (CLIENT_CODEC, {**UTTERANCE, "manual_cut": "true"}, "manual_cut"),
    (CLIENT_CODEC, {**UTTERANCE, "pipeline": {"use_asr": "yes"}}, "pipeline.use_asr"),
    (CLIENT_CODEC, {"type": "client_heartbeat", "timestamp": "x"}, "timestamp"),
    (NODE_CODEC, {"type": "job_result", "success": True}, "job_id"),
    (NODE_CODEC, {"type": "job_result", "job_id": "j"}, "success"),
    (NODE_CODEC, {"type": "job_result", "job_id": "j", "success": "true"}, "success"),
    (NODE_CODEC, {"type": "job_result", "job_id": "j", "success": True, "utterance_index": "3"}, "utterance_index"),
    (NODE_CODEC, {"type": "job_result", "job_id": "j", "success": False, "error": {"code": 5}}, "error.code"),
    (NODE_CODEC, {"type": "job_result", "job_id": 7, "success": True}, "job_id"),
    (NODE_CODEC, {"type": "asr_partial", "text": "x"}, "job_id"),
    (NODE_CODEC, {"type": "job_ack"}, "job_id"),
    (NODE_CODEC, {"type": "job_started", "job_id": "j", "attempt_id": "1"}, "attempt_id"),
    (NODE_CODEC, {"type": "node_register", "max_concurrent_jobs": "4"}, "max_concurrent_jobs"),
    (NODE_CODEC, {"type": "node_register", "accept_public_jobs": "yes"}, "accept_public_jobs"),
    (NODE_CODEC, {"type": "node_heartbeat", "capability_by_type": [{"type": "asr"}]}, "capability_by_type[0].ready"),
    (NODE_CODEC, {"type": "node_heartbeat", "capability_by_type": [{"type": "asr", "ready": True}, {"ready": True}]},
     "capability_by_type[1].type"),
    (NODE_CODEC, {"type": "node_heartbeat", "resource_usage": {"cpu_percent": "high"}}, "resource_usage.cpu_percent"),
    (NODE_CODEC, {"type": "node_register", "language_capabilities": {"asr_languages": ["en", 5]}},
     "language_capabilities.asr_languages[1]"),
]


@pytest.mark.parametrize(("codec", "data", "field"), FIELD_ERRORS,
                         ids=[f"{d['type']}-{f}" for _, d, f in FIELD_ERRORS])
def test_missing_or_mistyped_fields_name_the_field(codec, data: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(json.dumps(data))
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    assert info.value.field == field
    assert info.value.details() == {"field": field}
    assert field in info.value.message


# The wrong JSON type for a list or an object field: cattrs iterates a string into characters, or
# builds a nested object from its defaults, unless the codec refuses it. Each of these must be rejected.
WRONG_CONTAINER_TYPES = [
    (CLIENT_CODEC, {"type": "session_init", "src_lang": "zh", "tgt_lang": "en", "auto_langs": "en"}, "auto_langs"),
    (CLIENT_CODEC, {"type": "session_init", "src_lang": "zh", "tgt_lang": "en", "auto_langs": {"en": 1}},
     "auto_langs"),
    (CLIENT_CODEC, {"type": "session_init", "src_lang": "zh", "tgt_lang": "en", "pipeline": "asr"}, "pipeline"),
    (CLIENT_CODEC, {**UTTERANCE, "pipeline": [True, True]}, "pipeline"),
    (NODE_CODEC, {"type": "node_register", "language_capabilities": {"asr_languages": "en,zh"}},
     "language_capabilities.asr_languages"),
    (NODE_CODEC, {"type": "node_register", "language_capabilities": "en,zh"}, "language_capabilities"),
    (NODE_CODEC, {"type": "node_heartbeat", "capability_by_type": "ASR"}, "capability_by_type"),
    (NODE_CODEC, {"type": "job_result", "job_id": "j", "success": False, "error": "GPU lease timeout"}, "error"),
    (NODE_CODEC, {"type": "job_result", "job_id": "j", "success": True, "reason_codes": "ASR_EMPTY"},
     "reason_codes"),
    (NODE_CODEC, {"type": "node_heartbeat", "resource_usage": [1, 2]}, "resource_usage"),
]


@pytest.mark.parametrize(("codec", "data", "field"), WRONG_CONTAINER_TYPES,
                         ids=[f"{d['type']}-{f}" for _, d, f in WRONG_CONTAINER_TYPES])
def test_wrong_container_types_are_rejected(codec, data: dict[str, Any], field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(json.dumps(data))
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    assert info.value.field == field


# ------------------------------------------------------------------------------------------ frame-level errors


@pytest.mark.parametrize("codec", [CLIENT_CODEC, NODE_CODEC], ids=["client", "node"])
@pytest.mark.parametrize("frame", [
    "", "{", "not json", '{"type": "session_init",}', "[]", "1", "null", '"session_init"', "true",
    "{}", '{"type": null}', '{"type": 5}', '{"type": ["audio_chunk"]}', '{"type": "nonsense"}',
    b'{"type": "audio_chunk"}', "[" * 100 + "]" * 100,
])
def test_frame_level_errors_are_invalid_message(codec, frame: str | bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame)
    assert info.value.code == ErrorCode.INVALID_MESSAGE


def test_missing_or_non_string_type_names_the_type_field() -> None:
    for frame in ("{}", '{"type": 5}', '{"session_id": "s"}'):
        with pytest.raises(ProtocolError) as info:
            CLIENT_CODEC.decode(frame)
        assert info.value.field == "type"


@pytest.mark.parametrize("kind", sorted(cls.TYPE for cls in ROOM_CLIENT_MESSAGES))
def test_room_and_webrtc_types_are_session_messages_only(kind: str) -> None:
    if kind == "room_create":
        assert kind == CLIENT_CODEC.decode(json.dumps({"type": kind})).TYPE  # every field is optional
    else:
        with pytest.raises(ProtocolError) as info:
            CLIENT_CODEC.decode(json.dumps({"type": kind}))  # their required fields are checked
        assert info.value.code == ErrorCode.INVALID_MESSAGE and info.value.field
    with pytest.raises(ProtocolError) as info:
        NODE_CODEC.decode(json.dumps({"type": kind}))
    assert info.value.code == ErrorCode.INVALID_MESSAGE


def test_node_types_are_unknown_to_the_client_codec_and_vice_versa() -> None:
    with pytest.raises(ProtocolError) as info:
        CLIENT_CODEC.decode('{"type": "job_result", "job_id": "j", "success": true}')
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    with pytest.raises(ProtocolError) as info:
        NODE_CODEC.decode('{"type": "audio_chunk"}')
    assert info.value.code == ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("codec", [CLIENT_CODEC, NODE_CODEC], ids=["client", "node"])
def test_deeply_nested_json_is_a_protocol_error(codec) -> None:
    """A frame nesting arrays deeper than the interpreter's recursion limit is still just a bad message."""
    depth = 100_000
    with pytest.raises(ProtocolError) as info:
        codec.decode("[" * depth + "]" * depth)
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    with pytest.raises(ProtocolError):
        codec.decode('{"type": "audio_chunk", "x": ' + "[" * depth + "]" * depth + "}")


# ------------------------------------------------------------------------------------------ fuzzing decode


# JSON has no NaN or Infinity (the codec refuses them: test_non_json_numbers_are_refused).
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)

ALL_TYPES = sorted({cls.TYPE for cls in m.CLIENT_MESSAGES + m.NODE_MESSAGES + ROOM_CLIENT_MESSAGES}
                   | m.UNSUPPORTED_CLIENT_TYPES)
FIELD_NAMES = sorted({f.name for cls in m.CLIENT_MESSAGES + m.NODE_MESSAGES + ROOM_CLIENT_MESSAGES
                      for f in attrs.fields(cls)}
                     | {f.name for cls in (m.LanguageCapabilities, m.CapabilityByType, m.InstalledService,
                                           m.ResourceUsage, m.ResultError, m.Pipeline) for f in attrs.fields(cls)})


def _decode_only_protocol_errors(frame: str) -> None:
    for codec in (CLIENT_CODEC, NODE_CODEC):
        decoded = accepted_or_refused(codec.decode, frame)
        if isinstance(decoded, ProtocolError):
            assert decoded.code in (ErrorCode.INVALID_MESSAGE, ErrorCode.UNSUPPORTED_FEATURE)
            assert isinstance(decoded.message, str) and decoded.message


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_json_numbers_are_refused(number: str) -> None:
    """json.loads would accept these; a node could never parse them back, so they stop at the door."""
    frame = '{"type":"job_result","job_id":"j","success":true,"quality_score":' + number + "}"
    with pytest.raises(ProtocolError, match="not valid JSON"):
        NODE_CODEC.decode(frame)


@given(value=json_values)
@settings(max_examples=200, deadline=None)
def test_arbitrary_json_values_only_raise_protocol_error(value: Any) -> None:
    _decode_only_protocol_errors(json.dumps(value))


@given(text=st.text(max_size=30))
@settings(max_examples=100, deadline=None)
def test_arbitrary_text_only_raises_protocol_error(text: str) -> None:
    _decode_only_protocol_errors(text)


# Values shaped like what the fields expect (lists of dicts with the known sub-field names), or not.
field_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4), inner, max_size=5),
    max_leaves=15,
)


@given(kind=st.sampled_from(ALL_TYPES),
       fields=st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), field_values, max_size=8))
@settings(max_examples=200, deadline=None)
def test_arbitrary_dicts_only_raise_protocol_error(kind: str, fields: dict[str, Any]) -> None:
    _decode_only_protocol_errors(json.dumps({**fields, "type": kind}))


# ------------------------------------------------------------------------------------------ encode / to_wire


OUTBOUND = [m.SessionInitAck, m.TranslationResult, m.AsrPartialOut, m.MissingResult, m.ErrorMessage,
            m.ServerHeartbeat, m.SessionCloseAck, m.NodeRegisterAck, m.JobAssign, m.JobCancel]

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_dicts = st.dictionaries(st.text(max_size=6), json_values, max_size=4)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return json_values
    if origin in (typing.Union, __import__("types").UnionType):
        return st.one_of(*(strategy_for(a) for a in args))
    if tp is type(None):
        return st.none()
    if tp is str or tp is m.Id or tp is m.Code:
        return st.text(st.characters(exclude_categories=("C", "Z"), include_characters=" "), max_size=10)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if tp is m.Count:
        return st.integers(0, m.COUNT_LIMIT - 1)
    if tp is m.SampleRate:
        return st.integers(*m.SAMPLE_RATE_RANGE)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(-(2**53), 2**53)
    if tp is float:
        return finite_floats
    if origin is dict:
        return json_dicts
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if attrs.has(tp):
        return message_strategy(tp)
    raise AssertionError(f"no strategy for {tp!r}")


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in attrs.fields(cls)})


@given(msg=st.one_of(*(message_strategy(cls) for cls in OUTBOUND)))
@settings(max_examples=200, deadline=None)
def test_encode_round_trips_through_json_with_none_fields_omitted(msg: Any) -> None:
    wire = json.loads(encode(msg))
    expected = {"type": msg.TYPE}
    for field in attrs.fields(type(msg)):
        value = getattr(msg, field.name)
        if value is not None:
            expected[field.name] = attrs.asdict(value) if attrs.has(type(value)) else value
    assert wire == expected
    assert to_wire(msg) == expected
    assert all(v is not None for v in wire.values())


def test_job_assign_flags_are_omitted_when_unset() -> None:
    assign = m.JobAssign(job_id="job-1", attempt_id=1, session_id="s", utterance_index=0, src_lang="zh",
                         tgt_lang="en", pipeline=m.DEFAULT_PIPELINE, audio="AA==", audio_format="opus",
                         sample_rate=16000, trace_id="t", turn_id="turn-1", is_manual_cut=True)
    wire = json.loads(encode(assign))
    assert wire["type"] == "job_assign" and wire["is_manual_cut"] is True and wire["turn_id"] == "turn-1"
    assert "is_timeout_triggered" not in wire and "is_max_duration_triggered" not in wire
    assert wire["pipeline"] == {"use_asr": True, "use_nmt": True, "use_tts": True, "use_semantic": False,
                                "use_tone": False}
    assert "dialect" not in wire and "padding_ms" not in wire


INBOUND_ROUND_TRIP = [cls for cls in m.CLIENT_MESSAGES + m.NODE_MESSAGES
                      if cls not in (m.NodeRegister, m.NodeHeartbeat)]  # lists of nested objects: not outbound


@given(msg=st.one_of(*(message_strategy(cls) for cls in INBOUND_ROUND_TRIP)))
@settings(max_examples=150, deadline=None)
def test_inbound_messages_survive_encode_then_decode(msg: Any) -> None:
    codec = CLIENT_CODEC if type(msg) in m.CLIENT_MESSAGES else NODE_CODEC
    decoded = codec.decode(encode(msg).decode())
    assert type(decoded) is type(msg)
    for field in attrs.fields(type(msg)):
        a, b = getattr(decoded, field.name), getattr(msg, field.name)
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
            continue
        assert a == b, field.name


@given(data=st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_base64_size_checks_without_decoding(data: bytes) -> None:
    from trioscheduler.protocol.codec import base64_size, decode_base64

    text = base64.b64encode(data).decode()
    assert base64_size(text, "audio") == len(data)
    assert decode_base64(text, "audio") == data


@pytest.mark.parametrize("text", ["abc", "ab=c", "a===", "ab!d", "abc\n", "é" * 4, "ab==cd=="])
def test_base64_size_rejects_what_strict_decoding_rejects(text: str) -> None:
    import binascii

    from trioscheduler.protocol.codec import base64_size

    with pytest.raises(ProtocolError) as info:
        base64_size(text, "audio")
    assert info.value.field == "audio"
    with pytest.raises((binascii.Error, ValueError)):
        binascii.a2b_base64(text, strict_mode=True)
