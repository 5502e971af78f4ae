"""The registry actor driven directly, without sockets, under trio's MockClock.

Every test talks to ``Registry`` only through ``RegistryClient`` and its channels: a fake node is a ``NodeLink``
whose outbox the test reads, a fake session is the memory channel passed as ``sink``. Every wait is bounded by
``trio.fail_after`` so a hang fails instead of blocking; the autojump clock makes the timeouts cost nothing.
"""

from __future__ import annotations

import base64
import collections
import itertools
import math
import random
import re
from collections.abc import Iterable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trioscheduler.config import Config, config_with
from trioscheduler.policy.capability import claim_of_register, direction_key
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.messages import (
    JobAssign,
    JobCancel,
    JobResult,
    LanguageCapabilities,
    NodeHeartbeat,
    NodeRegister,
    NodeRegisterAck,
    Pipeline,
    ResultError,
)
from trioscheduler.registry.actor import Dispatch, Registry
from trioscheduler.registry.requests import (
    CloseLink,
    JobSpec,
    NodeGone,
    NodeLink,
    Outcome,
    Passthrough,
    Register,
    RegistryClient,
    Reply,
    Snapshot,
    Submit,
    SubmitReply,
    open_registry_channel,
)
from trioscheduler.registry.requests import Result as RegistryResult

ZH_EN = LanguageCapabilities(asr_languages=["zh", "en"], tts_languages=["zh", "en"], semantic_languages=["zh", "en"])
JA_EN = LanguageCapabilities(asr_languages=["ja", "en"], tts_languages=["ja", "en"], semantic_languages=["ja", "en"])
STEP = 1.0  # bound for a wait that should finish without the clock moving at all


def make_config(**scheduler: Any) -> Config:
    """Heartbeat silence is only at play where a test asks for it: the fake nodes do not heartbeat."""
    scheduler.setdefault("heartbeat_interval_seconds", 1000)
    scheduler.setdefault("heartbeat_timeout_seconds", 3000)
    return config_with(Config(), scheduler=scheduler)


def spec_for(session_id: str, index: int, src: str = "zh", tgt: str = "en", turn_id: str | None = None,
             finalized_at: float | None = None) -> JobSpec:
    return JobSpec(
        session_id=session_id,
        utterance_index=index,
        trace_id=f"trace-{session_id}-{index}",
        src_lang=src,
        tgt_lang=tgt,
        selection_key=direction_key(src, tgt),
        pipeline=Pipeline(),
        audio=bytes([index % 256]) * 32,
        audio_format="pcm16",
        sample_rate=16000,
        turn_id=turn_id,
        cut_reason="manual",
        finalized_at=trio.current_time() if finalized_at is None else finalized_at,
        is_manual_cut=True,
    )


def ok_result(assign: JobAssign, **overrides: Any) -> JobResult:
    fields: dict[str, Any] = dict(
        job_id=assign.job_id,
        success=True,
        attempt_id=assign.attempt_id,
        session_id=assign.session_id,
        utterance_index=assign.utterance_index,
        text_asr=f"asr {assign.utterance_index}",
        text_translated=f"translated {assign.utterance_index}",
        tts_audio=base64.b64encode(b"tts").decode(),
        tts_format="pcm16",
        trace_id=assign.trace_id,
    )
    fields.update(overrides)
    return JobResult(**fields)


def failed_result(assign: JobAssign, code: str, message: str = "boom") -> JobResult:
    return JobResult(job_id=assign.job_id, success=False, attempt_id=assign.attempt_id,
                     session_id=assign.session_id, utterance_index=assign.utterance_index,
                     error=ResultError(code=code, message=message))


def drain(channel: trio.MemoryReceiveChannel[Any]) -> list[Any]:
    items = []
    while True:
        try:
            items.append(channel.receive_nowait())
        except trio.WouldBlock:
            return items


class FakeNode:
    def __init__(self, harness: Harness, link: NodeLink, outbox: trio.MemoryReceiveChannel[Any],
                 ack: NodeRegisterAck, first_items: list[Any]) -> None:
        self.harness = harness
        self.link = link
        self.outbox = outbox
        self.ack = ack
        self.node_id = ack.node_id
        self.first_items = first_items  # everything in the outbox right after registering, ack first
        self.seen: list[Any] = list(first_items[1:])

    def poll(self) -> list[Any]:
        """Everything the registry put in this node's outbox since the last poll (call after ``sync``)."""
        new = self.seen + drain(self.outbox)
        self.seen = []
        return new

    async def wait(self, timeout: float) -> list[Any]:
        """Wait for at least one outbox item; return it and whatever else is there."""
        if self.seen:
            return self.poll()
        with trio.fail_after(timeout):
            first = await self.outbox.receive()
        return [first, *self.poll()]

    def assigns(self) -> list[JobAssign]:
        return [item.assign for item in self.poll() if isinstance(item, Dispatch)]

    async def result(self, message: JobResult) -> None:
        await self.harness.client.result(self.link, message)
        await self.harness.sync()

    async def gone(self, reason: str = "socket_closed") -> None:
        await self.harness.client.node_gone(self.link, reason)
        await self.harness.sync()

    async def heartbeat(self) -> None:
        await self.harness.client.heartbeat(self.link, NodeHeartbeat(node_id=self.node_id), trio.current_time())


class FakeSession:
    def __init__(self, harness: Harness, session_id: str) -> None:
        self.harness = harness
        self.session_id = session_id
        self.sink_send, self.sink_recv = trio.open_memory_channel[Any](math.inf)

    async def submit(self, index: int, *, src: str = "zh", tgt: str = "en",
                     patience: float = 5.0) -> SubmitReply | None:
        return await self.harness.client.submit(spec_for(self.session_id, index, src, tgt), self.sink_send,
                                                trio.current_time() + patience)

    def poll(self) -> list[Any]:
        return drain(self.sink_recv)

    async def outcome(self, timeout: float) -> Outcome:
        with trio.fail_after(timeout):
            item = await self.sink_recv.receive()
        assert isinstance(item, Outcome), item
        return item


class Harness:
    def __init__(self, nursery: trio.Nursery, config: Config, *, inbox_size: int = 256) -> None:
        send, recv = open_registry_channel(inbox_size)
        self.config = config
        self.send_channel = send
        self.registry = Registry(config, recv, rng=random.Random(0))
        self._nursery = nursery
        self._running = trio.CancelScope()
        self.start_registry()
        self.client = RegistryClient(send, self.registry.notices)
        self._conn_ids = itertools.count(1)

    def start_registry(self) -> None:
        """Run the registry task (again): its state is kept while it is stopped."""
        self._running = trio.CancelScope()

        async def run(scope: trio.CancelScope) -> None:
            with scope:
                await self.registry.run()

        self._nursery.start_soon(run, self._running)

    def stop_registry(self) -> None:
        """The registry stops taking requests, as if it were stalled; requests pile up in its inbox."""
        self._running.cancel()

    async def sync(self) -> dict[str, Any]:
        """A barrier: the inbox is FIFO, so once the snapshot answers every earlier request has been handled."""
        with trio.fail_after(STEP):
            snapshot = await self.client.snapshot()
        assert snapshot is not None
        return snapshot

    async def node(self, node_id: str | None = None, *, languages: LanguageCapabilities = ZH_EN,
                   max_jobs: int | None = None, conn_id: int | None = None) -> FakeNode:
        outbox_send, outbox_recv = trio.open_memory_channel[Any](1000)
        link = NodeLink(conn_id if conn_id is not None else next(self._conn_ids), outbox_send, "peer")
        with trio.fail_after(STEP):
            reply = await self.client.register(
                link, NodeRegister(node_id=node_id, language_capabilities=languages, max_concurrent_jobs=max_jobs))
        assert isinstance(reply, str), reply
        items = drain(outbox_recv)
        assert items and isinstance(items[0], NodeRegisterAck), items
        assert items[0].node_id == reply
        return FakeNode(self, link, outbox_recv, items[0], items)

    def session(self, session_id: str) -> FakeSession:
        return FakeSession(self, session_id)

    async def counters(self) -> dict[str, int]:
        return (await self.sync())["counters"]  # type: ignore[no-any-return]

    async def in_flight(self) -> dict[str, int]:
        snapshot = await self.sync()
        return {n["node_id"]: n["in_flight"] for n in snapshot["nodes"]}


def assigns_of(nodes: Iterable[FakeNode]) -> dict[str, list[JobAssign]]:
    return {node.node_id: node.assigns() for node in nodes}


def only_assign(nodes: Iterable[FakeNode]) -> tuple[FakeNode, JobAssign]:
    """The one node that got exactly one job_assign (the others none)."""
    got = [(node, a) for node in nodes for a in node.assigns()]
    assert len(got) == 1, [(n.node_id, a.job_id) for n, a in got]
    return got[0]


# ============================================================================================ registration


async def test_register_acks_first_with_generated_node_id(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(heartbeat_interval_seconds=7.5, heartbeat_timeout_seconds=20))
    node = await h.node()
    ack = node.first_items[0]
    assert re.fullmatch(r"node-[0-9A-Fa-f]{8}", ack.node_id), ack.node_id
    assert ack.heartbeat_interval_seconds == 7.5
    assert node.first_items == [ack]
    other = await h.node()
    assert other.node_id != node.node_id


