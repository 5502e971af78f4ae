"""The speech node's engines on their own: WAV and resampling, the glossary translator, espeak-ng, pocketsphinx and
the pipeline joining them (real engines; skipped without them, failing under CI)."""

from __future__ import annotations

import contextlib
import struct
from array import array
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from tests.native import require
from trioscheduler.speech import (
    GLOSSARY_LABEL,
    AudioFormatError,
    EspeakSynthesizer,
    GlossaryTranslator,
    Pcm16,
    PocketsphinxRecognizer,
    SpeechPipeline,
    SynthesisError,
    missing_requirements,
    parse_wav,
    resample,
    rms,
    wav_bytes,
)
from trioscheduler.speech.pipeline import AUDIO_TOO_LONG, INVALID_AUDIO, TTS_FAILED, UNSUPPORTED_LANGUAGE

SPOKEN = "hello world one two three"
SPOKEN_WORDS = set(SPOKEN.split())


def require_speech_engines() -> None:
    missing = missing_requirements()
    require(f"the speech engines need {', '.join(missing)}" if missing else None)


def tone(seconds: float, rate: int, amplitude: int = 8000) -> Pcm16:
    samples = array("h", ((amplitude if (i // 20) % 2 else -amplitude) for i in range(int(seconds * rate))))
    return Pcm16(samples.tobytes(), rate)


# --- audio -------------------------------------------------------------------------------------------------------

@given(samples=st.binary(max_size=4000).map(lambda b: b[:len(b) - len(b) % 2]),
       rate=st.integers(min_value=8000, max_value=192000))
def test_wav_round_trip(samples: bytes, rate: int) -> None:
    assert parse_wav(wav_bytes(Pcm16(samples, rate))) == Pcm16(samples, rate)


def test_wav_with_placeholder_sizes_reads_to_the_end() -> None:
    """espeak-ng writing to a pipe puts 0x7fffffff-ish sizes in its header: the data runs to the end of the bytes."""
    samples = array("h", range(-500, 500)).tobytes()
    header = bytearray(wav_bytes(Pcm16(b"", 22050)))
    struct.pack_into("<I", header, 4, 0x7FFFF024)
    struct.pack_into("<I", header, 40, 0x7FFFF000)
    assert parse_wav(bytes(header) + samples) == Pcm16(samples, 22050)


def test_stereo_wav_is_mixed_to_mono() -> None:
    stereo = array("h", [100, 300, -100, -300]).tobytes()
    data = bytearray(wav_bytes(Pcm16(stereo, 8000)))
    struct.pack_into("<HHIIHH", data, 20, 1, 2, 8000, 32000, 4, 16)
    assert parse_wav(bytes(data)).samples == array("h", [200, -200]).tobytes()


@given(st.binary(max_size=200))
def test_parse_wav_refuses_garbage_with_audio_format_error_only(data: bytes) -> None:
    with contextlib.suppress(AudioFormatError):
        parse_wav(data)


@given(st.binary(max_size=300))
def test_parse_wav_of_a_riff_header_and_garbage(tail: bytes) -> None:
    with contextlib.suppress(AudioFormatError):
        parse_wav(b"RIFF\x00\x00\x00\x00WAVE" + tail)


def test_eight_bit_wav_is_refused() -> None:
    data = bytearray(wav_bytes(Pcm16(b"\x00\x00", 8000)))
    struct.pack_into("<H", data, 34, 8)
    with pytest.raises(AudioFormatError, match="16-bit"):
        parse_wav(bytes(data))


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (22050, 16000), (8000, 16000), (16000, 16000)])
def test_resample_keeps_duration_and_a_constant_level(src: int, dst: int) -> None:
    constant = Pcm16(array("h", [1234] * src).tobytes(), src)
    out = resample(constant, dst)
    assert out.sample_rate == dst
    assert abs(out.duration_s - 1.0) <= 1 / dst
    assert set(array("h", out.samples)) == {1234}
    assert rms(out.samples) == pytest.approx(1234)


# --- translation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("tgt", "expected"), [("zh", "你好世界一二三"), ("de", "hallo Welt eins zwei drei")])
async def test_glossary_translates_word_by_word_and_says_so(tgt: str, expected: str) -> None:
    translation = await GlossaryTranslator().translate(SPOKEN, "en", tgt)
    assert translation.text == expected
    assert translation.translator == GLOSSARY_LABEL
    assert "not a translation model" in translation.translator


@pytest.mark.parametrize(("tgt", "expected"), [("zh", "早上好朋友"), ("de", "guten Morgen Freund")])
async def test_glossary_looks_phrases_up_before_words(tgt: str, expected: str) -> None:
    assert (await GlossaryTranslator().translate("Good morning friend", "en", tgt)).text == expected


async def test_glossary_keeps_unknown_words_and_other_pairs() -> None:
    translator = GlossaryTranslator()
    assert (await translator.translate("hello zebra", "en", "de")).text == "hallo zebra"
    assert (await translator.translate("你好", "zh", "en")).text == "你好"


# --- espeak-ng and pocketsphinx ----------------------------------------------------------------------------------

async def test_espeak_speaks_for_a_plausible_time() -> None:
    require_speech_engines()
    speech = await EspeakSynthesizer().synthesize(SPOKEN, "en")
    assert 1.0 < speech.duration_s < 5.0
    assert rms(speech.samples) > 500


async def test_text_is_never_read_as_an_espeak_option() -> None:
    require_speech_engines()
    speech = await EspeakSynthesizer().synthesize("--help", "en")
    assert speech.duration_s > 0.2


async def test_espeak_text_is_cut_to_max_chars() -> None:
    require_speech_engines()
    short = await EspeakSynthesizer(max_chars=5).synthesize("hello " * 40, "en")
    assert short.duration_s < 1.5


@pytest.mark.parametrize("script", ["#!/bin/sh\nexit 3\n", "#!/bin/sh\nexec sleep 60\n", "#!/bin/sh\necho no\n",
                                    None])
async def test_a_synthesis_that_fails_is_tts_failed(script: str | None, tmp_path: Path,
                                                    autojump_clock: trio.testing.MockClock) -> None:
    """espeak-ng exiting non-zero, hanging past timeout_s (killed), writing no WAV, or missing: TTS_FAILED."""
    binary = tmp_path / "espeak-ng"
    if script is not None:
        binary.write_text(script)
        binary.chmod(0o755)
    synthesizer = EspeakSynthesizer(binary=str(binary), timeout_s=5.0)
    with pytest.raises(SynthesisError):
        await synthesizer.synthesize("hello", "en")

    class Hears:
        async def recognize(self, audio: Pcm16) -> str:
            return "hello"

    pipeline = SpeechPipeline(recognizer=Hears(), synthesizer=synthesizer)  # type: ignore[arg-type]
    outcome = await pipeline.run(tone(0.5, 16000).samples, "pcm16", 16000, "en", "de")
    assert outcome.error_code == TTS_FAILED, outcome


async def test_pocketsphinx_hears_espeak() -> None:
    require_speech_engines()
    speech = await EspeakSynthesizer().synthesize(SPOKEN, "en")
    heard = set((await PocketsphinxRecognizer().recognize(speech)).split())
    assert len(heard & SPOKEN_WORDS) >= 3, heard


async def test_fast_speech_survives_resampling_to_16_khz() -> None:
    """espeak-ng's 22 050 Hz at its default speed, taken down to 16 kHz: plain linear interpolation folds enough
    high frequency back for pocketsphinx to hear 'oh where oh where' instead of 'hello world'."""
    require_speech_engines()
    speech = await EspeakSynthesizer(words_per_minute=175).synthesize(SPOKEN, "en")
    heard = set((await PocketsphinxRecognizer().recognize(resample(speech, 16000))).split())
    assert {"hello", "world"} <= heard, heard


async def test_one_decoder_serves_concurrent_utterances_one_at_a_time() -> None:
    require_speech_engines()
    speech = await EspeakSynthesizer().synthesize(SPOKEN, "en")
    recognizer = PocketsphinxRecognizer(decoders=1)
    heard: list[str] = []

    async def one() -> None:
        heard.append(await recognizer.recognize(speech))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert recognizer._created == 1
    assert len(heard) == 3 and len(set(heard)) == 1
    assert len(set(heard[0].split()) & SPOKEN_WORDS) >= 3


@given(audio=st.binary(max_size=600), audio_format=st.sampled_from(["pcm16", "wav", "opus", "OPUS ", "mp3"]),
       sample_rate=st.sampled_from([8000, 16000, 22050, 48000]))
def test_decode_refuses_what_it_cannot_read_with_a_value_error(audio: bytes, audio_format: str,
                                                                sample_rate: int) -> None:
    """Whatever a client sent as audio, decoding either gives pcm16 or raises ValueError (→ INVALID_AUDIO)."""
    from trioscheduler import opus

    pipeline = SpeechPipeline(opus_decoder=opus.decode)
    try:
        pcm = pipeline.decode(audio, audio_format, sample_rate)
    except ValueError:
        return
    assert len(pcm.samples) % 2 == 0


# --- the pipeline ------------------------------------------------------------------------------------------------

async def test_pipeline_recognises_translates_and_speaks() -> None:
    require_speech_engines()
    pipeline = SpeechPipeline()
    speech = await pipeline.synthesizer.synthesize(SPOKEN, "en")
    outcome = await pipeline.run(speech.samples, "pcm16", speech.sample_rate, "en", "de")
    assert outcome.ok
    assert len(set(outcome.text_asr.split()) & SPOKEN_WORDS) >= 3
    assert outcome.translator == GLOSSARY_LABEL
    assert parse_wav(outcome.tts_audio).duration_s > 0.5
    fields = outcome.job_result_fields()
    assert fields["success"] is True and fields["tts_format"] == "wav"
    assert fields["extra"]["translator"] == GLOSSARY_LABEL


async def test_pipeline_answers_silence_as_asr_empty() -> None:
    require_speech_engines()
    silence = bytes(2 * 16000)
    fields = (await SpeechPipeline().run(silence, "pcm16", 16000, "en", "zh")).job_result_fields()
    assert fields["success"] is True
    assert fields["extra"]["reason"] == "ASR_EMPTY"
    assert "tts_audio" not in fields


async def test_pipeline_failures_have_codes() -> None:
    pipeline = SpeechPipeline(max_audio_s=1.0)
    cases = [
        (await pipeline.run(b"\x00\x00" * 100, "pcm16", 16000, "zh", "en"), UNSUPPORTED_LANGUAGE),
        (await pipeline.run(b"\x00\x00" * 100, "pcm16", 16000, "en", "xx"), UNSUPPORTED_LANGUAGE),
        (await pipeline.run(b"not a wav", "wav", 16000, "en", "zh"), INVALID_AUDIO),
        (await pipeline.run(b"\x01\x00", "opus", 16000, "en", "zh"), INVALID_AUDIO),
        (await pipeline.run(tone(2.0, 16000).samples, "pcm16", 16000, "en", "zh"), AUDIO_TOO_LONG),
    ]
    for outcome, code in cases:
        assert outcome.job_result_fields() == {"success": False, "error": {"code": code,
                                                                           "message": outcome.error_message}}
