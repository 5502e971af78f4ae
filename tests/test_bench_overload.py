"""bench/overload.py drives the registry in process: it has to follow the registry's client API. A tiny run (a
few virtual seconds) under its own MockClock must end with every job answered."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
TINY = ("--nodes", "2", "--capacity", "2", "--sessions", "4", "--baseline-s", "1", "--overload-s", "1",
        "--recovery-s", "1")


async def test_a_tiny_overload_run_answers_every_job(tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, "bench/overload.py", *TINY, "--json", str(out)], cwd=ROOT,
                                      capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    result = json.loads(out.read_text())
    assert result["unanswered"] == 0
    assert set(result["phases"]) == {"baseline", "overload", "recovery", "drain"}
    assert sum(phase["results"] for phase in result["phases"].values()) > 0
