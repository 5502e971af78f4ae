"""Opus audio in the original's framing: pcm16 in, ``[u16 little-endian length][opus packet]`` repeated out.

The web client of the original sends 16 kHz mono Opus (VOIP mode, 20 ms frames) this way, base64 in each
``audio_chunk.payload``; the scheduler counts packets in that framing to measure durations
(:func:`trioscheduler.policy.segmentation.opus_packet_count`), and :func:`split_packets` checks a payload by the same
rule. Encoding and decoding go through opuslib-next over the system's libopus (Debian's ``libopus0``), imported on
first use so that the rest of trioscheduler does not need it; without it they raise :class:`OpusUnavailable`.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Iterable
from typing import Any

from trioscheduler.errors import TrioschedulerError
from trioscheduler.policy.segmentation import opus_packet_count

__all__ = [
    "FRAME_MS",
    "SAMPLE_RATES",
    "OpusUnavailable",
    "Pcm16Encoder",
    "decode",
    "encode",
    "frame_packets",
    "split_packets",
]

FRAME_MS = 20
#: The rates libopus encodes and decodes at.
SAMPLE_RATES = frozenset({8000, 12000, 16000, 24000, 48000})
MAX_PACKET_BYTES = 0xFFFF  # what a u16 length prefix can say
MAX_DECODED_FRAME_MS = 120  # the longest frame an opus packet may hold
_PREFIX = struct.Struct("<H")
INSTALL_HINT = "pip install opuslib-next (and the libopus0 system package), or pip install 'trioscheduler[speech]'"


class OpusUnavailable(TrioschedulerError):
    """opuslib-next or the libopus library it loads is not installed."""


def unavailable_reason() -> str | None:
    """None when opus can be encoded and decoded here; else why not (the OpusUnavailable message)."""
    try:
        _opuslib()
    except OpusUnavailable as exc:
        return str(exc)
    return None


def _opuslib() -> Any:
    try:
        return importlib.import_module("opuslib_next")
    except Exception as exc:  # ImportError, or libopus missing: opuslib raises when it cannot load the library
        raise OpusUnavailable(f"opus needs opuslib-next over libopus: {INSTALL_HINT} ({exc})") from exc


def _check_rate(sample_rate: int) -> None:
    if sample_rate not in SAMPLE_RATES:
        raise ValueError(f"opus works at {sorted(SAMPLE_RATES)} Hz, not {sample_rate}")


def frame_packets(packets: Iterable[bytes]) -> bytes:
    """Packets in the original's framing; ValueError for an empty packet (the scheduler takes a payload with one as
    not opus framing) or one longer than a u16 length can say."""
    parts: list[bytes] = []
    for packet in packets:
        if not packet:
            raise ValueError("an opus packet is never empty; the scheduler counts such a payload as unframed")
        if len(packet) > MAX_PACKET_BYTES:
            raise ValueError(f"an opus packet of {len(packet)} bytes does not fit the u16 length prefix")
        parts.append(_PREFIX.pack(len(packet)))
        parts.append(packet)
    return b"".join(parts)


def split_packets(payload: bytes) -> list[bytes]:
    """The packets of a payload in the original's framing; ValueError when the framing is broken (the same rule
    by which the scheduler measures it)."""
    count = opus_packet_count(payload)
    packets: list[bytes] = []
    pos = 0
    for _ in range(count):
        (length,) = _PREFIX.unpack_from(payload, pos)
        pos += 2
        packets.append(payload[pos:pos + length])
        pos += length
    return packets


class Pcm16Encoder:
    """Streams mono pcm16 into framed opus: :meth:`encode` returns the packets of the whole 20 ms frames it has and
    keeps the rest for the next call; :meth:`flush` pads the rest with silence to one last frame."""

    def __init__(self, sample_rate: int = 16000, *, bitrate: int | None = None) -> None:
        _check_rate(sample_rate)
        opuslib = _opuslib()
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * FRAME_MS // 1000
        self._frame_bytes = 2 * self.frame_samples
        self._encoder = opuslib.Encoder(sample_rate, 1, opuslib.APPLICATION_VOIP)
        if bitrate is not None:
            self._encoder.bitrate = bitrate
        self._rest = b""

    @property
    def buffered_bytes(self) -> int:
        """pcm16 bytes held back until a whole frame is there."""
        return len(self._rest)

    def encode(self, pcm: bytes) -> bytes:
        """Framed opus for every whole frame of what was buffered plus ``pcm`` (b"" when there is none)."""
        data = self._rest + pcm if self._rest else bytes(pcm)
        whole = len(data) - len(data) % self._frame_bytes
        self._rest = data[whole:]
        return frame_packets(
            self._encoder.encode(data[i:i + self._frame_bytes], self.frame_samples)
            for i in range(0, whole, self._frame_bytes)
        )

    def flush(self) -> bytes:
        """The buffered rest as one last frame padded with silence (b"" when nothing is buffered)."""
        if not self._rest:
            return b""
        padded = self._rest + bytes(self._frame_bytes - len(self._rest))
        self._rest = b""
        return self.encode(padded)


def encode(pcm: bytes, sample_rate: int = 16000) -> bytes:
    """Mono pcm16 to framed opus, 20 ms per packet, the last frame padded with silence."""
    encoder = Pcm16Encoder(sample_rate)
    return encoder.encode(pcm) + encoder.flush()


def decode(payload: bytes, sample_rate: int = 16000) -> bytes:
    """Framed opus to mono pcm16 at ``sample_rate``; ValueError for broken framing or a packet libopus refuses."""
    _check_rate(sample_rate)
    opuslib = _opuslib()
    decoder = opuslib.Decoder(sample_rate, 1)
    max_samples = sample_rate * MAX_DECODED_FRAME_MS // 1000
    out: list[bytes] = []
    for index, packet in enumerate(split_packets(payload)):
        try:
            out.append(decoder.decode(packet, max_samples))
        except opuslib.OpusError as exc:
            raise ValueError(f"opus packet {index}: {exc}") from exc
    return b"".join(out)
