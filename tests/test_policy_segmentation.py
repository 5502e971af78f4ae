"""Properties of the Segmenter (utterance cuts), audio_duration_ms and opus_packet_count. Pure, no trio."""

from __future__ import annotations

import itertools
import struct
from fractions import Fraction

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from trioscheduler.policy.segmentation import (
    OPUS_FRAME_MS,
    Cut,
    CutReason,
    Segmenter,
    audio_duration_ms,
    opus_packet_count,
    pcm16_duration_ms,
)

SAMPLE_RATE = 16000


def make_segmenter(pause_ms: float = 3000.0, max_duration_ms: float = 10000.0,
                   max_buffer_bytes: int = 512000) -> tuple[Segmenter, list[str]]:
    issued: list[str] = []
    counter = itertools.count(1)

    def new_turn_id() -> str:
        turn_id = f"turn-{next(counter)}"
        issued.append(turn_id)
        return turn_id

    return Segmenter(pause_ms=pause_ms, max_duration_ms=max_duration_ms, max_buffer_bytes=max_buffer_bytes,
                     new_turn_id=new_turn_id), issued


def pcm(ms: int, fill: int = 1) -> bytes:
    return bytes([fill]) * (32 * ms)  # 16 kHz mono pcm16: 32 bytes per ms


def push(seg: Segmenter, payload: bytes, now: float, is_final: bool = False) -> Cut | None:
    return seg.push(payload, pcm16_duration_ms(payload, SAMPLE_RATE), is_final, now)


# ------------------------------------------------------------------------------------------ the model


def check_flags(cut: Cut) -> None:
    flags = (cut.is_manual_cut, cut.is_timeout_triggered, cut.is_max_duration_triggered)
    assert sum(flags) <= 1, cut
    assert cut.is_manual_cut == (cut.reason is CutReason.IS_FINAL)
    assert cut.is_timeout_triggered == (cut.reason is CutReason.PAUSE)
    assert cut.is_max_duration_triggered == (cut.reason is CutReason.MAX_DURATION)
    if cut.reason in (CutReason.MAX_BUFFER, CutReason.SESSION_CLOSE):
        assert not any(flags)


op_strategy = st.one_of(
    st.tuples(st.just("push"), st.binary(max_size=48), st.booleans(),
              st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.9, 3.0, 4.0])),
    st.tuples(st.just("push"), st.binary(min_size=4, max_size=24), st.just(False), st.sampled_from([0.0, 0.5])),
    st.tuples(st.just("timer"), st.sampled_from([0.0, 0.5, 1.0, 2.999, 3.0, 3.5, 10.0])),
    st.tuples(st.just("restart"), st.sampled_from([0.0, 0.5, 2.0])),
    st.tuples(st.just("flush")),
)


