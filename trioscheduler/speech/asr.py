"""Speech recognition with pocketsphinx (its wheel ships an English acoustic model, language model and dictionary).

Resampling and decoding are blocking work, so they run in a worker thread. A pocketsphinx decoder is not safe to
share between threads: the recognizer keeps a pool of at most ``decoders`` of them, created on first need, and a
call waits for a free one, so at most ``decoders`` utterances are decoded at once.
"""

from __future__ import annotations

from typing import Any

import trio

from trioscheduler.speech.audio import Pcm16, resample

ASR_SAMPLE_RATE = 16000
#: The languages the shipped model recognises.
ASR_LANGUAGES = ("en",)


def _new_decoder() -> Any:
    from pocketsphinx import Decoder  # type: ignore[import-untyped]

    return Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL")


def _decode(decoder: Any, audio: Pcm16) -> str:
    decoder.start_utt()
    decoder.process_raw(resample(audio, ASR_SAMPLE_RATE).samples, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return str(hypothesis.hypstr).strip() if hypothesis is not None else ""


class PocketsphinxRecognizer:
    """English speech → text. ``recognize`` returns ``""`` for audio with no words in it."""

    def __init__(self, decoders: int = 1) -> None:
        if decoders < 1:
            raise ValueError("decoders must be at least 1")
        self._limit = decoders
        self._created = 0
        self._idle_send, self._idle_receive = trio.open_memory_channel[Any](decoders)

    async def _take(self) -> Any:
        try:
            return self._idle_receive.receive_nowait()
        except trio.WouldBlock:
            pass
        if self._created < self._limit:
            self._created += 1
            try:
                return await trio.to_thread.run_sync(_new_decoder)
            except BaseException:
                self._created -= 1
                raise
        return await self._idle_receive.receive()

    async def recognize(self, audio: Pcm16) -> str:
        """The words pocketsphinx hears in ``audio`` (any sample rate; resampled to 16 kHz), lower case."""
        decoder = await self._take()
        try:
            # abandon_on_cancel=False: the decoder goes back to the pool only once the thread is done with it.
            return await trio.to_thread.run_sync(_decode, decoder, audio)
        finally:
            self._idle_send.send_nowait(decoder)
