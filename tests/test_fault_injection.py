"""The fault-injection harness, plus connection-level scenarios for incidents the original system had (a node
answering twice or late, empty answers, a node whose socket is gone while it is still pooled), and deterministic
regression tests for the scheduler bugs the harness found (the last three tests).

The harness: hypothesis draws a schedule of N simulated nodes (``SimNode`` over in-memory transports) that crash,
stall, answer slowly, answer twice, answer empty or with errors, stop heartbeating, join late or reconnect with
their node_id, and M raw JSON clients that stream ``audio_chunk``s with explicit ``is_final`` cuts and
``utterance`` messages, then close politely, drop their socket mid-stream, or stay open. trio's MockClock
(autojump) runs each schedule in milliseconds of real time. At the end of every run:

* each client that kept its socket got exactly one outcome per utterance it finalized (counted on the client
  side), in strictly increasing utterance_index order with nothing skipped, all before session_close_ack, and each
  translation_result carries the text the node derived from exactly the audio of that utterance;
* every reserved slot is freed and the registry holds no job, waiting entry, session job, affinity or turn; at
  every moment a node's in_flight is within its capacity and equals the slots its jobs hold;
* every connection handler ends within ENDS_WITHIN of its peer going away, whatever the session was doing (our
  own nursery becomes empty); only the registry task is left;
* a session that stays open is back to its idle footprint, and no session is live once all are closed;
* the counters add up: every job_result the registry received is either the utterance's outcome or counted as
  dropped, a second copy of a result is always dropped; no node saw a job_id twice (no job_id was sent twice at
  all), and no node got the same (session_id, utterance_index) twice.

Every wait has a deadline, so a hang fails (with the schedule that caused it) instead of blocking; a registry
that spins without yielding (which no deadline can interrupt) is caught by ``guard_timer_spin``.

``--hypothesis-show-statistics`` lists what the schedules exercised (crashes, reconnects, timeouts, failovers,
gap releases, quarantines, dropped results, each client ending).
"""

from __future__ import annotations

import collections
import json
import random
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from tests.wire import Peer, b64, heartbeat, memory_node, memory_session, pcm, result_for, until
from trioscheduler.app import Scheduler
from trioscheduler.config import Config, config_with
from trioscheduler.sim.node import SimNode, SimNodeBehaviour, SimNodeError, expected_texts
from trioscheduler.transport import MemoryTransport, TransportClosed, memory_transport_pair

OUTCOMES = frozenset({"translation_result", "missing_result", "error"})
SETTLE = 60.0  # mock seconds: longer than any job can live (3 attempts x (pending + job timeout)) plus the gap wait
HEARTBEAT = 0.5
ENDS_WITHIN = 1.0  # mock seconds: a connection's tasks end this soon after its peer is gone
MAX_DURATION_MS = 1000  # pcm16 durations are exact, so the client knows when the scheduler cuts


def harness_config(gap_timeout: float = 5.0, **scheduler: Any) -> Config:
    """Short but sane knobs. The pause cut is out of reach, so every cut is one the client can count: its own
    is_final, a MaxDuration cut after MAX_DURATION_MS of audio without one (turns share a slot), session_close."""
    return config_with(
        Config(),
        scheduler={
            "job_timeout_seconds": 2,
            "pending_timeout_seconds": 1,
            "failover_max_attempts": 2,
            "heartbeat_interval_seconds": HEARTBEAT,
            "heartbeat_timeout_seconds": 1.5,
            "quarantine_failures": 3,
            "quarantine_window_seconds": 10,
            "quarantine_cooldown_seconds": 3,
            **scheduler,
        },
        results={"gap_timeout_seconds": gap_timeout, "ordering": "strict", "close_wait_seconds": SETTLE},
        segmentation={"pause_ms": 10_000_000, "max_duration_ms": MAX_DURATION_MS},
    )


class CountingClient:
    """Stands in for ``Scheduler.client`` and counts, per job_id, the job_results that reached the registry's inbox
    (a result read from a socket that is being torn down may never get there; those are not counted)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.results: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def result(self, link: Any, message: Any) -> None:
        await self._inner.result(link, message)
        self.results[message.job_id] += 1


def guard_timer_spin(registry: Any, limit: int = 1000) -> None:
    """Turn a registry that re-arms timers at deadlines already past, over and over at one instant, into an
    exception instead of a hang: ``_fire_timers`` pops such a timer again at once and never yields, so neither
    MockClock nor ``fail_after`` could ever interrupt it. Instance-level wrapper; the class is untouched."""
    schedule = registry._schedule
    spin = {"at": None, "count": 0}

    def guarded(deadline: float, kind: str, subject: Any, token: int) -> None:
        now = trio.current_time()
        if deadline <= now:
            spin["count"] = spin["count"] + 1 if spin["at"] == now else 1
            spin["at"] = now
            if spin["count"] > limit:
                raise RuntimeError(f"registry timer spin: a {kind!r} timer was re-armed at {deadline!r} <= now "
                                   f"{now!r} {limit} times in a row ({subject!r:.200})")
        schedule(deadline, kind, subject, token)

    registry._schedule = guarded


def registry_view(scheduler: Scheduler) -> dict[str, Any]:
    """The registry's detailed snapshot, taken directly (also while its inbox is backed up)."""
    return scheduler.registry.snapshot(trio.current_time(), detail=True)


def registry_counters(scheduler: Scheduler) -> collections.Counter[str]:
    return collections.Counter(registry_view(scheduler)["counters"])


def footprint_zero(connection: Any) -> dict[str, int]:
    return dict.fromkeys(connection.footprint(), 0)


# ============================================================================================ schedules


