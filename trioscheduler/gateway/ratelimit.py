"""Per-tenant request rate: one token bucket per tenant. Pure: time comes in as an argument.

Guarantees: a tenant's bucket holds at most ``burst`` tokens and refills at ``rate`` tokens a second, so over any
interval of length t a tenant is granted at most ``burst + rate * t`` requests; one tenant's requests never take
another's tokens. At most ``max_tenants`` buckets are kept: beyond it the least recently used bucket is forgotten
(that tenant starts again from a full bucket), so memory stays bounded whatever tenant ids arrive.
"""

from __future__ import annotations

import collections


class TokenBuckets:
    __slots__ = ("_rate", "_burst", "_max_tenants", "_buckets")

    def __init__(self, rate: float, burst: float, max_tenants: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max_tenants = max_tenants
        #: tenant -> (tokens, when they were counted), least recently used first.
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, tenant: str, now: float) -> bool:
        """Spend one of ``tenant``'s tokens at ``now``; False (nothing spent) when its bucket is empty."""
        buckets = self._buckets
        held = buckets.get(tenant)
        if held is None:
            tokens = self._burst
        else:
            tokens, then = held
            tokens = min(self._burst, tokens + max(0.0, now - then) * self._rate)
            buckets.move_to_end(tenant)
        granted = tokens >= 1.0
        if granted:
            tokens -= 1.0
        buckets[tenant] = (tokens, now)
        while len(buckets) > self._max_tenants:
            buckets.popitem(last=False)
        return granted

    def retry_after(self, tenant: str, now: float) -> float:
        """Seconds until ``tenant`` has a token again (0 when it has one now)."""
        held = self._buckets.get(tenant)
        if held is None:
            return 0.0
        tokens, then = held
        tokens = min(self._burst, tokens + max(0.0, now - then) * self._rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate
