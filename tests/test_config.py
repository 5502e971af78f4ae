"""Configuration: defaults < TOML file < TRIOSCHEDULER_* environment < overrides; every error names its key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioscheduler.config import (
    SECTIONS,
    Config,
    ConfigError,
    build_config,
    config_with,
    env_overrides,
    load_config,
)

ISSUE_DEFAULTS = {
    ("server", "port"): 5010,
    ("server", "http_port"): 5011,
    ("scheduler", "max_concurrent_jobs_per_node"): 4,
    ("scheduler", "job_timeout_seconds"): 30,
    ("scheduler", "pending_timeout_seconds"): 10,
    ("scheduler", "failover_max_attempts"): 3,
    ("scheduler", "heartbeat_interval_seconds"): 15,
    ("scheduler", "heartbeat_timeout_seconds"): 45,
    ("scheduler", "selection_deadline_ms"): 200,
    ("segmentation", "pause_ms"): 3000,
    ("segmentation", "max_duration_ms"): 10000,
    ("segmentation", "max_buffer_bytes"): 512000,
    ("results", "gap_timeout_seconds"): 30,
}


def write(tmp_path: Path, text: str, name: str = "scheduler.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(("section", "key"), sorted(ISSUE_DEFAULTS))
def test_defaults_match_the_issue(section: str, key: str) -> None:
    expected = ISSUE_DEFAULTS[(section, key)]
    for config in (Config(), load_config(environ={}), build_config({})):
        assert getattr(getattr(config, section), key) == expected


def test_default_types() -> None:
    config = load_config(environ={})
    assert isinstance(config.scheduler.job_timeout_seconds, float)
    assert isinstance(config.scheduler.max_concurrent_jobs_per_node, int)
    assert config.server.host == "127.0.0.1" and config.logging.level == "info"


def test_toml_overrides_with_fractional_times(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
port = 6010
http_port = 6011

[scheduler]
job_timeout_seconds = 2.5
pending_timeout_seconds = 0.75
heartbeat_interval_seconds = 0.2
heartbeat_timeout_seconds = 0.6
max_concurrent_jobs_per_node = 2
selection_deadline_ms = 12.5

[segmentation]
pause_ms = 250.5
max_duration_ms = 1000

[results]
gap_timeout_seconds = 0.1

[logging]
level = "debug"
""")
    config = load_config(path, environ={})
    assert config.server.port == 6010 and config.server.http_port == 6011
    assert config.scheduler.job_timeout_seconds == 2.5
    assert config.scheduler.pending_timeout_seconds == 0.75
    assert config.scheduler.heartbeat_interval_seconds == 0.2
    assert config.scheduler.heartbeat_timeout_seconds == 0.6
    assert config.scheduler.max_concurrent_jobs_per_node == 2
    assert config.scheduler.selection_deadline_ms == 12.5
    assert config.segmentation.pause_ms == 250.5
    assert config.segmentation.max_duration_ms == 1000.0 and isinstance(config.segmentation.max_duration_ms, float)
    assert config.results.gap_timeout_seconds == 0.1
    assert config.logging.level == "debug"
    # untouched keys keep their defaults
    assert config.scheduler.failover_max_attempts == 3 and config.segmentation.max_buffer_bytes == 512000


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[scheduler]\njob_timeout_seconds = 7\nfailover_max_attempts = 1\n")
    env = {"TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT_SECONDS": "2.5", "PATH": "/usr/bin", "OTHER_APP_PORT": "1"}
    config = load_config(path, environ=env)
    assert config.scheduler.job_timeout_seconds == 2.5
    assert config.scheduler.failover_max_attempts == 1


def test_overrides_beat_the_environment() -> None:
    config = load_config(environ={"TRIOSCHEDULER_SERVER_PORT": "7000"}, overrides={"server": {"port": 7001}})
    assert config.server.port == 7001


def test_load_config_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRIOSCHEDULER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT_SECONDS", "2.5")
    assert load_config().scheduler.job_timeout_seconds == 2.5


