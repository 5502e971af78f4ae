"""Strict typed messages at the door: required fields, closed sets, ranges, ids, depth and size of free-form
fields, and the guarantee that whatever the codec accepts can be encoded again (forwarded)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.refusals import accepted_or_refused
from tests.wire import b64, connect, pcm, registered_node, session
from trioscheduler.config import LimitsConfig
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import CLIENT_CODEC, NODE_CODEC, Codec, client_codec, encode, node_codec, to_wire
from trioscheduler.protocol.errors import EncodeError, ErrorCode, ProtocolError, TrioschedulerError

INIT = {"type": "session_init", "src_lang": "zh", "tgt_lang": "en"}
UTTERANCE = {"type": "utterance", "session_id": "s-0A1B2C3D", "utterance_index": 0, "manual_cut": True,
             "src_lang": "zh", "tgt_lang": "en", "audio": "AAEC", "audio_format": "pcm16", "sample_rate": 16000}
RESULT = {"type": "job_result", "job_id": "job-1", "success": True}


def nested(depth: int, leaf: Any = 1) -> Any:
    """A JSON value nesting ``depth`` levels of objects and arrays (alternately, an object outermost)."""
    value = leaf
    for level in range(depth, 0, -1):
        value = {"k": value} if level % 2 else [value]
    return value


def refused(codec: Codec[Any], data: dict[str, Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode(json.dumps(data))
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    return info.value


# ------------------------------------------------------------------------------------------ required fields


def test_utterance_fields_without_a_session_fallback_are_required() -> None:
    assert refused(CLIENT_CODEC, {k: v for k, v in UTTERANCE.items() if k != "audio"}).field == "audio"
    bare = CLIENT_CODEC.decode(json.dumps({"type": "utterance", "audio": "AAEC"}))
    assert bare.audio_format is None and bare.sample_rate is None  # the session's values apply


def test_a_bare_audio_chunk_names_is_final() -> None:
    error = refused(CLIENT_CODEC, {"type": "audio_chunk"})
    assert error.field == "is_final" and "is_final" in error.message


@pytest.mark.parametrize(("data", "field"), [
    ({"type": "job_result", "success": True}, "job_id"),
    ({"type": "job_result", "job_id": "j"}, "success"),
    ({"type": "asr_partial", "text": "x"}, "job_id"),
    ({"type": "job_ack"}, "job_id"),
])
def test_node_fields_the_scheduler_acts_on_are_required(data: dict[str, Any], field: str) -> None:
    assert refused(NODE_CODEC, data).field == field


def test_what_the_originals_web_client_sends_is_accepted() -> None:
    """The original's web client sends nulls for optional fields and always sends these ones."""
    init = CLIENT_CODEC.decode(json.dumps({
        "type": "session_init", "client_version": "1.0", "platform": "web", "src_lang": "auto", "tgt_lang": "en",
        "dialect": None, "features": {}, "pairing_code": None, "mode": "two_way_auto", "lang_a": "zh",
        "lang_b": "en", "auto_langs": ["zh", "en"], "trace_id": "0b7c2f4e-2d0e-4c54-9d55-7d5c8b1f0a11",
        "tenant_id": None}))
    assert isinstance(init, m.SessionInit) and init.mode == "two_way_auto"
    chunk = CLIENT_CODEC.decode(json.dumps({"type": "audio_chunk", "session_id": "s-0A1B2C3D", "seq": 12,
                                            "is_final": True, "payload": ""}))
    assert isinstance(chunk, m.AudioChunk) and chunk.is_final
    utterance = CLIENT_CODEC.decode(json.dumps({**UTTERANCE, "dialect": None, "trace_id": "t",
                                                "audio_format": "opus"}))
    assert isinstance(utterance, m.Utterance) and utterance.audio_format == "opus"
    for kind, extra in (("tts_started", {"ts_start_ms": 1712345678000}),
                        ("tts_play_ended", {"ts_end_ms": 1712345679000})):
        CLIENT_CODEC.decode(json.dumps({"type": kind, "session_id": "s", "trace_id": "t", "group_id": "g",
                                        **extra}))
    CLIENT_CODEC.decode(json.dumps({"type": "client_heartbeat", "session_id": "s", "timestamp": 1712345678901}))