@attrs.frozen
class NodePlan:
    capacity: int
    delay_s: float
    stall_rate: float
    failure_rate: float
    empty_rate: float
    duplicate_rate: float
    crash_after_jobs: int | None
    seed: int
    heartbeat_s: float  # > heartbeat_timeout_seconds: the scheduler finds the node silent and drops it
    join_at: float
    reconnect: str | None  # None | "after_loss" (same node_id, after each loss) | "replace_live" (while up)
    reconnect_after: float
    partials: bool  # asr_partial before each successful answer
    languages: tuple[str, ...]  # ("ja", "en") never serves the clients' zh>en


@st.composite
def node_plans(draw: st.DrawFn) -> NodePlan:
    stall = draw(st.sampled_from([0.0, 0.1, 0.3, 0.6]))  # long stall chains are what gap timeouts need
    failure = draw(st.sampled_from([0.0, 0.1, 0.3]))
    empty = min(draw(st.sampled_from([0.0, 0.1, 0.3])), round(1 - stall - failure, 3))
    return NodePlan(
        capacity=draw(st.integers(1, 3)),
        delay_s=draw(st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5])),  # 2.5 s outlives job_timeout_seconds
        stall_rate=stall,
        failure_rate=failure,
        empty_rate=empty,
        duplicate_rate=draw(st.sampled_from([0.0, 0.0, 0.3, 1.0])),
        crash_after_jobs=draw(st.none() | st.integers(1, 5)),
        seed=draw(st.integers(0, 2**16)),
        heartbeat_s=draw(st.sampled_from([HEARTBEAT, HEARTBEAT, HEARTBEAT, 4.0])),
        join_at=draw(st.sampled_from([0.0, 0.0, 0.0, 0.5, 3.0, 8.0])),
        reconnect=draw(st.sampled_from([None, None, "after_loss", "replace_live"])),
        reconnect_after=draw(st.sampled_from([0.0, 0.2, 1.0, 3.0])),
        partials=draw(st.booleans()),
        languages=draw(st.sampled_from([("zh", "en"), ("zh", "en"), ("zh", "en"), ("ja", "en")])),
    )


# Client actions: ("chunk", ms, is_final), ("utterance", how), ("sleep", s), ("heartbeat",)
ACTIONS = st.one_of(
    st.tuples(st.just("chunk"), st.sampled_from([20, 60, 200, 400]), st.booleans()),
    st.tuples(st.just("chunk"), st.sampled_from([20, 60, 200, 400]), st.just(False)),
    st.tuples(st.just("chunk"), st.sampled_from([20, 60, 200]), st.just(True)),
    st.tuples(st.just("chunk"), st.just(0), st.just(True)),  # an is_final with no audio: cuts what is buffered
    st.tuples(st.just("utterance"), st.sampled_from(["auto", "auto", "explicit", "repeat"])),
    st.tuples(st.just("utterance"), st.sampled_from(["auto", "explicit"])),
    st.tuples(st.just("sleep"), st.sampled_from([0.01, 0.3, 1.0, 2.5, 6.0])),
    st.tuples(st.just("heartbeat")),
)


@attrs.frozen
class ClientPlan:
    start_at: float
    actions: tuple[tuple[Any, ...], ...]
    #: "close"; "stay" (open until its outcomes are in, then close); "drop" (socket gone mid-stream);
    #: "close_then_drop" (session_close, then the socket goes at once); "reopen" (close, wait for the ack, a second
    #: session on the same socket runs the actions again, close); "reopen_pipelined" (the same, but session_init
    #: follows session_close without waiting for the ack)
    ending: str
    drop_after: int


ENDINGS = ["close", "close", "stay", "stay", "drop", "close_then_drop", "reopen", "reopen_pipelined"]


@st.composite
def client_plans(draw: st.DrawFn) -> ClientPlan:
    actions = tuple(draw(st.lists(ACTIONS, min_size=1, max_size=16)))
    return ClientPlan(
        start_at=draw(st.sampled_from([0.0, 0.0, 0.4, 2.0])),
        actions=actions,
        ending=draw(st.sampled_from(ENDINGS)),
        drop_after=draw(st.integers(0, len(actions))),
    )


# ============================================================================================ the actors


@attrs.define
class SessionModel:
    """What the client itself knows about one of its sessions: what it finalized, with which audio."""

    session_id: str = ""
    finalized: int = 0  # indices 0 .. finalized-1 were finalized, by a cut or by an accepted utterance
    audio: dict[int, bytes] = attrs.field(factory=dict)
    buffer: bytes = b""
    buffered_ms: int = 0
    acked: bool = False  # closed with session_close_ack: every outcome it was owed has been checked

    def cut(self) -> None:
        self.audio[self.finalized] = self.buffer
        self.finalized += 1
        self.buffer = b""
        self.buffered_ms = 0


