"""A connection's message budget: a token bucket with a debt. Pure code; the caller passes the time.

A message that finds a whole token takes it and is accepted. One that does not is refused and still costs a token,
so the bucket goes into debt; once the debt exceeds the burst the connection is to be closed. A client that only
bursts now and then gets a few refusals and recovers; one that keeps sending faster than the rate is refused
throughout and closed within ``2 * burst / (sending rate - rate)`` seconds.
"""

from __future__ import annotations

#: What ``TokenBucket.take`` says of one message.
ACCEPT = 0
REFUSE = 1
CLOSE = 2

#: Rounding slack on a token: a client sending exactly at the rate computes ``gap * rate`` a hair under 1.
_ROUNDING = 1e-9


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; full at ``now``. Guarantees: ``take`` accepts at most
    ``burst + rate * t`` messages in any span of ``t`` seconds, and never says CLOSE before the debt (refused
    messages not yet paid back by the rate) exceeds ``burst``."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> int:
        """Charge one message arriving at ``now`` (not before the previous one): ACCEPT, REFUSE or CLOSE."""
        tokens = self._tokens + (now - self._stamp) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        self._stamp = now
        tokens -= 1.0
        self._tokens = tokens
        if tokens >= -_ROUNDING:
            return ACCEPT
        return CLOSE if tokens < -self._burst else REFUSE

    @property
    def tokens(self) -> float:
        """Tokens left as of the last message (negative: the debt)."""
        return self._tokens


def refusal_text(rate: float, burst: int) -> str:
    """The message of the ``error RATE_LIMITED`` a refused frame is answered with (client and node sockets alike)."""
    return f"more than {rate:g} messages per second (burst {burst}): message dropped; slow down"


def closing_reason(rate_key: str, rate: float, burst_key: str, burst: int, close_code: int) -> str:
    """Why a socket whose debt exceeded its burst is closed, naming the config keys of its budget."""
    return (f"kept sending over {rate_key} ({rate:g}) until its refused messages exceeded {burst_key} ({burst}); "
            f"closing with {close_code}")