async def test_register_reuses_the_node_id_sent(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await h.node("node-gpu-7")
    assert node.ack.node_id == "node-gpu-7"
    assert node.ack.heartbeat_interval_seconds == 1000
    snapshot = await h.sync()
    assert [n["node_id"] for n in snapshot["nodes"]] == ["node-gpu-7"]


async def test_pool_created_on_register_and_removed_when_node_goes(nursery: trio.Nursery,
                                                                   autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    a = await h.node("node-a")
    snapshot = await h.sync()
    assert snapshot["pools"] == {"en-zh": ["node-a"]}
    b = await h.node("node-b")
    j = await h.node("node-j", languages=JA_EN)
    snapshot = await h.sync()
    assert snapshot["pools"] == {"en-zh": ["node-a", "node-b"], "en-ja": ["node-j"]}
    await a.gone()
    assert (await h.sync())["pools"] == {"en-zh": ["node-b"], "en-ja": ["node-j"]}
    await b.gone()
    await j.gone()
    snapshot = await h.sync()
    assert snapshot["pools"] == {}
    assert snapshot["nodes"] == []
    assert (await h.counters())["pools_removed"] == 2


async def test_capacity_from_register_else_config_default(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(max_concurrent_jobs_per_node=3))
    await h.node("node-two", max_jobs=2)
    await h.node("node-dflt")
    caps = {n["node_id"]: n["capacity"] for n in (await h.sync())["nodes"]}
    assert caps == {"node-two": 2, "node-dflt": 3}


async def test_capacity_is_enforced_per_node(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(max_concurrent_jobs_per_node=3, pending_timeout_seconds=50))
    two = await h.node("node-two", max_jobs=2)
    dflt = await h.node("node-dflt")
    replies = [await h.session(f"s{i}").submit(0) for i in range(7)]
    assert [r.state for r in replies if r is not None].count("dispatched") == 5
    assert [r.state for r in replies if r is not None].count("waiting") == 2
    got = assigns_of([two, dflt])
    assert len(got["node-two"]) == 2 and len(got["node-dflt"]) == 3
    assert await h.in_flight() == {"node-two": 2, "node-dflt": 3}


# ============================================================================================ selection


async def test_dispatch_goes_only_to_nodes_serving_the_pair(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(max_concurrent_jobs_per_node=20))
    zh = await h.node("node-zh")
    ja = await h.node("node-ja", languages=JA_EN)
    zh_only = await h.node("node-zh-only", languages=LanguageCapabilities(asr_languages=["zh"],
                                                                            tts_languages=["zh"]))
    for i in range(8):
        reply = await h.session(f"s{i}").submit(0)
        assert reply is not None and reply.state == "dispatched" and reply.node_id == "node-zh"
    reply = await h.session("ja").submit(0, src="ja", tgt="en")
    assert reply is not None and reply.node_id == "node-ja"
    got = assigns_of([zh, ja, zh_only])
    assert len(got["node-zh"]) == 8 and all((a.src_lang, a.tgt_lang) == ("zh", "en") for a in got["node-zh"])
    assert [(a.src_lang, a.tgt_lang) for a in got["node-ja"]] == [("ja", "en")]
    assert got["node-zh-only"] == []
    assign = got["node-zh"][0]
    assert assign.attempt_id == 1 and assign.session_id == "s0" and assign.utterance_index == 0
    assert base64.b64decode(assign.audio) == bytes([0]) * 32


async def test_never_above_capacity_while_results_free_slots(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=100))
    nodes = [await h.node(f"node-{i}", max_jobs=cap) for i, cap in enumerate((1, 2, 3))]
    sessions = [h.session(f"s{i}") for i in range(12)]
    for s in sessions:
        assert await s.submit(0) is not None
    outstanding: list[tuple[FakeNode, JobAssign]] = []
    delivered = 0
    while delivered < len(sessions):
        for node in nodes:
            outstanding += [(node, a) for a in node.assigns()]
        snapshot = await h.sync()
        for n in snapshot["nodes"]:
            assert n["in_flight"] <= n["capacity"], n
        assert snapshot["slots"]["in_flight"] == len(outstanding) <= 6
        node, assign = outstanding.pop(0)
        await node.result(ok_result(assign))
        delivered += 1
    await h.sync()
    assert sum(len(s.poll()) for s in sessions) == 12
    assert (await h.sync())["slots"]["in_flight"] == 0


async def test_session_affinity_prefers_previous_node_while_it_has_room(nursery: trio.Nursery,
                                                                        autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(max_concurrent_jobs_per_node=3))
    a, b = await h.node("node-a"), await h.node("node-b")
    s = h.session("s")
    first = await s.submit(0)
    assert first is not None and first.node_id is not None
    home = first.node_id
    # Power-of-two-choices alone would now pick the idle node; affinity keeps the session where it was.
    for index in (1, 2):
        reply = await s.submit(index)
        assert reply is not None and reply.node_id == home, (index, reply)
    reply = await s.submit(3)  # home is full now
    assert reply is not None and reply.state == "dispatched" and reply.node_id not in (home, None)
    got = assigns_of([a, b])
    assert len(got[home]) == 3


async def test_job_waits_for_a_slot_and_is_dispatched_when_one_frees(nursery: trio.Nursery,
                                                                     autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=10))
    node = await h.node("node-a", max_jobs=1)
    s, t = h.session("s"), h.session("t")
    assert (await s.submit(0)).state == "dispatched"  # type: ignore[union-attr]
    waiting = await t.submit(4)
    assert waiting is not None and waiting.state == "waiting" and waiting.node_id is None
    [first] = node.assigns()
    await trio.sleep(3)
    assert node.assigns() == []
    now = trio.current_time()
    await node.result(ok_result(first))
    [second] = node.assigns()
    assert trio.current_time() == now
    assert (second.session_id, second.utterance_index, second.job_id) == ("t", 4, waiting.job_id)
    outcome = await s.outcome(STEP)
    assert isinstance(outcome.message, m.TranslationResult) and outcome.utterance_index == 0
    await node.result(ok_result(second))
    outcome = await t.outcome(STEP)
    assert isinstance(outcome.message, m.TranslationResult) and outcome.utterance_index == 4


async def test_pending_timeout_gives_no_available_node(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=4))
    await h.node("node-ja", languages=JA_EN)  # alive, but serves no zh→en
    s = h.session("s")
    start = trio.current_time()
    reply = await s.submit(7)
    assert reply is not None and reply.state == "waiting"
    outcome = await s.outcome(10)
    assert trio.current_time() - start == pytest.approx(4.0)
    assert outcome.utterance_index == 7
    assert isinstance(outcome.message, m.ErrorMessage)
    assert outcome.message.code == "NO_AVAILABLE_NODE"
    assert outcome.message.utterance_index == 7 and outcome.message.session_id == "s"
    # The session keeps working: once a node is there, the next utterance succeeds.
    zh = await h.node("node-zh")
    reply = await s.submit(8)
    assert reply is not None and reply.state == "dispatched" and reply.node_id == "node-zh"
    [assign] = zh.assigns()
    await zh.result(ok_result(assign))
    assert isinstance((await s.outcome(STEP)).message, m.TranslationResult)
    assert s.poll() == []


async def test_node_registering_while_job_waits_gets_it_at_once(nursery: trio.Nursery,
                                                               autojump_clock: Any) -> None:
    """A node is reachable as soon as it is in a pool (the original waited for a periodic renewal)."""
    h = Harness(nursery, make_config(pending_timeout_seconds=30))
    s = h.session("s")
    reply = await s.submit(0)
    assert reply is not None and reply.state == "waiting"
    await trio.sleep(1)
    now = trio.current_time()
    node = await h.node("node-late")
    assert trio.current_time() == now
    [assign] = node.assigns()  # already in the outbox, right behind the ack
    assert assign.job_id == reply.job_id and assign.attempt_id == 1
    await node.result(ok_result(assign))
    outcome = await s.outcome(STEP)
    assert isinstance(outcome.message, m.TranslationResult) and trio.current_time() == now


# ============================================================================================ job timeout


async def test_job_timeout_fails_over_to_new_nodes_then_errors(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=5, failover_max_attempts=2, pending_timeout_seconds=100))
    nodes = [await h.node(f"node-{i}") for i in range(3)]
    by_id = {n.node_id: n for n in nodes}
    s = h.session("s")
    start = trio.current_time()
    reply = await s.submit(3)
    assert reply is not None and reply.state == "dispatched"
    holder, assign = only_assign(nodes)
    assert assign.job_id == reply.job_id and assign.attempt_id == 1
    history = [(holder.node_id, assign.job_id)]
    for attempt in (2, 3):
        items = await holder.wait(10)
        assert trio.current_time() - start == pytest.approx(5 * (attempt - 1))
        assert [type(i) for i in items] == [JobCancel], items
        assert items[0].job_id == history[-1][1]
        await h.sync()
        assert (await h.in_flight())[holder.node_id] == 0
        holder, assign = only_assign(nodes)
        assert holder.node_id not in [node_id for node_id, _ in history]
        assert assign.attempt_id == attempt
        assert assign.job_id not in [job_id for _, job_id in history]
        assert (assign.session_id, assign.utterance_index) == ("s", 3)
        assert (await h.in_flight())[holder.node_id] == 1
        history.append((holder.node_id, assign.job_id))
    # The third attempt times out too: failover_max_attempts=2 re-dispatches are spent.
    outcome = await s.outcome(10)
    assert trio.current_time() - start == pytest.approx(15)
    assert isinstance(outcome.message, m.ErrorMessage) and outcome.message.code == "JOB_TIMEOUT"
    assert outcome.utterance_index == 3 and outcome.message.utterance_index == 3
    last = by_id[history[-1][0]]
    assert [i.job_id for i in last.poll() if isinstance(i, JobCancel)] == [history[-1][1]]
    await trio.sleep(200)
    assert s.poll() == []
    assert all(n.poll() == [] for n in nodes)
    snapshot = await h.sync()
    assert snapshot["slots"]["in_flight"] == 0 and snapshot["jobs"]["total"] == 0


