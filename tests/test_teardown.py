"""Issue 8 point 7, last sentence: a node or session handler cancelled at any checkpoint leaves nothing behind.

Each run is a scheduler under trio's MockClock with in-memory transports (``memory_transport_pair``): a session
streams utterances to a node (hypothesis draws the script: how many utterances, which the node answers, whether the
session closes). One handler runs under its own cancel scope, and an Instrument cancels that scope after the
``at``-th task step of the whole run from the handler's start; the cancellation lands on the handler's next
checkpoint. The script is run once uncancelled to count its steps, then once for every step, so every checkpoint
the handler passes is one where it is cancelled (and once past the end, while it idles). Then the peer closes too.

Every timer of the scheduler (heartbeat, job, pending timeouts) is far longer than the settle wait, so only the
teardown path itself can have cleaned up. Checked after the settle wait: no node, no pool, no job, nothing waiting,
no session with jobs, no slot in flight, no live session.
"""
from __future__ import annotations

import contextlib
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import fuzz_examples
from tests.wire import Peer, b64, node_register, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config, config_with
from trioscheduler.transport import TransportClosed, memory_transport_pair

LONG = 10_000.0  # mock seconds: no scheduler timer fires within a run
SETTLE = 1.0  # mock seconds the teardown has to complete
STEP = 0.05  # mock seconds between the peers' actions, so the handler is cancelled while idle too
NEVER = 10**9  # a step count no script reaches


def teardown_config() -> Config:
    return config_with(Config(), scheduler={
        "heartbeat_timeout_seconds": LONG, "heartbeat_interval_seconds": LONG / 4,
        "job_timeout_seconds": LONG, "pending_timeout_seconds": LONG,
    })


class CancelAtStep(trio.abc.Instrument):
    """Cancels ``scope`` after the ``at``-th task step counted from ``arm()``."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.scope: trio.CancelScope | None = None
        self.steps = 0
        self.fired = False

    def arm(self, scope: trio.CancelScope) -> None:
        self.scope, self.steps = scope, 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.scope is None or self.fired:
            return
        self.steps += 1
        if self.steps >= self.at:
            self.fired = True
            self.scope.cancel()


@attrs.frozen
class Outcome:
    left: dict[str, Any]  # what the registry still holds once everyone has gone (empty when all is well)
    script_steps: int  # task steps from the handler's start to the end of the script


@attrs.define
class Handler:
    """A handler under its own cancel scope, and whether it returned."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)


async def run_handler(handler: Handler, coroutine_function: Any, transport: Any) -> None:
    with handler.scope:
        await coroutine_function(transport)
    handler.done.set()


async def stop_when_done(handler: Handler, scope: trio.CancelScope) -> None:
    await handler.done.wait()
    scope.cancel()


async def quietly(what: Any) -> None:
    """A peer action that may find its socket gone (its handler was cancelled) or wait forever for an answer
    that will not come: either way the script goes on."""
    with trio.move_on_after(STEP * 4):
        with contextlib.suppress(TransportClosed):
            await what


async def answer_jobs(node: Peer, node_id: str, answer_every: int) -> None:
    """A node that answers every ``answer_every``-th job_assign (the others stay in flight)."""
    seen = 0
    try:
        while True:
            message = await node.recv(timeout=LONG)
            if message.get("type") == "job_assign":
                seen += 1
                if seen % answer_every == 0:
                    await node.send(**result_for(message, node_id=node_id))
    except TransportClosed:
        pass


def registry_left(scheduler: Scheduler) -> dict[str, Any]:
    registry = scheduler.registry
    return {name: value for name, value in {
        "nodes": sorted(registry.nodes), "pools": sorted(registry.indexes),
        "jobs": len(registry.jobs_by_key), "waiting": len(registry.waiting),
        "sessions_with_jobs": sum(1 for jobs in registry.session_jobs.values() if jobs),
        "in_flight": sum(node.in_flight for node in registry.nodes.values()),
        "live_sessions": scheduler.sessions.active,
    }.items() if value}


async def utterances(client: Peer, session_id: str, count: int) -> None:
    for index in range(count):
        await quietly(client.send(type="utterance", session_id=session_id, utterance_index=index,
                                  audio=b64(pcm(100, fill=index)), audio_format="pcm16", sample_rate=16000))
        await trio.sleep(STEP)


