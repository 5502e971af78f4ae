"""The configuration tree: embedded defaults < TOML file < TRIOSCHEDULER_* environment < command-line flags.

Every knob lives in exactly one frozen attrs class below, with its default; docs/configuration.md mirrors them.
cattrs builds the tree, strictly: an unknown section or key, a value of the wrong type (a TOML string for a number,
a boolean for a number) or one out of range is a :class:`ConfigError` whose message names each fault by its key
path (``scheduler.job_timeout_seconds``). Only environment variables are text, parsed as the key's type.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from trioscheduler.errors import TrioschedulerError

T = TypeVar("T")


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: an error message quotes the value, not a megabyte of it."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


class ConfigError(TrioschedulerError, ValueError):
    """A bad or unknown configuration key; the message names it."""


class InvalidValue(ConfigError):
    """A value of the right type but out of range (raised by the validators; ``key`` is the attribute name)."""

    def __init__(self, key: str, requirement: str, value: Any) -> None:
        super().__init__(f"{key} must be {requirement}, got {_shown(value)}")
        self.key = key
        self.requirement = requirement
        self.value = value


class NotATable(ConfigError):
    """A section given as something other than a table of keys."""


Validator = Callable[[object, "attrs.Attribute[Any]", Any], None]


def _check(accepts: Callable[[Any], bool], requirement: str) -> Validator:
    """An attrs validator whose error names the key and says what it must be."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not accepts(value):
            raise InvalidValue(attribute.name, requirement, value)

    return validate


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: logging.format: human-readable ``event key=value`` lines, or one JSON object per line.
LOG_FORMATS = ("text", "json")
#: results.ordering: "bounded" (an outcome waits for lower indices at most max_hold_ms) or "strict".
RESULT_ORDERINGS = ("bounded", "strict")