async def test_job_timeout_with_no_other_node_errors_after_the_pending_timeout(nursery: trio.Nursery,
                                                                                autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=5, pending_timeout_seconds=3, failover_max_attempts=5))
    a = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    [assign] = a.assigns()
    outcome = await s.outcome(20)
    # it waited pending_timeout_seconds for another node, then got the last failure's code
    assert trio.current_time() == pytest.approx(5 + 3)
    assert isinstance(outcome.message, m.ErrorMessage) and outcome.message.code == "JOB_TIMEOUT"
    assert [type(i) for i in a.poll()] == [JobCancel]
    # never back to the node that already had it, even though it is free again
    await trio.sleep(100)
    assert a.poll() == [] and s.poll() == []
    assert await h.in_flight() == {"node-a": 0}


async def test_failover_waits_for_busy_untried_node_never_returns_to_old(nursery: trio.Nursery,
                                                                         autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=5, pending_timeout_seconds=3, failover_max_attempts=3))
    x = await h.node("node-x", max_jobs=1)
    s, t = h.session("s"), h.session("t")
    await s.submit(0)
    [first] = x.assigns()
    await trio.sleep(1)
    y = await h.node("node-y", max_jobs=1)
    await t.submit(0)
    [other] = y.assigns()
    await x.wait(10)  # job_cancel at t=5: x is free, y is full, so the retry waits
    assert trio.current_time() == pytest.approx(5)
    assert x.poll() == [] and y.poll() == []
    await trio.sleep(0.5)  # t's job on y is due at t=6
    await y.result(ok_result(other))
    [retry] = y.assigns()
    assert retry.session_id == "s" and retry.attempt_id == 2 and retry.job_id != first.job_id
    assert x.poll() == []
    await y.result(ok_result(retry))
    outcome = await s.outcome(STEP)
    assert isinstance(outcome.message, m.TranslationResult) and outcome.job_id == retry.job_id
    assert isinstance((await t.outcome(STEP)).message, m.TranslationResult)
    await trio.sleep(50)
    assert s.poll() == [] and t.poll() == []


async def test_failover_that_finds_no_slot_ends_with_job_timeout(nursery: trio.Nursery,
                                                                 autojump_clock: Any) -> None:
    """The retry waits like a new job; if no untried node frees a slot within pending_timeout_seconds, the
    client gets the reason the job last failed (JOB_TIMEOUT), not NO_AVAILABLE_NODE."""
    h = Harness(nursery, make_config(job_timeout_seconds=5, pending_timeout_seconds=3))
    x = await h.node("node-x", max_jobs=1)
    s = h.session("s")
    await s.submit(0)
    x.assigns()
    await trio.sleep(4)
    y = await h.node("node-y", max_jobs=1)
    await h.session("t").submit(0)
    y.assigns()
    # s times out on x at t=5 and waits for y, which stays full until t=9; the wait ends at t=8.
    outcome = await s.outcome(20)
    assert trio.current_time() == pytest.approx(8)
    assert isinstance(outcome.message, m.ErrorMessage)
    assert outcome.message.code == "JOB_TIMEOUT", outcome.message
    assert outcome.message.utterance_index == 0
    assert x.assigns() == [] and y.assigns() == []
    await trio.sleep(50)
    assert s.poll() == []


# ============================================================================================ node loss


async def test_node_gone_redispatches_in_flight_jobs_at_once(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=30))
    a = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    [first] = a.assigns()
    b = await h.node("node-b")
    await trio.sleep(2)
    now = trio.current_time()
    await a.gone()
    assert trio.current_time() == now
    [second] = b.assigns()
    assert second.attempt_id == 2 and second.job_id != first.job_id and second.utterance_index == 0
    snapshot = await h.sync()
    assert [n["node_id"] for n in snapshot["nodes"]] == ["node-b"]
    assert snapshot["slots"]["in_flight"] == 1
    await b.result(ok_result(second))
    outcome = await s.outcome(STEP)
    assert isinstance(outcome.message, m.TranslationResult) and outcome.job_id == second.job_id
    # a late result from the lost node's socket changes nothing
    await a.result(ok_result(first))
    assert s.poll() == []


async def test_node_loss_counts_as_an_attempt(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(failover_max_attempts=1))
    a = await h.node("node-a")
    s = h.session("s")
    await s.submit(5)
    a.assigns()
    others = [await h.node("node-b"), await h.node("node-c")]
    await a.gone()
    holder, second = only_assign(others)
    assert second.attempt_id == 2
    await holder.gone()
    outcome = await s.outcome(STEP)
    assert isinstance(outcome.message, m.ErrorMessage) and outcome.message.code == "NODE_UNAVAILABLE"
    assert outcome.message.utterance_index == 5
    assert all(n.assigns() == [] for n in others)


async def test_heartbeat_silence_closes_link_and_redispatches(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(heartbeat_interval_seconds=2, heartbeat_timeout_seconds=6,
                                     job_timeout_seconds=100))
    silent = await h.node("node-silent")
    s = h.session("s")
    await s.submit(0)
    [first] = silent.assigns()
    alive = await h.node("node-alive")

    async def beat() -> None:
        while True:
            await trio.sleep(2)
            await alive.heartbeat()

    async with trio.open_nursery() as beats:
        beats.start_soon(beat)
        items = await silent.wait(10)
        assert trio.current_time() == pytest.approx(6)
        assert [type(i) for i in items] == [CloseLink]
        [second] = alive.assigns()
        assert second.attempt_id == 2 and second.job_id != first.job_id
        snapshot = await h.sync()
        assert [n["node_id"] for n in snapshot["nodes"]] == ["node-alive"]
        # heartbeats keep the other node alive well past the timeout
        await trio.sleep(40)
        snapshot = await h.sync()
        assert [n["node_id"] for n in snapshot["nodes"]] == ["node-alive"]
        assert not any(isinstance(i, CloseLink) for i in alive.poll())
        beats.cancel_scope.cancel()
    await alive.result(ok_result(second))
    assert isinstance((await s.outcome(STEP)).message, m.TranslationResult)


async def test_heartbeat_silence_without_jobs_removes_node_and_pool(nursery: trio.Nursery,
                                                                    autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(heartbeat_interval_seconds=2, heartbeat_timeout_seconds=6))
    node = await h.node("node-a")
    await trio.sleep(5)
    await node.heartbeat()
    await trio.sleep(5)  # t=10: 5 s after the heartbeat, still alive
    assert [n["node_id"] for n in (await h.sync())["nodes"]] == ["node-a"]
    items = await node.wait(5)
    assert trio.current_time() == pytest.approx(11)
    assert [type(i) for i in items] == [CloseLink]
    snapshot = await h.sync()
    assert snapshot["nodes"] == [] and snapshot["pools"] == {}


@pytest.mark.parametrize("outbox", ["closed", "full"])
async def test_node_whose_outbox_fails_is_lost_and_job_goes_elsewhere(nursery: trio.Nursery, autojump_clock: Any,
                                                                      outbox: str) -> None:
    """A node whose connection is gone while it is still pooled is never a silent sink for jobs."""
    h = Harness(nursery, make_config())
    broken_send, broken_recv = trio.open_memory_channel[Any](1)
    broken = NodeLink(100, broken_send, "peer")
    assert await h.client.register(broken, NodeRegister(node_id="node-broken", language_capabilities=ZH_EN)) \
        == "node-broken"
    if outbox == "closed":
        await broken_recv.aclose()  # the writer task is gone
    # else: the ack fills the one-slot outbox and nobody drains it
    good = await h.node("node-good", max_jobs=10)
    sessions = [h.session(f"s{i}") for i in range(4)]
    for s in sessions:
        reply = await s.submit(0)
        assert reply is not None
    assigns = good.assigns()
    assert sorted(a.session_id for a in assigns) == ["s0", "s1", "s2", "s3"]
    snapshot = await h.sync()
    assert [n["node_id"] for n in snapshot["nodes"]] == ["node-good"]
    assert snapshot["pools"] == {"en-zh": ["node-good"]}
    for assign in assigns:
        await good.result(ok_result(assign))
    assert all(len(s.poll()) == 1 for s in sessions)


