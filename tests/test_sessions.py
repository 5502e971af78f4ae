"""Issue 2, points 4 to 7: sessions, segmentation, jobs and results, over real WebSockets."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import (
    Daemon,
    b64,
    connect,
    opus_packets,
    pcm,
    registered_node,
    result_for,
    session,
    start_daemon,
    until,
)
from trioscheduler.config import Config
from trioscheduler.server.session_state import IndexSet
from trioscheduler.transport import MemoryTransport

FAST = {"pause_ms": 300, "max_duration_ms": 1000, "max_buffer_bytes": 64000}


@pytest.fixture
async def fast(nursery: trio.Nursery, make_config: Callable[..., Config]) -> Daemon:
    return await start_daemon(nursery, make_config(
        segmentation=FAST, scheduler={"pending_timeout_seconds": 0.5}, results={"gap_timeout_seconds": 1.0}))


async def chunk(client: Any, sid: str, payload: bytes, is_final: bool = False) -> None:
    await client.send(type="audio_chunk", session_id=sid, seq=0, is_final=is_final, payload=b64(payload))


async def test_session_init_ack_fields(daemon: Daemon) -> None:
    async with connect(daemon.session_url) as client:
        await client.send(type="session_init", client_version="1", platform="web", src_lang="zh", tgt_lang="en",
                          trace_id="trace-given", features={"emotion_detection": False}, unknown_extra=1)
        ack = await client.recv_type("session_init_ack")
    assert ack["session_id"].startswith("s-") and len(ack["session_id"]) == 10
    assert ack["trace_id"] == "trace-given"
    assert ack["protocol_version"] == "1.0" and ack["use_binary_frame"] is False
    assert ack["negotiated_audio_format"] == "opus" and ack["negotiated_sample_rate"] == 16000
    assert ack["negotiated_channel_count"] == 1


async def test_session_init_generates_trace_id_and_negotiates_pcm16(daemon: Daemon) -> None:
    async with session(daemon.session_url, audio_format="pcm16", sample_rate=8000) as (client, _):
        ack = client.received[-1]
    assert ack["trace_id"] and ack["negotiated_audio_format"] == "pcm16"
    assert ack["negotiated_sample_rate"] == 8000


async def test_bad_messages_get_invalid_message_and_connection_survives(daemon: Daemon) -> None:
    async with session(daemon.session_url) as (client, sid):
        await client.send_raw("{not json")
        assert (await client.recv_type("error"))["code"] == "INVALID_MESSAGE"
        await client.send(type="no_such_type")
        error = await client.recv_type("error")
        assert error["code"] == "INVALID_MESSAGE" and error["details"]["field"] == "type"
        await client.send(type="audio_chunk", session_id=sid, is_final="yes")
        error = await client.recv_type("error")
        assert error["code"] == "INVALID_MESSAGE" and error["details"]["field"] == "is_final"
        await client.send(type="utterance", session_id=sid)
        error = await client.recv_type("error")
        assert error["details"]["field"] == "audio" and "audio" in error["message"]
        await client.send(type="audio_chunk", session_id=sid, is_final=False, payload="%%%")
        assert (await client.recv_type("error"))["details"]["field"] == "payload"
        await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
        heartbeat = await client.recv_type("server_heartbeat")
        assert heartbeat["session_id"] == sid and heartbeat["timestamp"] > 0


async def test_messages_before_init_and_for_other_sessions_are_invalid_session(daemon: Daemon) -> None:
    async with connect(daemon.session_url) as client:
        await client.send(type="client_heartbeat", session_id="s-00000000", timestamp=1)
        assert (await client.recv_type("error"))["code"] == "INVALID_SESSION"
        await client.send(type="session_init", src_lang="zh", tgt_lang="en")
        sid = (await client.recv_type("session_init_ack"))["session_id"]
        await client.send(type="audio_chunk", session_id="s-DEADBEEF", is_final=True, payload="")
        error = await client.recv_type("error")
        assert error["code"] == "INVALID_SESSION" and error["details"]["field"] == "session_id"
        await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
        await client.recv_type("server_heartbeat")


async def test_is_final_cut_carries_exact_audio_and_flags(fast: Daemon) -> None:
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        parts = [pcm(100, fill=i) for i in range(3)]
        for part in parts:
            await chunk(client, sid, part)
        await chunk(client, sid, b"", is_final=True)
        assign = await node.recv_type("job_assign")
        assert assign["audio"] == b64(b"".join(parts))
        assert assign["is_manual_cut"] is True and assign["padding_ms"] == 280
        assert "is_timeout_triggered" not in assign and "is_max_duration_triggered" not in assign
        assert assign["job_id"].startswith("job-") and assign["attempt_id"] == 1 and assign["turn_id"]


async def test_pause_cut_and_first_chunk_after_pause_starts_next_utterance(fast: Daemon) -> None:
    """The first chunk after a pause cut starts the next utterance instead of a one-chunk job."""
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        await chunk(client, sid, pcm(200, fill=1))
        first = await node.recv_type("job_assign", timeout=3)
        assert first["is_timeout_triggered"] is True and first["audio"] == b64(pcm(200, fill=1))
        await chunk(client, sid, pcm(200, fill=2))
        await chunk(client, sid, pcm(200, fill=3))
        second = await node.recv_type("job_assign", timeout=3)
        assert second["utterance_index"] == 1
        assert second["audio"] == b64(pcm(200, fill=2) + pcm(200, fill=3))
        assert second["turn_id"] != first["turn_id"]


async def test_silence_does_not_kill_the_session(fast: Daemon) -> None:
    """The original's session actor died after 60 s idle; here silence of any length is harmless."""
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        await trio.sleep(1.5)  # many pause periods with nothing buffered: no job, no error
        await node.nothing_for(0.1)
        await chunk(client, sid, pcm(100), is_final=True)
        assign = await node.recv_type("job_assign")
        assert assign["utterance_index"] == 0


