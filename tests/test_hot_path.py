"""The closed loop's hot path over real sockets: how many times the scheduler's tasks are scheduled per round trip
(utterance in, job_assign out, job_result in, translation_result out).

Each task step is a trip through Trio's run loop and a resume of the task's whole coroutine chain, which the
profiles in bench/README.md ("Relay throughput") found to be most of what the scheduler spends beyond the relay.
The count depends on how the tasks hand messages to each other, not on the machine's speed, so it is checked
exactly rather than timed.
"""

from __future__ import annotations

import statistics
from typing import Any

import trio

from tests.wire import Daemon, b64, pcm, registered_node, result_for, session

ROUND_TRIPS = 12
#: Task steps of the daemon's tasks per round trip (18 before the transport handed messages on without a checkpoint,
#: 14 before the registry's inbox took submits and results without one, 12 before the door's own WebSocket
#: (trioscheduler/server/websocket.py) replaced trio-websocket's reader task and trio's checkpoint per socket call,
#: 8 before the session reader stopped waiting for each submit's answer (server/unanswered.py) and an Expect stopped
#: waking the outcome writer, 6 before the registry wrote a job_assign to an idle node socket, and an in-order
#: outcome to an idle client socket, itself without waiting (``Transport.send_nowait``). 4 is the floor of this
#: design: the session reader woken by the utterance, the registry, the node's reader woken by the job_result, the
#: registry.
MAX_STEPS_PER_ROUND_TRIP = 4


DAEMON_TASKS = ("trioscheduler.", "trio._highlevel_serve_listeners.")


class DaemonSteps(trio.abc.Instrument):
    """Counts the steps of the daemon's tasks: its connection handlers (trio's ``serve_tcp`` names them) and the
    tasks named after trioscheduler's functions; the test's peers are trio-websocket client connections and the
    test itself, named otherwise."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith(DAEMON_TASKS):
            self.steps += 1


def _utterance(session_id: str, index: int) -> dict[str, Any]:
    return {"type": "utterance", "session_id": session_id, "utterance_index": index, "manual_cut": True,
            "audio": b64(pcm(100)), "audio_format": "pcm16", "sample_rate": 16000}


async def test_a_round_trip_takes_a_bounded_number_of_task_steps(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url) as (node, _), session(daemon.session_url) as (client, sid):
        counts = []
        for index in range(ROUND_TRIPS):
            await trio.sleep(0.05)  # let the previous round trip's tasks settle (the writer, the log writer)
            instrument = DaemonSteps()
            trio.lowlevel.add_instrument(instrument)
            try:
                await client.send(**_utterance(sid, index))
                assign = await node.recv_type("job_assign")
                await node.send(**result_for(assign))
                result = await client.recv_type("translation_result")
            finally:
                trio.lowlevel.remove_instrument(instrument)
            assert result["utterance_index"] == index
            counts.append(instrument.steps)
        assert statistics.median(counts) <= MAX_STEPS_PER_ROUND_TRIP, counts
