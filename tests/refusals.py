"""Properties for which accepting and refusing are both valid answers: the answer as a value, so that a test
asserts on a refusal outside any ``except`` block."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from trioscheduler.protocol.errors import ProtocolError

P = ParamSpec("P")
T = TypeVar("T")


def accepted_or_refused(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | ProtocolError:
    """What ``call`` returns, or the ProtocolError it raises (any other exception propagates)."""
    try:
        return call(*args, **kwargs)
    except ProtocolError as exc:
        return exc
