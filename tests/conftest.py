"""Shared fixtures: a real scheduler on 127.0.0.1 with port 0, and raw JSON peers over real WebSockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from tests.wire import Daemon, start_daemon
from trioscheduler.config import Config, config_with


@pytest.fixture
def make_config() -> Callable[..., Config]:
    def build(**sections: dict[str, Any]) -> Config:
        sections.setdefault("server", {})
        sections["server"] = {"port": 0, "http_port": 0, **sections["server"]}
        return config_with(Config(), **sections)

    return build


@pytest.fixture
async def daemon(nursery: trio.Nursery, make_config: Callable[..., Config]) -> AsyncIterator[Daemon]:
    yield await start_daemon(nursery, make_config())
