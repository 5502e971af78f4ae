"""JSON text frames in and out: one cattrs converter, strict about types, tolerant of unknown fields.

cattrs would coerce ``"7"`` to ``7`` and ``"false"`` to ``True``; on a wire protocol that hides client bugs, so the
primitive hooks below refuse values of the wrong JSON type and the error names the field at fault.

Guarantees of ``Codec.decode``: the message is one of the codec's classes, every field has its declared type and
range (see ``messages``), the whole message nests at most ``max_json_depth`` levels, and each free-form field
encodes to at most ``max_free_form_bytes`` bytes of JSON. Hence whatever is accepted can be encoded again
(forwarded to a node or a client) by ``encode``; an encode failure is an ``EncodeError``, never anything else.
"""

from __future__ import annotations

import binascii
import functools
import math
import types
import typing
from typing import Any, Generic, Literal, TypeVar

import attrs
import cattrs
import orjson
import pybase64
from cattrs.preconf.json import make_converter

from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import EncodeError as EncodeError  # re-exported: what encode raises
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.protocol.rooms import ROOM_CLIENT_MESSAGES

if typing.TYPE_CHECKING:
    from trioscheduler.config import LimitsConfig

#: Defaults of ``limits.max_json_depth`` and ``limits.max_free_form_bytes`` (for the module-level codecs).
DEFAULT_MAX_JSON_DEPTH = 32
DEFAULT_MAX_FREE_FORM_BYTES = 65536
#: orjson encodes at most this many levels: a deeper setting of max_json_depth is clamped to it.
ENCODABLE_DEPTH = 255
#: An ``int`` field that is neither an index nor a rate: within a signed 64-bit integer, so it re-encodes.
INT64_RANGE = (-(2**63), 2**63 - 1)


def _strict_str(value: Any, _: type) -> str:
    if type(value) is not str:
        raise TypeError("expected a string")
    return value


