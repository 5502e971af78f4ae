"""Mono pcm16 audio for the speech engines: WAV in and out, resampling, and a loudness measure.

Pure functions over bytes; no I/O. WAV parsing tolerates the streamed header espeak-ng writes to a pipe (its RIFF
and data sizes are placeholders): the data chunk then runs to the end of the bytes.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array

import attrs

PCM16_WIDTH = 2


class AudioFormatError(ValueError):
    """Bytes that are not audio of the kind they claim to be."""


@attrs.frozen
class Pcm16:
    """Mono signed 16-bit little-endian samples at ``sample_rate``."""

    samples: bytes
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / (PCM16_WIDTH * self.sample_rate)


def _native(samples: array[int]) -> array[int]:
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def parse_wav(data: bytes) -> Pcm16:
    """The samples of a PCM WAV (16-bit; several channels are mixed down to mono).

    Raises AudioFormatError for anything else (not RIFF/WAVE, no fmt or data chunk, not 16-bit PCM).
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError("not a RIFF/WAVE file")
    pos, channels, rate = 12, 0, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise AudioFormatError("truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag not in (1, 0xFFFE) or bits != 16 or channels < 1 or rate < 1:
                raise AudioFormatError(f"only 16-bit PCM WAV is read (format {tag}, {bits} bits)")
        elif chunk_id == b"data":
            if not channels:
                raise AudioFormatError("data chunk before fmt chunk")
            end = len(data) if body + size > len(data) else body + size
            frame = PCM16_WIDTH * channels
            samples = data[body:end - (end - body) % frame]
            return Pcm16(mix_to_mono(samples, channels), rate)
        pos = body + size + (size & 1)
    raise AudioFormatError("no data chunk")


def mix_to_mono(samples: bytes, channels: int) -> bytes:
    """Interleaved pcm16 of ``channels`` channels → mono (the mean of each frame)."""
    if channels == 1:
        return samples
    values = _native(array("h", samples))
    mono = array("h", (sum(values[i:i + channels]) // channels for i in range(0, len(values), channels)))
    return _native(mono).tobytes()


def wav_bytes(audio: Pcm16) -> bytes:
    """A mono 16-bit PCM WAV of ``audio``, with exact sizes in its header."""
    n = len(audio.samples)
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + n, b"WAVE", b"fmt ", 16, 1, 1, audio.sample_rate,
                         audio.sample_rate * PCM16_WIDTH, PCM16_WIDTH, 16, b"data", n)
    return header + audio.samples


def resample(audio: Pcm16, sample_rate: int) -> Pcm16:
    """``audio`` at ``sample_rate``: down, each output sample is the mean of the input samples of its period (a box
    filter against aliasing); up, linear interpolation. Enough for speech recognition."""
    if audio.sample_rate == sample_rate or not audio.samples:
        return Pcm16(audio.samples, sample_rate)
    src = _native(array("h", audio.samples[:len(audio.samples) - len(audio.samples) % PCM16_WIDTH]))
    step = audio.sample_rate / sample_rate
    count = int(len(src) / step)
    out = array("h", bytes(PCM16_WIDTH * count))
    if step > 1:
        for i in range(count):
            start, end = int(i * step), int((i + 1) * step)
            out[i] = sum(src[start:end]) // (end - start)
    else:
        last = len(src) - 1
        for i in range(count):
            x = i * step
            j = int(x)
            k = j + 1 if j < last else last
            out[i] = int(src[j] + (src[k] - src[j]) * (x - j))
    return Pcm16(_native(out).tobytes(), sample_rate)


def rms(samples: bytes) -> float:
    """Root mean square of pcm16 samples (0 for none)."""
    values = _native(array("h", samples[:len(samples) - len(samples) % PCM16_WIDTH]))
    if not values:
        return 0.0
    return math.sqrt(sum(v * v for v in values) / len(values))
