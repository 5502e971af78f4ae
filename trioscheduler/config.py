"""The configuration tree: embedded defaults < TOML file < TRIOSCHEDULER_* environment < command-line flags.

Every knob lives in exactly one frozen attrs class below, with its default; docs/configuration.md mirrors them.
Validation happens once, at start-up, and every error names the key at fault so an operator can fix it.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trioscheduler.errors import TrioschedulerError


class ConfigError(TrioschedulerError, ValueError):
    """A bad or unknown configuration key; the message names it."""


Validator = Callable[[object, "attrs.Attribute[Any]", Any], None]


def _check(accepts: Callable[[Any], bool], description: str) -> Validator:
    """An attrs validator whose error names the key and says what it must be."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not accepts(value):
            raise ConfigError(f"{attribute.name} must be {description}, got {value!r}")

    return validate


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_positive = _check(lambda v: _is_number(v) and v > 0, "a positive number")
_port = _check(lambda v: _is_int(v) and 0 <= v <= 65535, "a port number 0..65535")
_positive_int = _check(lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_non_negative_int = _check(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_bool = _check(lambda v: isinstance(v, bool), "true or false")


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=5010, validator=_port)
    #: HTTP (/health, /api/v1/stats, /metrics). Equal to ``port``: one server carries WebSockets and HTTP.
    http_port: int = attrs.field(default=5011, validator=_port)
    #: trio-websocket's 4 KiB default costs 1.3x in throughput (perf-anchors.md).
    receive_buffer_size: int = attrs.field(default=65536, validator=_positive_int)
    #: Once listening, move everything allocated at start-up out of the cyclic collector's sight (gc.freeze), so
    #: its full collections only walk what traffic created.
    gc_freeze_after_start: bool = attrs.field(default=True, validator=_bool)
    #: gc.set_threshold(gen0, gen1, gen2), CPython's 700, 10, 10 raised: the collector finds next to nothing here
    #: (trio tasks leave no cycles) yet walks every blocked task's coroutine chain. See docs/configuration.md.
    gc_gen0_threshold: int = attrs.field(default=10_000, validator=_positive_int)
    gc_gen1_threshold: int = attrs.field(default=10, validator=_positive_int)
    gc_gen2_threshold: int = attrs.field(default=100, validator=_positive_int)


@attrs.frozen
class SchedulerConfig:
    max_concurrent_jobs_per_node: int = attrs.field(default=4, validator=_positive_int)
    job_timeout_seconds: float = attrs.field(default=30.0, validator=_positive)
    pending_timeout_seconds: float = attrs.field(default=10.0, validator=_positive)
    failover_max_attempts: int = attrs.field(default=3, validator=_non_negative_int)
    heartbeat_interval_seconds: float = attrs.field(default=15.0, validator=_positive)
    heartbeat_timeout_seconds: float = attrs.field(default=45.0, validator=_positive)
    selection_deadline_ms: float = attrs.field(default=200.0, validator=_positive)
    #: Quarantine: this many failed or timed-out jobs on one node within the window ...
    quarantine_failures: int = attrs.field(default=5, validator=_positive_int)
    quarantine_window_seconds: float = attrs.field(default=60.0, validator=_positive)
    #: ... keep the node out of selection for this long.
    quarantine_cooldown_seconds: float = attrs.field(default=30.0, validator=_positive)
    #: Bounded inbox of the registry task; senders wait on it under their own deadline.
    registry_inbox_size: int = attrs.field(default=4096, validator=_positive_int)
    #: Per-node outbox (job_assign, job_cancel); a node this far behind is treated as lost.
    node_outbox_size: int = attrs.field(default=1024, validator=_positive_int)

    @property
    def advertised_heartbeat_interval(self) -> float:
        """The interval node_register_ack asks nodes to keep: the configured one, but never so long that a node
        keeping it would be declared silent (an operator who only shortens heartbeat_timeout_seconds)."""
        if self.heartbeat_interval_seconds < self.heartbeat_timeout_seconds:
            return self.heartbeat_interval_seconds
        return self.heartbeat_timeout_seconds / 3.0


@attrs.frozen
class SegmentationConfig:
    pause_ms: float = attrs.field(default=3000.0, validator=_positive)
    max_duration_ms: float = attrs.field(default=10000.0, validator=_positive)
    max_buffer_bytes: int = attrs.field(default=512000, validator=_positive_int)
    #: Silence the node should append to the audio (the original's padding_ms), by cut class.
    padding_manual_ms: int = attrs.field(default=280, validator=_non_negative_int)
    padding_auto_ms: int = attrs.field(default=220, validator=_non_negative_int)


@attrs.frozen
class ResultsConfig:
    gap_timeout_seconds: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen
class LoggingConfig:
    level: str = attrs.field(default="info")

    @level.validator
    def _check_level(self, attribute: attrs.Attribute[Any], value: str) -> None:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ConfigError(f"level must be one of debug, info, warning, error, critical, got {value!r}")


@attrs.frozen
class LimitsConfig:
    """What one connection may cost the process: every bound here is enforced with an error code or a close code
    (docs/configuration.md names each)."""

    #: Largest WebSocket message, in bytes (UTF-8 for text frames), in both listener modes.
    max_message_bytes: int = attrs.field(default=8 * 2**20, validator=_positive_int)
    #: Deepest nesting of arrays and objects accepted in a message (orjson re-encodes at most 255 levels).
    max_json_depth: int = attrs.field(default=32, validator=_positive_int)
    #: Languages a node may claim (per list), language pairs it may derive, services it may list.
    max_node_languages: int = attrs.field(default=64, validator=_positive_int)
    max_node_pairs: int = attrs.field(default=1024, validator=_positive_int)
    max_node_services: int = attrs.field(default=32, validator=_positive_int)
    #: Characters in one language code a node claims (a BCP 47 tag needs at most 35).
    max_language_code_chars: int = attrs.field(default=35, validator=_positive_int)
    #: Audio one session may hold in jobs that wait or run, in bytes.
    max_session_audio_bytes: int = attrs.field(default=16 * 2**20, validator=_positive_int)
    #: Utterances one session may have finalized without an outcome yet.
    max_session_outstanding: int = attrs.field(default=64, validator=_positive_int)
    #: Messages queued for one peer that does not read them; beyond it the socket is closed (4009).
    max_send_queue: int = attrs.field(default=256, validator=_positive_int)
    #: A new connection must send session_init / node_register (or an utterance) within this.
    handshake_timeout_seconds: float = attrs.field(default=10.0, validator=_positive)
    #: Open WebSocket connections (sessions and nodes together); beyond it new ones are refused at the door.
    max_connections: int = attrs.field(default=20_000, validator=_positive_int)


@attrs.frozen
class Config:
    server: ServerConfig = ServerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    results: ResultsConfig = ResultsConfig()
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "scheduler": SchedulerConfig,
    "segmentation": SegmentationConfig,
    "results": ResultsConfig,
    "limits": LimitsConfig,
    "logging": LoggingConfig,
}
ENV_PREFIX = "TRIOSCHEDULER_"


