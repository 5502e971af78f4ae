"""Issue 14 point 4: a payload whose length-prefixed parse yields zero-length packets is not opus framing. The
original's case: its web client, switched to pcm16 without saying so, sent 256 ms of pcm16 silence (8,192 zero
bytes) as "opus", which parses as 4,096 empty packets = 81.9 s, and forced a max-duration cut per chunk."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import Daemon, b64, opus_packets, pcm, registered_node, session
from trioscheduler.policy.segmentation import EmptyOpusPacket, audio_duration_ms, opus_packet_count

SILENCE_256_MS = bytes(2 * 16000 * 256 // 1000)  # 8,192 zero bytes of pcm16


def test_the_originals_silence_is_not_opus_framing() -> None:
    assert len(SILENCE_256_MS) == 8192
    with pytest.raises(EmptyOpusPacket):
        opus_packet_count(SILENCE_256_MS)
    with pytest.raises(ValueError):
        audio_duration_ms(SILENCE_256_MS, "opus", 16000)


@given(before=st.lists(st.binary(min_size=1, max_size=80), max_size=5),
       after=st.lists(st.binary(min_size=1, max_size=80), max_size=5))
def test_any_empty_packet_makes_the_payload_unframed(before: list[bytes], after: list[bytes]) -> None:
    def framing(packets: list[bytes]) -> bytes:
        return b"".join(len(p).to_bytes(2, "little") + p for p in packets)

    with pytest.raises(EmptyOpusPacket):
        opus_packet_count(framing(before) + b"\x00\x00" + framing(after))
    assert opus_packet_count(framing(before + after)) == len(before) + len(after)


async def test_silence_sent_as_opus_forces_no_max_duration_cut(daemon: Daemon, caplog: Any) -> None:
    """Twenty such chunks (5.1 s of real audio, "1,638 s" to the old count) under the default 10 s max_duration:
    no cut until the client's is_final, then one job holding every byte; each chunk counted as unframed."""
    caplog.set_level(logging.WARNING, logger="trioscheduler.server.session_socket")
    async with registered_node(daemon.node_url) as (node, _), \
            session(daemon.session_url, audio_format="opus") as (client, sid):
        for _ in range(20):
            await client.send(type="audio_chunk", session_id=sid, is_final=False, payload=b64(SILENCE_256_MS))
        await client.send(type="audio_chunk", session_id=sid, is_final=True, payload=b64(opus_packets(2)))
        assign = await node.recv_type("job_assign")
        await node.nothing_for(0.2)
    assert assign["utterance_index"] == 0 and assign["is_manual_cut"] is True
    assert "is_max_duration_triggered" not in assign
    assert assign["audio"] == b64(SILENCE_256_MS * 20 + opus_packets(2))
    stats = await daemon.scheduler.stats()
    assert stats is not None
    counters = stats["sessions"]["counters"]
    assert counters["opus_payloads_unframed"] == 20 and counters["opus_payloads_empty_packets"] == 20
    assert sum("opus_payload_unframed" in record.getMessage() for record in caplog.records) == 20


async def test_real_pcm16_in_a_pcm16_session_still_cuts_at_max_duration(daemon: Daemon) -> None:
    """The check is opus's only: pcm16 silence in a pcm16 session is audio time as before."""
    async with registered_node(daemon.node_url) as (node, _), \
            session(daemon.session_url, audio_format="pcm16") as (client, sid):
        await client.send(type="audio_chunk", session_id=sid, is_final=False, payload=b64(pcm(10_000, fill=0)))
        assign = await node.recv_type("job_assign")
    assert assign["is_max_duration_triggered"] is True
