"""``python -m trioscheduler demo``: the whole system in one process, so a newcomer sees it work in seconds.

The scheduler on free ports, three simulated nodes with different speeds, and two clients streaming the shipped
speech clip (espeak-ng, see trioscheduler/sim/data/README.md) in real time, one zh→en and one en→zh. Each
outcome is printed with its latency from the end of the utterance.
"""

from __future__ import annotations

import functools

import trio

from trioscheduler.config import Config, config_with
from trioscheduler.server import serve
from trioscheduler.sim import SimClient, SimNode, SimNodeBehaviour, UtteranceResult, default_wav_path, read_wav

NODE_DELAYS_S = (0.04, 0.08, 0.12)
CLIENTS = (("zh", "en"), ("en", "zh"))


def _print_outcome(label: str, result: UtteranceResult) -> None:
    latency = "n/a" if result.latency_ms is None else f"{result.latency_ms:7.1f} ms"
    if result.ok:
        node = result.message.get("node_id", "?")
        print(f"  [{label}] utterance {result.utterance_index}: {latency}  via {node}  "
              f"asr={result.text_asr!r} -> {result.text_translated!r}", flush=True)
    else:
        detail = result.error_code or result.reason
        print(f"  [{label}] utterance {result.utterance_index}: {latency}  {result.kind} ({detail})", flush=True)


async def run_demo(config: Config) -> int:
    config = config_with(config, server={"port": 0, "http_port": 0})
    audio = read_wav(default_wav_path())
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(functools.partial(serve, config))
        print(f"scheduler: sessions {listening.session_url}, nodes {listening.node_url}, "
              f"health {listening.http_url}/health", flush=True)
        for i, delay in enumerate(NODE_DELAYS_S):
            node = SimNode(SimNodeBehaviour(delay_s=delay, seed=i), node_id=f"node-DEMO000{i + 1}")
            node_id = await nursery.start(node.run, listening.node_url)
            print(f"node {node_id}: zh+en, capacity 4, answers after {delay * 1000:.0f} ms", flush=True)
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
        nursery.cancel_scope.cancel()
    print()
    failures = 0
    for label, report in reports.items():
        latencies = sorted(report.latencies_ms)
        median = latencies[len(latencies) // 2] if latencies else float("nan")
        failures += len(report.errors)
        print(f"{label}: session {report.session_id}: {len(report.translations)} results, "
              f"{len(report.errors)} errors, median latency {median:.1f} ms, close acked: {report.close_acked}")
    return 1 if failures or not reports else 0


__all__ = ["run_demo"]
