"""One utterance through the speech engines: decode the audio, recognise it, translate the text, speak the translation.

The pipeline is the speech node's job handler without the wire: :meth:`SpeechPipeline.run` takes the job's audio
and languages and returns a :class:`SpeechOutcome`, whose :meth:`~SpeechOutcome.job_result_fields` are the
``job_result`` a node sends. Audio it cannot read, a language it cannot hear and audio longer than
``max_audio_s`` are failures with a code (nothing is raised for what a client sent). No words heard, or audio
quieter than ``silence_rms``, is a success with ``extra.reason = "ASR_EMPTY"``, which the scheduler turns into
``missing_result silence_detected``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trioscheduler.speech.asr import ASR_LANGUAGES, PocketsphinxRecognizer
from trioscheduler.speech.audio import AudioFormatError, Pcm16, parse_wav, rms, wav_bytes
from trioscheduler.speech.translate import GlossaryTranslator, Translator
from trioscheduler.speech.tts import EspeakSynthesizer, SynthesisError

#: Opus payload (the original's length-prefixed packets) and its sample rate → mono pcm16 at that rate.
OpusDecoder = Callable[[bytes, int], bytes]

UNSUPPORTED_LANGUAGE = "UNSUPPORTED_LANGUAGE"
INVALID_AUDIO = "INVALID_AUDIO"
AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
TTS_FAILED = "TTS_FAILED"


@attrs.frozen
class SpeechOutcome:
    """What became of one utterance: recognised and translated text and synthesised speech, or an error code."""

    text_asr: str = ""
    text_translated: str = ""
    tts_audio: bytes = b""  # a mono 16-bit WAV, or empty
    translator: str = ""
    error_code: str | None = None
    error_message: str = ""
    timings_ms: dict[str, float] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def job_result_fields(self) -> dict[str, Any]:
        """The ``job_result`` fields (without ``job_id``/``attempt_id``): what a node sends for this outcome."""
        if self.error_code is not None:
            return {"success": False, "error": {"code": self.error_code, "message": self.error_message}}
        extra: dict[str, Any] = {"asr": "pocketsphinx", "tts": "espeak-ng", "translator": self.translator}
        if not self.text_asr:
            extra["reason"] = "ASR_EMPTY"
        fields: dict[str, Any] = {
            "success": True, "text_asr": self.text_asr, "text_translated": self.text_translated, "extra": extra,
            "service_timings": dict(self.timings_ms), "processing_time_ms": self.timings_ms.get("total_ms", 0.0),
        }
        if self.tts_audio:
            fields["tts_audio"] = base64.b64encode(self.tts_audio).decode("ascii")
            fields["tts_format"] = "wav"
        return fields


def _failure(code: str, message: str) -> SpeechOutcome:
    return SpeechOutcome(error_code=code, error_message=message)


@attrs.define
class SpeechPipeline:
    """ASR (pocketsphinx), a :class:`Translator` (the glossary by default) and TTS (espeak-ng)."""

    recognizer: PocketsphinxRecognizer = attrs.field(factory=PocketsphinxRecognizer)
    translator: Translator = attrs.field(factory=GlossaryTranslator)
    synthesizer: EspeakSynthesizer = attrs.field(factory=EspeakSynthesizer)
    opus_decoder: OpusDecoder | None = None
    max_audio_s: float = 60.0
    #: Audio quieter than this root mean square (pcm16 scale) is silence, not sent to the recogniser (which
    #: hears words in digital silence).
    silence_rms: float = 100.0

    def decode(self, audio: bytes, audio_format: str, sample_rate: int) -> Pcm16:
        """The job's audio as pcm16; raises AudioFormatError."""
        fmt = audio_format.strip().lower()
        if fmt == "pcm16":
            return Pcm16(audio[:len(audio) - len(audio) % 2], sample_rate)
        if fmt == "wav":
            return parse_wav(audio)
        if fmt == "opus":
            if self.opus_decoder is None:
                raise AudioFormatError("this node has no opus decoder")
            return Pcm16(self.opus_decoder(audio, sample_rate), sample_rate)
        raise AudioFormatError(f"unknown audio format {audio_format!r}")

    def _decode_and_measure(self, audio: bytes, audio_format: str, sample_rate: int) -> tuple[Pcm16, float]:
        pcm = self.decode(audio, audio_format, sample_rate)
        return pcm, rms(pcm.samples)

    async def run(self, audio: bytes, audio_format: str, sample_rate: int, src_lang: str, tgt_lang: str,
                  *, use_tts: bool = True) -> SpeechOutcome:
        """Recognise, translate and (with ``use_tts``) speak one utterance."""
        src, tgt = src_lang.strip().lower(), tgt_lang.strip().lower()
        if src not in ASR_LANGUAGES:
            return _failure(UNSUPPORTED_LANGUAGE, f"this node recognises {', '.join(ASR_LANGUAGES)}, not {src!r}")
        if use_tts and not self.synthesizer.speaks(tgt):
            return _failure(UNSUPPORTED_LANGUAGE, f"this node cannot speak {tgt!r}")
        started = time.monotonic()
        try:
            # decoding and loudness are blocking work on the whole utterance: off the event loop
            pcm, loudness = await trio.to_thread.run_sync(self._decode_and_measure, audio, audio_format, sample_rate)
        except (AudioFormatError, ValueError) as exc:
            return _failure(INVALID_AUDIO, str(exc))
        if pcm.duration_s > self.max_audio_s:
            return _failure(AUDIO_TOO_LONG, f"{pcm.duration_s:.1f} s of audio, at most {self.max_audio_s} s")
        text_asr = await self.recognizer.recognize(pcm) if loudness >= self.silence_rms else ""
        asr_done = time.monotonic()
        if not text_asr:
            return SpeechOutcome(timings_ms={"asr_ms": _ms(asr_done - started), "total_ms": _ms(asr_done - started)})
        translation = await self.translator.translate(text_asr, src, tgt)
        nmt_done = time.monotonic()
        speech = b""
        if use_tts and translation.text:
            try:
                speech = wav_bytes(await self.synthesizer.synthesize(translation.text, tgt))
            except SynthesisError as exc:
                return _failure(TTS_FAILED, str(exc))
        done = time.monotonic()
        return SpeechOutcome(
            text_asr=text_asr, text_translated=translation.text, tts_audio=speech, translator=translation.translator,
            timings_ms={"asr_ms": _ms(asr_done - started), "nmt_ms": _ms(nmt_done - asr_done),
                        "tts_ms": _ms(done - nmt_done), "total_ms": _ms(done - started)})


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