def _printable(value: Any, what: str) -> str:
    if type(value) is not str:
        raise TypeError("expected a string")
    if len(value) > m.MAX_ID_LENGTH:
        raise ValueError(f"{what} longer than {m.MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise ValueError(f"{what} contains a control or non-printable character")
    return value


def _id(value: Any, _: type) -> str:
    return _printable(value, "id")


def _code(value: Any, _: type) -> str:
    return _printable(value, "code")


def _strict_int(value: Any, _: type) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    if not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        raise ValueError("integer out of range (signed 64-bit)")
    return value


def _count(value: Any, _: type) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    if not 0 <= value < m.COUNT_LIMIT:
        raise ValueError(f"expected 0 <= n < {m.COUNT_LIMIT}")
    return value


def _sample_rate(value: Any, _: type) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    low, high = m.SAMPLE_RATE_RANGE
    if not low <= value <= high:
        raise ValueError(f"sample_rate must be within {low}..{high}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if type(value) is float:
        if not math.isfinite(value):  # orjson never parses one; a dict built in code might hold one
            raise ValueError("expected a finite number")
        return value
    if type(value) is int:
        return float(value)  # orjson parses integers up to 64 bits only: always finite
    raise TypeError("expected a number")


def _strict_bool(value: Any, _: type) -> bool:
    if type(value) is not bool:
        raise TypeError("expected true or false")
    return value


#: Closed sets read case-insensitively, surrounding spaces ignored (the value decodes to its listed spelling).
_CASE_INSENSITIVE: tuple[Any, ...] = (m.StreamAudioFormat, m.UtteranceAudioFormat)


def _literal_hook(tp: Any) -> Any:
    allowed = frozenset(typing.get_args(tp))
    listed = ", ".join(sorted(repr(a) for a in allowed))
    fold = tp in _CASE_INSENSITIVE

    def structure(value: Any, _: type) -> Any:
        if type(value) is str:
            if value in allowed:
                return value
            if fold and (folded := value.strip().lower()) in allowed:
                return folded
        raise ValueError(f"expected one of {listed}")

    return structure


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _is_optional(tp: Any) -> bool:
    """``X | None`` for one type X."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return False
    args = typing.get_args(tp)
    return len(args) == 2 and type(None) in args


def _optional_hook(converter: cattrs.Converter) -> Any:
    """Hooks for ``X | None`` that find X's hook once, when cattrs builds a class's code, rather than on every value
    (cattrs' own optional hook dispatches on each call: 17 times per round trip of the closed loop)."""

    def factory(tp: Any) -> Any:
        inner = _strip_optional(tp)
        hook = converter.get_structure_hook(inner)

        def structure(value: Any, _: type) -> Any:
            return None if value is None else hook(value, inner)

        return structure

    return factory


def make_wire_converter() -> cattrs.Converter:
    converter = make_converter()
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    converter.register_structure_hook(m.Id, _id)
    converter.register_structure_hook(m.Code, _code)
    converter.register_structure_hook(m.Count, _count)
    converter.register_structure_hook(m.SampleRate, _sample_rate)
    converter.register_structure_hook_factory(_is_literal, _literal_hook)
    converter.register_structure_hook_factory(_is_optional, _optional_hook(converter))
    return converter


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


@attrs.frozen
class FieldPlan:
    """How one field is checked before cattrs builds it: the JSON container it must be ("array", "object" or
    None), the attrs class of its items or value (checked inside), and whether it is free-form JSON."""

    name: str
    container: str | None
    nested: type | None
    free_form: bool


def _field_plan(cls: type) -> tuple[FieldPlan, ...]:
    """cattrs would turn "en" into ['e', 'n'] or build a nested object from defaults when given a string, and a
    wire protocol must refuse that loudly; free-form fields are found here once, to be size-checked per message."""
    plan: list[FieldPlan] = []
    for field in attrs.fields(attrs.resolve_types(cls)):
        tp = _strip_optional(field.type)
        origin = typing.get_origin(tp)
        if tp is Any:
            plan.append(FieldPlan(field.name, None, None, True))
        elif origin is list:
            (inner,) = typing.get_args(tp)
            nested = inner if attrs.has(inner) else None
            plan.append(FieldPlan(field.name, "array", nested, inner is Any))
        elif origin is dict:
            plan.append(FieldPlan(field.name, "object", None, True))
        elif attrs.has(tp):
            plan.append(FieldPlan(field.name, "object", tp, False))
    return tuple(plan)


def _depth_exceeds(value: Any, budget: int) -> bool:
    """Whether ``value`` (a JSON container) nests more than ``budget`` levels, itself included."""
    if budget <= 0:
        return True
    below = budget - 1
    items = value.values() if type(value) is dict else value
    for item in items:
        kind = type(item)
        if (kind is dict or kind is list) and _depth_exceeds(item, below):
            return True
    return False


M = TypeVar("M")


class Codec(Generic[M]):
    """Decodes a text frame into the message class for its ``type`` (a member of the union ``M``).

    Every decoding failure is a ProtocolError (INVALID_MESSAGE naming the field's JSON path, or
    UNSUPPORTED_FEATURE for a known type out of scope); nothing else escapes.
    """

    def __init__(self, inbound: tuple[type[M], ...], unsupported: frozenset[str] = frozenset(), *,
                 max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
                 max_free_form_bytes: int = DEFAULT_MAX_FREE_FORM_BYTES) -> None:
        self._converter = make_wire_converter()
        self._by_type: dict[str, type[M]] = {cls.TYPE: cls for cls in inbound}  # type: ignore[attr-defined]
        self._unsupported = unsupported
        self.max_json_depth = min(max_json_depth, ENCODABLE_DEPTH)
        self.max_free_form_bytes = max_free_form_bytes
        self._plans: dict[type, tuple[FieldPlan, ...]] = {}
        for cls in inbound:
            self._plan_for(cls)
            self._converter.get_structure_hook(cls)  # build cattrs' structure code now, not on the first message

    def _plan_for(self, cls: type) -> tuple[FieldPlan, ...]:
        plan = self._plans.get(cls)
        if plan is None:
            plan = self._plans[cls] = _field_plan(cls)
            for field in plan:
                if field.nested is not None:
                    self._plan_for(field.nested)
        return plan

    def _check_fields(self, data: dict[str, Any], cls: type, path: str) -> None:
        for plan in self._plans[cls]:
            value = data.get(plan.name)
            if value is None:
                continue
            field = f"{path}{plan.name}"
            if plan.container == "array":
                if type(value) is not list:
                    raise ProtocolError(f"{field} must be a JSON array", field=field)
                if plan.nested is not None:
                    for i, item in enumerate(value):
                        if type(item) is not dict:
                            raise ProtocolError(f"{field}[{i}] must be a JSON object", field=f"{field}[{i}]")
                        self._check_fields(item, plan.nested, f"{field}[{i}].")
            elif plan.container == "object":
                if type(value) is not dict:
                    raise ProtocolError(f"{field} must be a JSON object", field=field)
                if plan.nested is not None:
                    self._check_fields(value, plan.nested, f"{field}.")
            if plan.free_form and (type(value) is dict or type(value) is list) and (
                    len(orjson.dumps(value)) > self.max_free_form_bytes):
                raise ProtocolError(f"{field} is larger than {self.max_free_form_bytes} bytes of JSON "
                                    "(limits.max_free_form_bytes)", field=field)

    def decode(self, frame: str | bytes) -> M:
        return self.structure_typed(self.parse(frame))

    def parse(self, frame: str | bytes) -> dict[str, Any]:
        """JSON text → a dict (not yet checked against any message class), nesting at most ``max_json_depth``."""
        if isinstance(frame, bytes):
            raise ProtocolError("binary frames are not accepted; send JSON text frames")
        try:
            data = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"message is not valid JSON: {exc}") from None
        if type(data) is not dict:
            raise ProtocolError("message must be a JSON object")
        below = self.max_json_depth - 1
        for key, value in data.items():
            kind = type(value)
            if (kind is dict or kind is list) and _depth_exceeds(value, below):
                field = key[:m.MAX_ID_LENGTH]  # a peer's key, maybe unknown: echoed bounded, quoted in the text
                raise ProtocolError(f"{field!r} nests deeper than {self.max_json_depth} levels "
                                    "(limits.max_json_depth)", field=field)
        return data

    def structure_typed(self, data: dict[str, Any]) -> M:
        """The message class named by ``type``, built strictly from ``data`` (a dict from ``parse``)."""
        kind = data.get("type")
        if type(kind) is not str:
            raise ProtocolError("message has no string field 'type'", field="type")
        cls = self._by_type.get(kind)
        if cls is None:
            if kind in self._unsupported:
                raise ProtocolError(f"message type '{kind}' is not supported here", field="type",
                                    code=ErrorCode.UNSUPPORTED_FEATURE)
            raise ProtocolError(f"unknown message type {kind[:64]!r}", field="type")
        self._check_fields(data, cls, "")
        try:
            return self._converter.structure(data, cls)
        except cattrs.BaseValidationError as exc:
            problems = cattrs.transform_error(exc, format_exception=_describe)
            first = problems[0] if problems else "invalid message"
            text, _, path = first.partition(" @ $")
            field = path.lstrip(".") or None
            raise ProtocolError(f"{kind}: {text}" + (f" (field '{field}')" if field else ""), field=field) from None


def _describe(exc: BaseException, tp: type | None) -> str:
    """The hooks' own messages ("expected an integer", "expected 0 <= n < ..."), cattrs' for the rest."""
    if isinstance(exc, (ValueError, TypeError)) and exc.args and type(exc.args[0]) is str and exc.args[0]:
        return exc.args[0]
    return cattrs.v.format_exception(exc, tp)


@functools.cache
def _codec(inbound: tuple[type, ...], unsupported: frozenset[str], max_json_depth: int,
           max_free_form_bytes: int) -> Codec[Any]:
    return Codec(inbound, unsupported, max_json_depth=max_json_depth, max_free_form_bytes=max_free_form_bytes)


#: What ``/ws/session`` accepts: the session's messages and the rooms' (protocol/rooms.py).
CLIENT_INBOUND: tuple[type, ...] = (*m.CLIENT_MESSAGES, *ROOM_CLIENT_MESSAGES)


def client_codec(limits: LimitsConfig) -> Codec[m.ClientMessage]:
    """The ``/ws/session`` codec for these limits (one per distinct setting, shared)."""
    return _codec(CLIENT_INBOUND, m.UNSUPPORTED_CLIENT_TYPES, limits.max_json_depth,
                  limits.max_free_form_bytes)


def node_codec(limits: LimitsConfig) -> Codec[m.NodeMessage]:
    """The ``/ws/node`` codec for these limits (one per distinct setting, shared)."""
    return _codec(m.NODE_MESSAGES, frozenset(), limits.max_json_depth, limits.max_free_form_bytes)


def decode_base64(text: str, field: str) -> bytes:
    """Strict base64 → bytes; the error names the field. pybase64 is SIMD-accelerated: a 200 ms pcm16 chunk is
    decoded far faster than with binascii (bench/README.md)."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{field} is not valid base64", field=field) from None


def base64_size(text: str, field: str) -> int:
    """Check strict base64 and return the decoded size: a 33 KB utterance is forwarded to its node as the client
    sent it, so the decoded bytes are only counted (decoding with pybase64 is cheaper than any pure check)."""
    return len(decode_base64(text, field))


def base64_decoded_size(text: str) -> int:
    """The decoded length of base64 already checked, from its length alone."""
    return len(text) // 4 * 3 - (len(text) - len(text.rstrip("=")))


def _plain(tp: Any) -> bool:
    """Whether values typed ``tp`` are JSON as they are (never an attrs instance to flatten)."""
    tp = getattr(tp, "__supertype__", tp)  # NewType
    origin = typing.get_origin(tp)
    return tp in (str, int, float, bool) or origin in (list, dict, Literal) or (
        isinstance(tp, type) and issubclass(tp, (str, int)))


@functools.cache
def _wire_plan(cls: type) -> tuple[tuple[str, bool], ...]:
    """(field name, whether its value may be an attrs instance to flatten): only fields not typed as a JSON
    scalar, list or dict are looked at per message."""
    return tuple((field.name, not _plain(_strip_optional(field.type)))
                 for field in attrs.fields(attrs.resolve_types(cls)))


def to_wire(message: Any) -> dict[str, Any]:
    """The message as a JSON-ready dict with its ``type``; None fields are omitted, as the original does."""
    data: dict[str, Any] = {"type": message.TYPE}
    cls: type = type(message)
    for name, maybe_attrs in _wire_plan(cls):
        value = getattr(message, name)
        if value is None:
            continue
        if maybe_attrs and hasattr(type(value), "__attrs_attrs__"):
            value = attrs.asdict(value)
        data[name] = value
    return data


def encode(message: Any) -> bytes:
    """Compact JSON text as UTF-8 bytes (non-ASCII not escaped), what a transport sends as a text frame as it is;
    raises EncodeError if the message cannot be JSON.
    orjson is far cheaper than json.dumps for a 33 KB job_assign (bench/README.md), and its parser refuses NaN,
    Infinity and lone surrogates, which the stdlib would let through to the nodes."""
    return encode_wire(to_wire(message))


def encode_wire(data: dict[str, Any]) -> bytes:
    """A ``to_wire`` dict, possibly amended, as JSON text in UTF-8; raises EncodeError (naming the message type) when
    it cannot be encoded (nesting deeper than orjson's limit, an integer beyond 64 bits, a non-JSON value). orjson
    refuses lone surrogates, so the bytes are always valid UTF-8."""
    try:
        return orjson.dumps(data)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise EncodeError(f"{data.get('type')!s:.40} message cannot be encoded as JSON: {exc}",
                          message_type=data.get("type")) from None


CLIENT_CODEC: Codec[m.ClientMessage] = Codec(CLIENT_INBOUND, m.UNSUPPORTED_CLIENT_TYPES)
NODE_CODEC: Codec[m.NodeMessage] = Codec(m.NODE_MESSAGES)
