"""Shared helpers for the bench scripts: payloads, percentiles, /proc readers, ports.

Nothing here imports trio, so the Celery caller threads and the orchestrator can use it too.
Every address used by the bench is 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import socket
import time

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

#: trio-websocket's default is 4 KiB, which costs ~1.3x in throughput (bench/README.md).
RECEIVE_BUFFER = 65536
MAX_MESSAGE = 8 * 2**20

UTTERANCE_B64_CHARS = 32768  # 32,768 base64 chars, ~33 KB of JSON
CHUNK_PCM_BYTES = 6400  # 200 ms of 16 kHz mono pcm16
CHUNK_SECONDS = 0.2

LANGS = ["zh", "en"]


def audio_b64(n_chars: int = UTTERANCE_B64_CHARS, seed: int = 1) -> str:
    """Deterministic pseudo-random base64 audio of exactly n_chars characters (n_chars % 4 == 0)."""
    rnd = random.Random(seed)
    raw = bytes(rnd.getrandbits(8) for _ in range(n_chars // 4 * 3))
    s = base64.b64encode(raw).decode("ascii")
    assert len(s) == n_chars
    return s


def pcm_chunk_b64(n_bytes: int = CHUNK_PCM_BYTES, seed: int = 2) -> str:
    """A 200 ms pcm16 chunk: a low-amplitude pseudo-random waveform, base64-encoded (8,536 chars)."""
    rnd = random.Random(seed)
    samples = bytearray()
    for _ in range(n_bytes // 2):
        samples += rnd.randint(-3000, 3000).to_bytes(2, "little", signed=True)
    return base64.b64encode(bytes(samples)).decode("ascii")


def utterance_dict(session_id: str, index: int, audio: str) -> dict:
    return {
        "type": "utterance",
        "session_id": session_id,
        "utterance_index": index,
        "manual_cut": True,
        "src_lang": "zh",
        "tgt_lang": "en",
        "audio": audio,
        "audio_format": "pcm16",
        "sample_rate": 16000,
        "trace_id": f"bench-{session_id}",
    }


def template(obj: dict, field: str) -> tuple[str, str]:
    """Serialise obj once with a sentinel in `field`; return (prefix, suffix) so that
    prefix + str(value) + suffix is the JSON with that field set to an integer. Saves the client
    a json.dumps of 33 KB per message, so the load generator measures the server, not itself."""
    sentinel = -987654321
    s = json.dumps(dict(obj, **{field: sentinel}), separators=(",", ":"))
    prefix, suffix = s.split(str(sentinel))
    return prefix, suffix


def percentile(sorted_vals: list, q: float):
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def summarize_ns(lat_ns: list[int]) -> dict:
    """p50/p99/p99.9/max/mean in milliseconds from a list of nanosecond latencies."""
    v = sorted(lat_ns)
    if not v:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None, "mean_ms": None}
    ms = 1e6
    return {
        "n": len(v),
        "p50_ms": percentile(v, 50) / ms,
        "p99_ms": percentile(v, 99) / ms,
        "p999_ms": percentile(v, 99.9) / ms,
        "max_ms": v[-1] / ms,
        "mean_ms": sum(v) / len(v) / ms,
    }


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process in clock ticks (threads included), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) clock ticks from the aggregate cpu line of /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    steal = vals[7] if len(vals) > 7 else 0
    total = sum(vals[:8])
    return total - idle, total, steal


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return None


class CpuWatch:
    """CPU of named processes and of the machine between start() and stop()."""

    def __init__(self, pids: dict[str, list[int]]):
        self.pids = pids
        self._t0: dict[str, int] = {}
        self._m0 = (0, 0, 0)
        self._w0 = 0.0
        self.result: dict = {}

    def _sample(self) -> dict[str, int]:
        out = {}
        for name, pids in self.pids.items():
            tot = 0
            for p in pids:
                t = cpu_ticks(p)
                if t is not None:
                    tot += t
            out[name] = tot
        return out

    def start(self) -> None:
        self._w0 = time.monotonic()
        self._t0 = self._sample()
        self._m0 = machine_ticks()

    def stop(self) -> dict:
        wall = time.monotonic() - self._w0
        t1 = self._sample()
        m1 = machine_ticks()
        procs = {
            name: 100.0 * (t1[name] - self._t0.get(name, 0)) / CLK_TCK / wall if wall > 0 else None
            for name in t1
        }
        busy = m1[0] - self._m0[0]
        total = m1[1] - self._m0[1]
        steal = m1[2] - self._m0[2]
        ncpu = os.cpu_count() or 1
        self.result = {
            "wall_s": wall,
            "cpu_pct": procs,  # % of one core
            "machine_busy_pct": 100.0 * ncpu * busy / total if total else None,  # of ncpu*100
            "steal_pct": 100.0 * steal / total if total else None,
        }
        return self.result


def parse_watch(spec: str | None) -> dict[str, list[int]]:
    """'relay=123,nodes=456+457' -> {'relay': [123], 'nodes': [456, 457]}"""
    out: dict[str, list[int]] = {}
    if not spec:
        return out
    for item in spec.split(","):
        if not item:
            continue
        name, _, pids = item.partition("=")
        out[name] = [int(p) for p in pids.split("+") if p]
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