def _field_types(cls: type) -> dict[str, type]:
    return {field.name: field.type for field in attrs.fields(cls)}  # type: ignore[misc]


BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _coerce(section: str, key: str, value: Any, wanted: Any) -> Any:
    """Accept what TOML and environment strings naturally give; name the key when it does not fit."""
    name = f"{section}.{key}"
    wanted_name = wanted if isinstance(wanted, str) else getattr(wanted, "__name__", str(wanted))
    try:
        if wanted_name == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, int):
                return value
            raise ValueError
        if wanted_name == "float":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                return float(value.strip())
            if isinstance(value, (int, float)):
                return float(value)
            raise ValueError
        if wanted_name == "str":
            if isinstance(value, str):
                return value
            raise ValueError
        if wanted_name == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
                return BOOL_WORDS[value.strip().lower()]
            raise ValueError
    except ValueError:
        raise ConfigError(f"config key {name}: expected {wanted_name}, got {value!r}") from None
    raise ConfigError(f"config key {name}: unsupported type {wanted_name}")


def _merge(base: dict[str, dict[str, Any]], overrides: Mapping[str, Mapping[str, Any]], origin: str) -> None:
    for section, values in overrides.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section [{section}] in {origin}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section [{section}] in {origin} must be a table")
        types = _field_types(SECTIONS[section])
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"unknown config key {section}.{key} in {origin}")
            base.setdefault(section, {})[key] = _coerce(section, key, value, types[key])


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """TRIOSCHEDULER_<SECTION>_<KEY>; an unknown TRIOSCHEDULER_* variable is an error, not a silent no-op."""
    known = {
        f"{ENV_PREFIX}{section.upper()}_{key.upper()}": (section, key)
        for section, cls in SECTIONS.items()
        for key in _field_types(cls)
    }
    result: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        if name not in known:
            raise ConfigError(f"unknown config environment variable {name}")
        section, key = known[name]
        result.setdefault(section, {})[key] = value
    return result


def load_config(
    path: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the Config tree; raises ConfigError naming the key on anything unknown or invalid."""
    merged: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _merge(merged, data, path)
    _merge(merged, env_overrides(os.environ if environ is None else environ), "environment")
    if overrides:
        _merge(merged, overrides, "command line")
    return build_config(merged)


def build_config(values: Mapping[str, Mapping[str, Any]]) -> Config:
    for section, keys in values.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section [{section}]")
        unknown = set(keys) - set(_field_types(SECTIONS[section]))
        if unknown:
            raise ConfigError(f"unknown config key {section}.{sorted(unknown)[0]}")
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        try:
            sections[section] = cls(**values.get(section, {}))
        except ConfigError as exc:
            raise ConfigError(f"config key {section}.{exc}") from None
    return Config(**sections)


def config_with(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy with some keys replaced, validated like a file would be: handy for tests and the demo."""
    values: dict[str, dict[str, Any]] = {
        name: attrs.asdict(getattr(config, name)) for name in SECTIONS
    }
    _merge(values, sections, "override")
    return build_config(values)
