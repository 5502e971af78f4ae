"""The speech node registers what its engines really do: pocketsphinx's shipped model recognises English only, the
glossary writes English, Chinese and German from English, and espeak-ng speaks those. It used to register en, zh
and de for ASR too, so the scheduler sent it Chinese and German speech that it could only refuse."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import pytest
import trio

from tests.native import require
from tests.wire import b64, pcm, session, start_daemon
from trioscheduler import node as node_sdk
from trioscheduler.config import Config
from trioscheduler.speech.asr import ASR_LANGUAGES
from trioscheduler.speech.node import SPEECH_NODE_SOURCES, SPEECH_NODE_TARGETS, run_speech_node, spoken_targets
from trioscheduler.speech.translate import GlossaryTranslator
from trioscheduler.speech.tts import VOICES, EspeakSynthesizer


def test_the_pocketsphinx_model_it_ships_with_is_english_only() -> None:
    try:
        import pocketsphinx  # type: ignore[import-untyped]
    except ImportError:
        require("pocketsphinx is not installed")
    model = pocketsphinx.get_model_path()
    acoustic_models = sorted(entry for entry in os.listdir(model) if os.path.isdir(os.path.join(model, entry)))
    assert acoustic_models == ["en-us"]
    assert ASR_LANGUAGES == SPEECH_NODE_SOURCES == ("en",)


@pytest.mark.parametrize("target", SPEECH_NODE_TARGETS)
async def test_every_target_it_registers_is_written_by_the_glossary_and_spoken_by_espeak(target: str) -> None:
    assert GlossaryTranslator.supports("en", target)
    assert EspeakSynthesizer.speaks(target)
    written = (await GlossaryTranslator().translate("hello world", "en", target)).text
    assert written == "hello world" if target == "en" else written != "hello world"


def test_voices_the_glossary_cannot_write_for_are_not_registered() -> None:
    """espeak-ng speaks French and Spanish, but the glossary would hand it English text to read in those voices."""
    assert {"fr", "es"} <= set(VOICES)
    assert set(SPEECH_NODE_TARGETS) == {"en", "zh", "de"}
    assert spoken_targets(["de", "xx", "zh"]) == ("de", "zh")


async def test_the_node_registers_english_in_and_so_gets_no_chinese_speech(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    """Over a real socket: its language pairs are English → each target, and a Chinese speaker's utterance is never
    sent to it (no node for zh → en: NO_AVAILABLE_NODE from the scheduler, not UNSUPPORTED_LANGUAGE from the node)."""
    daemon = await start_daemon(nursery, make_config(scheduler={"pending_timeout_seconds": 0.5}))
    stop = trio.Event()
    await nursery.start(functools.partial(run_speech_node, daemon.node_url, node_id="node-SPEECH02",
                                          drain_signals=(), stop=stop))
    stats = await daemon.scheduler.stats()
    assert stats is not None
    [node] = stats["nodes"]
    assert node["node_id"] == "node-SPEECH02"
    assert node["pairs"] == ["en>de", "en>en", "en>zh"]
    async with session(daemon.session_url, src="zh", tgt="en") as (client, sid):
        await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(200)),
                          audio_format="pcm16", sample_rate=16000, manual_cut=True)
        outcome = await client.recv_type("error", skip=("server_heartbeat",))
    assert outcome["code"] == "NO_AVAILABLE_NODE", outcome
    stats = await daemon.scheduler.stats()
    assert stats is not None and stats["counters"].get("dispatches", 0) == 0
    stop.set()


def test_the_sdk_registers_targets_apart_from_the_languages_it_hears() -> None:
    async def handle(job: node_sdk.Job) -> node_sdk.Answer:
        raise AssertionError("no job here")

    hears_one = node_sdk.HandlerNode(handle, languages="en", capacity=1, targets=("en", "zh"))
    assert hears_one.register_message()["language_capabilities"] == {
        "asr_languages": ["en"], "tts_languages": ["en", "zh"], "semantic_languages": ["en", "zh"]}
    same = node_sdk.HandlerNode(handle, languages=("zh", "en"), capacity=1)
    assert same.heartbeat_message()["language_capabilities"] == {
        "asr_languages": ["zh", "en"], "tts_languages": ["zh", "en"], "semantic_languages": ["zh", "en"]}
