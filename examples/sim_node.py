"""Run one or more simulated worker nodes against a scheduler.

    python examples/sim_node.py                                   # one node, zh+en, answers at once
    python examples/sim_node.py --count 4 --delay-ms 300          # four nodes, 300 ms per job
    python examples/sim_node.py --failure-rate 0.2 --seed 7       # one job in five fails, reproducibly
    python examples/sim_node.py --mode original --cpu-services tts # like the original's node agent

Each node is a :class:`trioscheduler.sim.SimNode`, built on the node SDK's connection layer
(:class:`trioscheduler.node_agent.NodeAgent`): it reconnects with backoff (0.5 s doubling to 10 s, ``--jitter``
to spread nodes out) when the scheduler goes away, keeps its node_id across reconnects, and logs one line per job.
They run until stopped (Ctrl-C). To write a node of your own, use ``trioscheduler.node.run`` (docs/sdk.md).

``--mode every_job`` (default) answers every job and says so in node_register (``answers_every_job``).
``--mode original`` behaves like the original system's node agent: a job with no cut flag (``is_manual_cut``,
``is_timeout_triggered``) under ``--answer-after-ms`` of turn audio is held and never answered, the turn is answered
once on the job that ends it, a text repeating the session's last one is not sent, and a service on the CPU or
stopped is reported not ready.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import trio

try:
    import trioscheduler.sim  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trioscheduler.sim.node import DEFAULT_NODE_URL, MODES, SERVICE_TYPES, SimNode, SimNodeBehaviour
from trioscheduler.sim.original import DEFAULT_ANSWER_AFTER_MS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Simulated lingua worker node(s) for trioscheduler.")
    parser.add_argument("--scheduler", default=DEFAULT_NODE_URL, help="node endpoint (default: %(default)s)")
    parser.add_argument("--node-id", help="node id to register with (with --count N: ID-1 ... ID-N)")
    parser.add_argument("--languages", default="zh,en", help="comma-separated languages (default: %(default)s)")
    parser.add_argument("--capacity", type=int, default=4, help="max_concurrent_jobs (default: %(default)s)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="processing time per job (default: 0)")
    parser.add_argument("--failure-rate", type=float, default=0.0, help="fraction of jobs that fail")
    parser.add_argument("--stall-rate", type=float, default=0.0, help="fraction of jobs never answered")
    parser.add_argument("--empty-rate", type=float, default=0.0, help="fraction answered with ASR_EMPTY")
    parser.add_argument("--duplicate-rate", type=float, default=0.0, help="fraction answered twice")
    parser.add_argument("--crash-after", type=int, help="drop the connection after this many jobs (once)")
    parser.add_argument("--partials", action="store_true", help="send one asr_partial before each result")
    parser.add_argument("--heartbeat-s", type=float, help="override heartbeat_interval_seconds from the ack")
    parser.add_argument("--mode", choices=MODES, default="every_job",
                        help="every_job: answer each job; original: behave like the original's node agent "
                             "(default: %(default)s)")
    parser.add_argument("--answer-after-ms", type=float, default=DEFAULT_ANSWER_AFTER_MS,
                        help="--mode original: answer a turn without a cut flag once it holds this much audio "
                             "(default: %(default)s)")
    parser.add_argument("--no-text-assigned", action="store_true",
                        help="--mode original: close the jobs held in an answered turn with NO_TEXT_ASSIGNED")
    parser.add_argument("--cpu-services", default="",
                        help=f"comma-separated service types on the CPU, reported not ready "
                             f"({','.join(SERVICE_TYPES)})")
    parser.add_argument("--stopped-services", default="",
                        help="comma-separated service types stopped, reported not ready (a stopped tts: text only)")
    parser.add_argument("--count", type=int, default=1, help="number of nodes to run (default: %(default)s)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="scale each reconnect delay by a random factor within [1 - jitter, 1] (default: 0)")
    parser.add_argument("--token", default=None,
                        help="node token, sent as Authorization: Bearer (when the scheduler has [auth] node_tokens)")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed; node i uses seed+i (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not 0.0 <= args.jitter <= 1.0:
        parser.error("--jitter must be within [0, 1]")
    for flag in ("cpu_services", "stopped_services"):
        unknown = {v.strip() for v in getattr(args, flag).split(",") if v.strip()} - set(SERVICE_TYPES)
        if unknown:
            parser.error(f"--{flag.replace('_', '-')}: unknown service types {sorted(unknown)}")
    return args


def build_nodes(args: argparse.Namespace) -> list[SimNode]:
    nodes = []
    for i in range(args.count):
        behaviour = SimNodeBehaviour(
            languages=args.languages,
            max_concurrent_jobs=args.capacity,
            delay_s=args.delay_ms / 1000,
            failure_rate=args.failure_rate,
            stall_rate=args.stall_rate,
            empty_rate=args.empty_rate,
            duplicate_rate=args.duplicate_rate,
            crash_after_jobs=args.crash_after,
            seed=args.seed + i,
            send_partials=args.partials,
            heartbeat_interval_override=args.heartbeat_s,
            mode=args.mode,
            answer_after_ms=args.answer_after_ms,
            no_text_assigned=args.no_text_assigned,
            cpu_services=args.cpu_services,
            stopped_services=args.stopped_services,
        )
        node_id = args.node_id
        if node_id is not None and args.count > 1:
            node_id = f"{node_id}-{i + 1}"
        node = SimNode(behaviour, node_id=node_id)
        node.token = args.token
        nodes.append(node)
    return nodes


async def main_async(args: argparse.Namespace) -> None:
    nodes = build_nodes(args)
    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(functools.partial(node.run_forever, args.scheduler, jitter=args.jitter))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    for name in ("trio-websocket", "trio_websocket"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        trio.run(main_async, args)
    except* KeyboardInterrupt:  # Ctrl-C, maybe in an exception group from the nodes' nurseries
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