async def test_max_duration_chain_shares_turn_id_and_opus_counts_packets(fast: Daemon) -> None:
    """One turn_id across MaxDuration cuts and the cut that ends the turn; opus duration = packets x 20 ms."""
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="opus") as (client, sid):
        for _ in range(5):  # 5 x 10 packets x 20 ms = 1000 ms = max_duration_ms
            await chunk(client, sid, opus_packets(10, size=80))
        first = await node.recv_type("job_assign")
        assert first["is_max_duration_triggered"] is True and first["audio_format"] == "opus"
        assert first["audio"] == b64(opus_packets(50, size=80))
        for _ in range(5):
            await chunk(client, sid, opus_packets(10, size=80))
        second = await node.recv_type("job_assign")
        await chunk(client, sid, opus_packets(3), is_final=True)
        third = await node.recv_type("job_assign")
        await chunk(client, sid, opus_packets(3), is_final=True)
        fourth = await node.recv_type("job_assign")
    assert [a["utterance_index"] for a in (first, second, third, fourth)] == [0, 1, 2, 3]
    assert first["turn_id"] == second["turn_id"] == third["turn_id"] != fourth["turn_id"]
    assert third["is_manual_cut"] is True


async def test_unframed_opus_is_kept_with_the_originals_estimate(fast: Daemon) -> None:
    """Raw opus without the length prefixes: the original never checked, so the audio is kept (bytes / 60 × 20 ms)
    rather than rejected, and counted."""
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="opus") as (client, sid):
        raw = b"\xff\x00abc" * 600  # 3,000 bytes: not framed; estimated at 1,000 ms = max_duration_ms
        await chunk(client, sid, raw)
        assign = await node.recv_type("job_assign")
        assert assign["audio"] == b64(raw) and assign["is_max_duration_triggered"] is True
        stats = await fast.scheduler.stats()
        assert stats is not None and stats["sessions"]["counters"]["opus_payloads_unframed"] == 1


