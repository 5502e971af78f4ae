"""trioscheduler.opus: the original's length-prefixed framing, and pcm16 through libopus and back."""

from __future__ import annotations

import array
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioscheduler import opus
from trioscheduler.policy.segmentation import opus_packet_count


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20))
def test_framing_round_trips_and_agrees_with_the_schedulers_count(packets: list[bytes]) -> None:
    payload = opus.frame_packets(packets)
    assert opus.split_packets(payload) == packets
    assert opus_packet_count(payload) == len(packets)


def test_an_empty_packet_is_not_framed() -> None:
    with pytest.raises(ValueError, match="never empty"):
        opus.frame_packets([b"\x01", b""])


@given(st.binary(max_size=200))
def test_any_payload_splits_exactly_when_the_scheduler_can_count_it(payload: bytes) -> None:
    try:
        count = opus_packet_count(payload)
    except ValueError:
        with pytest.raises(ValueError):
            opus.split_packets(payload)
    else:
        packets = opus.split_packets(payload)
        assert len(packets) == count and opus.frame_packets(packets) == payload


def test_a_packet_too_long_for_its_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="u16"):
        opus.frame_packets([bytes(70000)])


def sine(ms: int, freq: float = 440.0, rate: int = 16000, amplitude: int = 8000) -> bytes:
    n = rate * ms // 1000
    return array.array("h", (round(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))).tobytes()


def rms(pcm: bytes) -> float:
    samples = array.array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def test_pcm16_survives_opus_with_its_length_and_loudness(libopus: None) -> None:
    pcm = sine(1000)
    framed = opus.encode(pcm)
    assert len(opus.split_packets(framed)) == 50  # 20 ms packets
    assert len(framed) < len(pcm) // 4  # compressed
    decoded = opus.decode(framed)
    assert len(decoded) == len(pcm)
    assert 0.5 < rms(decoded[3200:]) / rms(pcm[3200:]) < 1.5  # past the codec's warm-up


def test_a_rest_shorter_than_a_frame_waits_for_the_next_call_or_the_flush(libopus: None) -> None:
    encoder = opus.Pcm16Encoder()
    assert encoder.encode(sine(10)) == b""  # half a frame
    assert encoder.buffered_bytes == 320
    first = encoder.encode(sine(30))  # 40 ms buffered: two frames
    assert len(opus.split_packets(first)) == 2 and encoder.buffered_bytes == 0
    assert encoder.encode(sine(5)) == b""
    assert len(opus.split_packets(encoder.flush())) == 1  # padded with silence
    assert encoder.flush() == b""


def test_streamed_and_whole_encodings_give_the_same_packet_count(libopus: None) -> None:
    pcm = sine(730)
    encoder = opus.Pcm16Encoder()
    streamed = b"".join(encoder.encode(pcm[i:i + 1000]) for i in range(0, len(pcm), 1000)) + encoder.flush()
    assert len(opus.split_packets(streamed)) == len(opus.split_packets(opus.encode(pcm))) == 37


def test_rates_libopus_cannot_do_are_refused(libopus: None) -> None:
    with pytest.raises(ValueError, match="44100"):
        opus.Pcm16Encoder(44100)
    with pytest.raises(ValueError):
        opus.decode(b"", 22050)


def test_a_packet_libopus_refuses_is_a_value_error(libopus: None) -> None:
    with pytest.raises(ValueError, match="packet 0"):
        opus.decode(opus.frame_packets([b"\xff" * 3]))
