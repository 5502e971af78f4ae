"""The messages that end an utterance, built from a job and what its node answered. Pure code: no registry state.
"""

from __future__ import annotations

from typing import Any

from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import ErrorCode
from trioscheduler.registry.state import Job
from trioscheduler.wallclock import wall_ms

#: A node's ``extra.reason`` that means "nothing was said": the client gets a MissingResult, not an empty text.
EMPTY_REASONS = frozenset({"ASR_EMPTY", "NO_TEXT_ASSIGNED"})



def success_outcome(job: Job, message: m.JobResult, now: float) -> m.TranslationResult | m.MissingResult:
    """A successful job_result as the client sees it: a MissingResult when the node found no speech (an empty
    reason, or no text and no audio at all), else a TranslationResult with the scheduler's own timings."""
    spec = job.spec
    extra = message.extra or {}
    text_asr = message.text_asr or ""
    text_translated = message.text_translated or ""
    tts_audio = message.tts_audio or ""
    if extra.get("reason") in EMPTY_REASONS or not (text_asr.strip() or text_translated.strip() or tts_audio):
        return m.MissingResult(
            session_id=spec.session_id, utterance_index=spec.utterance_index, reason="silence_detected",
            created_at_ms=wall_ms(), trace_id=spec.trace_id, job_id=job.job_id,
        )
    timings = message.service_timings or extra.get("service_timings")
    if timings is None and message.processing_time_ms is not None:
        timings = {"total_ms": message.processing_time_ms}
    return m.TranslationResult(
        session_id=spec.session_id,
        utterance_index=spec.utterance_index,
        job_id=job.job_id,
        text_asr=text_asr,
        text_translated=text_translated,
        tts_audio=tts_audio,
        tts_format=message.tts_format or "pcm16",
        trace_id=spec.trace_id,
        scheduler_sent_at_ms=wall_ms(),
        extra=message.extra,
        service_timings=timings,
        network_timings={
            "scheduler_queue_ms": round((job.dispatched_at - spec.finalized_at) * 1000.0, 3),
            "node_round_trip_ms": round((now - job.dispatched_at) * 1000.0, 3),
        },
        node_id=job.node_id,
        group_id=message.group_id,
        part_index=message.part_index,
        asr_quality_level=message.asr_quality_level,
        reason_codes=message.reason_codes,
        quality_score=message.quality_score,
        rerun_count=message.rerun_count,
        segments_meta=message.segments_meta,
    )


def merged_outcome(job: Job, merged_into: int) -> m.MissingResult:
    """The outcome of a job whose node answered a later job of the same turn instead: its audio is in that answer."""
    spec = job.spec
    return m.MissingResult(
        session_id=spec.session_id, utterance_index=spec.utterance_index, reason="merged",
        created_at_ms=wall_ms(), trace_id=spec.trace_id, job_id=job.job_id, merged_into=merged_into,
    )


def error_outcome(job: Job, code: ErrorCode | m.Code, message: str, details: Any = None) -> m.ErrorMessage:
    spec = job.spec
    return m.ErrorMessage(
        code=code, message=message, details=details, session_id=spec.session_id,
        utterance_index=spec.utterance_index, job_id=job.job_id, trace_id=spec.trace_id,
    )


def partial_message(job: Job, message: m.AsrPartialIn) -> m.AsrPartialOut:
    spec = job.spec
    return m.AsrPartialOut(
        session_id=spec.session_id, utterance_index=spec.utterance_index, job_id=job.job_id,
        text=message.text, is_final=message.is_final, trace_id=spec.trace_id,
    )


def job_assign(job: Job) -> m.JobAssign:
    """The job_assign of the job's current attempt."""
    spec = job.spec
    return m.JobAssign(
        job_id=job.job_id,
        attempt_id=job.attempt,
        session_id=spec.session_id,
        utterance_index=spec.utterance_index,
        src_lang=spec.src_lang,
        tgt_lang=spec.tgt_lang,
        pipeline=spec.pipeline,
        audio=job.audio_b64(),
        audio_format=spec.audio_format,
        sample_rate=spec.sample_rate,
        trace_id=spec.trace_id,
        enable_streaming_asr=spec.enable_streaming_asr,
        partial_update_interval_ms=spec.partial_update_interval_ms,
        dialect=spec.dialect,
        features=spec.features,
        mode=spec.mode,
        lang_a=spec.lang_a,
        lang_b=spec.lang_b,
        auto_langs=spec.auto_langs,
        padding_ms=spec.padding_ms,
        turn_id=spec.turn_id,
        is_manual_cut=spec.is_manual_cut or None,
        is_timeout_triggered=spec.is_timeout_triggered or None,
        is_max_duration_triggered=spec.is_max_duration_triggered or None,
        context_text=spec.context_text,
        tenant_id=spec.tenant_id,
    )
