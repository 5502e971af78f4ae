"""Shared fixtures: a real scheduler on 127.0.0.1 with port 0, and raw JSON peers over real WebSockets.

Hypothesis profiles (``HYPOTHESIS_PROFILE`` selects one; ``ci`` when unset):

* ``ci``: deadlines off (real sockets and a loaded 2-core runner make per-example timing meaningless) and
  hypothesis's usual 100 examples; the live-daemon fuzzer and the teardown test run a fraction of that (see
  tests/fuzz/__init__.py), so the whole suite stays bounded;
* ``thorough``: ten times the examples, and longer action lists for the fuzzer, for a run on demand.

A test's own ``@settings(max_examples=...)`` still wins over the profile for that setting.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings

from tests.native import require
from tests.wire import Daemon, start_daemon
from trioscheduler import opus
from trioscheduler.config import Config, config_with

_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", deadline=None, max_examples=100, suppress_health_check=_SLOW_IS_FINE)
settings.register_profile("thorough", deadline=None, max_examples=1000, suppress_health_check=_SLOW_IS_FINE)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def make_config() -> Callable[..., Config]:
    def build(**sections: dict[str, Any]) -> Config:
        sections.setdefault("server", {})
        sections["server"] = {"port": 0, "http_port": 0, **sections["server"]}
        return config_with(Config(), **sections)

    return build


@pytest.fixture
async def daemon(nursery: trio.Nursery, make_config: Callable[..., Config]) -> Daemon:
    return await start_daemon(nursery, make_config())


@pytest.fixture
def libopus() -> None:
    """A test that encodes or decodes real opus: skipped without libopus (failing under CI, see tests/native.py)."""
    require(opus.unavailable_reason())
