"""End to end without a browser: speech synthesised now (espeak-ng) → client SDK (opus or pcm16) → scheduler →
speech node (pocketsphinx, glossary, espeak-ng) → ``translation_result`` with the spoken words and real speech."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.test_speech_engines import SPOKEN, SPOKEN_WORDS, require_speech_engines
from tests.wire import Daemon
from trioscheduler import client
from trioscheduler.speech import GLOSSARY_LABEL, EspeakSynthesizer, Pcm16, parse_wav, resample, rms
from trioscheduler.speech.node import run_speech_node

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "speech_node.py"
DEADLINE_S = 60.0  # a loaded runner decodes slowly; a bug still fails instead of hanging


async def spoken_pcm16(text: str = SPOKEN) -> Pcm16:
    speech = await EspeakSynthesizer().synthesize(text, "en")
    return resample(speech, 16000)


async def start_speech_node(nursery: trio.Nursery, daemon: Daemon) -> str:
    node_id: str = await nursery.start(functools.partial(run_speech_node, daemon.node_url, capacity=2,
                                                         node_id="node-SPEECH01", drain_signals=()))
    return node_id


async def one_outcome(daemon: Daemon, audio: Pcm16, *, src: str = "en", tgt: str,
                      audio_format: str = "opus") -> client.Outcome:
    with trio.fail_after(DEADLINE_S):
        async with client.connect(daemon.session_url, src_lang=src, tgt_lang=tgt,
                                  audio_format=audio_format) as session:  # type: ignore[arg-type]
            await session.send_audio(audio.samples)
            await session.end_utterance()
            async for outcome in session:
                if not isinstance(outcome, client.Partial):
                    return outcome
    raise AssertionError("the session ended without an outcome")


async def test_opus_speech_is_recognised_translated_and_spoken(nursery: trio.Nursery, daemon: Daemon) -> None:
    require_speech_engines()
    await start_speech_node(nursery, daemon)
    audio = await spoken_pcm16()
    result = await one_outcome(daemon, audio, tgt="de")
    assert isinstance(result, client.Result), result
    heard = set(result.text_asr.split())
    assert len(heard & SPOKEN_WORDS) >= 3, result.text_asr
    assert result.node_id == "node-SPEECH01"
    assert result.extra is not None and result.extra["translator"] == GLOSSARY_LABEL
    assert {"eins", "zwei", "drei", "hallo", "Welt"} & set(result.text_translated.split()), result.text_translated
    assert result.tts_format == "wav"
    speech = parse_wav(result.tts_audio)
    # German for three to five words: longer than a blip, not longer than a few seconds
    assert 0.8 < speech.duration_s < 3 * audio.duration_s, speech.duration_s
    assert rms(speech.samples) > 500


async def test_pcm16_speech_into_chinese(nursery: trio.Nursery, daemon: Daemon) -> None:
    require_speech_engines()
    await start_speech_node(nursery, daemon)
    result = await one_outcome(daemon, await spoken_pcm16(), tgt="zh", audio_format="pcm16")
    assert isinstance(result, client.Result), result
    assert len(set(result.text_asr.split()) & SPOKEN_WORDS) >= 3, result.text_asr
    assert set("你好世界一二三") & set(result.text_translated), result.text_translated
    assert parse_wav(result.tts_audio).duration_s > 0.5


async def test_silence_is_a_missing_result(nursery: trio.Nursery, daemon: Daemon) -> None:
    require_speech_engines()
    await start_speech_node(nursery, daemon)
    outcome = await one_outcome(daemon, Pcm16(bytes(2 * 16000), 16000), tgt="zh")
    assert outcome == client.MissingResult(utterance_index=0, reason="silence_detected",
                                           job_id=getattr(outcome, "job_id", None))


async def test_the_example_serves_until_sigterm(daemon: Daemon) -> None:
    """examples/speech_node.py --scheduler URL: registers, answers real speech, drains and exits 0 on SIGTERM."""
    require_speech_engines()
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLE), "--scheduler", daemon.node_url, "--node-id", "node-EXAMPLE1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(DEADLINE_S):
            while not (snapshot := await daemon.scheduler.stats()) or not snapshot["nodes"]:
                await trio.sleep(0.05)
        result = await one_outcome(daemon, await spoken_pcm16(), tgt="zh")
        assert isinstance(result, client.Result) and result.node_id == "node-EXAMPLE1", result
        assert len(set(result.text_asr.split()) & SPOKEN_WORDS) >= 3, result.text_asr
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(DEADLINE_S):
            code = await process.wait()
        assert process.stderr is not None
        stderr = await process.stderr.receive_some(1 << 20)
        assert code == 0, stderr
        assert b"Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