async def test_jobs_of_one_turn_land_on_one_node_sharing_a_slot(nursery: trio.Nursery,
                                                                autojump_clock: Any) -> None:
    """The jobs of a max-duration chain (one turn_id) go to the node that holds the turn, even when it
    is full, and cost one slot."""
    h = Harness(nursery, make_config())
    nodes = [await h.node("node-x", max_jobs=1), await h.node("node-y", max_jobs=1)]
    sink_send, sink_recv = trio.open_memory_channel[Any](math.inf)
    replies = []
    for index in range(3):
        replies.append(await h.client.submit(spec_for("s", index, turn_id="turn-1"), sink_send,
                                             trio.current_time() + 5))
    assert {r.node_id for r in replies if r is not None} == {replies[0].node_id}  # type: ignore[union-attr]
    holder = next(n for n in nodes if n.node_id == replies[0].node_id)  # type: ignore[union-attr]
    [other] = [n for n in nodes if n is not holder]
    assigns = holder.assigns()
    assert [a.utterance_index for a in assigns] == [0, 1, 2]
    assert all(a.turn_id == "turn-1" for a in assigns)
    assert await h.in_flight() == {holder.node_id: 1, other.node_id: 0}
    # the other node still has its slot for another session
    reply = await h.session("t").submit(0)
    assert reply is not None and reply.node_id == other.node_id
    for assign in assigns:
        await holder.result(ok_result(assign))
    assert sorted(o.utterance_index for o in drain(sink_recv)) == [0, 1, 2]
    assert await h.in_flight() == {holder.node_id: 0, other.node_id: 1}


async def test_heartbeat_updates_languages_and_pools(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=30))
    node = await h.node("node-a")
    s = h.session("s")
    reply = await s.submit(0, src="ja", tgt="en")
    assert reply is not None and reply.state == "waiting"
    await h.client.heartbeat(node.link, NodeHeartbeat(node_id="node-a", language_capabilities=JA_EN),
                             trio.current_time())
    snapshot = await h.sync()
    assert snapshot["pools"] == {"en-ja": ["node-a"]}
    [assign] = node.assigns()  # the waiting ja→en job goes at once
    assert (assign.src_lang, assign.tgt_lang) == ("ja", "en")
    # and zh→en is no longer served by it
    reply = await s.submit(1)
    assert reply is not None and reply.state == "waiting"


# ============================================================================================ failover waits for a node


async def test_only_node_dies_and_a_node_registering_later_takes_the_job(nursery: trio.Nursery,
                                                                         autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=5, job_timeout_seconds=30))
    a = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    [first] = a.assigns()
    await a.gone()
    snapshot = await h.sync()
    assert s.poll() == []  # no error yet: the job waits for a node
    assert snapshot["waiting_by_key"] == {"zh>en": 1} and snapshot["jobs"]["waiting"] == 1
    await trio.sleep(0.5)
    b = await h.node("node-b")
    [second] = b.assigns()
    assert second.attempt_id == 2 and second.job_id != first.job_id and second.utterance_index == 0
    await b.result(ok_result(second))
    outcome = await s.outcome(STEP)
    assert isinstance(outcome.message, m.TranslationResult) and outcome.job_id == second.job_id
    assert (await h.sync())["jobs"]["total"] == 0


async def test_failover_with_no_node_coming_errors_with_the_last_failure_after_pending_timeout(
        nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=5, job_timeout_seconds=30))
    a = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    a.assigns()
    await trio.sleep(1)
    await a.gone()
    lost_at = trio.current_time()
    outcome = await s.outcome(10)
    assert trio.current_time() == pytest.approx(lost_at + 5)
    assert isinstance(outcome.message, m.ErrorMessage) and outcome.message.code == "NODE_UNAVAILABLE"
    snapshot = await h.sync()
    assert snapshot["jobs"]["total"] == 0 and snapshot["waiting_by_key"] == {}


async def test_node_reconnecting_after_its_connection_was_lost_takes_back_the_lost_job(
        nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=5))
    old = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    [first] = old.assigns()
    await old.gone()
    await trio.sleep(2)
    new = await h.node("node-a")
    assert new.link.conn_id != old.link.conn_id
    [second] = new.assigns()
    assert second.attempt_id == 2 and second.job_id != first.job_id
    await new.result(ok_result(second))
    assert isinstance((await s.outcome(STEP)).message, m.TranslationResult)


async def test_reconnected_node_that_refuses_the_lost_job_as_a_duplicate_is_passed_over_at_once(
        nursery: trio.Nursery, autojump_clock: Any) -> None:
    """A node that remembers the utterance from its lost connection refuses it: that is no user-facing error and
    no failure of the node; the job goes to another node without waiting for its deadline."""
    h = Harness(nursery, make_config(pending_timeout_seconds=5, job_timeout_seconds=30))
    old = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    old.assigns()
    await old.gone()
    new = await h.node("node-a")
    [second] = new.assigns()
    await new.result(failed_result(second, "PROCESSING_ERROR", "DUPLICATE_UTTERANCE_INDEX"))
    snapshot = await h.sync()
    assert s.poll() == [] and snapshot["waiting_by_key"] == {"zh>en": 1}
    assert snapshot["nodes"][0]["in_flight"] == 0 and snapshot["nodes"][0]["jobs_failed"] == 0
    b = await h.node("node-b")
    [third] = b.assigns()
    assert third.attempt_id == 3
    assert new.assigns() == []
    await b.result(ok_result(third))
    assert isinstance((await s.outcome(STEP)).message, m.TranslationResult)


async def test_job_that_timed_out_on_a_node_never_goes_back_to_it_even_after_it_reconnects(
        nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=5, job_timeout_seconds=2, failover_max_attempts=3))
    old = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    old.assigns()
    await trio.sleep(2.5)  # timed out at t=2: waiting for another node
    await old.gone()
    new = await h.node("node-a")
    outcome = await s.outcome(10)
    assert trio.current_time() == pytest.approx(2 + 5)
    assert isinstance(outcome.message, m.ErrorMessage) and outcome.message.code == "JOB_TIMEOUT"
    assert new.assigns() == []


async def test_failover_max_attempts_still_bounds_a_job_that_waited(nursery: trio.Nursery,
                                                                    autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=5, failover_max_attempts=1))
    a = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    a.assigns()
    await a.gone()
    b = await h.node("node-b")
    [second] = b.assigns()
    assert second.attempt_id == 2
    await b.gone()
    outcome = await s.outcome(STEP)  # at once: its one re-dispatch is spent
    assert isinstance(outcome.message, m.ErrorMessage) and outcome.message.code == "NODE_UNAVAILABLE"
    c = await h.node("node-c")
    assert c.assigns() == []


# ============================================================================================ gone notices


async def test_gone_notices_are_applied_when_the_inbox_is_full(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(), inbox_size=1)
    node = await h.node("node-a", max_jobs=4)
    s = h.session("s")
    for index in range(3):
        await s.submit(index)
    assert len(node.assigns()) == 3
    h.stop_registry()
    await trio.testing.wait_all_tasks_blocked()
    h.client.post_heartbeat(node.link, NodeHeartbeat(node_id="node-a"), trio.current_time())  # fills the inbox
    with pytest.raises(trio.WouldBlock):
        h.send_channel.send_nowait(object())
    h.client.session_ended_nowait("s")  # neither blocks nor raises
    h.client.node_gone_nowait(node.link, "socket_closed")
    h.start_registry()
    snapshot = await h.sync()
    assert snapshot["nodes"] == [] and snapshot["jobs"]["total"] == 0
    assert (await h.client.snapshot(detail=True))["held"] == {  # type: ignore[index]
        "nodes": 0, "node_conns": 0, "indexes": 0, "jobs_by_key": 0, "jobs_by_id": 0, "waiting": 0,
        "session_jobs": 0, "sessions": 0, "affinity": 0, "turns": 0, "turn_slot": 0, "notices": 0}
    assert s.poll() == []  # the session wanted no outcome


async def test_a_registration_overtaken_by_its_gone_notice_is_refused(nursery: trio.Nursery,
                                                                      autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(), inbox_size=1)
    h.stop_registry()
    await trio.testing.wait_all_tasks_blocked()
    outbox_send, outbox_recv = trio.open_memory_channel[Any](10)
    link = NodeLink(77, outbox_send, "peer")
    replies: list[Any] = []

    async def register() -> None:
        replies.append(await h.client.register(link, NodeRegister(node_id="node-z", language_capabilities=ZH_EN)))

    nursery.start_soon(register)
    await trio.testing.wait_all_tasks_blocked()  # the registration fills the inbox
    h.client.node_gone_nowait(link, "socket_closed")  # the handler died before its reply came back
    h.start_registry()
    snapshot = await h.sync()
    assert snapshot["nodes"] == [] and snapshot["pools"] == {}
    await trio.testing.wait_all_tasks_blocked()  # the register task has its reply
    assert len(replies) == 1 and not isinstance(replies[0], str)
    assert drain(outbox_recv) == []


