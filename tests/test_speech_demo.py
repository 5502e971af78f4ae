"""``python -m trioscheduler demo --speech``: real speech through the whole system when the speech packages are
installed, and how to install them when they are not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from tests.test_speech_engines import require_speech_engines
from trioscheduler.speech.demo import SENTENCES

DEMO = [sys.executable, "-m", "trioscheduler", "demo", "--speech"]


def heard_and_saved(out: str) -> list[str]:
    return [line for line in out.splitlines() if "translation:" in line and "speech" in line]


async def test_demo_speech_translates_spoken_sentences_and_saves_the_speech() -> None:
    require_speech_engines()
    with trio.fail_after(180):
        done = await trio.run_process(DEMO, capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "speech node" in out and "not a translation model" in out
    heard = [line for line in out.splitlines() if "-> heard" in line]
    assert len(heard) == len(SENTENCES), out
    assert "heard 'hello world'" in out or "heard 'one two three'" in out, out
    wavs = [Path(word) for line in heard_and_saved(out) for word in line.split() if word.endswith(".wav")]
    assert len(wavs) == len(SENTENCES)
    for wav in wavs:
        assert wav.read_bytes()[:4] == b"RIFF"


async def test_demo_speech_says_how_to_install_what_is_missing(tmp_path: Path) -> None:
    """With no espeak-ng on PATH the speech demo names what is missing and the install commands, and fails."""
    env = {**os.environ, "PATH": str(tmp_path)}
    with trio.fail_after(60):
        done = await trio.run_process(DEMO, capture_stdout=True, capture_stderr=True, check=False, env=env,
                                      stdin=subprocess.DEVNULL)
    out = done.stdout.decode()
    assert done.returncode == 2, out + done.stderr.decode()
    assert "program espeak-ng" in out
    assert "pip install -e '.[speech]'" in out and "apt-get install espeak-ng" in out
