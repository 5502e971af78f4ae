"""The client SDK (``trioscheduler.client``) against a live scheduler over real WebSockets; the node is a raw
protocol peer (tests/wire.py), so what the SDK puts on the wire is checked on the other side."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import WAIT, Daemon, Peer, b64, pcm, registered_node, result_for
from trioscheduler import client, opus


async def collect(session: client.Session, count: int) -> list[client.Outcome]:
    outcomes: list[client.Outcome] = []
    with trio.fail_after(WAIT):
        async for outcome in session:
            outcomes.append(outcome)
            if len(outcomes) == count:
                break
    return outcomes


async def answer_next(node: Peer, **overrides: Any) -> dict[str, Any]:
    assign = await node.recv_type("job_assign", skip=("job_cancel",))
    await node.send(**result_for(assign, **overrides))
    return assign


async def test_pcm16_utterance_gives_a_typed_result_with_decoded_tts(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url) as (node, node_id), \
            client.connect(daemon.session_url, src_lang="zh", tgt_lang="en") as session:
        assert session.session_id.startswith("s-")
        audio = pcm(400, fill=3)
        await session.send_audio(audio)
        await session.end_utterance()
        assign = await answer_next(node, node_id=node_id, tts_audio=b64(b"\x01\x02\x03"))
        assert (assign["audio_format"], assign["audio"]) == ("pcm16", b64(audio))
        (result,) = await collect(session, 1)
    assert isinstance(result, client.Result)
    assert (result.utterance_index, result.text_asr, result.text_translated) == (0, "asr 0", "translated 0")
    assert (result.tts_audio, result.tts_format, result.node_id) == (b"\x01\x02\x03", "pcm16", node_id)


async def test_opus_session_sends_framed_opus_that_decodes_to_what_was_sent(daemon: Daemon, libopus: None) -> None:
    async with registered_node(daemon.node_url) as (node, _), \
            client.connect(daemon.session_url, src_lang="zh", tgt_lang="en", audio_format="opus") as session:
        audio = pcm(250, fill=9)  # 12.5 frames: the half frame waits for end_utterance
        await session.send_audio(audio[: len(audio) // 2])
        await session.send_audio(audio[len(audio) // 2:])
        await session.end_utterance()
        assign = await answer_next(node)
        (result,) = await collect(session, 1)
    assert isinstance(result, client.Result)
    assert assign["audio_format"] == "opus"
    framed = base64.b64decode(assign["audio"])
    assert len(opus.split_packets(framed)) == 13
    assert len(opus.decode(framed)) == 13 * 640


async def test_partials_missing_results_and_errors_are_typed(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url) as (node, _), \
            client.connect(daemon.session_url, src_lang="zh", tgt_lang="en") as session:
        for _ in range(3):
            await session.send_audio(pcm(200))
            await session.end_utterance()
        first = await node.recv_type("job_assign")
        await node.send(type="asr_partial", job_id=first["job_id"], text="par", is_final=False,
                        session_id=first["session_id"], utterance_index=0, trace_id=first["trace_id"])
        await node.send(**result_for(first))
        second = await node.recv_type("job_assign")
        await node.send(**result_for(second, text_asr="", text_translated="", tts_audio=""))
        third = await node.recv_type("job_assign")
        await node.send(**result_for(third, success=False, error={"code": "GPU_ON_FIRE", "message": "hot"}))
        outcomes = await collect(session, 4)
    assert outcomes[0] == client.Partial(0, first["job_id"], "par", False)
    assert isinstance(outcomes[1], client.Result)
    assert outcomes[2] == client.MissingResult(1, "silence_detected", second["job_id"], None)
    error = outcomes[3]
    assert isinstance(error, client.Error)
    assert (error.code, error.message, error.utterance_index) == ("GPU_ON_FIRE", "hot", 2)


async def test_close_ends_the_iteration_at_the_ack(daemon: Daemon) -> None:
    async with client.connect(daemon.session_url, src_lang="zh", tgt_lang="en") as session:
        await session.close()
        assert await collect(session, 99) == []
        assert session.close_reason == "session_close_ack"


async def test_a_dropped_connection_ends_the_iteration_and_says_so(daemon: Daemon) -> None:
    async with client.connect(daemon.session_url, src_lang="zh", tgt_lang="en") as session:
        await session._ws.aclose()  # as if the network went away under the session
        assert await collect(session, 99) == []
        assert session.close_reason is not None and session.close_reason.startswith("connection closed")


async def test_a_refused_session_init_raises_session_refused(daemon: Daemon) -> None:
    with pytest.raises(client.SessionRefused) as refused:
        async with client.connect(daemon.session_url, src_lang="zh", tgt_lang="en", sample_rate=7):
            raise AssertionError("must not open")
    assert refused.value.code == "INVALID_MESSAGE"


async def test_an_unknown_audio_format_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="audio_format"):
        async with client.connect("ws://127.0.0.1:1/ws/session", src_lang="zh", tgt_lang="en",
                                  audio_format="mp3"):  # type: ignore[arg-type]
            raise AssertionError("must not open")


async def test_an_opus_session_at_a_rate_opus_cannot_do_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="44100"):
        async with client.connect("ws://127.0.0.1:1/ws/session", src_lang="zh", tgt_lang="en", audio_format="opus",
                                  sample_rate=44100):
            raise AssertionError("must not open")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=10)
KINDS = st.sampled_from(["translation_result", "asr_partial", "missing_result", "error", "server_heartbeat", "x"])
KEYS = st.sampled_from(["utterance_index", "job_id", "text_asr", "text_translated", "tts_audio", "tts_format", "text",
                        "is_final", "reason", "merged_into", "code", "message", "field", "extra", "node_id"])


@given(KINDS, st.dictionaries(KEYS, JSON, max_size=8))
def test_any_message_maps_to_an_outcome_or_none_without_raising(kind: str, fields: dict[str, Any]) -> None:
    outcome = client.outcome_from_message({"type": kind, **fields})
    expected = {"translation_result": client.Result, "asr_partial": client.Partial,
                "missing_result": client.MissingResult, "error": client.Error}.get(kind)
    assert (outcome is None) if expected is None else isinstance(outcome, expected)
