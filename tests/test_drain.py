"""Issue 11, point 4: draining the scheduler at utterance boundaries, and draining one node.

Over real sockets: several clients stream while ``POST /api/v1/drain`` arrives; every utterance the scheduler
finalized has its outcome before its session is closed with 1012, and serve() (the process) ends by itself. At the
drain deadline what is owed arrives as SCHEDULER_DRAINING errors. A drained node gets ``node_control`` and no new
job while its running job finishes; DELETE undoes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio_websocket

from tests.wire import WAIT, b64, connect, pcm, registered_node, result_for, session, until
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.server.listener import Listening, serve
from trioscheduler.sim import SimNode, SimNodeBehaviour

OUTCOMES = ("translation_result", "missing_result", "error")
SERVICE_RESTART = 1012


@attrs.define
class StreamRecord:
    session_id: str | None = None
    outcomes: list[dict[str, Any]] = attrs.field(factory=list)
    received: list[dict[str, Any]] = attrs.field(factory=list)
    close_code: int | None = None


async def stream_until_closed(url: str, record: StreamRecord, *, chunk_ms: int = 40,
                              chunks_per_utterance: int = 3) -> None:
    """A client that streams pcm16 in real time, cutting every ``chunks_per_utterance`` chunks, until the
    scheduler closes its socket; records every outcome and the close code."""
    async with session(url, audio_format="pcm16") as (client, session_id):
        record.session_id = session_id

        async def send_forever() -> None:
            sent = 0
            try:
                while True:
                    sent += 1
                    await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(chunk_ms)),
                                      is_final=sent % chunks_per_utterance == 0)
                    await trio.sleep(chunk_ms / 1000)
            except trio_websocket.ConnectionClosed:
                return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_forever)
            try:
                while True:
                    message = json.loads(await client.ws.get_message())
                    record.received.append(message)
                    if message["type"] in OUTCOMES:
                        record.outcomes.append(message)
            except trio_websocket.ConnectionClosed as closed:
                record.close_code = closed.reason.code
            nursery.cancel_scope.cancel()


async def start_serving(nursery: trio.Nursery, config: Config) -> tuple[Scheduler, Listening, trio.Event]:
    """serve() with an event set when it returns by itself (what ends the process)."""
    scheduler = Scheduler(config)
    ended = trio.Event()

    async def run(task_status: trio.TaskStatus[Listening]) -> None:
        await serve(config, scheduler=scheduler, task_status=task_status)
        ended.set()

    listening = await nursery.start(run)
    return scheduler, listening, ended


async def test_a_drain_under_streaming_load_loses_no_utterance(nursery: trio.Nursery,
                                                               make_config: Callable[..., Config]) -> None:
    scheduler, listening, ended = await start_serving(nursery, make_config(server={"drain_timeout_seconds": 30}))
    for i in range(2):
        node = SimNode(SimNodeBehaviour(delay_s=0.03, seed=i, max_concurrent_jobs=8), node_id=f"node-DRAIN{i}")
        await nursery.start(node.run, listening.node_url)
    records = [StreamRecord() for _ in range(4)]
    async with trio.open_nursery() as clients:
        for record in records:
            clients.start_soon(stream_until_closed, listening.session_url, record)
        await until(lambda: all(len(record.outcomes) >= 2 for record in records))
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{listening.http_url}/api/v1/drain")
        assert response.status_code == 202 and response.json()["started"] is True
    with trio.fail_after(WAIT):
        await ended.wait()
    finalized = scheduler.sessions.counters["utterances_finalized"]
    assert finalized == sum(len(record.outcomes) for record in records)
    for record in records:
        assert record.close_code == SERVICE_RESTART
        indices = [outcome["utterance_index"] for outcome in record.outcomes]
        assert indices == list(range(len(indices)))
        assert {outcome["type"] for outcome in record.outcomes} == {"translation_result"}
        assert not [m for m in record.received if m["type"] == "session_close_ack"]
    assert scheduler.sessions.counters["sessions_drained"] == len(records)


async def test_at_the_drain_deadline_what_is_owed_arrives_as_errors(nursery: trio.Nursery,
                                                                    make_config: Callable[..., Config]) -> None:
    scheduler, listening, ended = await start_serving(nursery, make_config(server={"drain_timeout_seconds": 1.0}))
    async with registered_node(listening.node_url, "node-SILENT") as (node, _), \
            session(listening.session_url, audio_format="pcm16") as (client, session_id), \
            connect(listening.session_url) as idle:
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)), is_final=True)
        assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))  # never answered
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)),
                          is_final=False)  # stays buffered
        await until(lambda: any(c.footprint()["buffered_bytes"] for c in scheduler.sessions.live))
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"{listening.http_url}/api/v1/drain")).status_code == 202
            assert (await http.get(f"{listening.http_url}/ready")).status_code == 503
        # A socket with no session yet: told, then closed.
        refused = await idle.recv_type("error")
        assert refused["code"] == "SCHEDULER_DRAINING"
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await idle.recv()
        assert closed.value.reason.code == SERVICE_RESTART
        # A new session is refused at the door.
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            async with connect(listening.session_url):
                pass
        assert rejected.value.status_code == 503
        # The session with a job owed and audio buffered: both flushed as errors at the deadline, then 1012.
        first = await client.recv_type("error")
        second = await client.recv_type("error")
        assert (first["utterance_index"], first["code"]) == (0, "SCHEDULER_DRAINING")
        assert (second["utterance_index"], second["code"]) == (1, "SCHEDULER_DRAINING")
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.reason.code == SERVICE_RESTART
        cancel = await node.recv_type("job_cancel", skip=("node_heartbeat_ack",))
        assert cancel["job_id"] == assign["job_id"]
    with trio.fail_after(WAIT):
        await ended.wait()
    assert scheduler.edge.counters["refused_draining"] == 1


async def test_a_drained_node_takes_no_new_job_finishes_its_running_one_and_can_be_resumed(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    scheduler, listening, _ = await start_serving(nursery, make_config())
    base = f"{listening.http_url}/api/v1/nodes"
    async with registered_node(listening.node_url, "node-OLD") as (old, _), \
            session(listening.session_url, audio_format="pcm16") as (client, session_id), \
            httpx.AsyncClient() as http:
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)), is_final=True)
        running = await old.recv_type("job_assign", skip=("node_heartbeat_ack",))
        async with registered_node(listening.node_url, "node-NEW") as (new, _):
            response = await http.post(f"{base}/node-OLD/drain")
            assert response.status_code == 200 and response.json() == {"node_id": "node-OLD", "draining": True}
            control = await old.recv_type("node_control", skip=("node_heartbeat_ack",))
            assert control["command"] == "drain"
            stats = (await http.get(f"{listening.http_url}/api/v1/stats")).json()
            assert {n["node_id"]: n["state"] for n in stats["nodes"]}["node-OLD"] == "draining"
            # The next utterance goes to the new node, although the session's affinity is the old one.
            await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)), is_final=True)
            second = await new.recv_type("job_assign", skip=("node_heartbeat_ack",))
            assert second["utterance_index"] == 1
            # The running job finishes on the drained node.
            await old.send(**result_for(running, node_id="node-OLD"))
            await new.send(**result_for(second, node_id="node-NEW"))
            results = [await client.recv_type("translation_result") for _ in range(2)]
            assert [(r["utterance_index"], r["node_id"]) for r in results] == [(0, "node-OLD"), (1, "node-NEW")]
            # Undo: the node is told, and takes jobs again.
            response = await http.delete(f"{base}/node-OLD/drain")
            assert response.status_code == 200 and response.json() == {"node_id": "node-OLD", "draining": False}
            assert (await old.recv_type("node_control", skip=("node_heartbeat_ack",)))["command"] == "resume"
            stats = (await http.get(f"{listening.http_url}/api/v1/stats")).json()
            assert {n["node_id"]: n["state"] for n in stats["nodes"]}["node-OLD"] == "ready"
            await new.ws.aclose()
            await until(lambda: "node-NEW" not in scheduler.registry.nodes)
            await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)), is_final=True)
            third = await old.recv_type("job_assign", skip=("node_heartbeat_ack",))
            assert third["utterance_index"] == 2
    assert scheduler.registry.counters["nodes_drain"] == 1 and scheduler.registry.counters["nodes_resume"] == 1
