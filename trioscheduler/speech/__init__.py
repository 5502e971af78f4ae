"""A worker node that really hears and speaks: pocketsphinx ASR, a pluggable translator, espeak-ng TTS.

Its optional packages come with ``pip install -e '.[speech]'`` plus Debian's espeak-ng and libopus0;
:func:`missing_requirements` says what is missing. Nothing here is imported by the scheduler itself.
The default translator is a word-by-word glossary, not a translation model (see :mod:`.translate`).
"""

from trioscheduler.speech.asr import ASR_LANGUAGES, PocketsphinxRecognizer
from trioscheduler.speech.audio import AudioFormatError, Pcm16, parse_wav, resample, rms, wav_bytes
from trioscheduler.speech.pipeline import SpeechOutcome, SpeechPipeline
from trioscheduler.speech.requirements import INSTALL_HINT, missing_requirements
from trioscheduler.speech.translate import GLOSSARY_LABEL, GlossaryTranslator, Translation, Translator
from trioscheduler.speech.tts import VOICES, EspeakSynthesizer, SynthesisError, espeak_path

__all__ = [
    "ASR_LANGUAGES",
    "GLOSSARY_LABEL",
    "INSTALL_HINT",
    "VOICES",
    "AudioFormatError",
    "EspeakSynthesizer",
    "GlossaryTranslator",
    "Pcm16",
    "PocketsphinxRecognizer",
    "SpeechOutcome",
    "SpeechPipeline",
    "SynthesisError",
    "Translation",
    "Translator",
    "espeak_path",
    "missing_requirements",
    "parse_wav",
    "resample",
    "rms",
    "wav_bytes",
]