_positive = _check(lambda v: _is_number(v) and v > 0, "a positive number")
_port = _check(lambda v: _is_int(v) and 0 <= v <= 65535, "a port number 0..65535")
_positive_int = _check(lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_non_negative_int = _check(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_bool = _check(lambda v: isinstance(v, bool), "true or false")
_level = _check(lambda v: isinstance(v, str) and v.lower() in LOG_LEVELS, "one of " + ", ".join(LOG_LEVELS))
_log_format = _check(lambda v: v in LOG_FORMATS, "one of " + ", ".join(LOG_FORMATS))
_ordering = _check(lambda v: v in RESULT_ORDERINGS, "one of " + ", ".join(RESULT_ORDERINGS))

#: How a secret may be written hashed: ``sha256:`` and the 64 hex digits of its SHA-256 digest.
SECRET_DIGEST_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
#: Longest tenant id an API key may map to.
MAX_TENANT_ID_CHARS = 128


def _is_secret(value: Any) -> bool:
    """A non-empty string; if it starts with ``sha256:``, exactly 64 hex digits follow."""
    if not isinstance(value, str) or not value:
        return False
    if value.startswith(SECRET_DIGEST_PREFIX):
        return _HEX_DIGEST.fullmatch(value[len(SECRET_DIGEST_PREFIX):]) is not None
    return True


class _NotShown:
    """Stands for a value an error message must not quote (a secret)."""

    def __repr__(self) -> str:
        return "a value not shown (it holds secrets)"


def _check_secret(accepts: Callable[[Any], bool], requirement: str) -> Validator:
    """``_check`` for keys that hold secrets: the error names the key, never the value."""

    def validate(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not accepts(value):
            raise InvalidValue(attribute.name, requirement, _NotShown())

    return validate


_SECRET_REQUIREMENT = 'non-empty strings, each in clear or "sha256:" and 64 hex digits'
_secrets = _check_secret(lambda v: all(_is_secret(item) for item in v), _SECRET_REQUIREMENT)
_api_keys = _check_secret(
    lambda v: all(_is_secret(key) and isinstance(tenant, str) and 0 < len(tenant) <= MAX_TENANT_ID_CHARS
                  for key, tenant in v.items()),
    f"a table of API keys ({_SECRET_REQUIREMENT}) to tenant ids of 1..{MAX_TENANT_ID_CHARS} characters")
def _is_network(value: Any) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        return False
    return True


_networks = _check(lambda v: all(isinstance(item, str) and _is_network(item) for item in v),
                   'a list of IP addresses or networks ("10.0.0.7", "10.0.0.0/8", "::1/128")')
_origins = _check(lambda v: all(isinstance(item, str) and item for item in v), "a list of non-empty strings")


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=5010, validator=_port)
    #: HTTP (/health, /api/v1/stats, /metrics). Equal to ``port``: one server carries WebSockets and HTTP.
    http_port: int = attrs.field(default=5011, validator=_port)
    #: Bytes the door's WebSocket reads from a socket at once; 4 KiB reads slow bulk audio down (bench/README.md).
    receive_buffer_size: int = attrs.field(default=65536, validator=_positive_int)
    #: Once listening, move everything allocated at start-up out of the cyclic collector's sight (gc.freeze), so
    #: its full collections only walk what traffic created.
    gc_freeze_after_start: bool = attrs.field(default=True, validator=_bool)
    #: gc.set_threshold(gen0, gen1, gen2), CPython's 700, 10, 10 raised: the collector finds next to nothing here
    #: (trio tasks leave no cycles) yet walks every blocked task's coroutine chain. See docs/configuration.md.
    gc_gen0_threshold: int = attrs.field(default=10_000, validator=_positive_int)
    gc_gen1_threshold: int = attrs.field(default=10, validator=_positive_int)
    gc_gen2_threshold: int = attrs.field(default=100, validator=_positive_int)
    # -- operations (drain, health): docs/operations.md
    #: After a drain starts (SIGTERM or POST /api/v1/drain), how long open sessions have to reach an utterance
    #: boundary; then what they still owe is flushed as errors (SCHEDULER_DRAINING) and the process exits.
    drain_timeout_seconds: float = attrs.field(default=30.0, validator=_positive)
    #: /health is 200 only when the registry answers within this; /metrics and /api/v1/stats wait as long.
    health_timeout_seconds: float = attrs.field(default=2.0, validator=_positive)
    # --- security (issue 10; trioscheduler/auth.py, docs/security.md)
    #: Origins a WebSocket handshake may carry (``https://app.example``; ``"*"``: any). Empty: any Origin on a
    #: loopback host, none elsewhere. A handshake without an Origin header (not a browser) is never refused for it.
    allowed_origins: tuple[str, ...] = attrs.field(default=(), validator=_origins)
    #: PEM certificate chain and private key: both set, both listeners speak TLS (wss://, https://).
    tls_cert: str = ""
    tls_key: str = ""


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
    #: Dispatch only to nodes whose services for the job's pipeline are all ready. Off: ready nodes are preferred,
    #: and a node that serves the language pair takes the job when no ready node has room.
    require_ready_services: bool = False

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
    #: "bounded": an outcome waits for lower indices at most ``max_hold_ms``; "strict": utterance_index order.
    ordering: str = attrs.field(default="bounded", validator=_ordering)
    max_hold_ms: float = attrs.field(default=1000.0, validator=_positive)
    #: session_close_ack comes at most this long after session_close; what is still owed is reported missing.
    close_wait_seconds: float = attrs.field(default=5.0, validator=_positive)

    @property
    def max_hold_seconds(self) -> float:
        """How long an outcome waits for lower indices: infinite in strict order."""
        return math.inf if self.ordering == "strict" else self.max_hold_ms / 1000.0


@attrs.frozen
class LoggingConfig:
    #: debug, info, warning, error or critical, in any case.
    level: str = attrs.field(default="info", validator=_level)
    #: "text" (``event key=value``) or "json" (one JSON object per line).
    format: str = attrs.field(default="text", validator=_log_format)


@attrs.frozen
class LimitsConfig:
    """What one connection may cost the process: every bound here is enforced with an error code or a close code
    (docs/configuration.md names each)."""

    #: Largest WebSocket message, in bytes (UTF-8 for text frames), in both listener modes.
    max_message_bytes: int = attrs.field(default=8 * 2**20, validator=_positive_int)
    #: Deepest nesting of arrays and objects accepted in a message (orjson re-encodes at most 255 levels).
    max_json_depth: int = attrs.field(default=32, validator=_positive_int)
    #: Largest free-form field of a message (features, extra, details...), in bytes of its JSON.
    max_free_form_bytes: int = attrs.field(default=65536, validator=_positive_int)
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
    #: Log records waiting for a slow or stuck log sink; beyond it records are dropped and counted.
    max_log_queue_records: int = attrs.field(default=10_000, validator=_positive_int)
    #: WebSocket connections open at once from one remote IP address; beyond it the handshake gets HTTP 429.
    connections_per_address: int = attrs.field(default=100, validator=_positive_int)
    #: Peers not held to ``connections_per_address`` (IP networks: a reverse proxy, a gateway); none by default.
    connections_per_address_exempt: tuple[str, ...] = attrs.field(default=(), validator=_networks)
    # -- identities, claims and tenants
    #: Largest max_concurrent_jobs a node may claim; a larger claim is clamped to it (and logged).
    max_node_capacity: int = attrs.field(default=1024, validator=_positive_int)
    #: How long a session_id stays reserved for its socket after that session ends: an implicit session under it
    #: is refused (SESSION_ID_IN_USE) meanwhile.
    session_id_reuse_seconds: float = attrs.field(default=300.0, validator=_positive)
    #: How long, after an authenticated node's connection is gone, its node_id stays reserved for its credential
    #: (and longer while jobs lost with it are unsettled).
    node_id_reuse_seconds: float = attrs.field(default=300.0, validator=_positive)
    #: Sessions one tenant may have open at once (TENANT_SESSION_LIMIT_EXCEEDED beyond).
    sessions_per_tenant: int = attrs.field(default=1000, validator=_positive_int)
    #: Messages one client connection may send per second, on average (RATE_LIMITED beyond)...
    messages_per_second: float = attrs.field(default=200.0, validator=_positive)
    #: ...and at once after a quiet spell. Refused messages still cost a token; a debt over it closes the socket
    #: (4029).
    messages_burst: int = attrs.field(default=400, validator=_positive_int)
    # -- node sockets (docs/configuration.md explains the defaults)
    #: Messages one node connection may send per second, on average (RATE_LIMITED beyond)...
    node_messages_per_second: float = attrs.field(default=5000.0, validator=_positive)
    #: ...and at once after a quiet spell; a debt of refused messages over it closes the node's socket (4029).
    node_messages_burst: int = attrs.field(default=10_000, validator=_positive_int)


@attrs.frozen
class AuthConfig:
    """Credentials the door checks (trioscheduler/auth.py). Each secret may be written in clear or as
    ``"sha256:<64 hex digits>"``; none is ever shown in a repr. None configured at all: authentication is off,
    which only a loopback host allows (or ``insecure``)."""

    #: Tokens a node presents on /ws/node.
    node_tokens: tuple[str, ...] = attrs.field(default=(), validator=_secrets, repr=False)
    #: API key -> tenant id, for clients on /ws/session.
    api_keys: dict[str, str] = attrs.field(factory=dict, validator=_api_keys, repr=False)
    #: Tokens for the HTTP API's write endpoints and detailed reads.
    admin_tokens: tuple[str, ...] = attrs.field(default=(), validator=_secrets, repr=False)
    #: Allow a non-loopback host with no credentials configured (logs a warning at start and every hour).
    insecure: bool = attrs.field(default=False, validator=_bool)


# --- operations: the HTTP API's job timelines (issue 11, point 2) ---
@attrs.frozen
class ObservabilityConfig:
    """What the HTTP API (``/api/v1/``) keeps and how long it waits; docs/http-api.md."""

    #: Recent jobs whose timeline ``/api/v1/jobs`` keeps (live ones included); 0 keeps none.
    job_history_size: int = attrs.field(default=1000, validator=_non_negative_int)
    #: An API read the registry has not answered within this is a 503, never a hang.
    api_deadline_seconds: float = attrs.field(default=2.0, validator=_positive)
    #: Most items in one list answer (``/api/v1/sessions``, ``/api/v1/jobs``, a node's recent failures).
    api_max_items: int = attrs.field(default=200, validator=_positive_int)


@attrs.frozen
class GroupsConfig:
    """Utterance groups (issue 14): consecutive results of a session joined under one group_id."""

    #: A result joins the session's current group within this long of the group's last activity (a part, or a
    #: tts_started / tts_play_ended naming it).
    window_ms: float = attrs.field(default=2000.0, validator=_positive)
    #: Parts in one group; the next result starts a new group.
    max_parts: int = attrs.field(default=8, validator=_positive_int)
    #: Characters of the group's recent text sent to the node as ``context_text`` (the newest ones).
    max_context_chars: int = attrs.field(default=800, validator=_non_negative_int)


@attrs.frozen
class GatewayConfig:
    """The REST and WebSocket gateway (``POST /v1/speech/translate``, ``WS /v1/stream``)."""

    enabled: bool = attrs.field(default=True, validator=_bool)
    #: Largest request body of ``POST /v1/speech/translate``; beyond it 413 REQUEST_TOO_LARGE.
    max_body_bytes: int = attrs.field(default=8 * 2**20, validator=_positive_int)
    #: Gateway requests (REST calls and stream utterances) running at once; beyond it 503 GATEWAY_BUSY.
    max_concurrent_requests: int = attrs.field(default=64, validator=_positive_int)
    #: Requests per second per tenant (token bucket refill rate); beyond it 429 RATE_LIMITED.
    requests_per_second: float = attrs.field(default=100.0, validator=_positive)
    #: Requests a tenant may make at once after a quiet spell (token bucket size).
    burst: int = attrs.field(default=100, validator=_positive_int)
    #: Tenants the rate limiter remembers; the least recently seen is forgotten beyond it.
    max_tenants: int = attrs.field(default=10_000, validator=_positive_int)
    #: How long one request may wait for its outcome; then 504 JOB_TIMEOUT and its job is cancelled.
    request_timeout_seconds: float = attrs.field(default=120.0, validator=_positive)


@attrs.frozen
class RoomsConfig:
    """Rooms (docs/protocol.md "Rooms"): every bound has a ``room_error`` code."""

    #: A room in which nobody spoke for this long is closed; its members get ``room_expired``.
    idle_expiry_seconds: float = attrs.field(default=1800.0, validator=_positive)
    #: Members one room may hold; one more gets ``room_error ROOM_FULL``.
    max_members: int = attrs.field(default=16, validator=_positive_int)
    #: Rooms open at once (never more than the 900000 six-digit codes); one more ``room_create`` gets
    #: ``room_error ROOM_LIMIT_REACHED``.
    max_rooms: int = attrs.field(default=1000, validator=_positive_int)
    #: Requests waiting for the room owner task; a session that cannot queue or is not answered within
    #: ``request_deadline_ms`` gets ``room_error ROOMS_BUSY`` (an utterance: ``error SCHEDULER_BUSY``).
    inbox_size: int = attrs.field(default=1024, validator=_positive_int)
    request_deadline_ms: float = attrs.field(default=200.0, validator=_positive)
    #: Outcomes one listener may hold back for one speaker while an earlier one is still running; past it the
    #: earliest is given up as ``missing_result{reason: "gap_timeout"}``.
    max_held_per_speaker: int = attrs.field(default=64, validator=_positive_int)


@attrs.frozen
class Config:
    server: ServerConfig = ServerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    results: ResultsConfig = ResultsConfig()
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    groups: GroupsConfig = GroupsConfig()
    gateway: GatewayConfig = GatewayConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    auth: AuthConfig = AuthConfig()
    rooms: RoomsConfig = RoomsConfig()


def _sections(root: type[Config]) -> Mapping[str, type]:
    """Section name -> its class, in file order, with the string annotations resolved (``from __future__ import
    annotations``), so that ``attrs.fields(cls)[i].type`` is a type."""
    attrs.resolve_types(root)
    return types.MappingProxyType(
        {field.name: attrs.resolve_types(field.type) for field in attrs.fields(root) if field.type is not None})


SECTIONS = _sections(Config)
ENV_PREFIX = "TRIOSCHEDULER_"
#: What an environment variable may say for a bool key (compared after strip() and lower()).
BOOL_WORDS: Mapping[str, bool] = types.MappingProxyType(
    {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False})


# ------------------------------------------------------------------------------------------ structuring hooks


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_shown(value)}")
    return value


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {_shown(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {_shown(value)}")
    try:
        return float(value)
    except OverflowError:
        raise TypeError(f"expected a number within the range of a float, got {_shown(value)}") from None


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_shown(value)}")
    return value


def _int_from_text(value: Any, tp: type) -> int:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise TypeError(f"expected an integer, got {_shown(value)}") from None
    return _strict_int(value, tp)


def _float_from_text(value: Any, tp: type) -> float:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise TypeError(f"expected a number, got {_shown(value)}") from None
    return _strict_float(value, tp)


def _bool_from_text(value: Any, tp: type) -> bool:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in BOOL_WORDS:
            return BOOL_WORDS[word]
        raise TypeError(f"expected one of {', '.join(BOOL_WORDS)}, got {_shown(value)}")
    return _strict_bool(value, tp)


def _strict_str_tuple(value: Any, _: type) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"expected a list of strings, got a {type(value).__name__}")  # no value: secrets
    return tuple(value)


def _strict_str_table(value: Any, _: type) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"expected a table of strings, got a {type(value).__name__}")  # no value: secrets
    return dict(value)