async def test_a_submit_cancelled_from_outside_is_abandoned_and_makes_no_job(nursery: trio.Nursery,
                                                                             autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await h.node("node-a")
    h.stop_registry()
    await trio.testing.wait_all_tasks_blocked()
    s = h.session("s")
    with trio.move_on_after(1):  # the session's own teardown, not the submit's deadline (100 s)
        await s.submit(0, patience=100)
    h.start_registry()
    snapshot = await h.sync()
    assert snapshot["jobs"]["total"] == 0 and snapshot["counters"]["submits_abandoned"] == 1
    assert node.assigns() == []


# ============================================================================================ reconnect


async def test_reconnect_replaces_old_link_and_fails_over_its_jobs(nursery: trio.Nursery,
                                                                   autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=30))
    old = await h.node("node-r")
    s = h.session("s")
    await s.submit(0)
    [first] = old.assigns()
    b = await h.node("node-b", max_jobs=1)
    new = await h.node("node-r")
    assert new.node_id == "node-r" and new.link.conn_id != old.link.conn_id
    assert [type(i) for i in old.poll()] == [CloseLink]
    [second] = b.assigns()
    assert second.attempt_id == 2 and second.job_id != first.job_id
    # the old socket's close arrives afterwards: it must not remove the new registration
    await old.gone()
    snapshot = await h.sync()
    assert sorted(n["node_id"] for n in snapshot["nodes"]) == ["node-b", "node-r"]
    assert snapshot["pools"] == {"en-zh": sorted(["node-b", "node-r"])}
    # the new link is the one that gets work (node-b is full)
    t = h.session("t")
    reply = await t.submit(0)
    assert reply is not None and reply.node_id == "node-r"
    [assign] = new.assigns()
    assert old.poll() == []
    # a result for it over the old socket is foreign; over the new one it counts
    await old.result(ok_result(assign))
    assert t.poll() == []
    assert (await h.counters())["results_dropped_foreign_node"] == 1
    await new.result(ok_result(assign))
    assert isinstance((await t.outcome(STEP)).message, m.TranslationResult)
    # heartbeats on the old link do not keep anything alive or change anything
    await old.heartbeat()
    assert sorted(n["node_id"] for n in (await h.sync())["nodes"]) == ["node-b", "node-r"]


# ============================================================================================ results


async def _timed_out_once(h: Harness, nodes: list[FakeNode], s: FakeSession) -> tuple[
        FakeNode, JobAssign, FakeNode, JobAssign]:
    await s.submit(0)
    first_node, first = only_assign(nodes)
    await first_node.wait(h.config.scheduler.job_timeout_seconds + 1)  # job_cancel
    second_node, second = only_assign(nodes)
    return first_node, first, second_node, second


async def test_result_from_old_attempt_is_dropped(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=5))
    nodes = [await h.node("node-a"), await h.node("node-b")]
    s = h.session("s")
    first_node, first, second_node, second = await _timed_out_once(h, nodes, s)
    await first_node.result(ok_result(first))
    assert s.poll() == []
    assert (await h.counters())["results_dropped_old_attempt"] == 1
    await second_node.result(ok_result(second))
    outcome = await s.outcome(STEP)
    assert outcome.job_id == second.job_id and outcome.message.text_translated == "translated 0"
    await first_node.result(ok_result(first))  # and again once the job is finished
    assert (await h.counters())["results_dropped_finished_job"] == 1
    assert s.poll() == []


async def test_result_from_node_not_assigned_is_dropped(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    nodes = [await h.node("node-a"), await h.node("node-b")]
    s = h.session("s")
    await s.submit(0)
    holder, assign = only_assign(nodes)
    [stranger] = [n for n in nodes if n is not holder]
    await stranger.result(ok_result(assign))
    assert s.poll() == []
    assert (await h.counters())["results_dropped_foreign_node"] == 1
    assert (await h.in_flight())[holder.node_id] == 1  # the job is untouched
    await holder.result(ok_result(assign))
    assert (await s.outcome(STEP)).job_id == assign.job_id


async def test_result_from_previous_holder_after_failover_is_dropped(nursery: trio.Nursery,
                                                                    autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=5))
    nodes = [await h.node("node-a"), await h.node("node-b")]
    s = h.session("s")
    first_node, _, second_node, second = await _timed_out_once(h, nodes, s)
    await first_node.result(ok_result(second))  # the new job_id, from the node that no longer holds it
    assert s.poll() == []
    assert (await h.counters())["results_dropped_foreign_node"] == 1
    await second_node.result(ok_result(second))
    assert (await s.outcome(STEP)).job_id == second.job_id


