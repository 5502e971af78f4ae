"""Issue 10, point 2 (last part): a node reports, partial or final, only on jobs assigned to it and for the attempt
it was given. Over real WebSockets: another node's reports and a wrong attempt never reach the client."""

from __future__ import annotations

from tests.wire import Daemon, b64, pcm, registered_node, result_for, session


async def test_reports_from_another_node_or_for_another_attempt_are_dropped(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url, "n1") as (owner, _), \
            session(daemon.session_url, audio_format="pcm16") as (client, sid):
        await client.send(type="utterance", session_id=sid, utterance_index=0, manual_cut=True,
                          audio=b64(pcm(100)), audio_format="pcm16", sample_rate=16000)
        assign = await owner.recv_type("job_assign")
        async with registered_node(daemon.node_url, "n2") as (other, _):
            await other.send(type="asr_partial", job_id=assign["job_id"], node_id="n2", session_id=sid,
                             utterance_index=0, text="forged partial", is_final=False, trace_id=assign["trace_id"])
            await other.send(**result_for(assign, node_id="n2", text_translated="forged"))
            await owner.send(**result_for(assign, node_id="n1", attempt_id=assign["attempt_id"] + 1,
                                          text_translated="wrong attempt"))
            await client.nothing_for(0.3)
            stats = await daemon.scheduler.stats()
            assert stats is not None
            counters = stats["counters"]
            assert counters["results_dropped_foreign_node"] == 1 and counters["partials_dropped_foreign_node"] == 1
            assert counters["results_dropped_old_attempt"] == 1
        await owner.send(type="asr_partial", job_id=assign["job_id"], node_id="n1", session_id=sid,
                         utterance_index=0, text="real partial", is_final=False, trace_id=assign["trace_id"])
        assert (await client.recv_type("asr_partial"))["text"] == "real partial"
        await owner.send(**result_for(assign, node_id="n1"))
        result = await client.recv_type("translation_result")
        assert result["text_translated"] == "translated 0" and result["node_id"] == "n1"
