"""Fixed-bucket latency histograms, owned by one task (the registry): no locks, one bisect per observation.

prometheus_client's Histogram takes a lock on every observe; the registry is the only writer, so a plain list of
counts is enough, and /metrics exports a copy of it taken inside the registry's snapshot.
"""

from __future__ import annotations

import bisect
import itertools
from typing import Any

#: Selection is a few microseconds at 1,000 nodes; the top buckets are there to show a regression, not the norm.
SELECTION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2)
#: Finalize → job_assign queued for the node: the scheduler's whole share of an utterance's latency.
DISPATCH_BUCKETS = (2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Finalize → the node's result accepted: the node's processing time included.
RESULT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LatencyHistogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        """Cumulative buckets as Prometheus wants them: [(upper bound, observations ≤ it)], "+Inf" last (a string,
        so /api/v1/stats stays valid JSON), with the bounds that hold p50 and p99."""
        cumulative = self._cumulative()
        return {"buckets": cumulative, "sum": self.total, "count": self.count,
                "p50_le": self._bound_holding(cumulative, 0.5), "p99_le": self._bound_holding(cumulative, 0.99)}

    def quantile_bound(self, q: float) -> float | str | None:
        """The smallest bucket bound that holds at least a fraction ``q`` of the observations ("+Inf" past the
        last bound, None before any)."""
        return self._bound_holding(self._cumulative(), q)

    def _cumulative(self) -> list[tuple[float | str, int]]:
        return list(zip((*self.bounds, "+Inf"), itertools.accumulate(self.counts), strict=True))

    def _bound_holding(self, cumulative: list[tuple[float | str, int]], q: float) -> float | str | None:
        if not self.count:
            return None
        need = q * self.count
        return next(bound for bound, running in cumulative if running >= need)