async def test_max_buffer_bytes_cut(fast: Daemon) -> None:
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="pcm16", sample_rate=48000) as (client, sid):
        await chunk(client, sid, pcm(400, sample_rate=48000))  # 38,400 bytes, 400 ms
        await chunk(client, sid, pcm(400, sample_rate=48000))  # 76,800 >= 64,000 before 1,000 ms
        assign = await node.recv_type("job_assign")
        assert len(assign["audio"]) == len(b64(pcm(800, sample_rate=48000)))
        assert not any(assign.get(f) for f in ("is_manual_cut", "is_timeout_triggered",
                                                "is_max_duration_triggered"))


async def test_session_close_delivers_buffered_result_before_ack(fast: Daemon) -> None:
    """Audio followed at once by session_close gives its result, then session_close_ack."""
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        await chunk(client, sid, pcm(100))
        await client.send(type="session_close", session_id=sid, reason="user")
        assign = await node.recv_type("job_assign")
        await trio.sleep(0.1)
        await node.send(**result_for(assign))
        result = await client.recv_type("translation_result")
        assert result["utterance_index"] == 0
        ack = await client.recv_type("session_close_ack")
        assert ack["session_id"] == sid


async def test_no_node_gives_no_available_node_then_recovers(fast: Daemon) -> None:
    """A failed selection must not wedge the session; the next utterance works once a node is up."""
    async with session(fast.session_url, audio_format="pcm16") as (client, sid):
        await chunk(client, sid, pcm(100), is_final=True)
        error = await client.recv_type("error", timeout=5)
        assert error["code"] == "NO_AVAILABLE_NODE" and error["utterance_index"] == 0
        async with registered_node(fast.node_url) as (node, _):
            await chunk(client, sid, pcm(100), is_final=True)
            assign = await node.recv_type("job_assign")
            assert assign["utterance_index"] == 1
            await node.send(**result_for(assign))
            assert (await client.recv_type("translation_result"))["utterance_index"] == 1


async def test_waiting_job_goes_to_node_that_registers_late(fast: Daemon) -> None:
    async with session(fast.session_url, audio_format="pcm16") as (client, sid):
        await chunk(client, sid, pcm(100), is_final=True)
        await trio.sleep(0.1)
        async with registered_node(fast.node_url) as (node, _):
            assign = await node.recv_type("job_assign")
            await node.send(**result_for(assign))
            await client.recv_type("translation_result")


async def utterances_dispatched(client: Any, node: Any, sid: str, count: int) -> dict[int, dict[str, Any]]:
    """Send utterances 0..count-1 and return their job_assigns by utterance_index."""
    for i in range(count):
        await client.send(type="utterance", session_id=sid, utterance_index=i, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000)
    return {a["utterance_index"]: a for a in [await node.recv_type("job_assign") for _ in range(count)]}


async def test_results_are_released_in_index_order(fast: Daemon) -> None:
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        assigns = await utterances_dispatched(client, node, sid, 3)
        for i in (2, 1, 0):
            await node.send(**result_for(assigns[i]))
        indices = [(await client.recv_type("translation_result"))["utterance_index"] for _ in range(3)]
        assert indices == [0, 1, 2]


async def writer_ends(connection: Any) -> None:
    await until(lambda: not connection.writer_running, 3)