# ------------------------------------------------------------------------------------------ closed sets, ranges


CLOSED_SETS = [
    ({**INIT, "audio_format": ""}, "audio_format"),
    ({**INIT, "audio_format": "wav"}, "audio_format"),  # an utterance format, not a streaming one
    ({**INIT, "audio_format": "pcm"}, "audio_format"),
    ({**INIT, "audio_format": 1}, "audio_format"),
    ({**INIT, "mode": "both"}, "mode"),
    ({**INIT, "mode": ""}, "mode"),
    ({**UTTERANCE, "audio_format": ""}, "audio_format"),
    ({**UTTERANCE, "audio_format": "flac"}, "audio_format"),
    ({**UTTERANCE, "mode": "two_way"}, "mode"),
    ({**UTTERANCE, "mode": "ONE_WAY"}, "mode"),  # modes are exact
]


@pytest.mark.parametrize(("data", "field"), CLOSED_SETS, ids=[f"{d['type']}-{d[f]!r}" for d, f in CLOSED_SETS])
def test_closed_sets_refuse_other_values_naming_the_field(data: dict[str, Any], field: str) -> None:
    error = refused(CLIENT_CODEC, data)
    assert error.field == field and "expected one of" in error.message


@pytest.mark.parametrize(("data", "decoded"), [
    ({**INIT, "audio_format": "PCM16"}, "pcm16"), ({**INIT, "audio_format": " Opus "}, "opus"),
    ({**UTTERANCE, "audio_format": "WAV"}, "wav"), ({**UTTERANCE, "audio_format": "opus"}, "opus")])
def test_audio_formats_are_read_case_insensitively(data: dict[str, Any], decoded: str) -> None:
    assert CLIENT_CODEC.decode(json.dumps(data)).audio_format == decoded


@pytest.mark.parametrize("base", [INIT, UTTERANCE], ids=["session_init", "utterance"])
@pytest.mark.parametrize("rate", [0, -16000, 7999, 192001, 16000.0, 2**64, 1e308, "16000", True])
def test_sample_rate_is_checked_alike_on_both_paths(base: dict[str, Any], rate: Any) -> None:
    assert refused(CLIENT_CODEC, {**base, "sample_rate": rate}).field == "sample_rate"


@pytest.mark.parametrize("rate", [8000, 16000, 48000, 192000])
def test_sample_rates_in_range_are_accepted(rate: int) -> None:
    assert CLIENT_CODEC.decode(json.dumps({**UTTERANCE, "sample_rate": rate})).sample_rate == rate
    assert CLIENT_CODEC.decode(json.dumps({**INIT, "sample_rate": rate})).sample_rate == rate


INTEGERS = [
    (CLIENT_CODEC, UTTERANCE, "utterance_index"),
    (CLIENT_CODEC, {"type": "audio_chunk", "is_final": False}, "seq"),
    (CLIENT_CODEC, INIT, "partial_update_interval_ms"),
    (NODE_CODEC, RESULT, "utterance_index"),
    (NODE_CODEC, RESULT, "attempt_id"),
    (NODE_CODEC, RESULT, "part_index"),
    (NODE_CODEC, RESULT, "rerun_count"),
    (NODE_CODEC, {"type": "job_ack", "job_id": "j"}, "attempt_id"),
    (NODE_CODEC, {"type": "node_register"}, "max_concurrent_jobs"),
]


@pytest.mark.parametrize(("codec", "base", "field"), INTEGERS, ids=[f"{b['type']}-{f}" for _, b, f in INTEGERS])
@pytest.mark.parametrize("value", [2**64, 2**63, 2**31, -1, 1e308, 3.0, 0.5, "3", None])
def test_indices_and_counts_are_bounded_integers(codec: Codec[Any], base: dict[str, Any], field: str,
                                                 value: Any) -> None:
    if value is None:  # the JSON text itself: an integer literal far beyond 64 bits
        frame = json.dumps(base)[:-1] + f', "{field}": {"9" * 30}}}'
        with pytest.raises(ProtocolError) as info:
            codec.decode(frame)
        assert info.value.field == field
        return
    assert refused(codec, {**base, field: value}).field == field


