"""A field run of the original, replayed end to end over real sockets while 200 other nodes heartbeat every 50 ms.

In the original, job creation hung silently in node selection while heartbeat processing held a write lock for
1.8–3.0 s. Here the storm runs in its own process (as real nodes would), the scenario must complete, and the
registry must have applied the heartbeats meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from tests.wire import b64, pcm, registered_node, result_for, session, start_daemon
from trioscheduler.config import Config

ROOT = Path(__file__).resolve().parent.parent


async def test_field_report_run_under_heartbeat_storm(nursery: trio.Nursery,
                                                     make_config: Callable[..., Config]) -> None:
    # 200 nodes from this one host: a fleet's many addresses, so this host is exempt from the per-address cap.
    daemon = await start_daemon(nursery, make_config(limits={"connections_per_address_exempt": ["127.0.0.0/8"]}))
    storm = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.storm_nodes", daemon.node_url, "200", "0.05", "120"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    assert storm.stdin is not None and storm.stdout is not None
    try:
        with trio.fail_after(60):
            assert (await storm.stdout.receive_some()).startswith(b"ready")
        before = await daemon.scheduler.stats()
        assert before is not None and len(before["nodes"]) == 200
        await trio.sleep(0.5)  # the storm is on
        async with registered_node(daemon.node_url, languages=("en", "zh"), timeout=30) as (node, node_id):
            assert node_id.startswith("node-") and len(node_id) == 13
            stats = await daemon.scheduler.stats()
            assert stats is not None and stats["pools"]["en-zh"] == [node_id]
            async with session(daemon.session_url, "zh", "en", audio_format="pcm16",
                               timeout=30) as (client, session_id):
                assert session_id.startswith("s-") and len(session_id) == 10
                # A finalize with an empty buffer is skipped: no job, no index consumed.
                await client.send(type="audio_chunk", session_id=session_id, seq=0, is_final=True, payload="")
                await node.nothing_for(0.3)
                audio = pcm(1400, fill=3)
                for seq, start in enumerate(range(0, len(audio), 6400), start=1):
                    await client.send(type="audio_chunk", session_id=session_id, seq=seq, is_final=False,
                                      payload=b64(audio[start:start + 6400]))
                await client.send(type="audio_chunk", session_id=session_id, seq=99, is_final=True, payload="")
                assign = await node.recv_type("job_assign", timeout=30)
                assert assign["utterance_index"] == 0
                assert assign["src_lang"] == "zh" and assign["tgt_lang"] == "en"
                assert assign["is_manual_cut"] is True and assign["attempt_id"] == 1
                assert "is_timeout_triggered" not in assign
                assert assign["audio"] == b64(audio)
                await node.send(**result_for(assign, node_id=node_id))
                result = await client.recv_type("translation_result", timeout=30)
                assert result["utterance_index"] == 0 and result["job_id"] == assign["job_id"]
                assert result["text_translated"] == "translated 0"
        after = await daemon.scheduler.stats()
        assert after is not None
        applied = after["counters"]["heartbeats"] - before["counters"].get("heartbeats", 0)
        assert applied >= 200  # the registry kept applying heartbeats while it scheduled the job
        assert after["counters"].get("scheduler_busy", 0) == 0
    finally:
        await storm.stdin.aclose()
        with trio.move_on_after(10):
            await storm.wait()
        storm.kill()
