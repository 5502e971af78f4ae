"""Issue 14 point 3: ui_event progress messages, over real sockets: every event for a session that asked, none for
one that did not."""

from __future__ import annotations

from typing import Any

from tests.wire import Daemon, b64, pcm, registered_node, result_for, session


async def _run_two_utterances(daemon: Daemon, **init: Any) -> list[dict[str, Any]]:
    """One utterance that succeeds (with an ack and a partial), one the node fails; every message the client got
    after its ack, up to the error."""
    async with registered_node(daemon.node_url) as (node, _), \
            session(daemon.session_url, audio_format="pcm16", **init) as (client, sid):
        await client.send(type="audio_chunk", session_id=sid, is_final=True, payload=b64(pcm(100)))
        assign = await node.recv_type("job_assign")
        await node.send(type="job_ack", job_id=assign["job_id"], attempt_id=assign["attempt_id"])
        await node.send(type="asr_partial", job_id=assign["job_id"], text="hel", is_final=False)
        await client.recv_type("asr_partial", skip=("ui_event",))
        await node.send(**result_for(assign, text_asr="hello", text_translated="你好"))
        await client.recv_type("translation_result", skip=("ui_event",))
        await client.send(type="audio_chunk", session_id=sid, is_final=True, payload=b64(pcm(100, fill=2)))
        failing = await node.recv_type("job_assign")
        await node.send(**result_for(failing, success=False,
                                     error={"code": "MODEL_NOT_AVAILABLE", "message": "no model"}))
        await client.recv_type("error", skip=("ui_event", "translation_result", "asr_partial"))
        await client.send(type="client_heartbeat", session_id=sid)  # anything still in flight comes before this
        await client.recv_type("server_heartbeat", skip=("ui_event",))
        return client.received[1:]


async def test_ui_events_for_a_session_that_asked(daemon: Daemon) -> None:
    received = await _run_two_utterances(daemon, ui_events=True)
    events = [(m["utterance_index"], m["event"], m["status"]) for m in received if m["type"] == "ui_event"]
    assert events == [
        (0, "DISPATCHED", "ok"), (0, "NODE_ACCEPTED", "ok"), (0, "ASR_PARTIAL", "ok"),
        (0, "ASR_FINAL", "ok"), (0, "NMT_DONE", "ok"),
        (1, "DISPATCHED", "ok"), (1, "ERROR", "error"),
    ]
    ui = [m for m in received if m["type"] == "ui_event"]
    result = next(m for m in received if m["type"] == "translation_result")
    for event in ui:
        assert event["session_id"] == result["session_id"] and event["trace_id"] == result["trace_id"]
        assert event["elapsed_ms"] >= 0
    assert all(e["job_id"] == result["job_id"] for e in ui if e["utterance_index"] == 0)
    assert ui[-1]["error_code"] == "MODEL_NOT_AVAILABLE" and ui[-1]["job_id"].startswith("job-")
    assert all("error_code" not in e for e in ui[:-1])
    # Each event comes with or after what it reports: ASR_PARTIAL after the partial, ASR_FINAL after the result.
    kinds = [m.get("event", m["type"]) for m in received]
    assert kinds.index("asr_partial") < kinds.index("ASR_PARTIAL")
    assert kinds.index("translation_result") < kinds.index("ASR_FINAL")


async def test_no_ui_events_unless_asked(daemon: Daemon) -> None:
    for init in ({}, {"ui_events": False}):
        received = await _run_two_utterances(daemon, **init)
        assert [m["type"] for m in received] == [
            "asr_partial", "translation_result", "error", "server_heartbeat"]


async def test_ui_event_for_a_refusal_without_a_node(make_config: Any, nursery: Any) -> None:
    """No node for the pair: the utterance's error (NO_AVAILABLE_NODE) comes with an ERROR event naming it."""
    from tests.wire import start_daemon

    daemon = await start_daemon(nursery, make_config(scheduler={"pending_timeout_seconds": 0.2}))
    async with session(daemon.session_url, audio_format="pcm16", ui_events=True) as (client, sid):
        await client.send(type="audio_chunk", session_id=sid, is_final=True, payload=b64(pcm(100)))
        error = await client.recv_type("error")
        event = await client.recv_type("ui_event")
    assert error["code"] == event["error_code"] == "NO_AVAILABLE_NODE"
    assert event["event"] == "ERROR" and event["status"] == "error" and event["utterance_index"] == 0