def test_env_overrides_maps_names_to_sections() -> None:
    got = env_overrides({"TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT_SECONDS": "2.5", "TRIOSCHEDULER_SERVER_HTTP_PORT": "1",
                         "TRIOSCHEDULER_LOGGING_LEVEL": "debug", "HOME": "unrelated"})
    assert got == {"scheduler": {"job_timeout_seconds": "2.5"}, "server": {"http_port": "1"},
                   "logging": {"level": "debug"}}


def test_config_with_replaces_keys_and_validates() -> None:
    config = config_with(Config(), scheduler={"job_timeout_seconds": 0.5}, segmentation={"pause_ms": 100})
    assert config.scheduler.job_timeout_seconds == 0.5 and config.segmentation.pause_ms == 100.0
    assert config.scheduler.pending_timeout_seconds == 10.0
    again = config_with(config, results={"gap_timeout_seconds": 1})
    assert again.scheduler.job_timeout_seconds == 0.5 and again.results.gap_timeout_seconds == 1.0
    with pytest.raises(ConfigError, match=r"scheduler\.job_timeout_seconds"):
        config_with(Config(), scheduler={"job_timeout_seconds": -1})
    with pytest.raises(ConfigError, match=r"scheduler\.bogus"):
        config_with(Config(), scheduler={"bogus": 1})
    with pytest.raises(ConfigError, match=r"nonsense"):
        config_with(Config(), nonsense={"x": 1})


# ------------------------------------------------------------------------------------------ errors name the key


BAD_FILES = [
    ("[scheduler]\nbogus_key = 1\n", "scheduler.bogus_key"),
    ("[scheduler]\njob_timeout = 30\n", "scheduler.job_timeout"),
    ("[nonsense]\nx = 1\n", "nonsense"),
    ("port = 5010\n", "port"),
    ("[scheduler]\njob_timeout_seconds = -1\n", "scheduler.job_timeout_seconds"),
    ("[scheduler]\njob_timeout_seconds = 0\n", "scheduler.job_timeout_seconds"),
    ("[scheduler]\njob_timeout_seconds = \"soon\"\n", "scheduler.job_timeout_seconds"),
    ("[scheduler]\njob_timeout_seconds = true\n", "scheduler.job_timeout_seconds"),
    ("[scheduler]\njob_timeout_seconds = inf\n", "scheduler.job_timeout_seconds"),
    ("[scheduler]\njob_timeout_seconds = nan\n", "scheduler.job_timeout_seconds"),
    ("[scheduler]\nmax_concurrent_jobs_per_node = 0\n", "scheduler.max_concurrent_jobs_per_node"),
    ("[scheduler]\nmax_concurrent_jobs_per_node = 2.5\n", "scheduler.max_concurrent_jobs_per_node"),
    ("[scheduler]\nfailover_max_attempts = -1\n", "scheduler.failover_max_attempts"),
    ("[server]\nport = 70000\n", "server.port"),
    ("[server]\nhttp_port = \"x\"\n", "server.http_port"),
    ("[server]\nhost = 127\n", "server.host"),
    ("[segmentation]\nmax_buffer_bytes = [1]\n", "segmentation.max_buffer_bytes"),
    ("[results]\ngap_timeout_seconds = {a = 1}\n", "results.gap_timeout_seconds"),
    ("[logging]\nlevel = \"loud\"\n", "logging.level"),
    ("scheduler = 5\n", "scheduler"),
    ("[server]\ngc_freeze_after_start = \"maybe\"\n", "server.gc_freeze_after_start"),
    ("[server]\ngc_freeze_after_start = 1\n", "server.gc_freeze_after_start"),
    ("[server]\ngc_gen0_threshold = 0\n", "gc_gen0_threshold"),
]