async def test_idle_session_has_no_writer_task_and_a_restarted_writer_keeps_order(fast: Daemon) -> None:
    """The writer runs only while it has work: idle sessions, and sessions that only wait for outcomes, cost no
    writer task; an outcome that must wait for a lower index starts one, which still releases in index order,
    exactly once."""
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        (connection,) = fast.scheduler.sessions.live
        await writer_ends(connection)
        for first in (0, 3):
            for i in range(first, first + 3):
                await client.send(type="utterance", session_id=sid, utterance_index=i, audio=b64(pcm(100)),
                                  audio_format="pcm16", sample_rate=16000)
            assigns = {a["utterance_index"]: a for a in [await node.recv_type("job_assign") for _ in range(3)]}
            await node.nothing_for(0.05)
            assert not connection.writer_running  # outcomes owed, nothing timed: no writer needed yet
            await node.send(**result_for(assigns[first + 2]))
            await until(lambda: connection.writer_running, 3)  # held for its lower indices: a writer times the gap
            for i in (first, first + 1):
                await node.send(**result_for(assigns[i]))
            indices = [(await client.recv_type("translation_result"))["utterance_index"] for _ in range(3)]
            assert indices == [first, first + 1, first + 2]
            await writer_ends(connection)
            assert connection.footprint() == dict.fromkeys(connection.footprint(), 0)
        await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
        await client.recv_type("server_heartbeat")
        await client.nothing_for(0.2)


async def test_an_open_session_socket_carries_messages_pings_and_a_clean_close(daemon: Daemon) -> None:
    """The door's WebSocket after the upgrade: messages both ways, a ping answered, a clean close (1000)."""
    async with session(daemon.session_url) as (client, sid):
        for _ in range(2):
            await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
            assert (await client.recv_type("server_heartbeat"))["session_id"] == sid
        with trio.fail_after(5):
            await client.ws.ping(b"p")
    assert client.ws.closed is not None and client.ws.closed.code == 1000


async def test_utterance_out_of_order_pair_and_idempotency(fast: Daemon) -> None:
    """Utterances 1 then 0 both dispatch; a repeated index makes no second job."""
    async with registered_node(fast.node_url) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        for i in (1, 0, 1):
            await client.send(type="utterance", session_id=sid, utterance_index=i, audio=b64(pcm(100)),
                              audio_format="pcm16", sample_rate=16000)
        a = await node.recv_type("job_assign")
        b = await node.recv_type("job_assign")
        assert {a["utterance_index"], b["utterance_index"]} == {0, 1}
        await node.nothing_for(0.3)
        for assign in (a, b):
            await node.send(**result_for(assign))
        assert [(await client.recv_type("translation_result"))["utterance_index"] for _ in range(2)] == [0, 1]
        await client.nothing_for(0.2)


async def test_utterance_on_fresh_socket_without_init_works(fast: Daemon) -> None:
    """The original's gateway sent `utterance` on a new socket and never got its result."""
    async with registered_node(fast.node_url) as (node, _), connect(fast.session_url) as client:
        await client.send(type="utterance", session_id="s-GATEWAY1", utterance_index=0, src_lang="zh",
                          tgt_lang="en", audio=b64(pcm(100)), audio_format="pcm16", sample_rate=16000)
        assign = await node.recv_type("job_assign")
        assert assign["session_id"] == "s-GATEWAY1"
        await node.send(**result_for(assign))
        assert (await client.recv_type("translation_result"))["session_id"] == "s-GATEWAY1"


async def test_failed_empty_and_partial_results(fast: Daemon) -> None:
    async with registered_node(fast.node_url) as (node, node_id), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        assigns = await utterances_dispatched(client, node, sid, 3)
        await node.send(type="asr_partial", job_id=assigns[0]["job_id"], node_id=node_id, session_id=sid,
                        utterance_index=0, text="hel", is_final=False, trace_id="t")
        partial = await client.recv_type("asr_partial")
        assert partial["text"] == "hel" and partial["utterance_index"] == 0
        await node.send(**result_for(assigns[0], success=False,
                                     error={"code": "PROCESSING_ERROR", "message": "GPU lease timeout"}))
        await node.send(**result_for(assigns[1], text_asr="", text_translated="", tts_audio="",
                                     extra={"reason": "ASR_EMPTY"}))
        await node.send(**result_for(assigns[2]))
        error = await client.recv_type("error")
        assert error["code"] == "PROCESSING_ERROR" and error["utterance_index"] == 0
        assert error["message"] == "GPU lease timeout"
        missing = await client.recv_type("missing_result")
        assert missing["utterance_index"] == 1 and missing["reason"] == "silence_detected"
        result = await client.recv_type("translation_result")
        assert result["utterance_index"] == 2 and result["service_timings"]["asr_ms"] == 1