async def node_scenario(at: int, count: int, answer_every: int) -> Outcome:
    """The node handler is cancelled; returns what the registry still holds once everyone has gone."""
    scheduler = Scheduler(teardown_config())
    cancel = CancelAtStep(at)
    trio.lowlevel.add_instrument(cancel)
    async with trio.open_nursery() as outer:
        await outer.start(scheduler.run)
        session_side, client_side = memory_transport_pair("session")
        outer.start_soon(scheduler.handle_session, session_side)
        client = Peer(client_side)  # type: ignore[arg-type]
        await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
        session_id = (await client.recv_type("session_init_ack"))["session_id"]

        server_side, node_side = memory_transport_pair("node")
        node = Peer(node_side)  # type: ignore[arg-type]
        handler = Handler()
        cancel.arm(handler.scope)
        outer.start_soon(run_handler, handler, scheduler.handle_node, server_side)
        await quietly(node.send(**node_register("teardown-node")))
        await quietly(node.recv_type("node_register_ack"))
        script_steps = -1  # unknown when the handler ended before the script did (never in the uncancelled run)
        async with trio.open_nursery() as script:
            # Once the handler has ended nothing more happens (a session's traffic would reach the registry's
            # lazy clean-up of a node whose socket is gone, and hide a node left pooled).
            script.start_soon(stop_when_done, handler, script.cancel_scope)
            script.start_soon(answer_jobs, node, "teardown-node", answer_every)
            await utterances(client, session_id, count)
            await quietly(node.send(type="node_heartbeat", node_id="teardown-node", timestamp=0))
            await trio.sleep(STEP)
            script_steps = cancel.steps
            handler.scope.cancel()  # past the drawn step: cancelled while idle
            await handler.done.wait()
        await node_side.aclose()
        await trio.sleep(SETTLE)
        left_by_node = registry_left(scheduler)
        left_by_node.pop("live_sessions", None)  # the session is still open here
        for key in ("jobs", "waiting", "sessions_with_jobs"):
            left_by_node.pop(key, None)  # its jobs wait for a node: that is the session's to end
        await client_side.aclose()
        await trio.sleep(SETTLE)
        left = {**registry_left(scheduler), **{f"after the node: {k}": v for k, v in left_by_node.items()}}
        outer.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(cancel)
    return Outcome(left, script_steps)


async def session_scenario(at: int, count: int, answer_every: int, close: bool) -> Outcome:
    """The session handler is cancelled; returns what the registry still holds once everyone has gone."""
    scheduler = Scheduler(teardown_config())
    cancel = CancelAtStep(at)
    trio.lowlevel.add_instrument(cancel)
    async with trio.open_nursery() as outer:
        await outer.start(scheduler.run)
        node_server, node_side = memory_transport_pair("node")
        outer.start_soon(scheduler.handle_node, node_server)
        node = Peer(node_side)  # type: ignore[arg-type]
        await node.send(**node_register("teardown-node"))
        await node.recv_type("node_register_ack")
        outer.start_soon(answer_jobs, node, "teardown-node", answer_every)

        server_side, client_side = memory_transport_pair("session")
        client = Peer(client_side)  # type: ignore[arg-type]
        handler = Handler()
        cancel.arm(handler.scope)
        outer.start_soon(run_handler, handler, scheduler.handle_session, server_side)
        await quietly(client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16"))
        ack = None
        with trio.move_on_after(STEP * 4):
            with contextlib.suppress(TransportClosed):
                ack = await client.recv_type("session_init_ack", skip=("translation_result",))
        if ack is not None:
            await utterances(client, ack["session_id"], count)
            await quietly(client.send(type="audio_chunk", payload=b64(pcm(100)), is_final=False))
            if close:
                await quietly(client.send(type="session_close", session_id=ack["session_id"]))
            await trio.sleep(STEP)
        script_steps = cancel.steps
        handler.scope.cancel()
        with trio.move_on_after(SETTLE):
            await handler.done.wait()
        await client_side.aclose()
        await trio.sleep(SETTLE)
        left = registry_left(scheduler)
        left.pop("nodes", None)  # the node is still connected here
        left.pop("pools", None)
        await node_side.aclose()
        await trio.sleep(SETTLE)
        left.update({f"after the node: {k}": v for k, v in registry_left(scheduler).items()})
        outer.cancel_scope.cancel()
    trio.lowlevel.remove_instrument(cancel)
    return Outcome(left, script_steps)


def run_mocked(scenario: Any, at: int, *args: Any) -> Outcome:
    outcome: Outcome = trio.run(scenario, at, *args, clock=trio.testing.MockClock(autojump_threshold=0))
    return outcome


def cancelled_at_every_step(scenario: Any, *args: Any) -> dict[int, dict[str, Any]]:
    """Runs the script once uncancelled to count its steps, then once per step with the cancel there (and once
    past the end); returns what was left, by step, where something was."""
    steps = run_mocked(scenario, NEVER, *args).script_steps
    found = {}
    for at in range(1, steps + 2):
        outcome = run_mocked(scenario, at, *args)
        if outcome.left:
            found[at] = outcome.left
    return found


def report(found: dict[int, dict[str, Any]]) -> str:
    first = min(found)
    return f"cancelled at task steps {sorted(found)}: left in the registry (at step {first}): {found[first]}"


@settings(max_examples=fuzz_examples(share=10))
@given(count=st.integers(0, 3), answer_every=st.integers(1, 2))
def test_node_handler_cancelled_at_every_checkpoint_leaves_nothing(count: int, answer_every: int) -> None:
    found = cancelled_at_every_step(node_scenario, count, answer_every)
    assert not found, report(found)


@settings(max_examples=fuzz_examples(share=10))
@given(count=st.integers(0, 3), answer_every=st.integers(1, 2), close=st.booleans())
def test_session_handler_cancelled_at_every_checkpoint_leaves_nothing(count: int, answer_every: int,
                                                                      close: bool) -> None:
    found = cancelled_at_every_step(session_scenario, count, answer_every, close)
    assert not found, report(found)