class Client:
    """A raw JSON client over a memory transport; it counts what it finalized itself, per session."""

    def __init__(self, number: int, plan: ClientPlan, transport: MemoryTransport,
                 violations: list[str]) -> None:
        self.number = number
        self.plan = plan
        self.transport = transport
        self.violations = violations
        self.received: list[dict[str, Any]] = []
        self.arrived = trio.Event()
        self.models: list[SessionModel] = []
        self.fills = 0
        self.dropped = False
        self.connection: Any = None

    @property
    def model(self) -> SessionModel:
        return self.models[-1]

    def fail(self, what: str) -> None:
        sid = self.models[-1].session_id if self.models else ""
        self.violations.append(f"client {self.number} ({sid}): {what}")

    async def send(self, **message: Any) -> None:
        await self.transport.send_message(json.dumps(message))

    async def receive_loop(self) -> None:
        while True:
            try:
                raw = await self.transport.get_message()
            except TransportClosed:
                return
            self.received.append(json.loads(raw))
            self.arrived.set()
            self.arrived = trio.Event()

    async def wait_for(self, what: str, condition: Any, timeout: float = SETTLE) -> bool:
        with trio.move_on_after(timeout):
            while not condition():
                await self.arrived.wait()
            return True
        self.fail(f"waited {timeout:g} s for {what}; received {self.summary()}")
        return False

    def acks(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == kind]

    def outcomes(self, model: SessionModel | None = None) -> list[dict[str, Any]]:
        sid = (model or self.model).session_id
        return [m for m in self.received if m["type"] in OUTCOMES and m.get("session_id") == sid]

    def summary(self) -> list[Any]:
        return [(m["type"], m.get("session_id"), m.get("utterance_index"), m.get("code") or m.get("reason"))
                for m in self.received if m["type"] not in ("server_heartbeat", "asr_partial")]

    def next_audio(self, ms: int) -> bytes:
        self.fills += 1
        return pcm(ms, fill=self.number * 37 + self.fills)

    async def start_session(self, *, after_close: SessionModel | None = None) -> bool:
        """session_init (pipelined right behind a session_close when ``after_close`` is given) and its ack."""
        inits = len(self.acks("session_init_ack"))
        await self.send(type="session_init", client_version="fault-injection", platform="test", src_lang="zh",
                        tgt_lang="en", audio_format="pcm16", sample_rate=16000)
        if after_close is not None and not await self.close_acked(after_close):
            return False
        if not await self.wait_for("session_init_ack", lambda: len(self.acks("session_init_ack")) > inits,
                                   timeout=SETTLE if after_close else 5):
            return False
        self.models.append(SessionModel(session_id=self.acks("session_init_ack")[-1]["session_id"]))
        return True

    async def close_acked(self, model: SessionModel) -> bool:
        if not await self.wait_for("session_close_ack", lambda: any(
                m.get("session_id") == model.session_id for m in self.acks("session_close_ack"))):
            return False
        model.acked = True
        return True

    async def act(self, action: tuple[Any, ...]) -> None:
        kind = action[0]
        model = self.model
        sid = model.session_id
        if kind == "chunk":
            _, ms, is_final = action
            audio = self.next_audio(ms) if ms else b""
            await self.send(type="audio_chunk", session_id=sid, seq=self.fills, is_final=is_final,
                            payload=b64(audio))
            model.buffer += audio
            model.buffered_ms += ms
            if model.buffer and (is_final or model.buffered_ms >= MAX_DURATION_MS):
                model.cut()
        elif kind == "utterance":
            how = action[1]
            audio = self.next_audio(100)
            message: dict[str, Any] = {"type": "utterance", "session_id": sid, "audio": b64(audio),
                                           "audio_format": "pcm16", "sample_rate": 16000}
            if how == "repeat" and model.finalized:
                message["utterance_index"] = self.fills % model.finalized  # already used: ignored
                await self.send(**message)
                return
            if how == "explicit":
                message["utterance_index"] = model.finalized
            await self.send(**message)
            model.audio[model.finalized] = audio
            model.finalized += 1
        elif kind == "sleep":
            await trio.sleep(action[1])
        elif kind == "heartbeat":
            await self.send(type="client_heartbeat", session_id=sid, timestamp=1)

    def check_dropped(self) -> None:
        """What a client got before it hung up is still in order, once per index, and nothing it did not send."""
        indices = [m.get("utterance_index") for m in self.outcomes()]
        if indices != list(range(len(indices))) or len(indices) > self.model.finalized:
            self.fail(f"before dropping: outcome indices {indices} for {self.model.finalized} finalized")

    def check_session(self, model: SessionModel) -> None:
        """Exactly one outcome per finalized index, in order, nothing skipped, each with the text of exactly its
        own audio; the ack after all of them and nothing for the session after the ack."""
        outcomes = self.outcomes(model)
        indices = [m.get("utterance_index") for m in outcomes]
        if indices != list(range(model.finalized)):
            self.fail(f"{model.session_id}: outcome indices {indices}, expected 0..{model.finalized - 1}; "
                      f"{self.summary()}")
        for m in outcomes:
            if m["type"] == "translation_result":
                index = m["utterance_index"]
                audio = model.audio.get(index)
                expected = expected_texts("zh", "en", index, audio)[1] if audio is not None else None
                if m.get("text_translated") != expected:
                    self.fail(f"index {index} translated {m.get('text_translated')!r}, expected {expected!r}")
        ours = [i for i, m in enumerate(self.received) if m.get("session_id") == model.session_id]
        acks = [i for i in ours if self.received[i]["type"] == "session_close_ack"]
        if len(acks) != 1 or acks[0] != ours[-1]:
            self.fail(f"{model.session_id}: session_close_ack at {acks}, messages of the session at {ours}: "
                      f"{self.summary()}")

    def check_unsolicited(self) -> None:
        strays = [m for m in self.received if m["type"] in OUTCOMES and m.get("session_id") not in
                  {model.session_id for model in self.models}]
        strays += [m for m in self.received if m["type"] == "error" and m.get("utterance_index") is None]
        if strays:
            self.fail(f"messages for no utterance of ours: {strays}")


