"""When a node that keeps failing is set aside: pure policy over a node's recent failure times."""

from __future__ import annotations

import collections


def failure_trips_quarantine(
    failures: collections.deque[float], now: float, *, window: float, threshold: int
) -> bool:
    """Record a failure at ``now``; True when ``threshold`` failures fall within the last ``window`` seconds.
    Failures older than the window are forgotten. The caller clears ``failures`` when it quarantines the node, so
    the next quarantine needs ``threshold`` fresh failures."""
    failures.append(now)
    while failures and failures[0] < now - window:
        failures.popleft()
    return len(failures) >= threshold
