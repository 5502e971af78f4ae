"""The session's pure parts: its job budget, the utterance checks and the one JobSpec builder."""

from __future__ import annotations

import base64

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioscheduler.config import LimitsConfig, SegmentationConfig
from trioscheduler.policy.segmentation import Cut, CutReason
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.server.jobspec import MAX_INDEX_AHEAD, build_job_spec, utterance_index
from trioscheduler.server.session_state import JobBudget, SessionState, new_session_state, selection_key_for

SEGMENTATION = SegmentationConfig()


def _state(**init: object) -> SessionState:
    fields = {"src_lang": "zh", "tgt_lang": "en", "audio_format": "pcm16", **init}
    return new_session_state(m.SessionInit(**fields), "s-00000001", "trace", SEGMENTATION)  # type: ignore[arg-type]


operations = st.lists(st.tuples(st.sampled_from(["hold", "release"]), st.integers(0, 12), st.integers(0, 5000)),
                      max_size=60)


@given(operations, st.integers(1, 8), st.integers(1, 20_000))
def test_job_budget_counts_what_is_held_and_refuses_past_either_bound(
        ops: list[tuple[str, int, int]], max_outstanding: int, max_audio: int) -> None:
    limits = LimitsConfig(max_session_outstanding=max_outstanding, max_session_audio_bytes=max_audio)
    budget, model = JobBudget(), {}
    for op, index, size in ops:
        refusal = budget.refusal(size, limits)
        if len(model) >= max_outstanding:
            assert refusal is not None and refusal.code == ErrorCode.SESSION_OUTSTANDING_LIMIT_EXCEEDED
        elif sum(model.values()) + size > max_audio:
            assert refusal is not None and refusal.code == ErrorCode.SESSION_AUDIO_LIMIT_EXCEEDED
        else:
            assert refusal is None
        if op == "hold":
            budget.hold(index, size)
            model[index] = size
        else:
            budget.release(index)
            model.pop(index, None)
        assert len(budget) == len(model) and budget.audio_bytes == sum(model.values())
    for index in list(model):
        budget.release(index)
    assert len(budget) == 0 and budget.audio_bytes == 0 and budget._held is None


def test_a_cut_and_an_utterance_without_overrides_make_the_same_session_fields() -> None:
    state = _state(dialect="yue", features={"emotion_detection": True}, tenant_id="t", auto_langs=["zh", "en"],
                   enable_streaming_asr=False, partial_update_interval_ms=500)
    audio = b"\x01\x00" * 800
    cut = Cut(audio=audio, reason=CutReason.IS_FINAL, duration_ms=50.0, turn_id="turn-1", chunks=1)
    utterance = m.Utterance(audio=base64.b64encode(audio).decode())
    from_cut = build_job_spec(state, SEGMENTATION, 3, 1.5, cut)
    from_utterance = build_job_spec(state, SEGMENTATION, 3, 1.5, utterance, "turn-1")
    per_utterance = {"audio", "audio_b64", "cut_reason"}
    cut_fields, utterance_fields = attrs.asdict(from_cut, recurse=False), attrs.asdict(from_utterance, recurse=False)
    assert {k: v for k, v in cut_fields.items() if k not in per_utterance} == \
        {k: v for k, v in utterance_fields.items() if k not in per_utterance}
    assert from_cut.audio_size == from_utterance.audio_size == len(audio)
    assert from_cut.enable_streaming_asr is False and from_cut.partial_update_interval_ms == 500
    assert from_cut.padding_ms == SEGMENTATION.padding_manual_ms


def test_utterance_fields_override_the_sessions() -> None:
    state = _state()
    utterance = m.Utterance(audio="AAAA", src_lang="auto", tgt_lang="ja", audio_format="WAV", sample_rate=48000,
                            trace_id="t2", manual_cut=False, dialect="d", features={"x": 1})
    spec = build_job_spec(state, SEGMENTATION, 0, 0.0, utterance, "turn")
    assert (spec.src_lang, spec.tgt_lang) == ("auto", "ja")
    assert spec.selection_key == selection_key_for("auto", "ja", None, None, None) != state.selection_key
    assert (spec.audio_format, spec.sample_rate, spec.trace_id) == ("wav", 48000, "t2")
    assert spec.padding_ms == SEGMENTATION.padding_auto_ms and not spec.is_manual_cut
    assert (spec.dialect, spec.features, spec.turn_id) == ("d", {"x": 1}, "turn")


@pytest.mark.parametrize(("fields", "field"), [
    ({"audio": ""}, "audio"),
    ({"audio_format": ""}, "audio_format"),
    ({"audio_format": "mp3"}, "audio_format"),
    ({"sample_rate": 0}, "sample_rate"),
    ({"sample_rate": 192001}, "sample_rate"),
    ({"mode": "three_way"}, "mode"),
    ({"utterance_index": -1}, "utterance_index"),
    ({"utterance_index": MAX_INDEX_AHEAD + 1}, "utterance_index"),
])
def test_invalid_utterances_name_their_field(fields: dict[str, object], field: str) -> None:
    message = m.Utterance(**{"audio": "AAAA", **fields})  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as error:
        utterance_index(_state(), message)
    assert error.value.field == field and error.value.code == ErrorCode.INVALID_MESSAGE


def test_utterance_index_defaults_to_the_next() -> None:
    state = _state()
    state.next_index = 7
    assert utterance_index(state, m.Utterance(audio="AAAA")) == 7
    assert utterance_index(state, m.Utterance(audio="AAAA", utterance_index=7 + MAX_INDEX_AHEAD)) == 263