@given(
    ops=st.lists(op_strategy, min_size=4, max_size=40),
    max_duration_ms=st.sampled_from([0.25, 0.5, 1.0, 10000.0]),
    max_buffer_bytes=st.sampled_from([8, 40, 100, 512000]),
)
@settings(max_examples=250, deadline=None)
def test_segmenter_against_a_model(ops, max_duration_ms: float, max_buffer_bytes: int) -> None:
    pause_ms = 3000.0
    seg, issued = make_segmenter(pause_ms, max_duration_ms, max_buffer_bytes)
    now = 0.0
    all_payloads: list[bytes] = []
    cuts: list[Cut] = []
    buffer: list[bytes] = []  # the model's buffered chunks
    duration = 0.0
    last_audio_at: float | None = None
    open_turn: str | None = None
    seen_turns: set[str] = set()

    def on_cut(cut: Cut | None, expected_reason: CutReason | None, triggering: bytes = b"") -> None:
        nonlocal buffer, duration, last_audio_at, open_turn
        if expected_reason is None or not buffer:
            assert cut is None, (cut, expected_reason)
            return
        assert cut is not None, expected_reason
        assert cut.reason is expected_reason
        assert cut.audio, "empty cut"
        assert cut.audio == b"".join(buffer)
        assert cut.audio.endswith(triggering), "the triggering chunk is not in its cut"
        assert cut.chunks == len(buffer)
        check_flags(cut)
        event(f"cut {cut.reason.name}" + (" (turn continues)" if open_turn is not None else ""))
        if open_turn is not None:
            assert cut.turn_id == open_turn, "a MaxDuration chain changed turn_id"
        else:
            assert cut.turn_id not in seen_turns, "a new turn reused an old turn_id"
        seen_turns.add(cut.turn_id)
        open_turn = cut.turn_id if cut.reason in (CutReason.MAX_DURATION, CutReason.MAX_BUFFER) else None
        cuts.append(cut)
        buffer, duration = [], 0.0
        if open_turn is None:  # an open turn keeps its pause clock: a pause still ends it
            last_audio_at = None

    for op in ops:
        if op[0] == "push":
            _, payload, is_final, dt = op
            now += dt
            dur = pcm16_duration_ms(payload, SAMPLE_RATE)
            was_empty = not buffer
            cut = seg.push(payload, dur, is_final, now)
            if payload:
                all_payloads.append(payload)
                buffer.append(payload)
                duration += dur
                last_audio_at = now
            if is_final:
                if not payload and was_empty:
                    assert cut is None, "an empty is_final on an empty buffer made a cut"
                    open_turn = None  # the client ended the turn
                on_cut(cut, CutReason.IS_FINAL, payload)
            elif duration >= max_duration_ms:
                on_cut(cut, CutReason.MAX_DURATION, payload)
            elif sum(map(len, buffer)) >= max_buffer_bytes:
                on_cut(cut, CutReason.MAX_BUFFER, payload)
            else:
                assert cut is None, "a chunk cut without is_final or a limit (pause cuts are timer-only)"
        elif op[0] == "timer":
            now += op[1]
            cut = seg.on_timer(now)
            due = (last_audio_at is not None and bool(buffer or open_turn)
                   and now >= last_audio_at + pause_ms / 1000.0)
            if due and not buffer:  # a pause with nothing buffered ends the open turn, without a cut
                assert cut is None
                open_turn, last_audio_at = None, None
            else:
                on_cut(cut, CutReason.PAUSE if due else None)
        elif op[0] == "restart":
            now += op[1]
            seg.restart_pause_clock(now)
            if buffer:
                last_audio_at = now
        else:
            on_cut(seg.flush(), CutReason.SESSION_CLOSE)
        assert seg.buffered_bytes == sum(map(len, buffer))
        assert seg.buffered_ms == pytest.approx(duration)
        expected_deadline = (None if last_audio_at is None or not (buffer or open_turn)
                             else last_audio_at + pause_ms / 1000.0)
        assert seg.pause_deadline() == expected_deadline

    # Nothing lost, nothing duplicated: all cuts, then what is still buffered, give back every payload in order.
    assert b"".join(c.audio for c in cuts) + b"".join(buffer) == b"".join(all_payloads)
    final = seg.flush()
    assert b"".join(c.audio for c in cuts) + (final.audio if final else b"") == b"".join(all_payloads)
    assert seg.buffered_bytes == 0 and seg.flush() is None
    assert len(issued) == len(set(issued))


# ------------------------------------------------------------------------------------------ scenarios


def test_empty_is_final_never_cuts() -> None:
    seg, issued = make_segmenter()
    assert push(seg, b"", 0.0, is_final=True) is None
    assert seg.on_timer(100.0) is None and seg.flush() is None
    assert push(seg, pcm(200), 1.0, is_final=True) is not None
    assert push(seg, b"", 1.1, is_final=True) is None  # nothing buffered any more
    assert issued == ["turn-1"]


def test_empty_is_final_cuts_what_is_buffered() -> None:
    """The web client's "end of utterance": remaining audio, then an empty is_final (the original's web client)."""
    seg, _ = make_segmenter()
    assert push(seg, pcm(200, 1), 0.0) is None
    assert push(seg, pcm(200, 2), 0.2) is None
    cut = push(seg, b"", 0.3, is_final=True)
    assert cut is not None and cut.reason is CutReason.IS_FINAL and cut.is_manual_cut
    assert cut.audio == pcm(200, 1) + pcm(200, 2) and cut.chunks == 2
    assert cut.duration_ms == pytest.approx(400.0)


