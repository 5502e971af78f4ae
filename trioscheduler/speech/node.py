"""The speech node: :class:`~trioscheduler.speech.pipeline.SpeechPipeline` behind the node SDK.

:func:`speech_handler` turns a pipeline into a handler for :func:`trioscheduler.node.run`; :func:`run_speech_node`
runs one. Opus audio is decoded with :func:`trioscheduler.opus.decode`. The node registers what its engines can
really do: as sources the languages pocketsphinx recognises (:data:`SPEECH_NODE_SOURCES`, English), as targets
those the translator writes and espeak-ng speaks (:data:`SPEECH_NODE_TARGETS`), so the scheduler sends it no job
it cannot do. A job from another source language that reaches it anyway is answered with ``UNSUPPORTED_LANGUAGE``
rather than with wrong words.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from trioscheduler import node as node_sdk
from trioscheduler import opus
from trioscheduler.speech.asr import ASR_LANGUAGES, PocketsphinxRecognizer
from trioscheduler.speech.pipeline import SpeechPipeline
from trioscheduler.speech.translate import GLOSSARY_TARGETS, GlossaryTranslator, Translator
from trioscheduler.speech.tts import EspeakSynthesizer

logger = logging.getLogger(__name__)



def spoken_targets(written: Iterable[str]) -> tuple[str, ...]:
    """Of the languages a translator writes, those espeak-ng can also speak: what a speech node may register as
    targets (a job's TTS is in its target language)."""
    return tuple(language for language in written if EspeakSynthesizer.speaks(language))


#: What the default speech node registers as sources: the languages its pocketsphinx model recognises (English).
SPEECH_NODE_SOURCES = ASR_LANGUAGES
#: ... and as targets: what the glossary writes from English and espeak-ng speaks (English, Chinese, German).
SPEECH_NODE_TARGETS = spoken_targets(GLOSSARY_TARGETS)


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
    sources: Sequence[str] = SPEECH_NODE_SOURCES,
    targets: Sequence[str] = SPEECH_NODE_TARGETS,
    drain_signals: Sequence[signal.Signals] = (signal.SIGTERM,),
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a speech node at ``url`` (the scheduler's ``/ws/node``) until it has drained; see
    :func:`trioscheduler.node.run` for reconnection, capacity, cancellation and draining. It registers
    ``sources`` for ASR and ``targets`` for translation and TTS: with another translator, pass the languages it
    writes through :func:`spoken_targets`."""
    handler = speech_handler(pipeline if pipeline is not None else build_pipeline(capacity=capacity))
    await node_sdk.run(url, handler, languages=sources, targets=targets, capacity=capacity, node_id=node_id,
                       token=token, drain_signals=drain_signals, stop=stop, task_status=task_status)
