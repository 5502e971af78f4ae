"""One fuzz example against a live daemon: ``trioscheduler.server.listener.serve`` in process on 127.0.0.1 port 0, real
sockets, a well-behaved node and client doing round trips throughout, and hostile connections all at once.

What every example checks (``run_example`` raises AssertionError naming what broke):

* the daemon never stops: its serve task is still running at the end, and never raised;
* the well-behaved client gets, for every utterance it sends before, during and after the hostile traffic, one
  translation_result with the well-behaved node's text for that index;
* once the hostile peers are gone the daemon is back to idle: the well-behaved node is the only node (and node
  connection), the well-behaved session the only session, no job, waiting job or session with jobs is left, every
  session footprint is zero, and no connection handler crashed (an unexpected exception is a bug, even when it only
  ends that connection).
"""

from __future__ import annotations

import contextlib
import math
import traceback
from typing import Any

import attrs
import trio
import trio.lowlevel
import trio_websocket

from tests.fuzz.actions import GOOD_SRC, GOOD_TGT, Ending, Frame, Hostile, Kind, encode_json
from tests.fuzz.frames import OPCODE_BINARY, OPCODE_TEXT, PEER_GONE, RawPeer, reset, upgrade_request
from tests.wire import WAIT, Daemon, Peer, b64, connect, masked_frame, node_register, pcm, result_for
from trioscheduler.app import Scheduler
from trioscheduler.config import Config, config_with
from trioscheduler.server.listener import NODE_PATH, SESSION_PATH, serve

#: Small enough that the fuzzer's long values cross it; a bound the daemon must enforce like any other.
FUZZ_MAX_MESSAGE_BYTES = 256 * 1024
GOOD_NODE_ID = "good-node-7f3a9c2e41b8"
GOOD_ROUND_TRIPS_DURING = 3
#: How long the daemon has to settle once the hostile peers are gone (its own timers are far longer).
SETTLE = 5.0


def fuzz_config() -> Config:
    return config_with(Config(), server={"port": 0, "http_port": 0},
                       limits={"max_message_bytes": FUZZ_MAX_MESSAGE_BYTES})


@attrs.define
class LiveDaemon:
    """The daemon and whether its serve task is still running (it must be, whatever the peers did)."""

    daemon: Daemon | None = None
    serving: bool = False
    serve_error: BaseException | None = None

    @property
    def scheduler(self) -> Scheduler:
        assert self.daemon is not None
        return self.daemon.scheduler


async def start_live_daemon(nursery: trio.Nursery, config: Config, live: LiveDaemon) -> None:
    scheduler = Scheduler(config)

    async def guarded(task_status: trio.TaskStatus[Any]) -> None:
        live.serving = True
        try:
            await serve(config, scheduler=scheduler, task_status=task_status)
        except* Exception as group:  # recorded for the check; Cancelled (the example's end) goes through
            live.serve_error = group
        finally:
            live.serving = False

    listening = await nursery.start(guarded)
    live.daemon = Daemon(scheduler, listening)


# ------------------------------------------------------------------------------------------ well-behaved peers

async def good_node_responder(node: Peer) -> None:
    """Answers every job_assign at once with the texts result_for derives from its index."""
    try:
        while True:
            message = await node.recv(timeout=math.inf)
            if message.get("type") == "job_assign":
                await node.send(**result_for(message, node_id=GOOD_NODE_ID))
    except trio_websocket.ConnectionClosed as exc:
        raise AssertionError(f"the daemon closed the well-behaved node's socket: {exc.reason}") from None


@attrs.define
class GoodClient:
    peer: Peer
    session_id: str
    next_index: int = 0

    async def round_trip(self) -> None:
        index = self.next_index
        self.next_index += 1
        await self.peer.send(type="utterance", session_id=self.session_id, utterance_index=index,
                             audio=b64(pcm(100, fill=index)), audio_format="pcm16", sample_rate=16000)
        try:
            result = await self.peer.recv_type("translation_result", "error", "missing_result",
                                               skip=("asr_partial", "server_heartbeat"))
        except trio.TooSlowError:
            raise AssertionError(f"well-behaved client: no outcome for utterance {index} within {WAIT} s") from None
        except trio_websocket.ConnectionClosed as exc:
            raise AssertionError(f"the daemon closed the well-behaved client's socket: {exc.reason}") from None
        assert result["type"] == "translation_result", f"well-behaved client got {result}"
        assert result["utterance_index"] == index, result
        assert result["text_translated"] == f"translated {index}", result
        assert result["session_id"] == self.session_id, result


# ------------------------------------------------------------------------------------------ hostile peers

def frame_bytes(peer: RawPeer, frame: Frame) -> bytes:
    if frame.kind is Kind.JSON:
        return peer.text_bytes(encode_json(frame.payload))
    if frame.kind is Kind.TEXT:
        return peer.text_bytes(frame.payload)
    return masked_frame(OPCODE_BINARY if frame.kind is Kind.BINARY else OPCODE_TEXT, frame.payload)


async def send_frames(peer: RawPeer, plan: Hostile) -> None:
    """The introduction and the frames, one write each or (``at_once``) all in one write, with the close frame
    of a CLOSE ending: the daemon then reads them together, and the socket is closed before it answers."""
    frames = ([Frame(Kind.JSON, plan.introduce)] if plan.introduce is not None else []) + list(plan.frames)
    if not plan.at_once:
        for frame in frames:
            await peer.stream.send_all(frame_bytes(peer, frame))
        return
    data = b"".join(frame_bytes(peer, frame) for frame in frames)
    if plan.ending is Ending.CLOSE:
        data += peer.close_bytes()
    await peer.stream.send_all(data)


