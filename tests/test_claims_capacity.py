"""Issue 10, point 3: claims within reason. A node's max_concurrent_jobs is clamped to limits.max_node_capacity,
and a node that takes jobs and never answers loses its share at its first job timeout (its effective capacity
shrinks until it answers again). The rule itself is pure (policy/selection.py) and tested with hypothesis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import Peer, b64, memory_node, memory_session, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.policy.selection import capacity_after_answer, capacity_after_timeout

UTTERANCES = 48
SPACING_S = 0.25  # 4 utterances a second, each from a new session (no affinity to carry them)
HONEST_DELAY_S = 0.5


async def answer_after(node: Peer, delay: float, nursery: trio.Nursery) -> None:
    async def answer(assign: dict[str, Any]) -> None:
        await trio.sleep(delay)
        await node.send(**result_for(assign, node_id="honest"))

    while True:
        message = await node.recv(timeout=1e9)
        if message["type"] == "job_assign":
            nursery.start_soon(answer, message)


async def never_answer(node: Peer, first_attempts: list[int]) -> None:
    while True:
        message = await node.recv(timeout=1e9)
        if message["type"] == "job_assign" and message["attempt_id"] == 1:
            first_attempts.append(message["utterance_index"])


async def test_a_node_claiming_a_billion_slots_that_never_answers_gets_a_small_share(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    """Quarantine is set out of reach here, so only the capacity rule stands between the bad node and the
    utterances. Before the rule the bad node, its load ratio ~0, won every choice the busy honest node did not."""
    scheduler = Scheduler(make_config(
        scheduler={"job_timeout_seconds": 1.0, "quarantine_failures": 10_000, "pending_timeout_seconds": 10.0},
        limits={"max_node_capacity": 512}))
    await nursery.start(scheduler.run)
    honest = await memory_node(nursery, scheduler, "honest", capacity=4)
    bad = await memory_node(nursery, scheduler, "bad", capacity=10**9)
    bad_got: list[int] = []
    nursery.start_soon(answer_after, honest, HONEST_DELAY_S, nursery)
    nursery.start_soon(never_answer, bad, bad_got)
    clients: list[Peer] = []
    for index in range(UTTERANCES):
        client, sid = await memory_session(nursery, scheduler)
        await client.send(type="utterance", session_id=sid, utterance_index=0, manual_cut=True,
                          audio=b64(pcm(100, fill=index)), audio_format="pcm16", sample_rate=16000)
        clients.append(client)
        await trio.sleep(SPACING_S)
    for client in clients:
        outcome = await client.recv_type("translation_result", "error", timeout=30)
        assert outcome["type"] == "translation_result", outcome  # the honest node answered them all in the end
    # The first job timeout comes after ~4 utterances; from then on the bad node holds at most one (a probe)
    # per job timeout, 12 over the run: about a quarter. Before the rule it drew almost every utterance.
    assert len(bad_got) <= UTTERANCES // 3, (len(bad_got), bad_got)
    stats = await scheduler.stats()
    assert stats is not None
    bad_view = next(node for node in stats["nodes"] if node["node_id"] == "bad")
    assert bad_view["capacity"] == 512 and bad_view["effective_capacity"] == 1
    assert stats["counters"]["node_capacity_clamped"] == 1


async def test_a_node_that_answers_again_regrows_to_its_claim(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, make_config: Callable[..., Config]) -> None:
    scheduler = Scheduler(make_config(scheduler={"job_timeout_seconds": 1.0, "quarantine_failures": 10_000}))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "n", capacity=8)
    client, sid = await memory_session(nursery, scheduler)

    async def send(index: int) -> None:
        await client.send(type="utterance", session_id=sid, utterance_index=index, manual_cut=True,
                          audio=b64(pcm(100, fill=index)), audio_format="pcm16", sample_rate=16000)

    for index in range(8):
        await send(index)
    for _ in range(8):
        await node.recv_type("job_assign")
    await trio.sleep(1.5)  # all eight time out: 8 -> 4 -> 2 -> 1
    capacities = {n["node_id"]: (n["effective_capacity"], n["capacity"]) for n in (await scheduler.stats())["nodes"]}
    assert capacities["n"] == (1, 8)
    for index in range(8, 12):
        await send(index)
        assign = await node.recv_type("job_assign", skip=("job_cancel",))
        await node.send(**result_for(assign, node_id="n"))
        await client.recv_type("translation_result", skip=("error",))
    capacities = {n["node_id"]: (n["effective_capacity"], n["capacity"]) for n in (await scheduler.stats())["nodes"]}
    assert capacities["n"] == (8, 8)


@given(claimed=st.integers(1, 10**6), events=st.lists(st.tuples(st.booleans(), st.integers(0, 10**6)), max_size=80))
def test_effective_capacity_stays_within_one_and_the_claim(claimed: int, events: list[tuple[bool, int]]) -> None:
    effective = claimed
    for timed_out, held in events:
        before = effective
        if timed_out:
            effective = capacity_after_timeout(effective, held)
            assert effective <= before and effective <= max(1, held // 2 if held >= 2 else 1)
        else:
            effective = capacity_after_answer(effective, claimed)
            assert before <= effective <= 2 * before
        assert 1 <= effective <= claimed


@given(claimed=st.integers(1, 10**9))
def test_answers_regrow_a_node_from_one_to_its_claim_in_log2_steps(claimed: int) -> None:
    effective, steps = capacity_after_timeout(claimed, 1), 0
    assert effective == 1
    while effective < claimed:
        effective = capacity_after_answer(effective, claimed)
        steps += 1
    assert effective == claimed and steps <= claimed.bit_length()