@attrs.define
class Run:
    """One fault-injection run: the scheduler, its handlers' nursery, the actors, what they saw."""

    scheduler: Scheduler
    counting: CountingClient
    handlers: trio.Nursery
    violations: list[str]
    start_lock: trio.Lock = attrs.field(factory=trio.Lock)
    sims: list[SimNode] = attrs.field(factory=list)
    clients: list[Client] = attrs.field(factory=list)

    async def client(self, number: int, plan: ClientPlan) -> None:
        await trio.sleep(plan.start_at)
        server_side, client_side = memory_transport_pair(f"client-{number}")
        client = Client(number, plan, client_side, self.violations)
        self.clients.append(client)
        live = self.scheduler.sessions.live
        async with trio.open_nursery() as nursery:
            async with self.start_lock:  # one session starts at a time, so the new live connection is ours
                before = set(live)
                self.handlers.start_soon(self.scheduler.handle_session, server_side)
                nursery.start_soon(client.receive_loop)
                if not await client.start_session():
                    await client_side.aclose()
                    return
                (client.connection,) = set(live) - before
            idle = client.connection.footprint()
            if idle != footprint_zero(client.connection):
                client.fail(f"footprint right after session_init is {idle}")
            await self._script(client)
            client.check_unsolicited()

    async def _script(self, client: Client) -> None:
        plan = client.plan
        dropping = plan.ending == "drop"
        for position, action in enumerate(plan.actions):
            if dropping and position == plan.drop_after:
                break
            await client.act(action)
        if plan.ending == "close_then_drop":
            await client.send(type="session_close", session_id=client.model.session_id, reason="bye")
        if dropping or plan.ending == "close_then_drop":
            client.dropped = True
            await client.transport.aclose()
            client.check_dropped()
            return
        model = client.model
        if plan.ending == "stay":
            if model.buffer:  # end the turn so the session can go back to idle
                await client.act(("chunk", 0, True))
            if await client.wait_for("every outcome", lambda: len(client.outcomes()) >= model.finalized):
                await trio.sleep(1)  # late copies still in flight are dropped, not kept
                footprint = client.connection.footprint()
                if footprint != footprint_zero(client.connection):
                    client.fail(f"open session after its outcomes holds {footprint}")
        elif model.buffer:  # session_close flushes the buffer: that cut is an utterance too
            model.cut()
        await client.send(type="session_close", session_id=model.session_id, reason="done")
        if plan.ending.startswith("reopen"):
            pipelined = plan.ending == "reopen_pipelined"
            if not pipelined and not await client.close_acked(model):
                return
            if not await client.start_session(after_close=model if pipelined else None):
                return
            for action in plan.actions:
                await client.act(action)
            model = client.model
            if model.buffer:
                model.cut()
            await client.send(type="session_close", session_id=model.session_id, reason="done")
        if not await client.close_acked(model):
            return
        await trio.sleep(0.5)  # anything sent after the ack would show up now
        for model in client.models:
            client.check_session(model)
        await client.transport.aclose()

    async def node(self, number: int, plan: NodePlan) -> None:
        sim = SimNode(SimNodeBehaviour(
            max_concurrent_jobs=plan.capacity, delay_s=plan.delay_s, failure_rate=plan.failure_rate,
            stall_rate=plan.stall_rate, duplicate_rate=plan.duplicate_rate, empty_rate=plan.empty_rate,
            crash_after_jobs=plan.crash_after_jobs, seed=plan.seed, heartbeat_interval_override=plan.heartbeat_s,
            reject_duplicate_utterance=True, record_limit=100_000, send_partials=plan.partials,
            languages=plan.languages,
        ), node_id=f"node-SIM{number:05d}")
        self.sims.append(sim)
        await trio.sleep(plan.join_at)
        if plan.reconnect == "replace_live":
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._connection, sim, number)
                await trio.sleep(plan.reconnect_after + 0.05)
                await self._connection(sim, number)  # the scheduler must close the first socket
        else:
            for _ in range(4 if plan.reconnect == "after_loss" else 1):
                await self._connection(sim, number)
                await trio.sleep(plan.reconnect_after)

    async def _connection(self, sim: SimNode, number: int) -> None:
        server_side, client_side = memory_transport_pair(f"node-{number}")
        self.handlers.start_soon(self.scheduler.handle_node, server_side)
        try:
            await sim.serve(client_side)
        except SimNodeError:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await client_side.aclose()

    async def check_slots(self) -> None:
        while True:
            await trio.sleep(0.25)
            for node in registry_view(self.scheduler)["nodes"]:
                in_flight, slots = node["in_flight"], node["slot_holders"]  # the jobs of one turn share a slot
                if not 0 <= in_flight <= node["capacity"] or in_flight != slots:
                    self.violations.append(f"t={trio.current_time():.2f} {node['node_id']}: in_flight "
                                           f"{in_flight}, capacity {node['capacity']}, slots held {slots}, "
                                           f"jobs {node['jobs']}")


async def wait_until(condition: Any, timeout: float) -> bool:
    """Whether ``condition()`` came to hold within ``timeout``."""
    try:
        await until(condition, timeout)
    except trio.TooSlowError:
        return False
    return True