async def test_result_for_unknown_job_is_dropped(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    [assign] = node.assigns()
    await node.result(JobResult(job_id="job-never-issued", success=True, attempt_id=1, text_asr="x",
                                text_translated="y"))
    assert s.poll() == []
    assert (await h.counters())["results_dropped_unknown_job"] == 1
    assert await h.in_flight() == {"node-a": 1}
    await node.result(ok_result(assign))
    assert len(s.poll()) == 1


async def test_result_sent_twice_gives_one_outcome(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    [assign] = node.assigns()
    await node.result(ok_result(assign))
    await node.result(ok_result(assign))
    await node.result(failed_result(assign, "LATE_FAILURE"))
    [outcome] = s.poll()
    assert isinstance(outcome.message, m.TranslationResult)
    assert (await h.counters())["results_dropped_finished_job"] == 2
    assert await h.in_flight() == {"node-a": 0}


async def test_result_with_wrong_attempt_id_is_dropped(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    [assign] = node.assigns()
    await node.result(ok_result(assign, attempt_id=assign.attempt_id + 1))
    await node.result(ok_result(assign, attempt_id=0))
    assert s.poll() == []
    assert (await h.counters())["results_dropped_old_attempt"] == 2
    await node.result(ok_result(assign))
    assert isinstance((await s.outcome(STEP)).message, m.TranslationResult)


async def test_failed_result_becomes_error_with_node_code_without_failover(nursery: trio.Nursery,
                                                                          autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    nodes = [await h.node("node-a"), await h.node("node-b")]
    s = h.session("s")
    await s.submit(9)
    holder, assign = only_assign(nodes)
    await holder.result(failed_result(assign, "MODEL_NOT_LOADED", "tts model missing"))
    outcome = await s.outcome(STEP)
    assert isinstance(outcome.message, m.ErrorMessage)
    assert outcome.message.code == "MODEL_NOT_LOADED" and outcome.message.utterance_index == 9
    assert outcome.utterance_index == 9
    assert all(n.assigns() == [] for n in nodes)
    assert sum((await h.in_flight()).values()) == 0
    await trio.sleep(100)
    assert s.poll() == []
    # one failure does not bar the node; the session's next job still goes there
    reply = await s.submit(10)
    assert reply is not None and reply.node_id == holder.node_id


async def test_codes_a_node_invents_do_not_grow_the_counters(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """A node may report any error code; the client gets it as sent, but the registry counts codes that are not
    its own under one key, so a node inventing a new code per job cannot grow the counters without bound."""
    h = Harness(nursery, make_config())
    node = await h.node("node-a")
    s = h.session("s")
    for index in range(3):  # fewer than quarantine_failures
        await s.submit(index)
        (assign,) = node.assigns()
        await node.result(failed_result(assign, f"INVENTED_{index}"))
        assert (await s.outcome(STEP)).message.code == f"INVENTED_{index}"
    counters = await h.counters()
    assert counters["outcome_error_NODE_REPORTED"] == 3
    assert not any(key.startswith("outcome_error_INVENTED") for key in counters)


@pytest.mark.parametrize("reason", ["ASR_EMPTY", "NO_TEXT_ASSIGNED"])
async def test_empty_result_becomes_missing_result(nursery: trio.Nursery, autojump_clock: Any,
                                                   reason: str) -> None:
    h = Harness(nursery, make_config())
    node = await h.node("node-a")
    s = h.session("s")
    await s.submit(2)
    [assign] = node.assigns()
    # the reason alone decides, even if the node filled in some text
    await node.result(ok_result(assign, extra={"reason": reason}))
    outcome = await s.outcome(STEP)
    assert isinstance(outcome.message, m.MissingResult)
    assert outcome.message.reason == "silence_detected" and outcome.message.utterance_index == 2
    assert outcome.utterance_index == 2
    assert await h.in_flight() == {"node-a": 0}


async def test_duplicate_job_id_reply_is_not_forwarded(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=30))
    node = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    [assign] = node.assigns()
    await node.result(failed_result(assign, "DUPLICATE_JOB_ID", "job already running"))
    assert s.poll() == []
    assert (await h.counters())["results_dropped_duplicate_reply"] == 1
    assert await h.in_flight() == {"node-a": 1}
    assert (await h.sync())["nodes"][0]["jobs_failed"] == 0
    await trio.sleep(10)
    await node.result(ok_result(assign))
    assert isinstance((await s.outcome(STEP)).message, m.TranslationResult)


async def test_asr_partial_is_relayed_only_from_the_assigned_node(nursery: trio.Nursery,
                                                                   autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    nodes = [await h.node("node-a"), await h.node("node-b")]
    s = h.session("s")
    await s.submit(4)
    holder, assign = only_assign(nodes)
    [stranger] = [n for n in nodes if n is not holder]
    await h.client.partial(stranger.link, m.AsrPartialIn(job_id=assign.job_id, text="nope"))
    await h.client.partial(holder.link, m.AsrPartialIn(job_id=assign.job_id, text="ni hao", is_final=False))
    await h.sync()
    [item] = s.poll()
    assert isinstance(item, Passthrough) and isinstance(item.message, m.AsrPartialOut)
    assert (item.message.text, item.message.utterance_index, item.message.job_id) == ("ni hao", 4, assign.job_id)
    assert (await h.counters())["partials_dropped_foreign_node"] == 1
    await holder.result(ok_result(assign))
    await h.client.partial(holder.link, m.AsrPartialIn(job_id=assign.job_id, text="late"))
    await h.sync()
    assert [type(i) for i in s.poll()] == [Outcome]


# ============================================================================================ quarantine


async def test_quarantine_after_failures_then_used_again(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(quarantine_failures=2, quarantine_window_seconds=10,
                                     quarantine_cooldown_seconds=30, pending_timeout_seconds=100))
    node = await h.node("node-a")
    s = h.session("s")
    for index in (0, 1):
        await s.submit(index)
        [assign] = node.assigns()
        await node.result(failed_result(assign, "PROCESSING_ERROR"))
        await trio.sleep(1)
    assert [o.message.code for o in s.poll()] == ["PROCESSING_ERROR", "PROCESSING_ERROR"]
    quarantined_at = trio.current_time() - 1
    [info] = (await h.sync())["nodes"]
    assert info["quarantined"] is True
    reply = await s.submit(2)
    assert reply is not None and reply.state == "waiting"
    [assign] = [i.assign for i in await node.wait(60) if isinstance(i, Dispatch)]
    assert trio.current_time() == pytest.approx(quarantined_at + 30)
    assert assign.utterance_index == 2
    assert (await h.sync())["nodes"][0]["quarantined"] is False
    assert (await h.counters())["node_quarantines"] == 1


async def test_quarantine_routes_new_jobs_to_other_nodes(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(quarantine_failures=1, quarantine_cooldown_seconds=30,
                                     max_concurrent_jobs_per_node=10))
    bad = await h.node("node-bad")
    s = h.session("s")
    await s.submit(0)
    [assign] = bad.assigns()
    good = await h.node("node-good")
    await bad.result(failed_result(assign, "PROCESSING_ERROR"))
    for index in range(1, 6):  # affinity points at node-bad, but it is cooling down
        reply = await s.submit(index)
        assert reply is not None and reply.node_id == "node-good"
    assert bad.assigns() == [] and len(good.assigns()) == 5
    states = {n["node_id"]: n["quarantined"] for n in (await h.sync())["nodes"]}
    assert states == {"node-bad": True, "node-good": False}


async def test_failures_spread_beyond_window_do_not_quarantine(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(quarantine_failures=2, quarantine_window_seconds=10))
    node = await h.node("node-a")
    s = h.session("s")
    for index in (0, 1):
        await s.submit(index)
        [assign] = node.assigns()
        await node.result(failed_result(assign, "PROCESSING_ERROR"))
        await trio.sleep(11)
    assert (await h.sync())["nodes"][0]["quarantined"] is False
    reply = await s.submit(2)
    assert reply is not None and reply.state == "dispatched"


async def test_job_timeouts_count_towards_quarantine(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=2, pending_timeout_seconds=1, quarantine_failures=2,
                                     quarantine_window_seconds=60, quarantine_cooldown_seconds=30))
    node = await h.node("node-a")
    s = h.session("s")
    for index in (0, 1):
        await s.submit(index)
        node.assigns()
        outcome = await s.outcome(5)
        assert outcome.message.code == "JOB_TIMEOUT"
    assert (await h.sync())["nodes"][0]["quarantined"] is True


# ============================================================================================ sessions


async def test_cancel_jobs_sends_job_cancel_and_frees_slot(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(job_timeout_seconds=5))
    node = await h.node("node-a")
    s = h.session("s")
    await s.submit(0)
    await s.submit(1)
    a0, a1 = node.assigns()
    assert await h.in_flight() == {"node-a": 2}
    await h.client.cancel_jobs("s", (0,), "client_gone")
    await h.sync()
    [cancel] = node.poll()
    assert isinstance(cancel, JobCancel) and cancel.job_id == a0.job_id
    assert await h.in_flight() == {"node-a": 1}
    await h.client.session_ended("s")
    await h.sync()
    [cancel] = node.poll()
    assert isinstance(cancel, JobCancel) and cancel.job_id == a1.job_id
    snapshot = await h.sync()
    assert snapshot["slots"]["in_flight"] == 0 and snapshot["jobs"]["total"] == 0
    await trio.sleep(60)  # past every deadline: no outcome, no timeout-triggered cancel
    assert s.poll() == []
    assert node.poll() == []
    await node.result(ok_result(a1))  # a result after the cancel resurrects nothing
    assert s.poll() == []
    assert await h.in_flight() == {"node-a": 0}


async def test_session_ended_drops_waiting_jobs_without_outcome(nursery: trio.Nursery,
                                                               autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=5))
    s = h.session("s")
    assert (await s.submit(0)).state == "waiting"  # type: ignore[union-attr]
    await h.client.session_ended("s")
    await h.sync()
    node = await h.node("node-late")
    assert node.poll() == []
    await trio.sleep(30)
    assert s.poll() == []
    assert (await h.sync())["jobs"] == {"dispatched": 0, "waiting": 0, "total": 0}


async def test_session_ended_does_not_hand_a_freed_slot_to_its_own_waiting_job(nursery: trio.Nursery,
                                                                                autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=50))
    node = await h.node("node-a", max_jobs=1)
    s = h.session("s")
    first = await s.submit(0)
    second = await s.submit(1)
    assert first is not None and first.state == "dispatched"
    assert second is not None and second.state == "waiting"
    [assign] = node.assigns()
    await h.client.session_ended("s")
    items = (await h.sync(), node.poll())[1]
    # only the running job is cancelled; the waiting one is never dispatched just to be cancelled
    assert [type(i) for i in items] == [JobCancel], items
    assert items[0].job_id == assign.job_id
    assert (await h.sync())["jobs"] == {"dispatched": 0, "waiting": 0, "total": 0}
    assert await h.in_flight() == {"node-a": 0}
    await trio.sleep(100)
    assert s.poll() == [] and node.poll() == []


async def test_cancel_jobs_of_one_index_leaves_the_others(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=50))
    node = await h.node("node-a", max_jobs=1)
    s = h.session("s")
    await s.submit(0)
    await s.submit(1)
    await s.submit(2)
    [a0] = node.assigns()
    await h.client.cancel_jobs("s", (0, 1), "client_cancel")
    await h.sync()
    items = node.poll()
    # 0 is cancelled on the node, 1 never reaches it, and 2 takes the freed slot
    assert isinstance(items[0], JobCancel) and items[0].job_id == a0.job_id
    assert [(i.assign.utterance_index) for i in items[1:] if isinstance(i, Dispatch)] == [2]
    assert len(items) == 2
    [a2] = [i.assign for i in items[1:]]
    await node.result(ok_result(a2))
    [outcome] = s.poll()
    assert outcome.utterance_index == 2


# ============================================================================================ idempotency


async def test_same_utterance_submitted_twice_makes_one_job(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config())
    node = await h.node("node-a")
    s = h.session("s")
    first = await s.submit(0)
    second = await s.submit(0)
    assert first is not None and second is not None
    assert first.state == "dispatched" and second.state == "duplicate"
    assert second.job_id == first.job_id and second.node_id == first.node_id
    other_target = await s.submit(0, tgt="zh")  # another tgt_lang is another job
    assert other_target is not None and other_target.job_id != first.job_id
    assigns = node.assigns()
    assert len(assigns) == 2
    assert (await h.counters())["jobs_created"] == 2 and (await h.counters())["submits_duplicate"] == 1
    await node.result(ok_result(assigns[0]))
    assert len(s.poll()) == 1


async def test_duplicate_submit_of_waiting_job(nursery: trio.Nursery, autojump_clock: Any) -> None:
    h = Harness(nursery, make_config(pending_timeout_seconds=5))
    s = h.session("s")
    first = await s.submit(3)
    second = await s.submit(3)
    assert first is not None and second is not None and first.state == "waiting"
    assert second.state == "duplicate" and second.job_id == first.job_id
    await trio.sleep(10)
    [outcome] = s.poll()
    assert outcome.message.code == "NO_AVAILABLE_NODE"


# ============================================================================================ cancellation safety

BEHAVIOURS = ("ok", "ok", "fail", "silent", "twice", "duplicate_then_ok", "empty")


@attrs.frozen
class NodePlan:
    capacity: int
    behaviours: list[str]  # one per job_assign, in turn: how the node answers it
    delay: float  # how long it takes to answer
    dies_at: float | None  # its socket closes (node_gone)
    reconnect_at: float | None  # it registers its node_id again on a new socket
    heartbeats: bool  # False: silent, so the registry drops it after heartbeat_timeout_seconds


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])  # no slow "explain" on failure
@given(
    inbox_size=st.integers(min_value=1, max_value=4),
    stalls=st.lists(st.tuples(st.floats(0, 4), st.sampled_from([0.05, 0.5, 1.5, 3.0])), min_size=1, max_size=3),
    submits=st.lists(
        st.tuples(st.integers(0, 2), st.floats(0, 5), st.sampled_from([0.0, 0.05, 0.3, 0.3, 1.0, 1.0, 3.0, 10.0])),
        min_size=1, max_size=14),
    nodes=st.lists(
        st.builds(NodePlan,
                  capacity=st.integers(1, 3),
                  behaviours=st.lists(st.sampled_from(BEHAVIOURS), min_size=1, max_size=4),
                  delay=st.sampled_from([0.0, 0.1, 0.7, 2.0]),
                  dies_at=st.none() | st.floats(0.5, 8),
                  reconnect_at=st.one_of(st.none(), st.none(), st.floats(0.5, 8)),  # mostly not
                  heartbeats=st.sampled_from([True, True, True, False])),
        min_size=1, max_size=3),
    cancels=st.lists(st.tuples(st.floats(0, 8), st.integers(0, 2), st.none() | st.integers(0, 5)), max_size=2),
    turns=st.sampled_from(["none", "unique", "shared"]),
)
def test_submits_racing_deadlines_never_lose_or_duplicate_outcomes(
    inbox_size: int,
    stalls: list[tuple[float, float]],
    submits: list[tuple[int, float, float]],
    nodes: list[NodePlan],
    cancels: list[tuple[float, int, int | None]],
    turns: str,
) -> None:
    """Submits race their deadlines against a registry that stalls behind a bounded inbox, while nodes answer,
    fail, stay silent, answer twice, die, reconnect or stop heartbeating, and sessions cancel. At the end: a submit
    that got a reply got exactly one outcome (unless its session cancelled it), one that got None got nothing and
    made no job, and no reserved slot is left behind at any point. ``turns``: no turn_id, one turn per utterance
    (what the session does for ``utterance`` messages), or turns of three utterances (a max-duration chain, whose
    jobs share one slot)."""
    config = make_config(job_timeout_seconds=2, pending_timeout_seconds=3, failover_max_attempts=2,
                         quarantine_failures=3, quarantine_window_seconds=5, quarantine_cooldown_seconds=2,
                         heartbeat_interval_seconds=1, heartbeat_timeout_seconds=4)
    per_session = [0, 0, 0]
    plan = []
    # One submit lands in each stall and gives up halfway through it: its request waits in the inbox abandoned.
    probes = [(0, start + 0.001, length / 2) for start, length in stalls]
    for session, start, patience in sorted(submits + probes, key=lambda s: s[1]):
        plan.append((session, per_session[session], start, patience))
        per_session[session] += 1

    replies: dict[tuple[str, int], SubmitReply | None] = {}
    dispatched_keys: set[tuple[str, int]] = set()
    cancelled: set[tuple[str, int]] = set()
    violations: list[str] = []
    stats: dict[str, Any] = {}

    async def main() -> None:
        front_send, front_recv = open_registry_channel(inbox_size)
        back_send, back_recv = trio.open_memory_channel[Any](0)
        registry = Registry(config, back_recv, rng=random.Random(1))
        client = RegistryClient(front_send, registry.notices)
        sinks = {f"s{i}": trio.open_memory_channel[Any](math.inf) for i in range(3)}

        def stalled_until(now: float) -> float | None:
            for start, length in stalls:
                if start <= now < start + length:
                    return start + length
            return None

        async def relay() -> None:
            # The registry "falls behind" during stalls: requests pile up in its bounded inbox.
            while True:
                until = stalled_until(trio.current_time())
                if until is not None:
                    await trio.sleep_until(until)
                    continue
                item = await front_recv.receive()
                await back_send.send(item)

        def check_slots() -> None:
            # The registry's own snapshot, taken directly: the relay may be stalling its inbox.
            now = trio.current_time()
            snapshot = registry.snapshot(now, detail=True)
            in_flight = snapshot["slots"]["in_flight"]
            # Without turns every dispatched job holds one slot; the jobs of one turn on one node share a slot.
            live_dispatched = sum(1 for j in snapshot["job_list"] if j["state"] == "dispatched" and j["holds_slot"])
            if in_flight != live_dispatched:
                violations.append(f"t={now}: in_flight {in_flight} != dispatched {live_dispatched}")
            for n in snapshot["nodes"]:
                if not (0 <= n["in_flight"] <= n["capacity"]) or n["in_flight"] != n["slot_holders"]:
                    violations.append(f"t={now}: {n['node_id']} in_flight={n['in_flight']} cap={n['capacity']} "
                                      f"slot holders={n['slot_holders']} jobs={n['jobs']}")

        async def checker() -> None:
            while True:
                await trio.sleep(0.05)
                check_slots()

        async def submit(session: int, index: int, start: float, patience: float) -> None:
            await trio.sleep(start)
            sid = f"s{session}"
            turn_id = {"none": None, "unique": f"{sid}-{index}", "shared": f"{sid}-t{index // 3}"}[turns]
            replies[(sid, index)] = await client.submit(
                spec_for(sid, index, turn_id=turn_id), sinks[sid][0], trio.current_time() + patience)

        async def node(number: int, plan: NodePlan) -> None:
            cycle = itertools.cycle(plan.behaviours)

            async def connection(conn_id: int, dies_at: float | None) -> None:
                """One socket of the node: register, heartbeat (unless mute), answer jobs, die at ``dies_at``."""
                outbox_send, outbox_recv = trio.open_memory_channel[Any](1000)
                link = NodeLink(conn_id, outbox_send, "peer")
                node_id = await client.register(link, NodeRegister(
                    node_id=f"node-{number}", language_capabilities=ZH_EN, max_concurrent_jobs=plan.capacity))
                assert node_id == f"node-{number}"

                async def answer(assign: JobAssign, behaviour: str) -> None:
                    await trio.sleep(plan.delay)
                    if behaviour == "ok":
                        await client.result(link, ok_result(assign))
                    elif behaviour == "fail":
                        await client.result(link, failed_result(assign, "PROCESSING_ERROR"))
                    elif behaviour == "twice":
                        await client.result(link, ok_result(assign))
                        await client.result(link, ok_result(assign))
                    elif behaviour == "duplicate_then_ok":
                        await client.result(link, failed_result(assign, "DUPLICATE_JOB_ID"))
                        await trio.sleep(plan.delay)
                        await client.result(link, ok_result(assign))
                    elif behaviour == "empty":
                        await client.result(link, ok_result(assign, extra={"reason": "ASR_EMPTY"}))

                async def heartbeats() -> None:
                    while True:
                        await trio.sleep(1)
                        await client.heartbeat(link, NodeHeartbeat(node_id=node_id), trio.current_time())

                async def die(at: float) -> None:
                    await trio.sleep_until(at)
                    await client.node_gone(link, "socket_closed")
                    workers.cancel_scope.cancel()

                async with trio.open_nursery() as workers:
                    if dies_at is not None:
                        workers.start_soon(die, dies_at)
                    if plan.heartbeats:
                        workers.start_soon(heartbeats)
                    async for item in outbox_recv:
                        if isinstance(item, CloseLink):  # replaced by a reconnect, or heartbeats missed
                            workers.cancel_scope.cancel()
                            return
                        if isinstance(item, Dispatch):
                            dispatched_keys.add((item.assign.session_id, item.assign.utterance_index))
                            behaviour = next(cycle)
                            if behaviour != "silent":
                                workers.start_soon(answer, item.assign, behaviour)

            async with trio.open_nursery() as sockets:
                sockets.start_soon(connection, number, plan.dies_at)
                if plan.reconnect_at is not None:
                    # the same node_id on a new socket, before or after the old one died
                    await trio.sleep_until(plan.reconnect_at)
                    sockets.start_soon(connection, number + 100, None)

        async def cancel(at: float, session: int, index: int | None) -> None:
            await trio.sleep_until(at)
            sid = f"s{session}"
            cancelled.update((sid, i) for i in range(per_session[session]) if index is None or i == index)
            if index is None:
                await client.session_ended(sid)
            else:
                await client.cancel_jobs(sid, (index,), "client_cancel")

        async with trio.open_nursery() as outer:
            outer.start_soon(registry.run)
            outer.start_soon(relay)
            outer.start_soon(checker)
            with trio.fail_after(300):
                async with trio.open_nursery() as actors:
                    for number, node_plan in enumerate(nodes):
                        actors.start_soon(node, number, node_plan)
                    for session, index, start, patience in plan:
                        actors.start_soon(submit, session, index, start, patience)
                    for at, session, index in cancels:
                        actors.start_soon(cancel, at, session, index)
                    await trio.sleep(60)  # past every deadline: attempts x (pending + job timeout)
                    actors.cancel_scope.cancel()
                snapshot = await client.snapshot(timeout=10, detail=True)
            assert snapshot is not None
            check_slots()
            outcomes: dict[tuple[str, int], list[Outcome]] = {}
            for sid, (_, recv) in sinks.items():
                for item in drain(recv):
                    if isinstance(item, Outcome):
                        outcomes.setdefault((sid, item.utterance_index), []).append(item)
            for key, reply in replies.items():
                got = outcomes.get(key, [])
                if reply is None:
                    if got or key in dispatched_keys:
                        violations.append(f"{key}: submit returned None but got {got} / was dispatched")
                elif key in cancelled:
                    if len(got) > 1:
                        violations.append(f"{key}: cancelled but got {len(got)} outcomes")
                elif len(got) != 1:
                    violations.append(f"{key}: reply {reply} but {len(got)} outcomes: {got}")
            counters = collections.Counter(snapshot["counters"])
            answered = sum(1 for r in replies.values() if r is not None)
            if counters["jobs_created"] != answered:
                violations.append(f"jobs_created {counters['jobs_created']} != answered submits {answered}")
            if snapshot["slots"]["in_flight"] != 0 or snapshot["jobs"]["total"] != 0:
                violations.append(f"left over at the end: {snapshot['slots']} {snapshot['jobs']}")
            # and the registry holds nothing for them any more (memory back to its idle size)
            held = {name: snapshot["held"][name] for name in
                    ("jobs_by_key", "jobs_by_id", "waiting", "turns", "turn_slot", "session_jobs", "notices")}
            if any(held.values()):
                violations.append(f"registry still holds job state at the end: {held}")
            if counters["registry_internal_errors"]:
                violations.append(f"registry internal errors: {counters['registry_internal_errors']}")
            stats["abandoned"] = counters["submits_abandoned"]
            stats["redispatches"] = counters["redispatches"]
            stats["lost_reasons"] = {k[len("nodes_lost_"):] for k in counters if k.startswith("nodes_lost_")}
            outer.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    event(f"submits answered None: {'some' if None in replies.values() else 'none'}")
    event(f"abandoned requests found in the inbox: {'some' if stats['abandoned'] else 'none'}")
    event(f"redispatches: {'some' if stats['redispatches'] else 'none'}")
    for reason in sorted(stats["lost_reasons"]):
        event(f"node lost: {reason}")
    assert len(replies) == len(plan)
    assert not violations, violations