def test_resource_usage_running_jobs_is_bounded_too() -> None:
    data = {"type": "node_heartbeat", "resource_usage": {"running_jobs": 2**64}}
    assert refused(NODE_CODEC, data).field == "resource_usage.running_jobs"


@pytest.mark.parametrize("value", [2**31 - 1, 0])
def test_indices_at_the_bounds_are_accepted(value: int) -> None:
    assert CLIENT_CODEC.decode(json.dumps({**UTTERANCE, "utterance_index": value})).utterance_index == value


# ------------------------------------------------------------------------------------------ ids


ID_FIELDS = [
    (CLIENT_CODEC, UTTERANCE, "session_id"),
    (CLIENT_CODEC, UTTERANCE, "trace_id"),
    (CLIENT_CODEC, INIT, "trace_id"),
    (CLIENT_CODEC, INIT, "tenant_id"),
    (CLIENT_CODEC, {"type": "audio_chunk", "is_final": False}, "session_id"),
    (CLIENT_CODEC, {"type": "tts_started"}, "group_id"),
    (CLIENT_CODEC, {"type": "session_close"}, "session_id"),
    (NODE_CODEC, {"type": "node_register"}, "node_id"),
    (NODE_CODEC, RESULT, "job_id"),
    (NODE_CODEC, RESULT, "trace_id"),
    (NODE_CODEC, RESULT, "group_id"),
    (NODE_CODEC, {"type": "asr_partial", "job_id": "j", "text": "", "is_final": False}, "node_id"),
    (NODE_CODEC, {"type": "node_error"}, "code"),
]


@pytest.mark.parametrize(("codec", "base", "field"), ID_FIELDS, ids=[f"{b['type']}-{f}" for _, b, f in ID_FIELDS])
@pytest.mark.parametrize("value", ["s-1\nlevel=error forged", "a\rb", "a\x00b", "a\x1bb", "a\u2028b", "x" * 129])
def test_ids_refuse_control_characters_and_excess_length(codec: Codec[Any], base: dict[str, Any], field: str,
                                                         value: str) -> None:
    assert refused(codec, {**base, field: value}).field == field


def test_nested_ids_are_checked_with_their_path() -> None:
    data = {"type": "node_register", "installed_services": [{"type": "asr", "service_id": "a\nb"}]}
    assert refused(NODE_CODEC, data).field == "installed_services[0].service_id"


def test_ordinary_ids_are_accepted() -> None:
    trace = "9a1f0c2e-1111-4c1e-8d1a-1f2e3d4c5b6a"
    msg = CLIENT_CODEC.decode(json.dumps({**UTTERANCE, "trace_id": trace, "session_id": "s-1A2B3C4D"}))
    assert msg.trace_id == trace
    assert NODE_CODEC.decode(json.dumps({**RESULT, "job_id": "x" * 128})).job_id == "x" * 128


# ------------------------------------------------------------------------------------------ depth and size


@pytest.mark.parametrize(("codec", "base", "field"), [
    (CLIENT_CODEC, INIT, "features"),
    (CLIENT_CODEC, UTTERANCE, "features"),
    (NODE_CODEC, RESULT, "extra"),
    (NODE_CODEC, RESULT, "segments_meta"),
    (NODE_CODEC, {"type": "error"}, "details"),
    (NODE_CODEC, RESULT, "hardware"),  # an unknown field is bounded too: the whole message is
], ids=lambda v: v if isinstance(v, str) else None)
def test_nesting_deeper_than_the_limit_is_refused_naming_the_field(codec: Codec[Any], base: dict[str, Any],
                                                                   field: str) -> None:
    for depth in (32, 300):
        assert refused(codec, {**base, field: nested(depth)}).field == field
    frame = json.dumps({**base, field: 0})[:-1] + f', "{field}": ' + "[" * 1000 + "]" * 1000 + "}"
    with pytest.raises(ProtocolError) as info:  # orjson's own limit (1024) is not reached: the bound is ours
        codec.decode(frame)
    assert info.value.field == field
    codec.decode(json.dumps({**base, field: nested(31)}))  # the message itself is level 1: 32 in all


