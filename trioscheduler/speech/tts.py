"""Speech synthesis with espeak-ng, run as a subprocess per utterance.

The text goes to espeak-ng's standard input (never its command line, so no text is read as an option), at most
``max_chars`` characters of it; the process gets ``timeout_s`` and is killed after that.
"""

from __future__ import annotations

import shutil

import trio

from trioscheduler.speech.audio import Pcm16, parse_wav

ESPEAK_BINARY = "espeak-ng"
#: The espeak-ng voice for each language code the node speaks.
VOICES = {"en": "en-us", "zh": "cmn", "de": "de", "fr": "fr", "es": "es"}


class SynthesisError(RuntimeError):
    """espeak-ng failed, timed out, or wrote no audio."""


def espeak_path() -> str | None:
    """Where espeak-ng is, or None when it is not installed."""
    return shutil.which(ESPEAK_BINARY)


async def _kill(process: trio.Process) -> None:
    """espeak-ng has nothing to clean up: a cancelled synthesis is killed at once."""
    process.kill()


class EspeakSynthesizer:
    """Text → mono pcm16 speech in one of :data:`VOICES` (espeak-ng writes 22 050 Hz)."""

    def __init__(self, *, words_per_minute: int = 140, max_chars: int = 1000, timeout_s: float = 20.0,
                 binary: str = ESPEAK_BINARY) -> None:
        self.words_per_minute = words_per_minute
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self.binary = binary

    @staticmethod
    def speaks(language: str) -> bool:
        return language.strip().lower() in VOICES

    async def synthesize(self, text: str, language: str) -> Pcm16:
        """Speech for ``text`` (cut to ``max_chars``); raises SynthesisError, KeyError for an unknown language."""
        voice = VOICES[language.strip().lower()]
        command = [self.binary, "-v", voice, "-s", str(self.words_per_minute), "--stdout"]
        with trio.move_on_after(self.timeout_s) as scope:
            try:
                done = await trio.run_process(command, stdin=text[:self.max_chars].encode(), capture_stdout=True,
                                              capture_stderr=True, check=False, deliver_cancel=_kill)
            except OSError as exc:
                raise SynthesisError(f"cannot run {self.binary}: {exc}") from exc
        if scope.cancelled_caught:
            raise SynthesisError(f"espeak-ng took longer than {self.timeout_s} s")
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()[:200]
            raise SynthesisError(f"espeak-ng exited with {done.returncode}: {stderr}")
        try:
            return parse_wav(done.stdout)
        except ValueError as exc:
            raise SynthesisError(f"espeak-ng wrote no WAV: {exc}") from exc


__all__ = ["VOICES", "EspeakSynthesizer", "SynthesisError", "espeak_path"]