def run_schedule(nodes: list[NodePlan], clients: list[ClientPlan], seed: int, gap_timeout: float = 5.0) -> None:
    violations: list[str] = []
    done: dict[str, Any] = {}

    async def main() -> None:
        scheduler = Scheduler(harness_config(gap_timeout), rng=random.Random(seed))
        guard_timer_spin(scheduler.registry)
        counting = CountingClient(scheduler.client)
        scheduler.client = counting  # type: ignore[assignment]
        async with trio.open_nursery() as outer:
            await outer.start(scheduler.run)
            async with trio.open_nursery() as handlers:
                run = Run(scheduler, counting, handlers, violations)
                outer.start_soon(run.check_slots)
                with trio.fail_after(600):
                    async with trio.open_nursery() as node_runners:
                        for number, plan in enumerate(nodes):
                            node_runners.start_soon(run.node, number, plan)
                        async with trio.open_nursery() as client_runners:
                            for number, plan in enumerate(clients):
                                client_runners.start_soon(run.client, number, plan)

                        # --- every client is done: sessions gone, registry clean while nodes are still up
                        # a session ends as soon as its socket is gone, whatever it was doing
                        if not await wait_until(lambda: not scheduler.sessions.live, ENDS_WITHIN):
                            violations.append(f"{len(scheduler.sessions.live)} sessions still live {ENDS_WITHIN} s "
                                              f"after every client socket closed: "
                                              f"{[c.footprint() for c in scheduler.sessions.live]}")
                        snapshot = await scheduler.stats()
                        assert snapshot is not None
                        view = registry_view(scheduler)
                        held = view["held"]
                        leftovers = {
                            "in_flight": view["slots"]["in_flight"],
                            **{name: held[name] for name in ("jobs_by_key", "jobs_by_id", "waiting", "session_jobs",
                                                             "affinity", "turns", "turn_slot", "notices")},
                            "sessions_active": scheduler.sessions.active,
                        }
                        if any(leftovers.values()):
                            violations.append(f"left over after all sessions ended: {leftovers}")
                        node_runners.cancel_scope.cancel()  # every node hangs up

                # --- every peer is gone: each handler must end; only the registry task is left
                if not await wait_until(lambda: not handlers.child_tasks, ENDS_WITHIN):
                    violations.append(f"{len(handlers.child_tasks)} connection handlers still running: "
                                      f"{[t.name for t in handlers.child_tasks]}")
                    handlers.cancel_scope.cancel()
            left = sorted(task.name.rsplit(".", 1)[-1] for task in outer.child_tasks)
            # Scheduler.run holds the nursery sessions' writers run in; it must be empty by now (but for the room
            # owner, a service task like the registry).
            nested = [child.name for task in outer.child_tasks for nested_nursery in task.child_nurseries
                      for child in nested_nursery.child_tasks if not child.name.endswith("RoomOwner.run")]
            if left != ["check_slots", "run"] or nested:
                violations.append(f"tasks left besides the registry: {left} {nested}")
            snapshot = await scheduler.stats()
            assert snapshot is not None
            done["snapshot"] = snapshot
            done["run"] = run
            view = registry_view(scheduler)
            held = view["held"]
            if held["nodes"] or held["node_conns"] or held["indexes"]:
                violations.append(f"nodes left after every socket closed: {[n['node_id'] for n in view['nodes']]} "
                                  f"{held}")
            if any(held[name] for name in ("jobs_by_key", "jobs_by_id", "waiting", "affinity", "turns", "turn_slot",
                                           "notices")):
                violations.append(f"jobs left after every socket closed: {held}")
            outer.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    run: Run = done["run"]
    counters = done["snapshot"]["counters"]
    check_counters(run, counters, violations)
    assert not violations, "\n".join(violations)
    if currently_in_test_context():
        for what in sorted(_events(run, counters, done["snapshot"]["sessions"]["counters"])):
            event(what)


def _events(run: Run, counters: dict[str, int], session_counters: dict[str, int]) -> set[str]:
    """What this schedule exercised (``--hypothesis-show-statistics`` lists how often each happened)."""
    happened = {f"counter {key}" for key, n in counters.items()
                if n and (key.startswith(("results_dropped_", "nodes_lost_", "outcome_", "jobs_cancelled_"))
                          or key in ("job_timeouts", "redispatches", "node_quarantines", "jobs_waited"))}
    happened.update(f"session {key}" for key, n in session_counters.items()
                    if n and key.startswith(("outcomes_dropped_", "utterances_", "empty_finalize")))
    for client in run.clients:
        happened.update(f"client {m['type']} {m.get('code') or m.get('reason') or ''}".rstrip()
                        for m in client.received if m["type"] in OUTCOMES or m["type"] == "asr_partial")
        happened.add(f"client ending {client.plan.ending}")
    most = max((m.finalized for c in run.clients for m in c.models), default=0)
    happened.add("utterances in the busiest session: " + ("0" if not most else "1-2" if most < 3 else
                                                            "3-5" if most < 6 else "6+"))
    if any(sim.stats.jobs_stalled for sim in run.sims):
        happened.add("node stalled a job")
    if any(sim.stats.crashes for sim in run.sims):
        happened.add("node crashed")
    if any(sim.stats.registrations > 1 for sim in run.sims):
        happened.add("node registered again")
    return happened


