"""``python -m trioscheduler demo``: the whole system in one process, so a newcomer sees it work in seconds.

The scheduler on free ports, three simulated nodes with different speeds, and two clients streaming the shipped
speech clip (espeak-ng, see trioscheduler/sim/data/README.md) in real time, one zh→en and one en→zh. Each
outcome is printed with its latency from the end of the utterance.

With ``--node-mode original`` the nodes behave like the original system's node agent (``trioscheduler.sim``
``mode="original"``): they answer a turn only on a job with a cut flag, drop a repeated text, and the third one
runs its TTS on the CPU, so it reports TTS not ready.

With ``--keep`` the scheduler and its nodes keep serving once the clients are done, and the dashboard's URL is
printed; the demo then ends at SIGINT (Ctrl-C) or SIGTERM, with the exit status it would have had.
"""

from __future__ import annotations

import functools
import signal

import trio

from trioscheduler.config import Config, config_with
from trioscheduler.server.listener import serve
from trioscheduler.sim import SimClient, SimNode, SimNodeBehaviour, UtteranceResult, default_wav_path, read_wav
from trioscheduler.sim.node import MODES

NODE_DELAYS_S = (0.04, 0.08, 0.12)
CLIENTS = (("zh", "en"), ("en", "zh"))
#: ``--node-mode original``: the services the i-th node runs on the CPU (reported not ready).
ORIGINAL_CPU_SERVICES: tuple[tuple[str, ...], ...] = ((), (), ("tts",))


def demo_nodes(node_mode: str = "every_job") -> list[SimNode]:
    """The demo's three nodes, fast to slow; ``node_mode`` is one of ``trioscheduler.sim.node.MODES``."""
    if node_mode not in MODES:
        raise ValueError(f"node mode must be one of {MODES}, got {node_mode!r}")
    nodes = []
    for i, delay in enumerate(NODE_DELAYS_S):
        cpu = ORIGINAL_CPU_SERVICES[i] if node_mode == "original" else ()
        behaviour = SimNodeBehaviour(delay_s=delay, seed=i, mode=node_mode, cpu_services=cpu)
        nodes.append(SimNode(behaviour, node_id=f"node-DEMO000{i + 1}"))
    return nodes


def _describe_node(node: SimNode) -> str:
    b = node.behaviour
    text = f"zh+en, capacity {b.max_concurrent_jobs}, answers after {b.delay_s * 1000:.0f} ms"
    if b.mode == "original":
        text += ", original's node agent (answers a turn on its cut, drops repeated text)"
    if b.cpu_services:
        text += f", {'+'.join(b.cpu_services)} on CPU (reported not ready)"
    return text


def _print_outcome(label: str, result: UtteranceResult) -> None:
    latency = "n/a" if result.latency_ms is None else f"{result.latency_ms:7.1f} ms"
    if result.ok:
        node = result.message.get("node_id", "?")
        print(f"  [{label}] utterance {result.utterance_index}: {latency}  via {node}  "
              f"asr={result.text_asr!r} -> {result.text_translated!r}", flush=True)
    else:
        detail = result.error_code or result.reason
        print(f"  [{label}] utterance {result.utterance_index}: {latency}  {result.kind} ({detail})", flush=True)


def dashboard_url(http_url: str) -> str:
    return f"{http_url}/dashboard"


async def run_demo(config: Config, node_mode: str = "every_job", keep: bool = False) -> int:
    nodes = demo_nodes(node_mode)
    config = config_with(config, server={"port": 0, "http_port": 0})
    audio = read_wav(default_wav_path())
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(functools.partial(serve, config))
        print(f"scheduler: sessions {listening.session_url}, nodes {listening.node_url}, "
              f"health {listening.http_url}/health", flush=True)
        print(f"dashboard: {listening.http_url}/dashboard", flush=True)
        for node in nodes:
            node_id = await nursery.start(node.run, listening.node_url)
            print(f"node {node_id}: {_describe_node(node)}", flush=True)
        print(f"clients: streaming {default_wav_path().name} ({audio.duration_ms / 1000:.1f} s) "
              f"in real time, 200 ms chunks\n", flush=True)
        reports = {}

        async def one_client(src: str, tgt: str) -> None:
            label = f"{src}->{tgt}"
            client = SimClient(src_lang=src, tgt_lang=tgt, cut="vad",
                               on_result=functools.partial(_print_outcome, label))
            reports[label] = await client.run(listening.session_url, audio)

        async with trio.open_nursery() as clients:
            for src, tgt in CLIENTS:
                clients.start_soon(one_client, src, tgt)
        if keep:
            await _keep_serving(listening.http_url)
        nursery.cancel_scope.cancel()
    print()
    failures = 0
    for label, report in reports.items():
        latencies = sorted(report.latencies_ms)
        median = latencies[len(latencies) // 2] if latencies else float("nan")
        failures += len(report.errors)
        print(f"{label}: session {report.session_id}: {len(report.translations)} results, "
              f"{len(report.errors)} errors, median latency {median:.1f} ms, close acked: {report.close_acked}")
    for node in nodes if node_mode == "original" else ():
        s = node.stats
        print(f"node {node.node_id}: {s.jobs_received} jobs, {s.jobs_answered} answered, {s.jobs_held} held "
              f"unanswered, {s.results_suppressed} repeated texts dropped")
    return 1 if failures or not reports else 0


async def _keep_serving(http_url: str) -> None:
    """Serve until SIGINT or SIGTERM, after saying where to look."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        print(f"\ndashboard: {dashboard_url(http_url)}  (metrics {http_url}/metrics); "
              "serving until Ctrl-C", flush=True)
        async for signum in signals:
            print(f"demo: {signal.Signals(signum).name} received, stopping", flush=True)
            return


__all__ = ["dashboard_url", "demo_nodes", "run_demo"]
