"""The field report's run, end to end over real sockets, while 200 other nodes heartbeat every 50 ms."""

from __future__ import annotations

import json

import trio

from tests.wire import Daemon, b64, connect, heartbeat, node_register, pcm, registered_node, result_for, session


async def _heartbeat_storm(daemon: Daemon, count: int, interval: float, started: trio.Event,
                           stop: trio.Event) -> None:
    async def one(i: int) -> None:
        async with connect(daemon.node_url) as node:
            await node.send(**node_register(f"storm-{i}", languages=("fr", "de")))
            ack = await node.recv_type("node_register_ack")
            ready.append(i)
            if len(ready) == count:
                started.set()
            while not stop.is_set():
                await node.send(**heartbeat(ack["node_id"], languages=("fr", "de")))
                with trio.move_on_after(interval):
                    await stop.wait()

    ready: list[int] = []
    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)


async def test_field_report_run_under_heartbeat_storm(daemon: Daemon) -> None:
    started, stop = trio.Event(), trio.Event()
    async with trio.open_nursery() as storm:
        storm.start_soon(_heartbeat_storm, daemon, 200, 0.05, started, stop)
        with trio.fail_after(30):
            await started.wait()
        async with registered_node(daemon.node_url, languages=("en", "zh")) as (node, node_id):
            assert node_id.startswith("node-") and len(node_id) == 13
            stats = await daemon.scheduler.stats()
            assert stats is not None and stats["pools"]["en-zh"] == [node_id]
            async with session(daemon.session_url, "zh", "en", audio_format="pcm16") as (client, session_id):
                assert session_id.startswith("s-") and len(session_id) == 10
                # A finalize with an empty buffer is skipped: no job, no index consumed.
                await client.send(type="audio_chunk", session_id=session_id, seq=0, is_final=True, payload="")
                await node.nothing_for(0.3)
                audio = pcm(1400, fill=3)
                for seq, start in enumerate(range(0, len(audio), 6400), start=1):
                    await client.send(type="audio_chunk", session_id=session_id, seq=seq, is_final=False,
                                      payload=b64(audio[start:start + 6400]))
                await client.send(type="audio_chunk", session_id=session_id, seq=99, is_final=True, payload="")
                assign = await node.recv_type("job_assign")
                assert assign["utterance_index"] == 0
                assert assign["src_lang"] == "zh" and assign["tgt_lang"] == "en"
                assert assign["is_manual_cut"] is True and assign["attempt_id"] == 1
                assert "is_timeout_triggered" not in assign
                assert assign["audio"] == b64(audio)
                await node.send(**result_for(assign, node_id=node_id))
                result = await client.recv_type("translation_result")
                assert result["utterance_index"] == 0 and result["job_id"] == assign["job_id"]
                assert result["text_translated"] == "translated 0"
        stop.set()
    stats = await daemon.scheduler.stats()
    assert stats is not None
    assert stats["counters"]["heartbeats"] > 200
    json.dumps(stats)