def test_nested_free_form_fields_are_bounded_by_path() -> None:
    data = {**RESULT, "success": False, "error": {"code": "X", "message": "m", "details": "x" * 70_000}}
    NODE_CODEC.decode(json.dumps(data))  # a long string: bounded by the frame size only
    data["error"]["details"] = ["x" * 1000] * 70
    assert refused(NODE_CODEC, data).field == "error.details"


@pytest.mark.parametrize(("codec", "base", "field"), [
    (CLIENT_CODEC, INIT, "features"),
    (NODE_CODEC, RESULT, "extra"),
    (NODE_CODEC, RESULT, "service_timings"),
    (NODE_CODEC, RESULT, "reason_codes"),
    (NODE_CODEC, {"type": "node_register"}, "supported_language_pairs"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_free_form_fields_over_the_size_bound_are_refused(codec: Codec[Any], base: dict[str, Any],
                                                          field: str) -> None:
    big = [f"{i:08d}" for i in range(7000)] if field in ("reason_codes", "supported_language_pairs") else {
        f"k{i}": "v" * 10 for i in range(5000)}
    error = refused(codec, {**base, field: big})
    assert error.field == field and "max_free_form_bytes" in error.message


def test_limits_configure_the_codec() -> None:
    limits = LimitsConfig(max_json_depth=4, max_free_form_bytes=64)
    codec = client_codec(limits)
    assert codec is client_codec(LimitsConfig(max_json_depth=4, max_free_form_bytes=64))
    assert node_codec(limits) is not codec and client_codec(LimitsConfig()) is not codec
    assert refused(codec, {**INIT, "features": nested(4)}).field == "features"
    codec.decode(json.dumps({**INIT, "features": nested(3)}))
    assert refused(codec, {**INIT, "features": {"a": "x" * 60}}).field == "features"
    # A depth setting orjson could not re-encode is clamped to what it can.
    assert client_codec(LimitsConfig(max_json_depth=1000)).max_json_depth == 255


# ------------------------------------------------------------------------------------------ encode


def test_encode_failure_is_an_encode_error() -> None:
    for extra in (nested(300), {"n": 2**70}, {"f": float("nan")} | {"x": object()}):
        message = m.TranslationResult(
            session_id="s", utterance_index=0, job_id="j", text_asr="", text_translated="", tts_audio="",
            tts_format="pcm16", trace_id="t", scheduler_sent_at_ms=0, extra=extra)
        with pytest.raises(EncodeError) as info:
            encode(message)
        assert isinstance(info.value, TrioschedulerError) and info.value.message_type == "translation_result"


def test_error_message_codes_are_the_error_code_enum_or_a_node_code() -> None:
    """The scheduler's own errors carry an ErrorCode; a code a node reported for its job is passed through."""
    wire = json.loads(encode(ProtocolError("bad", field="x").to_message(session_id="s")))
    assert wire["code"] == "INVALID_MESSAGE"
    assert attrs.fields(m.ErrorMessage).code.type in ("ErrorCode | Code", ErrorCode | m.Code)


# Values a peer may put anywhere: deep, wide, big numbers (orjson reads integers past 64 bits as floats).
leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                          allow_infinity=False) | st.text(max_size=4)
deep = st.builds(nested, st.integers(0, 300), leaf)
wild = st.recursive(leaf | deep, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=4), inner, max_size=3), max_leaves=8)
FIELDS = sorted({f.name for cls in m.CLIENT_MESSAGES + m.NODE_MESSAGES for f in attrs.fields(cls)})


def _valid_base(kind: str) -> dict[str, Any]:
    return {"utterance": UTTERANCE, "session_init": INIT, "job_result": RESULT,
            "audio_chunk": {"type": "audio_chunk", "is_final": True},
            "asr_partial": {"type": "asr_partial", "job_id": "j", "text": "", "is_final": False}}.get(
        kind, {"type": kind})


@given(kind=st.sampled_from(sorted({c.TYPE for c in m.CLIENT_MESSAGES + m.NODE_MESSAGES})),
       fields=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), wild, max_size=4))