@pytest.mark.parametrize(("text", "key"), BAD_FILES, ids=[k + f"-{i}" for i, (_, k) in enumerate(BAD_FILES)])
def test_bad_files_raise_config_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert key in str(info.value)


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_config(str(tmp_path / "missing.toml"), environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[scheduler\n"), environ={})


BAD_ENV = [
    ({"TRIOSCHEDULER_SCHEDULER_BOGUS": "1"}, "TRIOSCHEDULER_SCHEDULER_BOGUS"),
    ({"TRIOSCHEDULER_PORT": "5010"}, "TRIOSCHEDULER_PORT"),
    ({"TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT_SECONDS": "soon"}, "scheduler.job_timeout_seconds"),
    ({"TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT_SECONDS": "-2.5"}, "scheduler.job_timeout_seconds"),
    ({"TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT_SECONDS": ""}, "scheduler.job_timeout_seconds"),
    ({"TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT_SECONDS": "nan"}, "scheduler.job_timeout_seconds"),
    ({"TRIOSCHEDULER_SERVER_PORT": "50.5"}, "server.port"),
    ({"TRIOSCHEDULER_SERVER_PORT": "-1"}, "server.port"),
    ({"TRIOSCHEDULER_LOGGING_LEVEL": "verbose"}, "logging.level"),
    ({"TRIOSCHEDULER_SERVER_GC_FREEZE_AFTER_START": "perhaps"}, "server.gc_freeze_after_start"),
]


@pytest.mark.parametrize(("environ", "key"), BAD_ENV, ids=[k + f"-{i}" for i, (_, k) in enumerate(BAD_ENV)])
def test_bad_environment_raises_config_error_naming_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    assert key in str(info.value)


def test_env_overrides_rejects_unknown_prefixed_variables() -> None:
    with pytest.raises(ConfigError, match="TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT"):
        env_overrides({"TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT": "3"})


@pytest.mark.parametrize(("values", "key"), [
    ({"scheduler": {"job_timeout_seconds": 0.0}}, "scheduler.job_timeout_seconds"),
    ({"server": {"port": -5}}, "server.port"),
    ({"scheduler": {"bogus": 1}}, "scheduler.bogus"),
    ({"nonsense": {"x": 1}}, "nonsense"),
])
def test_build_config_errors_name_the_key(values, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(values)
    assert key in str(info.value)


# ------------------------------------------------------------------------------------------ properties


FLOAT_KEYS = [(s, f.name) for s, cls in SECTIONS.items() for f in attrs.fields(cls) if f.type is float]
INT_KEYS = [(s, f.name) for s, cls in SECTIONS.items() for f in attrs.fields(cls) if f.type is int]


def _bounds(key: str) -> tuple[float, float]:
    return 1e-6, 1e6


@given(data=st.data(), which=st.sampled_from(FLOAT_KEYS))
@settings(max_examples=100, deadline=None)
def test_any_positive_float_round_trips_through_the_environment(data: st.DataObject, which) -> None:
    section, key = which
    low, high = _bounds(key)
    value = data.draw(st.floats(low, high))
    name = f"TRIOSCHEDULER_{section.upper()}_{key.upper()}"
    config = load_config(environ={name: repr(value)})
    assert getattr(getattr(config, section), key) == value


@given(which=st.sampled_from(FLOAT_KEYS), value=st.floats(max_value=0.0) | st.just(float("inf")))
@settings(max_examples=60, deadline=None)
def test_non_positive_or_infinite_floats_are_rejected(which, value: float) -> None:
    section, key = which
    with pytest.raises(ConfigError) as info:
        load_config(environ={f"TRIOSCHEDULER_{section.upper()}_{key.upper()}": repr(value)})
    assert f"{section}.{key}" in str(info.value)


#: The smallest accepted value of each integer key: ports take 0 (the OS picks), counts of retries or padding
#: take 0, everything else starts at 1; ports end at 65535.
INT_MINIMUM = {"port": 0, "http_port": 0, "failover_max_attempts": 0, "padding_manual_ms": 0, "padding_auto_ms": 0,
               "job_history_size": 0, "max_context_chars": 0}


@given(which=st.sampled_from(INT_KEYS), below=st.integers(1, 10**6), data=st.data())
@settings(max_examples=80, deadline=None)
def test_int_keys_accept_their_range_and_reject_below_it(which, below: int, data: st.DataObject) -> None:
    section, key = which
    minimum = INT_MINIMUM.get(key, 1)
    maximum = 65535 if key in ("port", "http_port") else 10**6
    ok = data.draw(st.integers(minimum, maximum))
    config = load_config(environ={f"TRIOSCHEDULER_{section.upper()}_{key.upper()}": str(ok)})
    assert getattr(getattr(config, section), key) == ok
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides={section: {key: minimum - below}})
    assert f"{section}.{key}" in str(info.value)
    if key in ("port", "http_port"):
        with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
            load_config(environ={}, overrides={section: {key: 65535 + below}})


# ------------------------------------------------------------------------------------------ the command line


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOSCHEDULER_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


@pytest.mark.parametrize(("text", "key"), [
    ("[scheduler]\nbogus_key = 1\n", "scheduler.bogus_key"),
    ("[scheduler]\njob_timeout_seconds = -3\n", "scheduler.job_timeout_seconds"),
    ("[scheduler]\njob_timeout_seconds = 1" + "0" * 400 + "\n", "scheduler.job_timeout_seconds"),
])
def test_cli_exits_2_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text, "BAD.toml")
    proc = subprocess.run([sys.executable, "-m", "trioscheduler", "--config", path], capture_output=True, text=True,
                          env=_cli_env(), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr
    assert "configuration error" in proc.stderr


def test_cli_rejects_unknown_environment_variable(tmp_path: Path) -> None:
    env = {**_cli_env(), "TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT": "3"}
    proc = subprocess.run([sys.executable, "-m", "trioscheduler"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "TRIOSCHEDULER_SCHEDULER_JOB_TIMEOUT" in proc.stderr


def test_heartbeat_timeout_shorter_than_interval_is_accepted_and_the_advertised_interval_follows() -> None:
    """An operator who only shortens heartbeat_timeout_seconds must not have every node declared silent."""
    config = config_with(Config(), scheduler={"heartbeat_timeout_seconds": 3})
    assert config.scheduler.heartbeat_interval_seconds == 15
    assert config.scheduler.advertised_heartbeat_interval == 1.0
    assert Config().scheduler.advertised_heartbeat_interval == 15.0


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("0", False), ("Off", False), ("no", False),
                                                 ("true", True), ("1", True), (" yes ", True), ("ON", True)])
def test_bool_keys_accept_the_usual_environment_words(text: str, expected: bool) -> None:
    config = load_config(environ={"TRIOSCHEDULER_SERVER_GC_FREEZE_AFTER_START": text})
    assert config.server.gc_freeze_after_start is expected


def test_bool_keys_take_toml_booleans(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[server]\ngc_freeze_after_start = false\ngc_gen0_threshold = 5000\n"),
                         environ={})
    assert config.server.gc_freeze_after_start is False and config.server.gc_gen0_threshold == 5000


# ------------------------------------------------------------------------------------------ strict types (cattrs)


@pytest.mark.parametrize(("text", "key"), [
    ("[server]\nport = \"5010\"\n", "server.port"),
    ("[scheduler]\njob_timeout_seconds = \"2.5\"\n", "scheduler.job_timeout_seconds"),
    ("[scheduler]\nmax_concurrent_jobs_per_node = 4.0\n", "scheduler.max_concurrent_jobs_per_node"),
    ("[server]\ngc_freeze_after_start = \"true\"\n", "server.gc_freeze_after_start"),
    ("[logging]\nlevel = 1\n", "logging.level"),
])
def test_toml_values_must_have_the_keys_type(tmp_path: Path, text: str, key: str) -> None:
    """Only environment variables are text; in TOML a quoted number is a mistake worth reporting."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert key in str(info.value) and "scheduler.toml" in str(info.value)


def test_a_number_too_large_for_a_float_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, "[scheduler]\njob_timeout_seconds = 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigError, match=r"scheduler\.job_timeout_seconds") as info:
        load_config(path, environ={})
    assert len(str(info.value)) < 300  # the value is quoted, cut short
    with pytest.raises(ConfigError, match=r"scheduler\.job_timeout_seconds"):
        load_config(environ={}, overrides={"scheduler": {"job_timeout_seconds": 10**400}})


@pytest.mark.parametrize("call", [
    lambda: build_config({"scheduler": 5}),  # type: ignore[dict-item]
    lambda: build_config({"scheduler": [1, 2]}),  # type: ignore[dict-item]
    lambda: config_with(Config(), scheduler=5),  # type: ignore[arg-type]
])
def test_a_section_that_is_not_a_table_is_a_config_error_naming_it(call) -> None:
    with pytest.raises(ConfigError, match=r"\[scheduler\] must be a table"):
        call()


def test_every_fault_is_named_in_one_message(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
host = 1
[scheduler]
job_timeout_seconds = "x"
bogus = 1
[limits]
max_send_queue = 0
[nope]
""")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    for key in ("server.host", "scheduler.job_timeout_seconds", "unknown config key scheduler.bogus",
                "limits.max_send_queue", "unknown config section [nope]"):
        assert key in message


def test_errors_say_where_the_value_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server\.port.*\(in environment\)"):
        load_config(environ={"TRIOSCHEDULER_SERVER_PORT": "x"})
    with pytest.raises(ConfigError, match=r"server\.port.*\(in command line\)"):
        load_config(environ={}, overrides={"server": {"port": "6000"}})
    with pytest.raises(ConfigError, match=r"unknown config key limits\.max_frames \(in .*scheduler\.toml\)"):
        load_config(write(tmp_path, "[limits]\nmax_frames = 1\n"), environ={})


def test_validators_still_guard_direct_construction() -> None:
    from trioscheduler.config import LimitsConfig, ServerConfig

    with pytest.raises(ConfigError, match="port must be a port number"):
        ServerConfig(port=70000)
    with pytest.raises(ConfigError, match="max_connections must be an integer >= 1"):
        LimitsConfig(max_connections=0)


def test_limits_section_keys_load_from_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_message_bytes = 1024\nhandshake_timeout_seconds = 0.5\n")
    config = load_config(path, environ={"TRIOSCHEDULER_LIMITS_MAX_CONNECTIONS": "7"})
    assert config.limits.max_message_bytes == 1024 and config.limits.handshake_timeout_seconds == 0.5
    assert config.limits.max_connections == 7
    with pytest.raises(ConfigError, match=r"unknown config key server\.max_message_bytes"):
        load_config(write(tmp_path, "[server]\nmax_message_bytes = 1024\n", "old.toml"), environ={})


# ------------------------------------------------------------------------------------------ round trips


LEVELS = ("debug", "info", "warning", "error", "critical")


def _value_strategy(section: str, field: attrs.Attribute) -> st.SearchStrategy:  # type: ignore[type-arg]
    if field.name == "level":
        return st.sampled_from(LEVELS).flatmap(lambda level: st.sampled_from([level, level.upper()]))
    if field.name == "ordering":
        return st.sampled_from(["bounded", "strict"])
    if field.name == "format":
        return st.sampled_from(["text", "json"])
    if field.type is bool:
        return st.booleans()
    if field.type is str:
        return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
    if field.type is float:
        return st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False)
    if field.type is int:
        return st.integers(INT_MINIMUM.get(field.name, 1), 65535 if field.name in ("port", "http_port") else 2**40)
    # issue 10: lists of strings (origins, tokens) and the api_keys table (key -> tenant id)
    item = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                   max_size=20).filter(lambda text: not text.startswith("sha256:"))
    if field.name == "connections_per_address_exempt":
        return st.lists(st.sampled_from(["10.0.0.7", "10.0.0.0/8", "::1/128", "fd00::/8"]), max_size=3).map(tuple)
    if field.type == tuple[str, ...]:
        return st.lists(item, max_size=3).map(tuple)
    if field.type == dict[str, str]:
        return st.dictionaries(item, item, max_size=3)
    raise AssertionError(f"no strategy for {section}.{field.name}: {field.type!r}")


