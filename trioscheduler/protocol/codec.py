"""JSON text frames in and out: one cattrs converter, strict about types, tolerant of unknown fields.

cattrs would coerce ``"7"`` to ``7`` and ``"false"`` to ``True``; on a wire protocol that hides client bugs, so the
primitive hooks below refuse values of the wrong JSON type and the error names the field at fault.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from trioscheduler.protocol import messages as m
from trioscheduler.protocol.errors import ProtocolError


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError("expected an integer")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("expected a number")
    return float(value)


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def make_wire_converter() -> cattrs.Converter:
    converter = make_converter()
    converter.register_structure_hook(str, _strict_str)
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(float, _strict_float)
    converter.register_structure_hook(bool, _strict_bool)
    return converter


class Codec:
    """Decodes a text frame into the message class for its ``type``; encodes outbound messages without nulls."""

    def __init__(self, inbound: tuple[type, ...], unsupported: frozenset[str] = frozenset()) -> None:
        self._converter = make_wire_converter()
        self._by_type: dict[str, type] = {cls.TYPE: cls for cls in inbound}  # type: ignore[attr-defined]
        self._unsupported = unsupported

    def decode(self, frame: str | bytes) -> Any:
        if isinstance(frame, bytes):
            raise ProtocolError("binary frames are not accepted; send JSON text frames")
        try:
            data = json.loads(frame)
        except ValueError as exc:
            raise ProtocolError(f"message is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ProtocolError("message must be a JSON object")
        kind = data.get("type")
        if not isinstance(kind, str):
            raise ProtocolError("message has no string field 'type'", field="type")
        cls = self._by_type.get(kind)
        if cls is None:
            if kind in self._unsupported:
                raise ProtocolError(f"message type '{kind}' is not supported here", field="type",
                                    code="UNSUPPORTED_FEATURE")
            raise ProtocolError(f"unknown message type '{kind}'", field="type")
        return self.structure(data, cls)

    def structure(self, data: dict[str, Any], cls: type) -> Any:
        try:
            return self._converter.structure(data, cls)
        except cattrs.BaseValidationError as exc:
            problems = cattrs.transform_error(exc)
            first = problems[0] if problems else "invalid message"
            text, _, path = first.partition(" @ $")
            field = path.lstrip(".") or None
            raise ProtocolError(f"{cls.TYPE}: {text}" + (f" (field '{field}')" if field else ""),  # type: ignore[attr-defined]
                                field=field) from None


def to_wire(message: Any) -> dict[str, Any]:
    """The message as a JSON-ready dict with its ``type``; None fields are omitted, as the original does."""
    data: dict[str, Any] = {"type": message.TYPE}
    for field in attrs.fields(type(message)):
        value = getattr(message, field.name)
        if value is None:
            continue
        if attrs.has(type(value)):
            value = attrs.asdict(value)
        data[field.name] = value
    return data


def encode(message: Any) -> str:
    return json.dumps(to_wire(message), separators=(",", ":"), ensure_ascii=False)


CLIENT_CODEC = Codec(m.CLIENT_MESSAGES, m.UNSUPPORTED_CLIENT_TYPES)
NODE_CODEC = Codec(m.NODE_MESSAGES)
