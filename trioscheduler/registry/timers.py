"""The registry's deadlines in one heap: the receive loop sleeps until the earliest.

An entry names its subject (a job id, a node's (node_id, conn_id), a node id) and never holds it, so whatever an
entry refers to is freed as soon as the registry lets go of it. An entry carries a token: the registry bumps the
subject's token when it re-arms or finishes it, and a popped entry whose token is stale is skipped.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any


class TimerHeap:
    """Deadlines ordered by time, then by the order they were scheduled."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, Any, int]] = []
        self._seq = itertools.count()

    def schedule(self, deadline: float, kind: str, subject: Any, token: int) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), kind, subject, token))

    def next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> tuple[str, Any, int] | None:
        """The earliest entry due at ``now`` (an entry scheduled while firing is seen too), or None."""
        heap = self._heap
        if heap and heap[0][0] <= now:
            _, _, kind, subject, token = heapq.heappop(heap)
            return kind, subject, token
        return None

    def __len__(self) -> int:
        return len(self._heap)
