"""Readiness as a preference over real WebSockets: a node whose TTS is stopped (a CPU TTS, as the original's node
reports it) still serves its language pair, unless ``scheduler.require_ready_services`` is set."""

from __future__ import annotations

from collections.abc import Callable

import trio

from tests.wire import b64, pcm, registered_node, result_for, session, start_daemon
from trioscheduler.config import Config

TTS_STOPPED = [{"type": "asr", "ready": True}, {"type": "nmt", "ready": True}, {"type": "semantic", "ready": True},
               {"type": "tts", "ready": False, "reason": "no_gpu"}]


async def test_a_node_with_a_stopped_tts_gets_the_job_and_the_client_its_text(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config())
    async with (registered_node(daemon.node_url, capability_by_type=TTS_STOPPED) as (node, _),
            session(daemon.session_url, audio_format="pcm16") as (client, sid)):
        await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000, manual_cut=True)
        assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
        await node.send(**result_for(assign, tts_audio=""))
        result = await client.recv_type("translation_result")
        assert result["text_translated"] == "translated 0"


async def test_require_ready_services_sends_no_job_to_a_node_with_a_stopped_tts(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(
        scheduler={"require_ready_services": True, "pending_timeout_seconds": 0.3}))
    async with (registered_node(daemon.node_url, capability_by_type=TTS_STOPPED) as (node, _),
            session(daemon.session_url, audio_format="pcm16") as (client, sid)):
        await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000, manual_cut=True)
        error = await client.recv_type("error")
        assert error["code"] == "NO_AVAILABLE_NODE"
        assert list(error["details"]["candidates"].values()) == ["services_not_ready"]
        await node.nothing_for(0.1)
