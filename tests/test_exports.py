"""The public API: ``trioscheduler.__all__`` is pinned, every name in it resolves, and importing the package is
cheap (the listeners' dependencies load on first use)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import trioscheduler

ROOT = Path(__file__).resolve().parents[1]

#: Changing this list changes the public API: do it on purpose, and say so in the change's description.
PUBLIC_API = {
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
}


def test_all_is_the_pinned_public_api() -> None:
    assert len(trioscheduler.__all__) == len(set(trioscheduler.__all__)), "a name listed twice"
    assert set(trioscheduler.__all__) == PUBLIC_API


@pytest.mark.parametrize("name", sorted(PUBLIC_API))
def test_every_public_name_resolves_to_its_home_object(name: str) -> None:
    value = getattr(trioscheduler, name)
    assert value is not None
    if name == "__version__":
        return
    home = getattr(value, "__module__", None) or value.__name__  # a module names itself
    module = importlib.import_module(home)
    assert value is (module if module.__name__.rsplit(".", 1)[1] == name else getattr(module, name))
    assert name in dir(trioscheduler)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        trioscheduler.no_such_name  # noqa: B018


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict[str, object] = {}
    exec("from trioscheduler import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC_API


def test_version_matches_the_package_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert trioscheduler.__version__ == project["version"]


def test_importing_the_package_does_not_import_the_listeners() -> None:
    code = ("import sys, trioscheduler; "
            "print(sorted(m for m in ('hypercorn', 'trio_websocket', 'prometheus_client', "
            "'trioscheduler.server.listener') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=60).stdout
    assert out.strip() == "[]"


def test_py_typed_marker_is_shipped() -> None:
    assert (ROOT / "trioscheduler" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]
    assert "py.typed" in package_data["trioscheduler"]
