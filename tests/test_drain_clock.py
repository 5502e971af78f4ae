"""Issue 11, point 4, under trio's MockClock: a session that owes an outcome stays open through the drain until
``server.drain_timeout_seconds``, no earlier; then the outcome is SCHEDULER_DRAINING, the socket is closed with
1012, the job is cancelled on its node and the drain task stops the scheduler."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from tests.wire import Peer, b64, memory_node, pcm
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.drain import run_drain
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.transport import memory_transport_pair


async def test_what_is_owed_waits_for_the_drain_deadline_then_becomes_an_error(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    config = make_config(server={"drain_timeout_seconds": 30.0},
                         scheduler={"job_timeout_seconds": 600.0, "heartbeat_timeout_seconds": 600.0})
    scheduler = Scheduler(config)
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-CLOCK1")
    server_side, client_side = memory_transport_pair("session")
    nursery.start_soon(scheduler.handle_session, server_side)
    client = Peer(client_side)  # type: ignore[arg-type]
    await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
    session_id = (await client.recv_type("session_init_ack"))["session_id"]
    await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)), is_final=True)
    assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))  # never answered

    stop = trio.CancelScope()
    finished = trio.Event()

    async def drain_task() -> None:
        await run_drain(scheduler.drain, lambda: scheduler.sessions.live, stop)
        finished.set()

    nursery.start_soon(drain_task)
    assert scheduler.drain.request("test")
    assert not scheduler.drain.request("again")  # one drain at a time
    deadline = scheduler.drain.deadline
    error = await client.recv_type("error", timeout=120)
    assert trio.current_time() >= deadline  # not flushed before the deadline
    assert (error["code"], error["utterance_index"], error["session_id"]) == ("SCHEDULER_DRAINING", 0, session_id)
    cancel = await node.recv_type("job_cancel", skip=("node_heartbeat_ack",), timeout=120)
    assert cancel["job_id"] == assign["job_id"]
    with trio.fail_after(120):
        await finished.wait()
    assert stop.cancel_called
    assert server_side.close_code == CloseCode.SERVICE_RESTART
    assert scheduler.sessions.counters["outcome_error_SCHEDULER_DRAINING"] == 1