def _toml_value_from_text(value: Any) -> Any:
    """An environment variable's text read as one TOML value (``["a", "b"]``, ``{ key = "tenant" }``)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = tomllib.loads(f"value = {value}")
    except tomllib.TOMLDecodeError:
        raise TypeError("expected a TOML value (the text is not shown: it may hold secrets)") from None
    if set(parsed) != {"value"}:
        raise TypeError("expected one TOML value (the text is not shown: it may hold secrets)")
    return parsed["value"]


def _str_tuple_from_text(value: Any, tp: type) -> tuple[str, ...]:
    return _strict_str_tuple(_toml_value_from_text(value), tp)


def _str_table_from_text(value: Any, tp: type) -> dict[str, str]:
    return _strict_str_table(_toml_value_from_text(value), tp)


def _table_hook(cls: type[T], converter: cattrs.Converter) -> Callable[[Any, type], T]:
    """The generated structure function of ``cls``, behind a check that the value is a table at all."""
    structure = make_dict_structure_fn(cls, converter)

    def hook(value: Any, _: type) -> T:
        if not isinstance(value, Mapping):
            raise NotATable(f"must be a table, got {_shown(value)}")
        return structure(value, cls)

    return hook


def make_config_converter(*, from_text: bool) -> cattrs.Converter:
    """A converter for the Config tree: unknown keys refused, every error collected (detailed validation).

    ``from_text`` also parses strings as the key's type (environment variables); otherwise a value must already
    have it (TOML, flags, code), except that an integer is taken for a float key.
    """
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _int_from_text if from_text else _strict_int)
    converter.register_structure_hook(float, _float_from_text if from_text else _strict_float)
    converter.register_structure_hook(bool, _bool_from_text if from_text else _strict_bool)
    converter.register_structure_hook_func(lambda tp: tp == tuple[str, ...],
                                           _str_tuple_from_text if from_text else _strict_str_tuple)
    converter.register_structure_hook_func(lambda tp: tp == dict[str, str],
                                           _str_table_from_text if from_text else _strict_str_table)
    for cls in (*SECTIONS.values(), Config):
        converter.register_structure_hook(cls, _table_hook(cls, converter))
    return converter


#: Built once at import and never changed after.
_STRICT = make_config_converter(from_text=False)
_FROM_TEXT = make_config_converter(from_text=True)


# ------------------------------------------------------------------------------------------ error messages


def _problems(exc: BaseException, path: tuple[str, ...]) -> Iterator[str]:
    """One sentence per failure inside a cattrs error, each naming its key path (``section.key``)."""
    where = ".".join(path)
    if isinstance(exc, ClassValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for inner, note in with_notes:
            yield from _problems(inner, (*path, note.name))
        for inner in without_notes:
            yield from _problems(inner, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for name in sorted(exc.extra_fields):
            yield f"unknown config section [{name}]" if not path else f"unknown config key {where}.{name}"
    elif isinstance(exc, InvalidValue):
        yield f"config key {'.'.join((*path, exc.key))} must be {exc.requirement}, got {_shown(exc.value)}"
    elif isinstance(exc, NotATable):
        yield f"config section [{where}] {exc}" if len(path) == 1 else f"configuration {exc}"
    else:
        yield f"config key {where}: {exc}"


def _structure(values: Any, converter: cattrs.Converter, origin: str | None) -> Config:
    try:
        return converter.structure(values, Config)
    except (ClassValidationError, ConfigError) as exc:
        message = "; ".join(_problems(exc, ()))
        raise ConfigError(message if origin is None else f"{message} (in {origin})") from None


def _layered(config: Config, layer: Mapping[str, Any], converter: cattrs.Converter, origin: str | None) -> Config:
    """``config`` with the keys of ``layer`` replaced; the result is validated as a whole."""
    values: dict[str, Any] = attrs.asdict(config)
    for section, keys in layer.items():
        current = values.get(section)
        values[section] = {**current, **keys} if isinstance(current, dict) and isinstance(keys, Mapping) else keys
    return _structure(values, converter, origin)


# ------------------------------------------------------------------------------------------ the public functions


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """TRIOSCHEDULER_<SECTION>_<KEY> as ``{section: {key: text}}``; an unknown TRIOSCHEDULER_* variable is an
    error, not a silent no-op."""
    known = {
        f"{ENV_PREFIX}{section.upper()}_{field.name.upper()}": (section, field.name)
        for section, cls in SECTIONS.items()
        for field in attrs.fields(cls)
    }
    result: dict[str, dict[str, str]] = {}
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
    """Defaults < the TOML file at ``path`` < ``environ`` (``os.environ`` if None) < ``overrides`` (flags).

    Raises ConfigError naming every key at fault, and where it came from, on anything unknown or invalid.
    """
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        config = _layered(config, data, _STRICT, path)
    environment = env_overrides(os.environ if environ is None else environ)
    if environment:
        config = _layered(config, environment, _FROM_TEXT, "environment")
    if overrides:
        config = _layered(config, overrides, _STRICT, "command line")
    return config


def build_config(values: Mapping[str, Mapping[str, Any]]) -> Config:
    """The Config for ``{section: {key: value}}`` (typed values, as TOML gives them); absent keys keep defaults."""
    return _structure(values, _STRICT, None)


def config_with(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy with some keys replaced, validated like a file would be: handy for tests and the demo."""
    return _layered(config, sections, _STRICT, None)
