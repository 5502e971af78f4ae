"""Unit tests of the simulated node and client, with no daemon: the test plays the scheduler's side of an
in-memory transport (``trioscheduler.transport.memory_transport_pair``) and, once, of a real WebSocket."""

from __future__ import annotations

import base64
import json
import math
import wave
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from trioscheduler.sim import (
    Pcm16Audio,
    SimClient,
    SimClientError,
    SimNode,
    SimNodeBehaviour,
    SimNodeError,
    UtteranceResult,
    chunk_rms,
    default_wav_path,
    expected_texts,
    expected_turn_texts,
    iter_chunks,
    read_wav,
)
from trioscheduler.sim.original import LastTextFilter, TurnBuffer
from trioscheduler.transport import MemoryTransport, TransportClosed, memory_transport_pair

DEADLINE = 60  # virtual seconds under autojump_clock; a hang fails instead of blocking


class Peer:
    """The scheduler's end of a connection, speaking dicts."""

    def __init__(self, conn: MemoryTransport) -> None:
        self.conn = conn

    async def send(self, **message: Any) -> None:
        await self.conn.send_message(json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        raw = await self.conn.get_message()
        assert isinstance(raw, str)
        message = json.loads(raw)
        assert isinstance(message, dict)
        return message

    async def recv_type(self, kind: str) -> dict[str, Any]:
        """Next message of ``kind``, skipping heartbeats."""
        while True:
            message = await self.recv()
            if message["type"] == kind:
                return message
            assert message["type"] == "node_heartbeat", message


async def start_node(
    nursery: trio.Nursery, behaviour: SimNodeBehaviour | None = None, node_id: str | None = None,
    *, ack_id: str = "node-TEST0001",
) -> tuple[SimNode, Peer, dict[str, Any]]:
    """Start a SimNode on a memory pair, answer its node_register, return (node, scheduler side, register)."""
    node = SimNode(behaviour or SimNodeBehaviour(), node_id=node_id)
    scheduler_conn, node_conn = memory_transport_pair()
    nursery.start_soon(node.serve, node_conn)
    peer = Peer(scheduler_conn)
    register = await peer.recv()
    await peer.send(type="node_register_ack", node_id=ack_id, message="ok", status="registering",
                    heartbeat_interval_seconds=15)
    return node, peer, register


def job(job_id: str = "job-1", index: int = 3, audio: bytes = b"\x01\x02" * 3200, **extra: Any) -> dict[str, Any]:
    message = {
        "type": "job_assign", "job_id": job_id, "attempt_id": 1, "session_id": "s-0000ABCD",
        "utterance_index": index, "src_lang": "zh", "tgt_lang": "en",
        "pipeline": {"use_asr": True, "use_nmt": True, "use_tts": True, "use_semantic": False, "use_tone": False},
        "audio": base64.b64encode(audio).decode(), "audio_format": "pcm16", "sample_rate": 16000,
        "trace_id": "trace-1",
    }
    message.update(extra)
    return message


# ---------------------------------------------------------------------------------------------- node


async def test_node_registers_then_heartbeats(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            behaviour = SimNodeBehaviour(
                languages=("en", "de"), max_concurrent_jobs=3, heartbeat_interval_override=0.05
            )
            node, peer, register = await start_node(nursery, behaviour)
            assert register["type"] == "node_register"
            assert "node_id" not in register
            assert register["capability_schema_version"] == "2.0"
            assert register["platform"] == "linux"
            assert register["max_concurrent_jobs"] == 3
            assert register["accept_public_jobs"] is True
            assert register["language_capabilities"] == {
                "asr_languages": ["en", "de"], "tts_languages": ["en", "de"], "semantic_languages": ["en", "de"]}
            assert {s["type"] for s in register["installed_services"]} == {"asr", "nmt", "tts", "semantic"}
            assert all(s["status"] == "running" for s in register["installed_services"])
            assert register["capability_by_type"] == [
                {"type": t, "ready": True} for t in ("asr", "nmt", "tts", "semantic")]

            times = []
            for _ in range(3):
                beat = await peer.recv()
                times.append(trio.current_time())
                assert beat["type"] == "node_heartbeat"
                assert beat["node_id"] == "node-TEST0001"
                assert beat["resource_usage"]["running_jobs"] == 0
                assert beat["installed_services"] and beat["capability_by_type"]
            assert node.node_id == "node-TEST0001"
            assert node.heartbeat_interval_s == 15
            assert [round(b - a, 6) for a, b in zip(times, times[1:])] == [0.05, 0.05]
            nursery.cancel_scope.cancel()


async def test_node_heartbeats_at_the_acked_interval(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            _, peer, _ = await start_node(nursery)
            t0 = trio.current_time()
            await peer.recv_type("node_heartbeat")  # sent right after the ack
            assert trio.current_time() == t0
            await peer.recv_type("node_heartbeat")
            assert trio.current_time() - t0 == pytest.approx(15)
            nursery.cancel_scope.cancel()


async def test_node_reuses_its_id_when_it_reconnects(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        node = SimNode()
        for expected_sent in (None, "node-FIRST"):
            scheduler_conn, node_conn = memory_transport_pair()
            peer = Peer(scheduler_conn)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node.serve, node_conn)
                register = await peer.recv()
                assert register.get("node_id") == expected_sent
                await peer.send(type="node_register_ack", node_id="node-FIRST", heartbeat_interval_seconds=15)
                await peer.recv_type("node_heartbeat")
                await scheduler_conn.aclose()  # serve returns on its own when the scheduler hangs up
        assert node.stats.registrations == 2


async def test_node_registration_refused() -> None:
    with trio.fail_after(5):
        scheduler_conn, node_conn = memory_transport_pair()
        peer = Peer(scheduler_conn)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.recv)
            await peer.send(type="error", code="NODE_ID_CONFLICT", message="taken")
            with pytest.raises(SimNodeError, match="NODE_ID_CONFLICT"):
                await SimNode().serve(node_conn)


async def test_node_answers_deterministically(autojump_clock: trio.testing.MockClock) -> None:
    audio = bytes(range(256)) * 25  # 6400 B = 200 ms
    answers = []
    with trio.fail_after(DEADLINE):
        for seed in (1, 2):
            async with trio.open_nursery() as nursery:
                node, peer, _ = await start_node(nursery, SimNodeBehaviour(seed=seed), ack_id=f"node-{seed}")
                await peer.send(**job(audio=audio, group_id="g-1", part_index=0))
                answers.append(await peer.recv_type("job_result"))
                nursery.cancel_scope.cancel()
    first, second = answers
    text_asr, text_translated = expected_texts("zh", "en", 3, audio)
    assert text_asr.startswith("[zh] utt 3 (6400 B, 200 ms) #")
    assert text_translated.startswith("[en] utt 3 (6400 B, 200 ms) #")
    for result in answers:
        assert result["success"] is True
        assert (result["text_asr"], result["text_translated"]) == (text_asr, text_translated)
        assert result["job_id"] == "job-1" and result["attempt_id"] == 1
        assert result["session_id"] == "s-0000ABCD" and result["utterance_index"] == 3
        assert result["trace_id"] == "trace-1"
        assert result["tts_format"] == "pcm16"
        assert len(base64.b64decode(result["tts_audio"])) == 1280  # 40 ms at 16 kHz
        assert set(result["extra"]["service_timings"]) == {"asr_ms", "nmt_ms", "tts_ms"}
        assert (result["group_id"], result["part_index"]) == ("g-1", 0)
        assert isinstance(result["node_completed_at_ms"], int)
        assert result["processing_time_ms"] == 0
    assert first["node_id"] == "node-1" and second["node_id"] == "node-2"
    assert first["tts_audio"] == second["tts_audio"]
    other_audio_text, _ = expected_texts("zh", "en", 3, audio[::-1])
    assert other_audio_text != text_asr  # the hash shows whether the right bytes arrived


async def test_node_runs_jobs_concurrently_up_to_its_capacity(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            behaviour = SimNodeBehaviour(delay_s=1.0, max_concurrent_jobs=2)
            node, peer, _ = await start_node(nursery, behaviour)
            t0 = trio.current_time()
            for i in range(3):
                await peer.send(**job(job_id=f"job-{i}", index=i))
            arrivals = {}
            for _ in range(3):
                result = await peer.recv_type("job_result")
                arrivals[result["job_id"]] = trio.current_time() - t0
                assert result["processing_time_ms"] == 1000  # the queue wait is not processing time
            assert arrivals == {"job-0": 1.0, "job-1": 1.0, "job-2": 2.0}
            assert node.stats.over_capacity == 1
            assert node.stats.max_running == 3
            assert node.stats.jobs_answered == node.stats.jobs_succeeded == 3
            nursery.cancel_scope.cancel()


async def test_node_honours_job_cancel(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, SimNodeBehaviour(delay_s=5.0))
            await peer.send(**job(job_id="job-a"))
            await peer.send(**job(job_id="job-b", index=4))
            await trio.sleep(1)
            await peer.send(type="job_cancel", job_id="job-a", reason="job_timeout")
            await peer.send(type="job_cancel", job_id="job-unknown")
            result = await peer.recv_type("job_result")
            assert result["job_id"] == "job-b"
            with trio.move_on_after(20):
                await peer.recv_type("job_result")
                pytest.fail("a cancelled job was answered")
            assert node.stats.jobs_cancelled == 1
            assert node.stats.cancels_unmatched == 1
            assert node.stats.jobs_answered == 1
            assert node.stats.running == 0
            nursery.cancel_scope.cancel()


async def test_node_fails_every_job_at_failure_rate_one(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, SimNodeBehaviour(failure_rate=1.0))
            for i in range(3):
                await peer.send(**job(job_id=f"job-{i}", index=i))
                result = await peer.recv_type("job_result")
                assert result["success"] is False
                assert result["error"]["code"] == "PROCESSING_ERROR"
                assert "text_asr" not in result
            assert node.stats.jobs_failed == 3
            nursery.cancel_scope.cancel()


async def test_node_rejects_a_repeated_job_id(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery)
            await peer.send(**job())
            assert (await peer.recv_type("job_result"))["success"] is True
            await peer.send(**job(attempt_id=2))
            again = await peer.recv_type("job_result")
            assert again["success"] is False
            assert again["error"] == {"code": "PROCESSING_ERROR", "message": "DUPLICATE_JOB_ID"}
            assert again["attempt_id"] == 2
            assert node.stats.duplicate_job_ids == 1
            assert node.stats.jobs_received == 2
            assert node.job_ids_seen == {"job-1"}
            nursery.cancel_scope.cancel()


async def test_node_can_reject_a_repeated_utterance(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            _, peer, _ = await start_node(nursery, SimNodeBehaviour(reject_duplicate_utterance=True))
            await peer.send(**job(job_id="job-1"))
            assert (await peer.recv_type("job_result"))["success"] is True
            await peer.send(**job(job_id="job-2"))  # fresh job_id, same (session, utterance_index)
            again = await peer.recv_type("job_result")
            assert again["error"]["message"] == "DUPLICATE_UTTERANCE_INDEX"
            nursery.cancel_scope.cancel()


async def test_node_stalls_duplicates_and_empties(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, SimNodeBehaviour(stall_rate=1.0))
            await peer.send(**job())
            with trio.move_on_after(30):
                await peer.recv_type("job_result")
                pytest.fail("a stalled job was answered")
            assert node.stats.jobs_stalled == 1 and node.stats.running == 1
            await peer.send(type="job_cancel", job_id="job-1")
            await trio.sleep(0.1)
            assert node.stats.jobs_cancelled == 1 and node.stats.running == 0
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, SimNodeBehaviour(duplicate_rate=1.0))
            await peer.send(**job())
            first = await peer.recv_type("job_result")
            second = await peer.recv_type("job_result")
            assert first == second and first["success"] is True
            assert node.stats.jobs_duplicated == 1 and node.stats.results_sent == 2
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, SimNodeBehaviour(empty_rate=1.0))
            await peer.send(**job())
            result = await peer.recv_type("job_result")
            assert result["success"] is True
            assert result["text_asr"] == result["text_translated"] == result["tts_audio"] == ""
            assert result["extra"]["reason"] == "ASR_EMPTY"
            nursery.cancel_scope.cancel()


async def test_node_outcomes_follow_the_seed(autojump_clock: trio.testing.MockClock) -> None:
    def outcomes(seed: int) -> list[str]:
        node = SimNode(SimNodeBehaviour(seed=seed, failure_rate=0.3, stall_rate=0.2, empty_rate=0.2))
        return [node._draw_outcome().kind for _ in range(200)]

    assert outcomes(7) == outcomes(7)
    assert outcomes(7) != outcomes(8)
    kinds = outcomes(7)
    assert 20 < kinds.count("failure") < 100 and 10 < kinds.count("stall") < 70


async def test_node_crashes_after_n_jobs(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, SimNodeBehaviour(crash_after_jobs=2, delay_s=1.0))
            await peer.send(**job(job_id="job-1"))
            await peer.send(**job(job_id="job-2", index=4))
            with pytest.raises(TransportClosed):
                while True:
                    message = await peer.recv()
                    assert message["type"] == "node_heartbeat"  # job-1 is dropped, not answered
            assert node.stats.crashes == 1 and node.stats.jobs_answered == 0


async def test_node_sends_a_partial_first(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            _, peer, _ = await start_node(nursery, SimNodeBehaviour(send_partials=True, delay_s=0.4))
            t0 = trio.current_time()
            await peer.send(**job())
            partial = await peer.recv_type("asr_partial")
            assert trio.current_time() - t0 == pytest.approx(0.2)
            assert partial["is_final"] is False and partial["job_id"] == "job-1"
            assert expected_texts("zh", "en", 3, b"\x01\x02" * 3200)[0].startswith(partial["text"])
            await peer.recv_type("job_result")
            assert trio.current_time() - t0 == pytest.approx(0.4)
            nursery.cancel_scope.cancel()


def test_behaviour_accepts_a_comma_separated_language_list() -> None:
    assert SimNodeBehaviour(languages="zh, en").languages == ("zh", "en")
    assert SimNodeBehaviour(languages=["de"]).languages == ("de",)


def test_behaviour_validates_rates() -> None:
    with pytest.raises(ValueError):
        SimNodeBehaviour(failure_rate=1.5)
    with pytest.raises(ValueError):
        SimNodeBehaviour(failure_rate=0.6, stall_rate=0.6)
    with pytest.raises(ValueError):
        SimNodeBehaviour(crash_after_jobs=0)


async def test_node_over_a_real_websocket_crashes_without_a_close_frame() -> None:
    """run() talks trio-websocket, and crash_after_jobs looks like a dead process (1006), not a polite close."""
    closed: list[int] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        json.loads(await ws.get_message())
        ack = {"type": "node_register_ack", "node_id": "node-WS", "heartbeat_interval_seconds": 15}
        await ws.send_message(json.dumps(ack))
        await ws.send_message(json.dumps(job()))
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            assert exc.reason is not None
            closed.append(exc.reason.code)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
            port = server.port
            node = SimNode(SimNodeBehaviour(crash_after_jobs=1))
            assert await nursery.start(node.run, f"ws://127.0.0.1:{port}/ws/node") == "node-WS"
            while not closed:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert closed == [1006]
    assert node.stats.crashes == 1


async def test_run_forever_reconnects_with_the_same_node_id() -> None:
    registers: list[dict[str, Any]] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        registers.append(json.loads(await ws.get_message()))
        ack = {"type": "node_register_ack", "node_id": "node-KEEP", "heartbeat_interval_seconds": 15}
        await ws.send_message(json.dumps(ack))
        await ws.aclose()  # the scheduler "restarts"

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
            node = SimNode()
            url = f"ws://127.0.0.1:{server.port}/ws/node"
            forever = partial(node.run_forever, url, min_backoff_s=0.01, max_backoff_s=0.02)
            assert await nursery.start(forever) == "node-KEEP"
            while len(registers) < 3:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert "node_id" not in registers[0]
    assert [r["node_id"] for r in registers[1:3]] == ["node-KEEP", "node-KEEP"]


# ---------------------------------------------------------------------------------------------- audio


def test_shipped_clip_is_short_16k_mono_speech() -> None:
    path = Path(default_wav_path())
    assert path.stat().st_size < 250 * 1024
    audio = read_wav(path)
    assert audio.sample_rate == 16000
    assert 3000 <= audio.duration_ms <= 6000
    rms = [chunk_rms(c) for c in audio.chunks()]
    assert max(rms) > 1000 and min(rms) < 10  # speech and real silence between the sentences


def test_chunks_are_200_ms() -> None:
    audio = read_wav(default_wav_path())
    chunks = audio.chunks(200)
    assert audio.chunk_bytes(200) == 6400
    assert all(len(c) == 6400 for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 6400
    assert b"".join(chunks) == audio.pcm
    assert len(chunks) == math.ceil(len(audio.pcm) / 6400)
    assert list(iter_chunks(b"\x00" * 13, 4)) == [b"\x00" * 4, b"\x00" * 4, b"\x00" * 4]  # odd tail byte dropped


def test_read_wav_refuses_stereo_and_8_bit(tmp_path: Path) -> None:
    for name, channels, width in (("stereo.wav", 2, 2), ("8bit.wav", 1, 1)):
        with wave.open(str(tmp_path / name), "wb") as wav:
            wav.setnchannels(channels)
            wav.setsampwidth(width)
            wav.setframerate(16000)
            wav.writeframes(b"\x00" * 400)
        with pytest.raises(ValueError):
            read_wav(tmp_path / name)


# ---------------------------------------------------------------------------------------------- client


async def fake_session_scheduler(conn: MemoryTransport, log: dict[str, Any], answer_delay: float = 0.3) -> None:
    """Acks the session, answers every empty is_final chunk with a translation_result, acks the close."""
    peer = Peer(conn)
    init = await peer.recv()
    log["init"] = init
    await peer.send(type="session_init_ack", session_id="s-00C0FFEE", trace_id="t-1", message="session created",
                    protocol_version="1.0", use_binary_frame=False, negotiated_audio_format="pcm16",
                    negotiated_sample_rate=init.get("sample_rate"), negotiated_channel_count=1)
    index = 0
    buffered = 0
    log["chunks"] = []

    async def answer(i: int, n_bytes: int) -> None:
        await trio.sleep(answer_delay)
        await peer.send(type="asr_partial", session_id="s-00C0FFEE", utterance_index=i, job_id="", text="par",
                        is_final=False, trace_id="t-1")
        await peer.send(type="translation_result", session_id="s-00C0FFEE", utterance_index=i, job_id=f"job-{i}",
                        text_asr=f"asr {i} {n_bytes}", text_translated=f"tr {i}", tts_audio="AAAA",
                        tts_format="pcm16", trace_id="t-1")

    async with trio.open_nursery() as nursery:
        while True:
            message = await peer.recv()
            if message["type"] == "audio_chunk":
                payload = base64.b64decode(message["payload"])
                log["chunks"].append((trio.current_time(), message["seq"], message["is_final"], len(payload)))
                buffered += len(payload)
                if message["is_final"]:
                    nursery.start_soon(answer, index, buffered)
                    index += 1
                    buffered = 0
            elif message["type"] == "session_close":
                log["close"] = message
                await peer.send(type="session_close_ack", session_id=message["session_id"])
                return


async def test_client_streams_in_real_time_and_measures_latency(autojump_clock: trio.testing.MockClock) -> None:
    audio = read_wav(default_wav_path())
    n_chunks = math.ceil(len(audio.pcm) / 6400)
    log: dict[str, Any] = {}
    seen: list[UtteranceResult] = []
    with trio.fail_after(DEADLINE):
        scheduler_conn, client_conn = memory_transport_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake_session_scheduler, scheduler_conn, log)
            t0 = trio.current_time()
            client = SimClient(src_lang="en", tgt_lang="zh", on_result=seen.append)
            report = await client.run_session(client_conn, audio)

    init = log["init"]
    assert (init["type"], init["src_lang"], init["tgt_lang"]) == ("session_init", "en", "zh")
    assert (init["audio_format"], init["sample_rate"], init["platform"]) == ("pcm16", 16000, "web")
    chunks = log["chunks"]
    assert len(chunks) == n_chunks + 1
    assert [c[1] for c in chunks] == list(range(n_chunks + 1))
    assert all(c[3] == 6400 for c in chunks[:-2]) and chunks[-1][2:] == (True, 0)
    assert not any(c[2] for c in chunks[:-1])
    assert [round(c[0] - t0, 6) for c in chunks[:3]] == [0.2, 0.4, 0.6]  # paced at the speed of speech
    assert chunks[-1][0] - t0 == pytest.approx(0.2 * n_chunks)

    assert report.session_id == "s-00C0FFEE" and report.close_acked and not report.closed_by_peer
    assert report.cuts == 1 and report.chunks_sent == n_chunks + 1 and report.audio_bytes_sent == len(audio.pcm)
    (result,) = report.results
    assert result.ok and result.utterance_index == 0 and result.job_id == "job-0"
    assert result.text_asr == f"asr 0 {len(audio.pcm)}" and result.tts_audio_bytes == 3
    assert result.latency_ms == pytest.approx(300)
    assert seen == [result]
    assert [p.text for p in report.partials] == ["par"]
    assert log["close"]["session_id"] == "s-00C0FFEE"


async def test_client_vad_cuts_each_sentence(autojump_clock: trio.testing.MockClock) -> None:
    audio = read_wav(default_wav_path())
    log: dict[str, Any] = {}
    with trio.fail_after(DEADLINE):
        scheduler_conn, client_conn = memory_transport_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake_session_scheduler, scheduler_conn, log, 0.5)
            report = await SimClient(cut="vad").run_session(client_conn, audio)
    finals = [c for c in log["chunks"] if c[2]]
    assert report.cuts == len(finals) == 2  # two sentences with a second of silence between them
    assert [r.utterance_index for r in report.results] == [0, 1]
    assert report.latencies_ms == pytest.approx((500, 500))
    assert report.audio_bytes_sent < len(audio.pcm)  # silence is not sent


async def test_client_no_realtime_sends_at_once(autojump_clock: trio.testing.MockClock) -> None:
    audio = Pcm16Audio(b"\x10\x00" * 16000)  # 1 s
    log: dict[str, Any] = {}
    with trio.fail_after(DEADLINE):
        scheduler_conn, client_conn = memory_transport_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake_session_scheduler, scheduler_conn, log)
            t0 = trio.current_time()
            report = await SimClient(realtime=False).run_session(client_conn, audio)
    assert all(c[0] == t0 for c in log["chunks"])
    assert report.chunks_sent == 6 and report.results[0].latency_ms == pytest.approx(300)


async def test_client_reports_a_refused_init() -> None:
    with trio.fail_after(5):
        scheduler_conn, client_conn = memory_transport_pair()
        peer = Peer(scheduler_conn)
        await peer.send(type="error", code="INVALID_MESSAGE", message="nope")
        with pytest.raises(SimClientError) as info:
            await SimClient().run_session(client_conn, Pcm16Audio(b"\x00\x00" * 100))
        assert info.value.code == "INVALID_MESSAGE"


async def test_client_survives_the_scheduler_hanging_up(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        scheduler_conn, client_conn = memory_transport_pair()
        peer = Peer(scheduler_conn)

        async def scheduler() -> None:
            await peer.recv()
            await peer.send(type="session_init_ack", session_id="s-1")
            await peer.recv()
            await scheduler_conn.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler)
            report = await SimClient().run_session(client_conn, read_wav(default_wav_path()))
    assert report.closed_by_peer and not report.close_acked and report.results == ()


# ---------------------------------------------------------------------------------------------- original mode


def original(**overrides: Any) -> SimNodeBehaviour:
    return SimNodeBehaviour(mode="original", **overrides)


async def test_node_claims_answers_every_job_only_in_its_own_mode(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            _, _, ours = await start_node(nursery)
            _, _, theirs = await start_node(nursery, original())
            assert ours["features_supported"] == {"answers_every_job": True}
            assert "answers_every_job" not in theirs["features_supported"]
            nursery.cancel_scope.cancel()


async def test_node_reports_ready_only_what_runs_on_a_gpu(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            behaviour = original(cpu_services="tts", stopped_services=("semantic",))
            _, peer, register = await start_node(nursery, behaviour)
            ready = {c["type"]: c["ready"] for c in register["capability_by_type"]}
            assert ready == {"asr": True, "nmt": True, "tts": False, "semantic": False}
            devices = {s["type"]: (s["device"], s["status"]) for s in register["installed_services"]}
            assert devices["tts"] == ("cpu", "running") and devices["semantic"] == ("gpu", "stopped")
            beat = await peer.recv()
            assert beat["capability_by_type"] == register["capability_by_type"]
            nursery.cancel_scope.cancel()


def test_behaviour_refuses_an_unknown_mode_or_service() -> None:
    with pytest.raises(ValueError):
        SimNodeBehaviour(mode="fast")
    with pytest.raises(ValueError):
        SimNodeBehaviour(cpu_services=("gpu",))


async def test_original_node_holds_unflagged_jobs_and_answers_the_turn_on_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, original())
            first, second = b"\x01\x00" * 8000, b"\x02\x00" * 8000  # 0.5 s each
            await peer.send(**job("job-1", 0, first, turn_id="turn-A"))
            await peer.send(**job("job-2", 1, second, turn_id="turn-A", is_manual_cut=True))
            result = await peer.recv_type("job_result")
            assert (result["job_id"], result["utterance_index"]) == ("job-2", 1)
            assert (result["text_asr"], result["text_translated"]) == expected_turn_texts(
                "zh", "en", first + second)
            assert node.stats.jobs_held == 1 and node.stats.jobs_answered == 1
            assert node.held_jobs == []  # the turn is closed; job-1 is never answered
            await peer.send(**job("job-3", 2, first))  # no turn, no flag: a turn of its own, held
            while node.stats.jobs_received < 3:
                await trio.sleep(0.01)
            assert [h.job_id for h in node.held_jobs] == ["job-3"]
            assert node.stats.results_sent == 1
            nursery.cancel_scope.cancel()


async def test_original_node_answers_a_long_turn_without_a_flag(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, original(answer_after_ms=1000))
            await peer.send(**job("job-1", 0, b"\x01\x00" * 8000, turn_id="t"))  # 0.5 s: held
            await peer.send(**job("job-2", 1, b"\x02\x00" * 8000, turn_id="t"))  # 1.0 s in the turn: answered
            result = await peer.recv_type("job_result")
            assert result["job_id"] == "job-2"
            assert node.stats.jobs_held == 1
            nursery.cancel_scope.cancel()


async def test_original_node_keys_turns_by_target_language(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, original())
            await peer.send(**job("job-1", 0, b"\x01\x00" * 800, turn_id="t", tgt_lang="de"))
            await peer.send(**job("job-2", 1, b"\x02\x00" * 800, turn_id="t", is_timeout_triggered=True))
            result = await peer.recv_type("job_result")
            assert result["text_asr"] == expected_turn_texts("zh", "en", b"\x02\x00" * 800)[0]
            assert [h.job_id for h in node.held_jobs] == ["job-1"]
            nursery.cancel_scope.cancel()


async def test_original_node_sends_no_text_assigned_for_held_jobs(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, original(no_text_assigned=True))
            for i in range(2):
                await peer.send(**job(f"job-{i}", i, bytes([i + 1, 0]) * 800, turn_id="t"))
            await peer.send(**job("job-2", 2, b"\x03\x00" * 800, turn_id="t", is_manual_cut=True))
            answer = await peer.recv_type("job_result")
            assert answer["job_id"] == "job-2" and answer["text_asr"]
            empties = [await peer.recv_type("job_result") for _ in range(2)]
            assert [(e["job_id"], e["utterance_index"]) for e in empties] == [("job-0", 0), ("job-1", 1)]
            for empty in empties:
                assert empty["success"] is True
                assert empty["text_asr"] == empty["text_translated"] == ""
                assert empty["extra"] == {"reason": "NO_TEXT_ASSIGNED"}
            assert node.stats.no_text_assigned_sent == 2 and node.stats.results_sent == 3
            nursery.cancel_scope.cancel()


async def test_original_node_drops_a_result_that_repeats_the_last_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, original())
            same = b"\x05\x00" * 800
            await peer.send(**job("job-1", 0, same, is_manual_cut=True))
            assert (await peer.recv_type("job_result"))["job_id"] == "job-1"
            await peer.send(**job("job-2", 1, same, is_manual_cut=True))  # same audio, same text: dropped
            await peer.send(**job("job-3", 2, same, session_id="s-0000OTHER", is_manual_cut=True))  # other session
            assert (await peer.recv_type("job_result"))["job_id"] == "job-3"
            await peer.send(**job("job-4", 3, b"\x06\x00" * 800, is_manual_cut=True))
            assert (await peer.recv_type("job_result"))["job_id"] == "job-4"
            assert node.stats.results_suppressed == 1 and node.stats.results_sent == 3
            nursery.cancel_scope.cancel()


async def test_original_node_with_a_stopped_tts_answers_text_only(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            _, peer, _ = await start_node(nursery, original(stopped_services="tts"))
            await peer.send(**job("job-1", 0, is_manual_cut=True))
            result = await peer.recv_type("job_result")
            assert result["success"] is True and result["text_translated"] and result["tts_audio"] == ""
            nursery.cancel_scope.cancel()


async def test_original_node_forgets_a_cancelled_held_job(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            node, peer, _ = await start_node(nursery, original(no_text_assigned=True))
            await peer.send(**job("job-1", 0, b"\x01\x00" * 800, turn_id="t"))
            await peer.send(type="job_cancel", job_id="job-1", reason="job_timeout")
            await peer.send(**job("job-2", 1, b"\x02\x00" * 800, turn_id="t", is_manual_cut=True))
            result = await peer.recv_type("job_result")
            assert result["job_id"] == "job-2"  # the cancelled job's audio still belongs to the turn
            assert result["text_asr"] == expected_turn_texts("zh", "en", b"\x01\x00" * 800 + b"\x02\x00" * 800)[0]
            assert node.stats.jobs_cancelled == 1 and node.stats.no_text_assigned_sent == 0
            nursery.cancel_scope.cancel()


@given(st.lists(st.tuples(st.sampled_from(["t1", "t2", None]), st.sampled_from(["en", "de"]),
                          st.integers(min_value=0, max_value=4000), st.booleans()), max_size=40))
def test_turn_buffer_answers_each_job_once_with_its_turns_audio_in_order(
        jobs: list[tuple[str | None, str, int, bool]]) -> None:
    """Every job is either held, or ends a turn; a turn's answer holds exactly the audio of its jobs, in order, and
    names the jobs held before its end; no job is held in two turns or both held and answered."""
    turns = TurnBuffer(answer_after_ms=5000)
    expected: dict[str, list[tuple[str, bytes]]] = {}
    held_ever: list[str] = []
    for i, (turn_id, tgt, n_bytes, flagged) in enumerate(jobs):
        message = {"job_id": f"job-{i}", "utterance_index": i, "turn_id": turn_id, "tgt_lang": tgt,
                   "is_manual_cut": flagged or None}
        audio = bytes([i % 256]) * n_bytes
        key = f"{turn_id}|{tgt}" if turn_id else f"job-{i}"
        expected.setdefault(key, []).append((f"job-{i}", audio))
        answer = turns.offer(message, audio, n_bytes / 32)
        if answer is None:
            held_ever.append(f"job-{i}")
            assert not flagged
            continue
        pieces = expected.pop(key)
        assert answer.audio == b"".join(a for _, a in pieces)
        assert [h.job_id for h in answer.held] == [j for j, _ in pieces[:-1]]
        assert flagged or sum(len(a) for _, a in pieces) / 32 >= 5000
    still_held = [h.job_id for h in turns.held_jobs()]
    assert sorted(still_held) == sorted(j for pieces in expected.values() for j, _ in pieces)
    assert len(set(held_ever)) == len(held_ever)


def test_last_text_filter_normalises_whitespace_and_ignores_empty_text() -> None:
    texts = LastTextFilter()
    assert not texts.is_repeat("s", "a b")
    texts.sent("s", " a  b ")
    assert texts.is_repeat("s", "a b") and not texts.is_repeat("t", "a b")
    texts.sent("s", "  ")
    assert texts.is_repeat("s", "a\tb") and not texts.is_repeat("s", "")
