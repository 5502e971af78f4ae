"""The session reader does not wait for the registry's answer to a submit (server/unanswered.py): what it must
still guarantee, that an unanswered submit gets SCHEDULER_BUSY by its deadline and never becomes a job."""

from __future__ import annotations

from collections.abc import Callable

import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import b64, memory_node, memory_session, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.registry.requests import Reply
from trioscheduler.server.unanswered import UnansweredSubmits


def _spec(index: int) -> object:
    return index  # the queue never looks inside a spec


@given(st.lists(st.tuples(st.floats(0, 5), st.booleans(), st.floats(0, 10)), max_size=30))
def test_expired_hands_back_exactly_the_unanswered_past_their_deadline_in_order(
        steps: list[tuple[float, bool, float]]) -> None:
    queue = UnansweredSubmits()
    deadline, entries = 0.0, []
    for gap, answered, _ in steps:
        deadline += gap  # deadlines in submit order, as a session makes them
        reply = Reply()
        queue.add(deadline, reply, _spec(len(entries)))  # type: ignore[arg-type]
        entries.append((deadline, reply, len(entries)))
        if answered:
            reply.set("ok")
    handed: list[int] = []
    for _, _, now in sorted(steps, key=lambda step: step[2]):
        unanswered = [d for d, r, _ in entries if not r.done and not r.abandoned]
        assert queue.next_deadline() == (min(unanswered) if unanswered else None)
        late = queue.expired(now)
        assert late == [i for d, r, i in entries if i not in handed and not r.done and d <= now]
        handed += late  # type: ignore[arg-type]
    for _, reply, index in entries:
        assert reply.abandoned == (index in handed)  # abandoned exactly when handed back
        assert not (reply.done and reply.abandoned)
    queue.abandon_all()
    assert len(queue) == 0
    assert all(reply.done or reply.abandoned for _, reply, _ in entries)


async def test_a_submit_the_registry_never_takes_gets_scheduler_busy_while_the_client_keeps_talking(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    """The reader is never woken by a deadline here (a frame every 50 ms): the answer is still checked."""
    config = make_config(scheduler={"selection_deadline_ms": 200, "heartbeat_timeout_seconds": 100_000})
    scheduler = Scheduler(config)
    client, sid = await memory_session(nursery, scheduler)  # the registry task is not running yet
    await client.send(type="utterance", session_id=sid, utterance_index=0, audio=b64(pcm(100)),
                      audio_format="pcm16", sample_rate=16000)
    start = trio.current_time()

    async def chatter() -> None:
        for beat in range(100):
            await client.send(type="client_heartbeat", session_id=sid, timestamp=beat)
            await trio.sleep(0.05)

    async with trio.open_nursery() as talking:
        talking.start_soon(chatter)
        busy = await client.recv_type("error", skip=("server_heartbeat",))
        talking.cancel_scope.cancel()
    assert busy["code"] == "SCHEDULER_BUSY" and busy["utterance_index"] == 0
    assert trio.current_time() - start <= 0.2 + 0.05
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    await client.send(type="utterance", session_id=sid, utterance_index=1, audio=b64(pcm(100)),
                      audio_format="pcm16", sample_rate=16000)
    assign = await node.recv_type("job_assign")
    assert assign["utterance_index"] == 1  # the abandoned submit made no job
    await node.send(**result_for(assign))
    result = await client.recv_type("translation_result", skip=("server_heartbeat",))
    assert result["utterance_index"] == 1
    counters = (await scheduler.stats())["counters"]  # type: ignore[index]
    assert counters["submits_abandoned"] == 1 and counters["jobs_created"] == 1


async def test_submits_unanswered_when_the_socket_closes_never_become_jobs(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock,
        make_config: Callable[..., Config]) -> None:
    config = make_config(scheduler={"selection_deadline_ms": 60_000, "heartbeat_timeout_seconds": 100_000})
    scheduler = Scheduler(config)
    client, sid = await memory_session(nursery, scheduler)
    for index in range(3):
        await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                          audio_format="pcm16", sample_rate=16000)
    await trio.sleep(0.1)  # the reader has put all three in the inbox and went back to its socket
    await client.ws.aclose()
    await trio.sleep(0.1)
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    await node.nothing_for(5)
    counters = (await scheduler.stats())["counters"]  # type: ignore[index]
    assert counters["submits_abandoned"] == 3 and counters.get("jobs_created", 0) == 0
