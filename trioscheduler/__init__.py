"""trioscheduler: the central scheduler of a real-time speech-translation network, on Trio.

Clients stream speech over ``/ws/session``; worker nodes register over ``/ws/node``; one registry task owns all node,
pool and job state. See docs/architecture.md for the map.

The names in ``__all__`` are the public API of the daemon used as a library::

    config = trioscheduler.load_config("scheduler.toml")
    listening = await nursery.start(trioscheduler.serve, config)

They are imported on first use, so ``import trioscheduler`` (and any of its submodules) does not pay for the
listeners' dependencies until something needs them. tests/test_exports.py pins the list.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trioscheduler import client, node
    from trioscheduler.app import Scheduler
    from trioscheduler.config import (
        Config,
        ConfigError,
        LimitsConfig,
        LoggingConfig,
        ResultsConfig,
        SchedulerConfig,
        SegmentationConfig,
        ServerConfig,
        build_config,
        config_with,
        load_config,
    )
    from trioscheduler.errors import TrioschedulerError
    from trioscheduler.protocol import messages
    from trioscheduler.protocol.errors import CloseCode, ErrorCode, ProtocolError
    from trioscheduler.server.listener import Listening, serve
    from trioscheduler.transport import MemoryTransport, Transport, TransportClosed, memory_transport_pair

__version__ = "0.1.0"

#: Public name -> the module that defines it (a module itself when the name is the module's last component).
_HOMES: Mapping[str, str] = types.MappingProxyType({
    "Config": "trioscheduler.config",
    "ConfigError": "trioscheduler.config",
    "LimitsConfig": "trioscheduler.config",
    "LoggingConfig": "trioscheduler.config",
    "ResultsConfig": "trioscheduler.config",
    "SchedulerConfig": "trioscheduler.config",
    "SegmentationConfig": "trioscheduler.config",
    "ServerConfig": "trioscheduler.config",
    "build_config": "trioscheduler.config",
    "config_with": "trioscheduler.config",
    "load_config": "trioscheduler.config",
    "TrioschedulerError": "trioscheduler.errors",
    "CloseCode": "trioscheduler.protocol.errors",
    "ErrorCode": "trioscheduler.protocol.errors",
    "ProtocolError": "trioscheduler.protocol.errors",
    "messages": "trioscheduler.protocol.messages",
    "Scheduler": "trioscheduler.app",
    "Listening": "trioscheduler.server.listener",
    "serve": "trioscheduler.server.listener",
    "MemoryTransport": "trioscheduler.transport",
    "Transport": "trioscheduler.transport",
    "TransportClosed": "trioscheduler.transport",
    "memory_transport_pair": "trioscheduler.transport",
    # the SDKs (issue 12)
    "client": "trioscheduler.client",
    "node": "trioscheduler.node",
})

__all__ = [
    "CloseCode",
    "Config",
    "ConfigError",
    "ErrorCode",
    "LimitsConfig",
    "Listening",
    "LoggingConfig",
    "MemoryTransport",
    "ProtocolError",
    "ResultsConfig",
    "Scheduler",
    "SchedulerConfig",
    "SegmentationConfig",
    "ServerConfig",
    "Transport",
    "TransportClosed",
    "TrioschedulerError",
    "__version__",
    "build_config",
    "client",
    "config_with",
    "load_config",
    "memory_transport_pair",
    "messages",
    "node",
    "serve",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'trioscheduler' has no attribute {name!r}")
    module = importlib.import_module(home)
    return module if home.rsplit(".", 1)[1] == name else getattr(module, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