def check_counters(run: Run, counters: dict[str, int], violations: list[str]) -> None:
    if run.scheduler.connections_crashed or counters.get("registry_internal_errors"):
        violations.append(f"crashes: connections {run.scheduler.connections_crashed}, "
                          f"registry {counters.get('registry_internal_errors')}")
    # Nodes: no job_id was ever sent twice (to any node); no node got an utterance twice (so no retry went back),
    # except once per later connection: a job lost with a node's connection may go to it again when it reconnects.
    job_ids: collections.Counter[str] = collections.Counter()
    for sim in run.sims:
        assigns = [m for m in sim.received if m.get("type") == "job_assign"]
        job_ids.update(m["job_id"] for m in assigns)
        utterances = collections.Counter((m["session_id"], m["utterance_index"]) for m in assigns)
        again = {key: n for key, n in utterances.items() if n > max(1, sim.stats.registrations)}
        lost_and_resent = sum(n - 1 for n in utterances.values())
        if (again or sim.stats.duplicate_job_ids
                or sim.stats.duplicate_utterances > (lost_and_resent if sim.stats.registrations > 1 else 0)):
            violations.append(f"{sim.node_id} got an utterance or job_id twice: {again} "
                              f"{sim.stats.duplicate_job_ids} {sim.stats.duplicate_utterances}")
    twice = {job_id: n for job_id, n in job_ids.items() if n > 1}
    if twice:
        violations.append(f"job_ids sent more than once: {twice}")
    if sum(job_ids.values()) > counters.get("dispatches", 0):
        violations.append(f"nodes received {sum(job_ids.values())} job_assigns, "
                          f"dispatches {counters.get('dispatches')}")
    # Results: each one the registry got became the outcome or was counted as dropped; second copies are dropped.
    received = sum(run.counting.results.values())
    accepted = (counters.get("outcome_result", 0) + counters.get("outcome_missing_silence", 0)
                + counters.get("outcome_error_PROCESSING_ERROR", 0))
    dropped = sum(n for key, n in counters.items() if key.startswith("results_dropped_"))
    if received != accepted + dropped:
        violations.append(f"results received {received} != accepted {accepted} + dropped {dropped}: {counters}")
    copies = sum(n - 1 for n in run.counting.results.values() if n > 1)
    stale = counters.get("results_dropped_finished_job", 0) + counters.get("results_dropped_old_attempt", 0)
    if stale < copies:
        violations.append(f"{copies} extra copies of results reached the registry, only {stale} dropped as "
                          f"finished/old: {counters}")
    # Every utterance a client finalized made one job (the registry never falls behind here, so no
    # SCHEDULER_BUSY); a client that dropped its socket may have had its last frames unread, or a close-flush.
    kept = sum(m.finalized for c in run.clients for m in c.models if m.acked)
    most = sum(m.finalized for c in run.clients for m in c.models) + sum(
        c.plan.ending == "close_then_drop" for c in run.clients)
    if not kept <= counters.get("jobs_created", 0) <= most:
        violations.append(f"jobs_created {counters.get('jobs_created')} not within [{kept}, {most}]")


@settings(max_examples=2000, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    nodes=st.lists(node_plans(), min_size=1, max_size=4),
    clients=st.lists(client_plans(), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    gap_timeout=st.sampled_from([5.0, 5.0, 1.5]),  # 1.5 s: shorter than a job attempt, gap releases are common
)
def test_fault_injection_keeps_every_guarantee(nodes: list[NodePlan], clients: list[ClientPlan], seed: int,
                                               gap_timeout: float) -> None:
    run_schedule(nodes, clients, seed, gap_timeout)


# ============================================================================================ scenarios


async def _sim(nursery: trio.Nursery, scheduler: Scheduler, node_id: str, **behaviour: Any) -> SimNode:
    sim = SimNode(SimNodeBehaviour(heartbeat_interval_override=HEARTBEAT, reject_duplicate_utterance=True,
                                   **behaviour), node_id=node_id)
    server_side, client_side = memory_transport_pair("sim")
    nursery.start_soon(scheduler.handle_node, server_side)
    await nursery.start(sim.serve, client_side)
    return sim


async def _utterance(client: Peer, sid: str, index: int, ms: int = 100) -> bytes:
    audio = pcm(ms, fill=index + 1)
    await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(audio),
                      audio_format="pcm16", sample_rate=16000)
    return audio


def _assigns(sim: SimNode) -> list[dict[str, Any]]:
    return [m for m in sim.received if m.get("type") == "job_assign"]


async def _first_assign(peers: dict[str, Peer]) -> tuple[str, dict[str, Any]]:
    async with trio.open_nursery() as race:
        found: list[tuple[str, dict[str, Any]]] = []

        async def watch(name: str, peer: Peer) -> None:
            found.append((name, await peer.recv_type("job_assign", timeout=1000)))
            race.cancel_scope.cancel()

        for name, peer in peers.items():
            race.start_soon(watch, name, peer)
    return found[0]