@settings(max_examples=300, deadline=None)
@example(kind="utterance", fields={"utterance_index": 2**64})
@example(kind="utterance", fields={"utterance_index": 1e308})
@example(kind="session_init", fields={"features": nested(300)})
@example(kind="job_result", fields={"extra": nested(300)})
def test_anything_accepted_can_be_encoded_again(kind: str, fields: dict[str, Any]) -> None:
    frame = json.dumps({**_valid_base(kind), **fields, "type": kind})
    for codec in (CLIENT_CODEC, NODE_CODEC):
        message = accepted_or_refused(codec.decode, frame)
        if isinstance(message, ProtocolError):
            assert message.code in (ErrorCode.INVALID_MESSAGE, ErrorCode.UNSUPPORTED_FEATURE)
            assert message.field is not None, message.message  # a refused message always names the field at fault
            continue
        again = codec.decode(encode(message).decode())  # forwardable, and it means the same after the trip
        assert to_wire(again) == to_wire(message)


# ------------------------------------------------------------------------------------------ over a real socket


async def test_an_index_beyond_64_bits_is_an_error_and_the_session_lives_on(daemon: Any) -> None:
    """It used to crash the sender's session when its outcome was encoded ("Integer exceeds 64-bit range")."""
    async with session(daemon.session_url, audio_format="pcm16") as (client, sid):
        for index in ("18446744073709551616", "1e308"):
            frame = json.dumps({**UTTERANCE, "session_id": sid, "audio": b64(pcm(100))})
            await client.send_raw(frame.replace('"utterance_index": 0', f'"utterance_index": {index}'))
            error = await client.recv_type("error")
            assert error["code"] == "INVALID_MESSAGE" and error["details"] == {"field": "utterance_index"}
        await client.send(type="client_heartbeat", session_id=sid, timestamp=0)
        assert (await client.recv_type("server_heartbeat"))["session_id"] == sid


async def test_deep_features_never_reach_a_node(daemon: Any) -> None:
    """features nested 300 deep used to be accepted and crash every node connection its job was sent to."""
    async with registered_node(daemon.node_url, "node-A") as (node, _), connect(daemon.session_url) as client:
        await client.send(**INIT, audio_format="pcm16", features=nested(300))
        error = await client.recv_type("error")
        assert error["code"] == "INVALID_MESSAGE" and error["details"] == {"field": "features"}
        await client.send(**INIT, audio_format="pcm16")
        sid = (await client.recv_type("session_init_ack"))["session_id"]
        await client.send(**{**UTTERANCE, "session_id": sid, "audio": b64(pcm(100)),
                             "features": nested(300)})
        assert (await client.recv_type("error"))["details"] == {"field": "features"}
        await client.send(**{**UTTERANCE, "session_id": sid, "audio": b64(pcm(100))})
        assign = await node.recv_type("job_assign")
        assert assign["session_id"] == sid


async def test_deep_extra_from_a_node_is_refused_and_the_node_lives_on(daemon: Any) -> None:
    """A job_result.extra nested 300 deep used to crash the client's session when relayed."""
    async with registered_node(daemon.node_url, "node-A") as (node, _), \
            session(daemon.session_url, audio_format="pcm16") as (client, sid):
        await client.send(**{**UTTERANCE, "session_id": sid, "audio": b64(pcm(100))})
        assign = await node.recv_type("job_assign")
        await node.send(type="job_result", job_id=assign["job_id"], attempt_id=assign["attempt_id"],
                        success=True, text_asr="a", text_translated="b", extra=nested(300))
        error = await node.recv_type("error")
        assert error["code"] == "INVALID_MESSAGE" and error["details"] == {"field": "extra"}
        await node.send(type="job_result", job_id=assign["job_id"], attempt_id=assign["attempt_id"],
                        success=True, text_asr="a", text_translated="b", extra={"k": 1})
        result = await client.recv_type("translation_result")
        assert result["extra"] == {"k": 1}
        with trio.fail_after(5):
            await client.send(type="client_heartbeat", session_id=sid, timestamp=0)
            await client.recv_type("server_heartbeat")
