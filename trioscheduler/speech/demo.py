"""``python -m trioscheduler demo --speech``: the scheduler, one speech node and a client that speaks, in one process.

The client's voice is espeak-ng reading a few English sentences, sent as opus through the client SDK; the speech
node (pocketsphinx, the glossary translator, espeak-ng) answers each with the recognised words, their glossary
translation and synthesised speech, which is saved as a WAV to listen to. With ``keep`` the scheduler and the node
go on serving until Ctrl-C, so the ``/try`` page can be used from a browser. Without the speech packages it says
how to install them and returns 2.
"""

from __future__ import annotations

import functools
import signal
import tempfile
from pathlib import Path

import trio

from trioscheduler import client
from trioscheduler.config import Config, config_with
from trioscheduler.server.listener import serve
from trioscheduler.speech.audio import parse_wav, resample
from trioscheduler.speech.node import run_speech_node
from trioscheduler.speech.requirements import INSTALL_HINT, missing_requirements
from trioscheduler.speech.tts import EspeakSynthesizer

#: (what the client says, the language it wants it in).
SENTENCES = (("hello world", "zh"), ("one two three", "de"), ("good morning", "zh"))
RESULT_TIMEOUT_S = 60.0


def try_page_url(http_url: str, session_url: str) -> str:
    return f"{http_url}/try?scheduler={session_url}"


async def speak_one(session_url: str, text: str, tgt: str, path: Path) -> bool:
    """Say ``text`` in English over a new session, print what came back and save its speech at ``path``; True
    for a translation_result."""
    voice = resample(await EspeakSynthesizer().synthesize(text, "en"), 16000)
    with trio.fail_after(RESULT_TIMEOUT_S):
        async with client.connect(session_url, src_lang="en", tgt_lang=tgt, audio_format="opus") as session:
            await session.send_audio(voice.samples)
            await session.end_utterance()
            async for outcome in session:
                if isinstance(outcome, client.Partial):
                    continue
                if not isinstance(outcome, client.Result):
                    print(f"  [en->{tgt}] said {text!r}: {outcome}", flush=True)
                    return False
                await trio.Path(path).write_bytes(outcome.tts_audio)
                seconds = parse_wav(outcome.tts_audio).duration_s if outcome.tts_audio else 0.0
                translator = (outcome.extra or {}).get("translator", "?")
                print(f"  [en->{tgt}] said {text!r} -> heard {outcome.text_asr!r} -> {outcome.text_translated!r}\n"
                      f"            translation: {translator}; speech {seconds:.1f} s in {path}", flush=True)
                return True
    return False


async def run_speech_demo(config: Config, keep: bool = False) -> int:
    missing = missing_requirements()
    if missing:
        print(f"demo --speech needs {', '.join(missing)}.\nInstall them: {INSTALL_HINT}\n"
              "(python -m trioscheduler demo, without --speech, runs with simulated nodes.)", flush=True)
        return 2
    config = config_with(config, server={"port": 0, "http_port": 0})
    out_dir = Path(tempfile.mkdtemp(prefix="trioscheduler-speech-"))
    failures = 0
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(functools.partial(serve, config))
        print(f"scheduler: sessions {listening.session_url}, nodes {listening.node_url}, "
              f"health {listening.http_url}/health", flush=True)
        node_id = await nursery.start(functools.partial(run_speech_node, listening.node_url, drain_signals=()))
        print(f"node {node_id}: speech node — pocketsphinx (English in), glossary translation (word by word, "
              f"not a translation model), espeak-ng (en, zh, de out)\n", flush=True)
        for i, (text, tgt) in enumerate(SENTENCES):
            failures += not await speak_one(listening.session_url, text, tgt, out_dir / f"{i:02d}-{tgt}.wav")
        print(f"\nlisten: aplay {out_dir}/*.wav  (or open them in any audio player)", flush=True)
        if keep:
            await _serve_until_signal(try_page_url(listening.http_url, listening.session_url))
        nursery.cancel_scope.cancel()
    return 1 if failures else 0


async def _serve_until_signal(page_url: str) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        print(f"speak yourself: open {page_url}  — serving until Ctrl-C", flush=True)
        async for _ in signals:
            return


__all__ = ["SENTENCES", "run_speech_demo", "try_page_url"]
