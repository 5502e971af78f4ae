"""bench/run.py's ``alternate`` experiment (issue 13 point 4's measurement): every system up, one load generator whose
clients take turns between them. A short run against the daemon and the relay must give every client of both
systems round trips in every round, with no error, and the report's ratio rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


async def test_a_short_alternate_run_measures_both_systems_in_turn(tmp_path: Path) -> None:
    out = tmp_path / "alternate.json"
    argv = [sys.executable, "bench/run.py", "--quick", "--only", "alternate", "--systems", "scheduler,relay-fast",
            "--clients", "1,3", "--repeats", "1", "--json", str(out)]
    with trio.fail_after(120):
        done = await trio.run_process(argv, cwd=ROOT, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    rows = json.loads(out.read_text())["alternate"]
    assert {(row["system"], row["c"]) for row in rows} == {
        ("scheduler", 1), ("scheduler", 3), ("relay-fast", 1), ("relay-fast", 3)}
    for row in rows:
        assert row["errors"] == 0, row
        assert row["rounds"] >= 1 and row["rt_per_s"] > 0, row
        # every client of every system had its turn in every round: at least one round trip each
        assert row["n"] >= row["rounds"] * row["c"], row
    report = done.stdout.decode()
    assert "| scheduler/relay-fast | 1 |" in report and "| scheduler/relay-fast | 3 |" in report