async def run_hostile(live: LiveDaemon, plan: Hostile, example_over: trio.Event) -> None:
    """One hostile connection; whatever the daemon does to it (refuse, close, reset) is fine here."""
    assert live.daemon is not None
    listening = live.daemon.listening
    path = SESSION_PATH if plan.endpoint == "session" else NODE_PATH
    if plan.ending is Ending.HANDSHAKE_RESET:
        try:
            stream = await trio.open_tcp_stream(listening.host, listening.port)
            await stream.send_all(upgrade_request(listening.host, listening.port, path))
            await reset(stream)
        except PEER_GONE:
            pass
        return
    try:
        peer = await RawPeer.open(listening.host, listening.port, path)
    except PEER_GONE:
        return
    try:
        async with trio.open_nursery() as nursery:
            if plan.reads:
                nursery.start_soon(peer.drain)
            try:
                await send_frames(peer, plan)
                if plan.ending is Ending.LINGER:
                    await example_over.wait()
            except PEER_GONE:
                pass
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if plan.ending is Ending.CLOSE and not plan.at_once:
                with contextlib.suppress(PEER_GONE):
                    await peer.close()
            elif plan.ending is Ending.CLOSE:  # the close frame is sent: wait for the daemon to close
                with trio.move_on_after(WAIT):
                    await peer.drain()
                await peer.stream.aclose()
            else:
                await reset(peer.stream)


# ------------------------------------------------------------------------------------------ the example

def run_example(plans: list[Hostile]) -> None:
    """Runs one example in its own trio run; a daemon that stopped is reported as such (with its traceback),
    whatever else then failed on the well-behaved side."""
    live = LiveDaemon()
    try:
        trio.run(_run_example, plans, live)
    except BaseException:
        if live.serve_error is None:
            raise
    if live.serve_error is not None:
        text = "".join(traceback.format_exception(live.serve_error))
        raise AssertionError(f"the daemon's serve task raised (the process would exit):\n{text[-3000:]}")


async def _run_example(plans: list[Hostile], live: LiveDaemon) -> None:
    async with trio.open_nursery() as nursery:
        await start_live_daemon(nursery, fuzz_config(), live)
        daemon = live.daemon
        assert daemon is not None
        async with connect(daemon.node_url) as node, trio.open_nursery() as responding:
            await node.send(**node_register(GOOD_NODE_ID, languages=(GOOD_SRC, GOOD_TGT), capacity=64))
            await node.recv_type("node_register_ack")
            responding.start_soon(good_node_responder, node)
            try:
                async with connect(daemon.session_url) as peer:
                    await peer.send(type="session_init", client_version="good", platform="web", src_lang=GOOD_SRC,
                                    tgt_lang=GOOD_TGT, audio_format="pcm16", sample_rate=16000)
                    client = GoodClient(peer, (await peer.recv_type("session_init_ack"))["session_id"])
                    await client.round_trip()
                    example_over = trio.Event()

                    async def good_traffic() -> None:
                        try:
                            for _ in range(GOOD_ROUND_TRIPS_DURING):
                                await client.round_trip()
                                await trio.lowlevel.checkpoint()
                        finally:
                            example_over.set()

                    async with trio.open_nursery() as hostile:
                        for plan in plans:
                            hostile.start_soon(run_hostile, live, plan, example_over)
                        hostile.start_soon(good_traffic)
                    await client.round_trip()
                    await check_idle(live)
            finally:
                responding.cancel_scope.cancel()  # before the well-behaved node's own close
            nursery.cancel_scope.cancel()


def idle_problems(live: LiveDaemon, snapshot: dict[str, Any] | None) -> list[str]:
    """What is left beyond the well-behaved node and session; empty when the daemon is back to idle."""
    if not live.serving:
        return [f"the daemon's serve task ended: {live.serve_error!r}"]
    if snapshot is None:
        return ["the registry did not answer a snapshot"]
    scheduler = live.scheduler
    problems = []
    nodes = [node["node_id"] for node in snapshot["nodes"]]
    if nodes != [GOOD_NODE_ID]:
        problems.append(f"nodes {nodes}")
    if snapshot["node_connections"] != 1:
        problems.append(f"node connections {snapshot['node_connections']}")
    if snapshot["jobs"]["total"] or snapshot["jobs"]["waiting"] or snapshot["sessions_with_jobs"]:
        problems.append(f"jobs {snapshot['jobs']}, sessions with jobs {snapshot['sessions_with_jobs']}")
    if snapshot["slots"]["in_flight"]:
        problems.append(f"slots in flight {snapshot['slots']}")
    if snapshot["sessions"]["active"] != 1:
        problems.append(f"sessions active {snapshot['sessions']['active']}")
    footprints = [session.footprint() for session in scheduler.sessions.live]
    if any(any(footprint.values()) for footprint in footprints):
        problems.append(f"session footprints {footprints}")
    if scheduler.connections_crashed or snapshot["counters"].get("registry_internal_errors"):
        problems.append(f"crashes: connections {scheduler.connections_crashed}, "
                        f"registry {snapshot['counters'].get('registry_internal_errors')}")
    return problems


async def check_idle(live: LiveDaemon) -> None:
    problems: list[str] = []
    with trio.move_on_after(SETTLE):
        while True:
            snapshot = await live.scheduler.stats() if live.serving else None
            problems = idle_problems(live, snapshot)
            if not problems:
                return
            if not live.serving or any(problem.startswith("crashes") for problem in problems):
                break  # neither comes back: no use waiting
            await trio.sleep(0.02)
    raise AssertionError(f"not back to idle after the hostile peers left (waited up to {SETTLE} s): {problems}")