async def test_session_affinity_prefers_previous_node(fast: Daemon) -> None:
    async with registered_node(fast.node_url, "node-A") as (a, _), \
            registered_node(fast.node_url, "node-B") as (b, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        await chunk(client, sid, pcm(100), is_final=True)
        winner = None
        with trio.fail_after(5):
            async with trio.open_nursery() as race:
                async def take(peer: Any, name: str) -> None:
                    nonlocal winner
                    assign = await peer.recv_type("job_assign")
                    winner = (peer, name, assign)
                    race.cancel_scope.cancel()
                race.start_soon(take, a, "A")
                race.start_soon(take, b, "B")
        assert winner is not None
        peer, _, assign = winner
        await peer.send(**result_for(assign))
        await client.recv_type("translation_result")
        for i in range(1, 4):
            await chunk(client, sid, pcm(100), is_final=True)
            again = await peer.recv_type("job_assign")
            assert again["utterance_index"] == i
            await peer.send(**result_for(again))
            await client.recv_type("translation_result")


async def test_two_way_auto_uses_lang_pool(fast: Daemon) -> None:
    async with registered_node(fast.node_url, languages=("en", "zh")) as (node, _), \
            session(fast.session_url, "auto", "en", mode="two_way_auto", lang_a="zh", lang_b="en",
                    audio_format="pcm16") as (client, sid):
        await chunk(client, sid, pcm(100), is_final=True)
        assign = await node.recv_type("job_assign")
        assert assign["src_lang"] == "auto" and assign["lang_a"] == "zh" and assign["mode"] == "two_way_auto"


async def test_wrong_language_node_never_gets_the_job(fast: Daemon) -> None:
    async with registered_node(fast.node_url, languages=("fr", "de")) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (client, sid):
        await chunk(client, sid, pcm(100), is_final=True)
        error = await client.recv_type("error", timeout=5)
        assert error["code"] == "NO_AVAILABLE_NODE"
        await node.nothing_for(0.1)


async def test_audio_format_names_are_case_insensitive(daemon: Daemon) -> None:
    async with session(daemon.session_url, audio_format="PCM16") as (client, _):
        assert client.received[-1]["negotiated_audio_format"] == "pcm16"


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=60))
def test_index_set_is_a_set_of_used_indices(indices: list[int]) -> None:
    used, model = IndexSet(), set()
    for index in indices:
        used.add(index)
        model.add(index)
        assert all((i in used) == (i in model) for i in range(45))
        low = next(i for i in range(len(model) + 1) if i not in model)
        assert used.low == low and len(used) == len({i for i in model if i > low})
        assert used.above is None or used.above  # no empty set is kept


async def test_a_crashing_session_is_logged_counted_and_closed_alone(
        daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    """Crash isolation: an unexpected exception in one session's writer ends that session only."""

    class Exploding(MemoryTransport):
        async def send_message(self, message: str | bytes) -> None:
            raise RuntimeError("boom")

    scheduler = daemon.scheduler
    async with session(daemon.session_url) as (client, sid):
        inbound_send, inbound = trio.open_memory_channel[Any](math.inf)
        outbound, _ = trio.open_memory_channel[Any](math.inf)
        broken = Exploding(inbound, outbound, "exploding")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.handle_session, broken)
            await inbound_send.send('{"type": "session_init", "src_lang": "zh", "tgt_lang": "en"}')
        assert scheduler.connections_crashed == 1 and broken.closed
        assert "session connection from exploding crashed" in caplog.text and "RuntimeError: boom" in caplog.text
        assert len(scheduler.sessions.live) == 1  # the other session is still there, and works
        await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
        assert (await client.recv_type("server_heartbeat"))["session_id"] == sid