@st.composite
def partial_configs(draw: st.DrawFn) -> dict[str, dict[str, object]]:
    """Some keys of some sections, each with a valid value."""
    values: dict[str, dict[str, object]] = {}
    for section, cls in SECTIONS.items():
        for field in attrs.fields(cls):
            if draw(st.booleans()):
                values.setdefault(section, {})[field.name] = draw(_value_strategy(section, field))
    return values


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # a TOML basic string: control characters, quote and backslash as \uXXXX
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or c in '\x7f"\\' else c for c in value) + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def to_toml(values: dict[str, dict[str, object]]) -> str:
    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {_toml_value(value)}\n" for key, value in keys.items())
        for section, keys in values.items()
    )


def to_environ(values: dict[str, dict[str, object]]) -> dict[str, str]:
    return {f"TRIOSCHEDULER_{section.upper()}_{key.upper()}": (str(value).lower() if isinstance(value, bool)
                                                              else value if isinstance(value, str)
                                                              else _toml_value(value) if isinstance(value, tuple | dict)
                                                              else repr(value))
            for section, keys in values.items() for key, value in keys.items()}


def _expected(values: dict[str, dict[str, object]]) -> Config:
    sections = {name: attrs.evolve(getattr(Config(), name), **values.get(name, {})) for name in SECTIONS}
    return Config(**sections)