def test_the_triggering_chunk_is_inside_its_cut() -> None:
    seg, _ = make_segmenter(max_duration_ms=1000.0)
    assert push(seg, pcm(600, 1), 0.0) is None
    cut = push(seg, pcm(600, 2), 0.6)
    assert cut is not None and cut.reason is CutReason.MAX_DURATION and cut.is_max_duration_triggered
    assert cut.audio == pcm(600, 1) + pcm(600, 2)
    assert seg.buffered_bytes == 0


def test_pause_cut_only_at_or_after_the_deadline() -> None:
    seg, _ = make_segmenter(pause_ms=3000.0)
    assert seg.pause_deadline() is None
    assert seg.on_timer(1000.0) is None  # empty buffer: the timer never cuts
    push(seg, pcm(200), 10.0)
    assert seg.pause_deadline() == 13.0
    assert seg.on_timer(12.999) is None
    push(seg, pcm(200), 12.5)  # every chunk of audio restarts the pause clock
    assert seg.pause_deadline() == 15.5
    assert seg.on_timer(15.0) is None
    cut = seg.on_timer(15.5)
    assert cut is not None and cut.reason is CutReason.PAUSE and cut.is_timeout_triggered and cut.chunks == 2
    assert seg.on_timer(100.0) is None


def test_no_one_chunk_job_after_a_pause_cut_h10() -> None:
    """After a timer-driven cut, the first chunk of the next sentence starts a new utterance."""
    seg, _ = make_segmenter(pause_ms=3000.0)
    push(seg, pcm(200, 1), 0.0)
    first = seg.on_timer(3.0)
    assert first is not None and first.reason is CutReason.PAUSE
    # The next sentence starts long after the last chunk: it must not be cut by itself.
    assert push(seg, pcm(260, 2), 60.0) is None
    assert seg.buffered_bytes == len(pcm(260, 2))
    assert seg.pause_deadline() == 63.0
    assert push(seg, pcm(260, 3), 60.5) is None
    cut = push(seg, b"", 61.0, is_final=True)
    assert cut is not None and cut.audio == pcm(260, 2) + pcm(260, 3)


def test_tts_playback_restarts_the_pause_clock() -> None:
    seg, _ = make_segmenter(pause_ms=3000.0)
    seg.restart_pause_clock(5.0)  # nothing buffered: no deadline appears
    assert seg.pause_deadline() is None
    push(seg, pcm(200), 0.0)
    seg.restart_pause_clock(2.0)
    assert seg.pause_deadline() == 5.0
    assert seg.on_timer(3.0) is None
    assert seg.on_timer(5.0) is not None


def test_turn_id_lifecycle_f6() -> None:
    """MaxDuration, MaxDuration, manual share one turn_id; a new one starts after manual or pause."""
    seg, _ = make_segmenter(max_duration_ms=1000.0)
    t = 0.0
    chain: list[Cut] = []
    for _ in range(2):
        assert push(seg, pcm(600), t) is None
        cut = push(seg, pcm(600), t + 0.6)
        assert cut is not None and cut.reason is CutReason.MAX_DURATION
        chain.append(cut)
        t += 1.2
    end = push(seg, pcm(300), t, is_final=True)
    assert end is not None and end.reason is CutReason.IS_FINAL
    chain.append(end)
    assert len({c.turn_id for c in chain}) == 1

    nxt = push(seg, pcm(300), t + 1, is_final=True)
    assert nxt is not None and nxt.turn_id != end.turn_id

    # A MaxDuration chain ended by a pause shares the turn too; the next sentence gets a new one.
    a = push(seg, pcm(1000), t + 2)
    push(seg, pcm(200), t + 3)
    b = seg.on_timer(t + 6)
    assert a is not None and b is not None and b.reason is CutReason.PAUSE
    assert a.turn_id == b.turn_id != nxt.turn_id
    c = push(seg, pcm(200), t + 10, is_final=True)
    assert c is not None and c.turn_id != b.turn_id


