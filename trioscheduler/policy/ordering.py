"""Per-session release of outcomes in utterance_index order, each index exactly once, with a bounded gap wait.

The original released results in arrival order, could move its cursor backwards and dropped late indices
silently, so a client could get results out of order or never hear of one. Here the cursor only moves forward;
an index still missing ``gap_timeout`` after a later index has its outcome is released as missing (the caller
sends ``missing_result``), and anything that arrives for an index already released is refused and counted, never
sent twice.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")


class Added(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # the index already has an outcome waiting
    LATE = "late"  # the index was already released (delivered or declared missing)


@attrs.frozen
class Release(Generic[T]):
    index: int
    outcome: T | None  # None: the index is released as missing (gap timeout)


@attrs.define
class ResultOrderer(Generic[T]):
    gap_timeout: float
    next_index: int = 0
    _pending: dict[int, tuple[T, float]] = attrs.field(factory=dict)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def add(self, index: int, outcome: T, now: float) -> Added:
        if index < self.next_index:
            return Added.LATE
        if index in self._pending:
            return Added.DUPLICATE
        self._pending[index] = (outcome, now)
        return Added.ACCEPTED

    def ready(self) -> list[Release[T]]:
        """Everything releasable now, in order."""
        released: list[Release[T]] = []
        while self.next_index in self._pending:
            outcome, _ = self._pending.pop(self.next_index)
            released.append(Release(self.next_index, outcome))
            self.next_index += 1
        return released

    def gap_deadline(self) -> float | None:
        """When the index we wait for is given up: gap_timeout after the first later outcome arrived."""
        if not self._pending:
            return None
        return min(arrived for _, arrived in self._pending.values()) + self.gap_timeout

    def expire(self, now: float) -> list[Release[T]]:
        """Release missing indices whose gap wait is over, and whatever they were holding back."""
        released: list[Release[T]] = []
        while True:
            released.extend(self.ready())
            deadline = self.gap_deadline()
            if deadline is None or now < deadline:
                return released
            released.append(Release(self.next_index, None))
            self.next_index += 1

    def drain(self) -> list[Release[T]]:
        """Session end: release everything held, holes as missing, in order."""
        released: list[Release[T]] = []
        while self._pending:
            released.extend(self.ready())
            if self._pending:
                released.append(Release(self.next_index, None))
                self.next_index += 1
        return released
