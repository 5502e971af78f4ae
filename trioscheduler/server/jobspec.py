"""The one place a finalized utterance becomes a ``JobSpec``, and the checks an ``utterance`` message must pass.

Pure code: time, the turn id and the configuration come in as arguments. A cut of streamed audio and a whole
``utterance`` message differ only in where their per-utterance fields come from; the session's fields (its
session_init) are filled in by ``build_job_spec`` for both.
"""

from __future__ import annotations

from trioscheduler.config import SegmentationConfig
from trioscheduler.policy.segmentation import Cut, CutReason
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import base64_size
from trioscheduler.protocol.errors import ProtocolError
from trioscheduler.registry.requests import JobSpec
from trioscheduler.server.session_state import SessionState, check_rate_and_mode, selection_key_for

UTTERANCE_AUDIO_FORMATS = frozenset({"opus", "pcm16", "wav"})
#: How far ahead of the next expected index a client-chosen utterance_index may jump.
MAX_INDEX_AHEAD = 256
#: Cuts sent with ``is_manual_cut``: the client ended the utterance (is_final) or the session (session_close). A
#: node that buffers a turn until a cut flag answers these at once; the session_close cut is the session's last.
MANUAL_CUTS = frozenset({CutReason.IS_FINAL, CutReason.SESSION_CLOSE})


def utterance_index(state: SessionState, message: m.Utterance) -> int:
    """The index the utterance takes (the next one when it names none); raises ProtocolError when the message is
    not a valid utterance for this session. The caller checks whether the index was already used."""
    if not base64_size(message.audio, "audio"):
        raise ProtocolError("utterance: audio is empty", field="audio")
    audio_format = message.audio_format
    if audio_format is not None and audio_format.strip().lower() not in UTTERANCE_AUDIO_FORMATS:
        raise ProtocolError(f"utterance: audio_format must be one of {sorted(UTTERANCE_AUDIO_FORMATS)}",
                            field="audio_format")
    sample_rate = message.sample_rate
    check_rate_and_mode("utterance", state.sample_rate if sample_rate is None else sample_rate, message.mode)
    index = message.utterance_index
    if index is None:
        return state.next_index
    if index < 0 or index > state.next_index + MAX_INDEX_AHEAD:
        raise ProtocolError(f"utterance: utterance_index {index} is out of range "
                            f"(next expected {state.next_index}, at most {MAX_INDEX_AHEAD} ahead)",
                            field="utterance_index")
    return index


def build_job_spec(state: SessionState, segmentation: SegmentationConfig, index: int, finalized_at: float,
                   source: Cut | m.Utterance, turn_id: str | None = None) -> JobSpec:
    """The job for utterance ``index`` of the session: from a cut of its streamed audio, or from an ``utterance``
    message (already checked by ``utterance_index``), whose fields override the session's. ``turn_id`` is the
    new turn of an utterance message (a cut carries its own). Issue 14: the job carries the session's wish for
    ui_events and, while its utterance group is open, the group's recent text (``context_text``)."""
    init = state.init
    mode, lang_a, lang_b = init.mode, init.lang_a, init.lang_b
    if type(source) is Cut:
        trace_id, src, tgt, selection_key = state.trace_id, state.src_lang, state.tgt_lang, state.selection_key
        pipeline, audio, audio_b64 = state.pipeline, source.audio, None
        audio_format, sample_rate, turn_id = state.audio_format, state.sample_rate, source.turn_id
        cut_reason, padding_ms = source.reason.value, _cut_padding(source.reason, segmentation)
        is_manual_cut = source.reason in MANUAL_CUTS
        is_timeout_triggered, is_max_duration_triggered = source.is_timeout_triggered, source.is_max_duration_triggered
        dialect, features = init.dialect, init.features
    else:
        assert type(source) is m.Utterance
        trace_id = source.trace_id or state.trace_id
        src, tgt = source.src_lang or state.src_lang, source.tgt_lang or state.tgt_lang
        mode, lang_a, lang_b = source.mode or mode, source.lang_a or lang_a, source.lang_b or lang_b
        selection_key = selection_key_for(src, tgt, mode, lang_a, lang_b)
        # The client's base64 is forwarded as is (audio_b64), never decoded here.
        pipeline, audio, audio_b64 = source.pipeline or state.pipeline, b"", source.audio
        audio_format = (source.audio_format or state.audio_format).strip().lower()
        sample_rate = state.sample_rate if source.sample_rate is None else source.sample_rate
        cut_reason, is_manual_cut = "utterance", source.manual_cut
        padding_ms = segmentation.padding_manual_ms if is_manual_cut else segmentation.padding_auto_ms
        is_timeout_triggered = is_max_duration_triggered = False
        dialect = source.dialect or init.dialect
        features = source.features if source.features is not None else init.features
    groups = state.groups
    return JobSpec(
        session_id=state.session_id,
        utterance_index=index,
        trace_id=trace_id,
        src_lang=src,
        tgt_lang=tgt,
        selection_key=selection_key,
        pipeline=pipeline,
        audio=audio,
        audio_format=audio_format,
        sample_rate=sample_rate,
        turn_id=turn_id,
        cut_reason=cut_reason,
        finalized_at=finalized_at,
        padding_ms=padding_ms,
        is_manual_cut=is_manual_cut,
        is_timeout_triggered=is_timeout_triggered,
        is_max_duration_triggered=is_max_duration_triggered,
        dialect=dialect,
        features=features,
        mode=mode,
        lang_a=lang_a,
        lang_b=lang_b,
        auto_langs=init.auto_langs,
        enable_streaming_asr=True if init.enable_streaming_asr is None else init.enable_streaming_asr,
        partial_update_interval_ms=1000 if init.partial_update_interval_ms is None
        else init.partial_update_interval_ms,
        tenant_id=init.tenant_id,
        audio_b64=audio_b64,
        ui_events=bool(init.ui_events),
        context_text=groups.context_text(finalized_at) if groups is not None else None,
    )


def _cut_padding(reason: CutReason, segmentation: SegmentationConfig) -> int | None:
    """The silence the node appends: the manual padding for a manual cut (is_final, session_close), none after a
    max-buffer cut (it splits speech), the automatic padding otherwise."""
    if reason in MANUAL_CUTS:
        return segmentation.padding_manual_ms
    if reason is CutReason.MAX_BUFFER:
        return None
    return segmentation.padding_auto_ms