def test_max_buffer_cut() -> None:
    seg, _ = make_segmenter(max_buffer_bytes=1000)
    assert push(seg, bytes(600), 0.0) is None
    cut = push(seg, bytes(600), 0.1)
    assert cut is not None and cut.reason is CutReason.MAX_BUFFER
    assert not (cut.is_manual_cut or cut.is_timeout_triggered or cut.is_max_duration_triggered)


def test_is_final_wins_over_the_limits() -> None:
    seg, _ = make_segmenter(max_duration_ms=100.0, max_buffer_bytes=10)
    cut = push(seg, pcm(200), 0.0, is_final=True)
    assert cut is not None and cut.reason is CutReason.IS_FINAL


def test_flush_is_session_close() -> None:
    seg, _ = make_segmenter()
    push(seg, pcm(100), 0.0)
    cut = seg.flush()
    assert cut is not None and cut.reason is CutReason.SESSION_CLOSE
    assert not (cut.is_manual_cut or cut.is_timeout_triggered or cut.is_max_duration_triggered)
    assert seg.flush() is None


# ------------------------------------------------------------------------------------------ audio framing


def opus_framing(packets: list[bytes]) -> bytes:
    return b"".join(struct.pack("<H", len(p)) + p for p in packets)


packets_strategy = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


@given(packets=packets_strategy)
@settings(max_examples=150, deadline=None)
def test_opus_packet_count_and_duration(packets: list[bytes]) -> None:
    framed = opus_framing(packets)
    assert opus_packet_count(framed) == len(packets)
    assert audio_duration_ms(framed, "opus", SAMPLE_RATE) == len(packets) * OPUS_FRAME_MS


@given(packets=st.lists(st.binary(max_size=300), min_size=1, max_size=8), data=st.data())
@settings(max_examples=150, deadline=None)
def test_opus_truncated_framing_raises(packets: list[bytes], data: st.DataObject) -> None:
    framed = opus_framing(packets)
    last = len(packets[-1])
    cut_bytes = data.draw(st.integers(1, last + 1))  # anything short of removing the whole last frame
    with pytest.raises(ValueError):
        opus_packet_count(framed[:-cut_bytes])
    with pytest.raises(ValueError):
        audio_duration_ms(framed[:-cut_bytes], "opus", SAMPLE_RATE)


@given(packets=packets_strategy, declared_extra=st.integers(1, 1000), tail=st.binary(max_size=20))
@settings(max_examples=100, deadline=None)
def test_opus_overlong_packet_raises(packets: list[bytes], declared_extra: int, tail: bytes) -> None:
    framed = opus_framing(packets) + struct.pack("<H", len(tail) + declared_extra) + tail
    with pytest.raises(ValueError):
        opus_packet_count(framed)


def test_opus_examples() -> None:
    assert opus_packet_count(b"") == 0
    with pytest.raises(ValueError):
        opus_packet_count(b"\x00\x00")  # an opus packet is never empty: not the framing
    assert opus_packet_count(b"\x03\x00abc\x01\x00d") == 2
    with pytest.raises(ValueError):
        opus_packet_count(b"\x03")
    with pytest.raises(ValueError):
        opus_packet_count(b"\x03\x00ab")
    assert audio_duration_ms(b"\x03\x00abc" * 10, "opus", SAMPLE_RATE) == 200.0


@given(n_bytes=st.integers(0, 2_000_000), sample_rate=st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]))
@example(n_bytes=32032, sample_rate=16000)  # 1001 ms of 16 kHz pcm16
@settings(max_examples=200, deadline=None)
def test_pcm16_duration_is_exact(n_bytes: int, sample_rate: int) -> None:
    """bytes / (2 * rate) seconds, correctly rounded: 32 bytes is exactly 1 ms at 16 kHz."""
    payload = bytes(n_bytes)
    exact = float(Fraction(n_bytes * 1000, 2 * sample_rate))
    assert pcm16_duration_ms(payload, sample_rate) == exact
    assert audio_duration_ms(payload, "pcm16", sample_rate) == exact


def test_pcm16_duration_examples() -> None:
    assert audio_duration_ms(pcm(200), "pcm16", 16000) == 200.0
    assert audio_duration_ms(bytes(6400), "pcm16", 16000) == 200.0
    assert audio_duration_ms(bytes(96000), "pcm16", 48000) == 1000.0