# ============================================================================================ waiting queues


async def test_a_freed_slot_goes_to_the_oldest_waiter_of_its_keys_without_a_selection_per_waiting_job(
        nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Overload: every node full, many jobs waiting (some for a key no node serves). A result frees one slot;
    it goes to the oldest waiter its node can serve, and no selection runs for the other waiting jobs."""
    h = Harness(nursery, make_config(pending_timeout_seconds=1000, job_timeout_seconds=1000), inbox_size=0)
    nodes = [await h.node(f"node-{i}", max_jobs=1) for i in range(20)]
    s = h.session("s")
    for index in range(20):
        await s.submit(index)
    running = {a.utterance_index: (node, a) for node in nodes for a in node.assigns()}
    assert sorted(running) == list(range(20))
    for index in range(20, 220):
        await s.submit(index, src="ja" if index % 2 else "zh")
    snapshot = await h.sync()
    assert snapshot["waiting_by_key"] == {"zh>en": 100, "ja>en": 100}
    selections = snapshot["latency"]["selection_seconds"]["count"]
    node, assign = running[7]
    await node.result(ok_result(assign))
    [next_assign] = node.assigns()
    assert next_assign.utterance_index == 20  # the oldest zh→en waiter
    snapshot = await h.sync()
    assert snapshot["waiting_by_key"] == {"zh>en": 99, "ja>en": 100}
    assert snapshot["latency"]["selection_seconds"]["count"] == selections
    assert all(other.assigns() == [] for other in nodes if other is not node)




class ListSink:
    """A session sink that keeps everything (never full)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def send_nowait(self, value: Any) -> None:
        self.items.append(value)


PAIRS = [("zh", "en"), ("ja", "en"), ("en", "zh")]
NODE_LANGUAGES = [ZH_EN, JA_EN, LanguageCapabilities(asr_languages=["zh", "ja", "en"],
                                                     tts_languages=["zh", "ja", "en"],
                                                     semantic_languages=["zh", "ja", "en"])]


class WaitingQueues(RuleBasedStateMachine):
    """The registry driven request by request (``handle``, no task, time frozen): nodes come and go and finish
    jobs, sessions submit. After every step: waiting jobs leave their key's queue in the order they entered it,
    no job waits while a node that serves its key has a free slot, and every node's in_flight equals the jobs
    holding a slot on it, within its capacity."""

    def __init__(self) -> None:
        super().__init__()
        inbox_send, inbox_recv = open_registry_channel(16)
        self.registry = Registry(make_config(pending_timeout_seconds=1000, job_timeout_seconds=1000), inbox_recv,
                                 rng=random.Random(0))
        self.sink = ListSink()
        self.now = 0.0
        self.conn_ids = itertools.count(1)
        self.node_numbers = itertools.count(1)
        self.links: dict[str, tuple[NodeLink, trio.MemoryReceiveChannel[Any]]] = {}
        self.assigns: dict[str, list[JobAssign]] = {}  # per node_id, not yet answered
        self.queued: dict[str, list[str]] = {}  # per selection key, job keys in the order they started waiting
        self.index = 0

    def _snapshot(self) -> dict[str, Any]:
        request = Snapshot(Reply(), detail=True)
        self.registry.handle(request, self.now)
        return request.reply.value  # type: ignore[no-any-return]

    def _job_key(self, job: dict[str, Any]) -> str:
        return f"{job['session_id']}/{job['utterance_index']}"

    def _collect(self, before: dict[str, str]) -> None:
        """Note jobs that started waiting since ``before`` (their state per job key), and new assigns."""
        jobs = self._snapshot()["job_list"]
        for job in sorted(jobs, key=lambda j: (j["utterance_index"])):
            if job["state"] == "waiting" and before.get(self._job_key(job)) != "waiting":
                self.queued.setdefault(job["selection_key"], []).append(self._job_key(job))
        for node_id, (_, outbox) in self.links.items():
            for item in drain(outbox):
                if isinstance(item, Dispatch):
                    self.assigns.setdefault(node_id, []).append(item.assign)

    def _states(self) -> dict[str, str]:
        return {self._job_key(job): job["state"] for job in self._snapshot()["job_list"]}

    @rule(languages=st.integers(0, len(NODE_LANGUAGES) - 1), capacity=st.integers(1, 3))
    def node_registers(self, languages: int, capacity: int) -> None:
        before = self._states()
        node_id = f"node-{next(self.node_numbers)}"
        outbox_send, outbox_recv = trio.open_memory_channel[Any](1000)
        link = NodeLink(next(self.conn_ids), outbox_send, "peer")
        message = NodeRegister(node_id=node_id, language_capabilities=NODE_LANGUAGES[languages],
                               max_concurrent_jobs=capacity)
        request = Register(link, message, claim_of_register(message).capability, self.now, Reply())
        self.registry.handle(request, self.now)
        assert request.reply.value == node_id
        self.links[node_id] = (link, outbox_recv)
        self._collect(before)

    @rule(pair=st.integers(0, len(PAIRS) - 1))
    def session_submits(self, pair: int) -> None:
        before = self._states()
        src, tgt = PAIRS[pair]
        request = Submit(spec_for("s", self.index, src, tgt, finalized_at=self.now), self.sink, Reply())
        self.index += 1
        self.now += 0.001
        self.registry.handle(request, self.now)
        self._collect(before)

    @precondition(lambda self: any(self.assigns.values()))
    @rule(data=st.data())
    def node_answers(self, data: st.DataObject) -> None:
        before = self._states()
        node_id = data.draw(st.sampled_from(sorted(n for n, a in self.assigns.items() if a)))
        assign = self.assigns[node_id].pop(data.draw(st.integers(0, len(self.assigns[node_id]) - 1)))
        self.registry.handle(RegistryResult(self.links[node_id][0], ok_result(assign), self.now), self.now)
        self._collect(before)

    @precondition(lambda self: bool(self.links))
    @rule(data=st.data())
    def node_goes(self, data: st.DataObject) -> None:
        before = self._states()
        node_id = data.draw(st.sampled_from(sorted(self.links)))
        link, _ = self.links.pop(node_id)
        self.assigns.pop(node_id, None)
        self.registry.handle(NodeGone(link, "socket_closed"), self.now)
        self._collect(before)

    @invariant()
    def fifo_per_key_no_idle_slot_and_slots_add_up(self) -> None:
        snapshot = self._snapshot()
        states = {self._job_key(job): job["state"] for job in snapshot["job_list"]}
        # FIFO: in each key's queue, once a job has left waiting, every job queued before it has too
        for key, queue in self.queued.items():
            still = [states.get(job) == "waiting" for job in queue]
            if True in still:
                first_waiting = still.index(True)
                assert all(still[first_waiting:]), (key, queue, still)
            self.queued[key] = [job for job, waits in zip(queue, still) if waits]
        # no waiting job while a node serving its key has a free slot
        waiting_keys = set(snapshot["waiting_by_key"])
        for node in snapshot["nodes"]:
            if node["in_flight"] < node["capacity"]:
                assert not waiting_keys & set(node["pairs"]), (node, snapshot["waiting_by_key"])
            assert 0 <= node["in_flight"] <= node["capacity"]
            assert node["in_flight"] == node["slot_holders"] == node["jobs"]
        assert sum(snapshot["waiting_by_key"].values()) == snapshot["jobs"]["waiting"] == \
            sum(1 for job in snapshot["job_list"] if job["state"] == "waiting")
        assert snapshot["slots"]["in_flight"] == sum(1 for job in snapshot["job_list"] if job["holds_slot"])


TestWaitingQueues = WaitingQueues.TestCase
TestWaitingQueues.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