@given(values=partial_configs())
@settings(max_examples=60, deadline=None)
def test_a_valid_config_round_trips_through_toml(tmp_path_factory: pytest.TempPathFactory,
                                                 values: dict[str, dict[str, object]]) -> None:
    path = tmp_path_factory.mktemp("roundtrip") / "c.toml"
    path.write_text(to_toml(values), encoding="utf-8")
    config = load_config(str(path), environ={})
    assert config == _expected(values)
    assert build_config(attrs.asdict(config)) == config


@given(values=partial_configs())
@settings(max_examples=60, deadline=None)
def test_a_valid_config_round_trips_through_the_environment(values: dict[str, dict[str, object]]) -> None:
    assert load_config(environ=to_environ(values)) == _expected(values)


@given(file_values=partial_configs(), env_values=partial_configs(), flag_values=partial_configs())
@settings(max_examples=40, deadline=None)
def test_precedence_is_file_then_environment_then_flags(tmp_path_factory: pytest.TempPathFactory, file_values,
                                                        env_values, flag_values) -> None:
    path = tmp_path_factory.mktemp("precedence") / "c.toml"
    path.write_text(to_toml(file_values), encoding="utf-8")
    merged: dict[str, dict[str, object]] = {}
    for layer in (file_values, env_values, flag_values):
        for section, keys in layer.items():
            merged.setdefault(section, {}).update(keys)
    config = load_config(str(path), environ=to_environ(env_values), overrides=flag_values)
    assert config == _expected(merged)


