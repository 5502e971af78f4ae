"""Subprocess bookkeeping for the orchestrators: every child in its own session, logs to files, all of them
stopped on exit (normal, error, Ctrl-C or SIGTERM). Also starts the systems under test on free loopback ports."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
from _common import HOST, free_port, port_open  # noqa: E402

PY = sys.executable


class StartError(RuntimeError):
    pass


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, out: str, err: str):
        self.name = name
        self.p = popen
        self.pid = popen.pid
        self.out = out
        self.err = err

    def alive(self) -> bool:
        return self.p.poll() is None

    def stdout(self) -> str:
        try:
            with open(self.out, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tail(self, n: int = 15) -> str:
        lines = []
        for path in (self.out, self.err):
            try:
                with open(path, errors="replace") as f:
                    lines += f.read().splitlines()[-n:]
            except OSError:
                pass
        return "\n".join(lines[-n:])


class Procs:
    """Registry of children. stop_all() ends each by its own process group id, nothing broader."""

    def __init__(self, rundir: str):
        self.rundir = rundir
        self.live: list[Proc] = []
        self.seq = 0
        atexit.register(self.stop_all)

    def start(self, name: str, argv: list[str], cwd: str = REPO, env: dict | None = None) -> Proc:
        self.seq += 1
        base = os.path.join(self.rundir, f"{self.seq:03d}-{name}")
        out, err = base + ".out", base + ".err"
        e = dict(os.environ)
        e["PYTHONPATH"] = REPO + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
        e["PYTHONUNBUFFERED"] = "1"
        if env:
            e.update(env)
        with open(out, "w") as fo, open(err, "w") as fe:
            p = subprocess.Popen(argv, cwd=cwd, env=e, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        proc = Proc(name, p, out, err)
        self.live.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.p.wait(5)
        else:
            # the leader exited; make sure nothing it started in its group lingers (e.g. prefork children)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.live:
            self.live.remove(proc)
        return proc.p.returncode

    def stop_all(self) -> None:
        for proc in list(reversed(self.live)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)

    def wait(self, proc: Proc, timeout: float) -> int:
        try:
            return proc.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, timeout=3)
            raise StartError(f"{proc.name} did not finish within {timeout:.0f}s\n{proc.tail()}") from None


def install_signal_handlers() -> None:
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)


def wait_port(proc: Proc, port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.alive():
            raise StartError(f"{proc.name} exited with {proc.p.returncode}\n{proc.tail()}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise StartError(f"{proc.name}: port {port} not accepting after {timeout}s\n{proc.tail()}")


def wait_line(proc: Proc, prefix: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in proc.stdout().splitlines():
            if line.startswith(prefix):
                return line
        if not proc.alive():
            raise StartError(f"{proc.name} exited with {proc.p.returncode} before '{prefix}'\n{proc.tail()}")
        time.sleep(0.05)
    raise StartError(f"{proc.name}: no '{prefix}' line after {timeout}s\n{proc.tail()}")


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------- systems


def scheduler_available() -> str | None:
    """None if `python -m trioscheduler` can be tried, else the reason it cannot."""
    if not os.path.exists(os.path.join(REPO, "trioscheduler", "__main__.py")):
        return "trioscheduler/__main__.py does not exist yet"
    return None


def celery_available() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server not installed (apt-get install -y redis-server)"
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        return "celery[redis] not installed (pip install 'celery[redis]')"
    return None


class System:
    """A started system under test: its WebSocket URL (or Redis URL), its processes, its watched pids."""

    def __init__(self, name: str):
        self.name = name
        self.url = ""
        self.http_port = 0
        self.procs: list[Proc] = []
        self.watch: dict[str, list[int]] = {}
        self.env: dict[str, str] = {}

    @property
    def server_pid(self) -> int:
        return self.procs[0].pid


def start_relay(procs: Procs, name: str = "relay") -> System:
    """``relay`` uses the stdlib's json and base64 (like the reference relay); ``relay-fast`` the scheduler's
    orjson and pybase64."""
    s = System(name)
    port = free_port()
    argv = [PY, os.path.join(BENCH, "relay.py"), "--port", str(port), "--max-seconds", "3600"]
    if name == "relay-fast":
        argv += ["--libs", "fast"]
    p = procs.start(name, argv)
    s.procs.append(p)
    wait_port(p, port)
    s.url = f"ws://{HOST}:{port}"
    s.watch["server"] = [p.pid]
    return s


#: The scheduler systems run.py knows and the log level each runs at (None: the daemon's default, info).
SCHEDULER_LOG_LEVELS: dict[str, str | None] = {"scheduler": None, "scheduler-warning": "warning"}


def start_scheduler(procs: Procs, config: str | None, name: str = "scheduler") -> System:
    """``scheduler`` runs at the daemon's default log level (its stderr to a file in the run directory);
    ``scheduler-warning`` at ``--log-level warning``, so the cost of logging shows beside it."""
    s = System(name)
    port, http = free_port(), free_port()
    argv = [PY, "-m", "trioscheduler", "--port", str(port), "--http-port", str(http)]
    level = SCHEDULER_LOG_LEVELS[name]
    if level is not None:
        argv += ["--log-level", level]
    if config:
        argv += ["--config", config]
    p = procs.start(name, argv)
    s.procs.append(p)
    wait_port(p, port, timeout=30)
    s.url = f"ws://{HOST}:{port}"
    s.http_port = http
    s.watch["server"] = [p.pid]
    return s


def start_celery(procs: Procs) -> System:
    s = System("celery")
    rport = free_port()
    rdir = os.path.join(procs.rundir, f"redis-{rport}")
    os.makedirs(rdir, exist_ok=True)
    r = procs.start("redis", ["redis-server", "--bind", HOST, "--port", str(rport), "--save", "", "--appendonly",
                              "no", "--dir", rdir, "--daemonize", "no", "--loglevel", "warning"], cwd=rdir)
    wait_port(r, rport)
    url = f"redis://{HOST}:{rport}/0"
    s.env = {"BENCH_REDIS_URL": url}
    w = procs.start("celery-worker", [PY, "-m", "celery", "-A", "celery_app", "worker", "-P", "threads", "-c", "4",
                                      "--loglevel=WARNING", "--without-gossip", "--without-mingle",
                                      "--without-heartbeat"], cwd=BENCH, env=s.env)
    s.procs = [w, r]
    s.url = url
    s.watch["server"] = [w.pid]  # the worker ("server" column); the loadgen's warm-up task waits for it
    s.watch["redis"] = [r.pid]
    return s


def start_system(procs: Procs, name: str, config: str | None) -> System:
    if name in ("relay", "relay-fast"):
        return start_relay(procs, name)
    if name in SCHEDULER_LOG_LEVELS:
        return start_scheduler(procs, config, name)
    if name == "celery":
        return start_celery(procs)
    raise ValueError(name)


def stop_system(procs: Procs, s: System) -> None:
    for p in s.procs:
        procs.stop(p, timeout=5)


def start_nodes(procs: Procs, s: System, n: int, out: str, *, hz: float = 0.0, record: bool = False,
                name: str = "nodes", extra: list[str] | None = None, ready_timeout: float = 120.0) -> Proc:
    argv = [PY, os.path.join(BENCH, "nodes.py"), "--url", s.url, "--n", str(n), "--hz", str(hz), "--out", out,
            "--ready-timeout", str(ready_timeout), "--max-seconds", "3600"]
    if record:
        argv.append("--record")
    argv += extra or []
    p = procs.start(name, argv)
    try:
        line = wait_line(p, "READY", ready_timeout + 10)
        m = re.search(r"registered=(\d+)", line)
        if not m or int(m.group(1)) < n:
            procs.stop(p, timeout=20)  # writes its --out, with the first errors
            errs = ""
            if os.path.exists(out):
                errs = "\n".join(read_json(out).get("errors", [])[:5])
            raise StartError(f"{name}: only {line} of {n} nodes registered\n{errs}\n{p.tail()}")
    except StartError:
        procs.stop(p, timeout=5)
        raise
    return p


def metrics_text(http_port: int) -> str:
    if not http_port:
        return ""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{http_port}/metrics", timeout=3) as r:
            return r.read().decode("utf-8", "replace")
    except Exception:
        return ""


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+eE0-9.naNInf]+)")


def parse_metrics(text: str, needle: str = "select") -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or needle not in line:
            continue
        m = _SAMPLE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, dict]:
    """For every histogram with 'select' in its name: count, mean and bucket-bound p50/p99 over the interval."""
    res: dict[str, dict] = {}
    names = {k.split("{")[0][: -len("_count")] for k in after if k.split("{")[0].endswith("_count")}
    for base in names:
        cnt = sum(v - before.get(k, 0) for k, v in after.items() if k.split("{")[0] == base + "_count")
        tot = sum(v - before.get(k, 0) for k, v in after.items() if k.split("{")[0] == base + "_sum")
        buckets: dict[float, float] = {}
        for k, v in after.items():
            if k.split("{")[0] != base + "_bucket":
                continue
            m = re.search(r'le="([^"]+)"', k)
            if m:
                le = float(m.group(1))
                buckets[le] = buckets.get(le, 0) + v - before.get(k, 0)
        entry: dict = {"count": cnt, "mean": (tot / cnt) if cnt else None}
        if buckets and cnt:
            for q in (50, 99):
                need = cnt * q / 100.0
                entry[f"p{q}_le"] = next((le for le in sorted(buckets) if buckets[le] >= need), None)
        res[base] = entry
    return res
