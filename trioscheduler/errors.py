"""The root of every exception trioscheduler raises on purpose; ``except TrioschedulerError`` catches them all."""

from __future__ import annotations


class TrioschedulerError(Exception):
    """Base class: bad peer input (ProtocolError), bad configuration (ConfigError), a peer gone (TransportClosed),
    a simulated node's failure (SimNodeError)."""