async def test_f14_node_whose_socket_is_gone_when_selected_loses_no_job(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """The node chosen for a job has just lost its socket (the registry has not heard yet). The job must not
    be lost in its dead outbox: it fails over at once and the client gets its result."""
    scheduler = Scheduler(harness_config(heartbeat_timeout_seconds=100_000, heartbeat_interval_seconds=1000))
    await nursery.start(scheduler.run)
    a = await memory_node(nursery, scheduler, "node-A")
    b = await memory_node(nursery, scheduler, "node-B")
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    with trio.fail_after(1):
        first = await _first_assign({"node-A": a, "node-B": b})
    holder, other = (a, b) if first[0] == "node-A" else (b, a)
    await holder.send(**result_for(first[1]))
    assert (await client.recv_type("translation_result"))["utterance_index"] == 0
    # the session's affinity now points at the holder; its socket goes away while utterance 1 is on its way
    start = trio.current_time()
    await _utterance(client, sid, 1)
    await holder.ws.aclose()
    assign = await other.recv_type("job_assign", timeout=1)
    assert assign["utterance_index"] == 1
    assert assign["attempt_id"] == 2, "the dead node was not selected: the race this test needs did not happen"
    await other.send(**result_for(assign))
    result = await client.recv_type("translation_result", timeout=1)
    assert result["utterance_index"] == 1 and result["job_id"] == assign["job_id"]
    assert trio.current_time() - start < 0.5  # at once, not after job_timeout_seconds
    counters = registry_counters(scheduler)
    assert counters["redispatches"] == 1 and counters["job_timeouts"] == 0
    assert counters["nodes_lost_socket_closed"] + counters["nodes_lost_outbox_unavailable"] == 1


async def test_f14_only_node_gone_when_selected_gives_an_error_not_silence(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """A node chosen for a job has just lost its socket, with nowhere to fail over to: once pending_timeout_seconds
    pass with no node coming, the client hears an error for that utterance, and the session keeps working once a
    node is back."""
    scheduler = Scheduler(harness_config(heartbeat_timeout_seconds=100_000, heartbeat_interval_seconds=1000))
    await nursery.start(scheduler.run)
    a = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    await a.ws.aclose()
    error = await client.recv_type("error", timeout=5)
    assert error["utterance_index"] == 0 and error["code"] in ("NODE_UNAVAILABLE", "NO_AVAILABLE_NODE")
    sim = await _sim(nursery, scheduler, "node-B")
    await _utterance(client, sid, 1)
    result = await client.recv_type("translation_result", timeout=5)
    assert result["utterance_index"] == 1 and result["node_id"] == sim.node_id
    assert registry_view(scheduler)["slots"]["in_flight"] == 0


async def test_f7_f8_duplicate_results_reach_the_client_once(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """A node that answers every job twice: one outcome per utterance, the copies counted as dropped."""
    scheduler = Scheduler(harness_config())
    await nursery.start(scheduler.run)
    sim = await _sim(nursery, scheduler, "node-TWICE", duplicate_rate=1.0, delay_s=0.1)
    client, sid = await memory_session(nursery, scheduler)
    for index in range(3):
        await _utterance(client, sid, index)
    for index in range(3):
        assert (await client.recv_type("translation_result", timeout=5))["utterance_index"] == index
    await client.nothing_for(3)
    assert sim.stats.jobs_duplicated == 3
    assert registry_counters(scheduler)["results_dropped_finished_job"] == 3
    assert sim.stats.duplicate_job_ids == 0 and sim.stats.duplicate_utterances == 0


async def test_f7_f8_late_results_after_failover_are_dropped_and_no_job_id_is_sent_twice(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """A node misses the job timeout, the job fails over under a new job_id, and the first node then
    answers (twice) after all: both late copies are dropped as old_attempt and never reach the client, which gets
    exactly one outcome (JOB_TIMEOUT: the second node is too slow as well); the node that timed out never gets the
    utterance again, not even after it reconnects with its node_id; no job_id reaches a node twice."""
    scheduler = Scheduler(harness_config(heartbeat_timeout_seconds=100_000, heartbeat_interval_seconds=1000))
    await nursery.start(scheduler.run)
    slow = await memory_node(nursery, scheduler, "node-SLOW")
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    late = await slow.recv_type("job_assign")
    fast = await _sim(nursery, scheduler, "node-FAST", delay_s=3.0)  # slower than the 2 s timeout too ...
    cancel = await slow.recv_type("job_cancel", timeout=3)
    assert cancel["job_id"] == late["job_id"] and cancel["reason"] == "job_timeout"
    # ... the old node answers after the timeout, twice, and reconnects with its node_id
    await slow.send(**result_for(late, node_id="node-SLOW"))
    await slow.send(**result_for(late, node_id="node-SLOW"))
    again = await memory_node(nursery, scheduler, "node-SLOW")
    await _utterance(client, sid, 0)  # a repeated index makes no second job either
    # fast's attempt also times out (delay 3 s > 2 s): the last attempt may not go back to node-SLOW
    error = await client.recv_type("error", "translation_result", timeout=10)
    assert error["utterance_index"] == 0 and error["code"] == "JOB_TIMEOUT", error
    await client.nothing_for(5)
    await again.nothing_for(0.1)
    [second] = _assigns(fast)
    assert second["job_id"] != late["job_id"] and second["attempt_id"] == 2
    counters = registry_counters(scheduler)
    assert counters["results_dropped_old_attempt"] == 2
    assert counters["redispatches"] == 1
    assert fast.stats.duplicate_job_ids == 0 and fast.stats.duplicate_utterances == 0
    assert scheduler.sessions.counters["utterances_duplicate"] == 1
    assert registry_view(scheduler)["slots"]["in_flight"] == 0


async def test_f9_f10_empty_acks_never_block_later_indices_and_are_not_errors(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """Indices the node answers empty (held-back text, low RMS) come back as missing_result
    silence_detected at once, later indices flow without waiting for the gap timeout, and empties neither count
    as failures nor quarantine the node."""
    scheduler = Scheduler(harness_config(quarantine_failures=2, heartbeat_timeout_seconds=100_000,
                                         heartbeat_interval_seconds=1000))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-GATE", capacity=4)
    client, sid = await memory_session(nursery, scheduler)
    for index in range(4):
        await _utterance(client, sid, index)
    assigns = {a["utterance_index"]: a for a in [await node.recv_type("job_assign") for _ in range(4)]}
    start = trio.current_time()
    await node.send(**result_for(assigns[3], node_id="node-GATE"))
    await node.send(**result_for(assigns[2], node_id="node-GATE", text_asr="", text_translated="", tts_audio=""))
    await node.send(**result_for(assigns[1], node_id="node-GATE", extra={"reason": "ASR_EMPTY"}))
    await node.send(**result_for(assigns[0], node_id="node-GATE", text_asr="", text_translated="", tts_audio="",
                                 extra={"reason": "NO_TEXT_ASSIGNED"}))
    got = [await client.recv_type(*OUTCOMES, timeout=1) for _ in range(4)]
    assert [(m["type"], m["utterance_index"]) for m in got] == [
        ("missing_result", 0), ("missing_result", 1), ("missing_result", 2), ("translation_result", 3)]
    assert all(m["reason"] == "silence_detected" for m in got[:3])
    assert trio.current_time() - start < 0.5
    # and with a node that answers everything empty: in order, no errors, no quarantine
    sim = await _sim(nursery, scheduler, "node-QUIET", empty_rate=1.0)
    await node.ws.aclose()
    for index in range(4, 10):
        await _utterance(client, sid, index)
    got = [await client.recv_type(*OUTCOMES, timeout=5) for _ in range(6)]
    assert [(m["type"], m["utterance_index"], m.get("reason")) for m in got] == [
        ("missing_result", i, "silence_detected") for i in range(4, 10)]
    assert sim.stats.jobs_empty == 6
    stats = await scheduler.stats()
    assert stats is not None
    assert not any(key.startswith("outcome_error_") for key in stats["counters"])
    assert stats["counters"]["outcome_missing_silence"] == 9
    [quiet] = stats["nodes"]
    assert quiet["jobs_failed"] == 0 and not quiet["quarantined"]


async def test_socket_dropped_while_closing_cancels_the_jobs_on_their_nodes(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """Found while writing the harness: issue 3 point 6 during session_close. The client asks to close (the session
    now waits for its outcomes) and then its socket goes away, as clients that do not wait for the ack do. The
    session's running job must be cancelled on its node and the slot freed at once; it used to be noticed only at
    the session's next write, so the job ran to its timeout (30 s here) holding its slot."""
    scheduler = Scheduler(harness_config(job_timeout_seconds=30, heartbeat_timeout_seconds=100_000,
                                         heartbeat_interval_seconds=1000))
    await nursery.start(scheduler.run)
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    await _utterance(client, sid, 0)
    assign = await node.recv_type("job_assign")
    await client.send(type="session_close", session_id=sid, reason="bye")
    await trio.sleep(0.1)
    start = trio.current_time()
    await client.ws.aclose()
    cancel = await node.recv_type("job_cancel", timeout=40)
    assert cancel["job_id"] == assign["job_id"]
    waited = trio.current_time() - start
    assert cancel["reason"] == "session_closed" and waited < 1, (cancel["reason"], waited)
    assert registry_view(scheduler)["slots"]["in_flight"] == 0
    assert not scheduler.sessions.live


async def test_heartbeat_deadline_that_rounds_below_the_timeout_does_not_spin_the_registry(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """Found by the harness. A node registers at t=0 and heartbeats once at t=1.05; heartbeat_timeout_seconds is
    1.5. At t=2.55, 2.55 - 1.05 == 1.4999999999999998 < 1.5: a check written as ``now - last >= timeout`` finds
    the node alive and re-arms itself at 1.05 + 1.5 == 2.55 <= now, which ``_fire_timers`` pops again at once, an
    endless loop that never yields and freezes the whole process (``guard_timer_spin`` makes that a failure rather
    than a hang). The node must be dropped for heartbeat silence at 2.55 and the registry keep answering."""
    scheduler = Scheduler(harness_config())
    guard_timer_spin(scheduler.registry)
    await nursery.start(scheduler.run)
    assert trio.current_time() == 0.0
    node = await memory_node(nursery, scheduler, "node-A")
    await trio.sleep_until(1.05)
    await node.send(**heartbeat("node-A"))
    with trio.fail_after(5), pytest.raises(TransportClosed):
        await node.read_until_closed()  # the scheduler closes the silent node's socket
    assert trio.current_time() == pytest.approx(2.55)
    stats = await scheduler.stats()
    assert stats is not None and stats["nodes"] == []
    assert stats["counters"]["nodes_lost_heartbeat_timeout"] == 1


async def test_outcome_racing_the_gap_deadline_during_close_is_not_delivered_twice_or_after_the_ack(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """Found by the harness. Utterance 0 stalls, 1 is answered at t=1 (so 0's gap deadline is t=6), the client asks
    to close at t=2, and 0's only attempt times out at t=6 too (job_timeout_seconds 6, no failover), so the
    registry queues error JOB_TIMEOUT for index 0 at the very instant the writer's gap wait ends. The writer
    releases missing_result(0) first and, owing nothing more, sends session_close_ack and starts a fresh orderer
    (next index 0). The queued JOB_TIMEOUT must not then be taken as new by that fresh orderer: that was a second
    outcome for index 0, sent after session_close_ack. (Any outcome reaching the writer between a gap release and
    the registry applying that gap's job_cancel did the same while a close was pending.)"""
    scheduler = Scheduler(harness_config(job_timeout_seconds=6, failover_max_attempts=0,
                                         heartbeat_timeout_seconds=100_000, heartbeat_interval_seconds=1000))
    await nursery.start(scheduler.run)
    assert trio.current_time() == 0.0
    node = await memory_node(nursery, scheduler, "node-A")
    client, sid = await memory_session(nursery, scheduler)
    for index in range(2):
        await _utterance(client, sid, index)
    assigns = {a["utterance_index"]: a for a in [await node.recv_type("job_assign") for _ in range(2)]}
    await trio.sleep_until(1)
    await node.send(**result_for(assigns[1], node_id="node-A"))
    await trio.sleep_until(2)
    await client.send(type="session_close", session_id=sid, reason="done")
    await trio.sleep(20)
    received: list[tuple[str, Any, Any]] = []
    while True:
        with trio.move_on_after(0.1) as scope:
            message = json.loads(await client.ws.get_message())
            received.append((message["type"], message.get("utterance_index"),
                             message.get("code") or message.get("reason")))
        if scope.cancelled_caught:
            break
    outcomes = [index for kind, index, _ in received if kind in OUTCOMES]
    assert outcomes == [0, 1], received
    assert received[-1][0] == "session_close_ack", received