ALL_KEYS = [(section, field) for section, cls in SECTIONS.items() for field in attrs.fields(cls)]


def _wrong_values(field: attrs.Attribute) -> st.SearchStrategy:  # type: ignore[type-arg]
    """Values no key of this type accepts from TOML or code."""
    containers = st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
    if field.type is bool:
        return containers | st.integers() | st.floats() | st.text(max_size=5)
    if field.type is str:
        return containers | st.integers() | st.floats() | st.booleans()
    if field.type is float:
        return containers | st.booleans() | st.text(max_size=5) | st.floats(max_value=0) | st.just(float("inf"))
    if field.type in (tuple[str, ...], dict[str, str]):  # issue 10: non-empty containers of non-strings
        return (st.lists(st.integers(), min_size=1, max_size=2)
                | st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2)
                | st.integers() | st.booleans() | st.floats())
    return containers | st.booleans() | st.text(max_size=5) | st.floats() | st.integers(max_value=-1)


@given(data=st.data(), which=st.sampled_from(ALL_KEYS))
@settings(max_examples=150, deadline=None)
def test_any_wrong_value_is_a_config_error_naming_its_key(data: st.DataObject, which) -> None:
    section, field = which
    value = data.draw(_wrong_values(field))
    if field.name == "level" or field.type is str:
        value = data.draw(st.integers() | st.booleans() | st.lists(st.text(max_size=3), max_size=2))
    with pytest.raises(ConfigError) as info:
        build_config({section: {field.name: value}})
    assert f"{section}.{field.name}" in str(info.value)
