"""The speech node: :class:`~trioscheduler.speech.pipeline.SpeechPipeline` behind the node SDK.

:func:`speech_handler` turns a pipeline into a handler for :func:`trioscheduler.node.run`; :func:`run_speech_node`
runs one. Opus audio is decoded with :func:`trioscheduler.opus.decode`. The node registers the languages it can
speak; it recognises English only, so a job from another source language is answered with
``UNSUPPORTED_LANGUAGE`` rather than with wrong words.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

from trioscheduler import node as node_sdk
from trioscheduler import opus
from trioscheduler.speech.asr import PocketsphinxRecognizer
from trioscheduler.speech.pipeline import SpeechPipeline
from trioscheduler.speech.translate import GlossaryTranslator, Translator
from trioscheduler.speech.tts import EspeakSynthesizer

logger = logging.getLogger(__name__)

#: The languages the default speech node registers: English speech in, English, Chinese or German out.
SPEECH_NODE_LANGUAGES = ("en", "zh", "de")


def build_pipeline(*, capacity: int = 2, translator: Translator | None = None, max_audio_s: float = 60.0,
                   words_per_minute: int = 140, tts_max_chars: int = 1000, tts_timeout_s: float = 20.0
                   ) -> SpeechPipeline:
    """A pipeline with ``capacity`` pocketsphinx decoders, opus decoding by the SDK and ``translator`` (the
    glossary by default)."""
    return SpeechPipeline(
        recognizer=PocketsphinxRecognizer(decoders=capacity),
        translator=translator if translator is not None else GlossaryTranslator(),
        synthesizer=EspeakSynthesizer(words_per_minute=words_per_minute, max_chars=tts_max_chars,
                                      timeout_s=tts_timeout_s),
        opus_decoder=opus.decode,
        max_audio_s=max_audio_s,
    )


def speech_handler(pipeline: SpeechPipeline) -> Callable[[node_sdk.Job], Awaitable[Mapping[str, Any]]]:
    """A node SDK handler answering each job with ``pipeline`` (TTS only when the job's pipeline asks for it)."""

    async def handle(job: node_sdk.Job) -> Mapping[str, Any]:
        outcome = await pipeline.run(job.audio, job.audio_format, job.sample_rate, job.src_lang, job.tgt_lang,
                                     use_tts=job.pipeline.use_tts)
        if outcome.ok:
            logger.info("%s #%d %s->%s: %r -> %r (%s)", job.session_id, job.utterance_index, job.src_lang,
                        job.tgt_lang, outcome.text_asr, outcome.text_translated, outcome.translator or "no words")
        else:
            logger.info("%s #%d %s->%s: %s %s", job.session_id, job.utterance_index, job.src_lang, job.tgt_lang,
                        outcome.error_code, outcome.error_message)
        return outcome.job_result_fields()

    return handle


async def run_speech_node(
    url: str,
    *,
    pipeline: SpeechPipeline | None = None,
    capacity: int = 2,
    node_id: str | None = None,
    token: str | None = None,
    languages: Sequence[str] = SPEECH_NODE_LANGUAGES,
    drain_signals: Sequence[signal.Signals] = (signal.SIGTERM,),
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a speech node at ``url`` (the scheduler's ``/ws/node``) until it has drained; see
    :func:`trioscheduler.node.run` for reconnection, capacity, cancellation and draining."""
    handler = speech_handler(pipeline if pipeline is not None else build_pipeline(capacity=capacity))
    await node_sdk.run(url, handler, languages=languages, capacity=capacity, node_id=node_id, token=token,
                       drain_signals=drain_signals, stop=stop, task_status=task_status)
