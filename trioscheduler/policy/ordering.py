"""Per-session release of outcomes, each utterance_index exactly once: in index order, except that an outcome
waits for lower indices at most ``max_hold``.

The original released results in arrival order, could move its cursor backwards and dropped late indices
silently, so a client could get results out of order or never hear of one. Guarantees here (``now``, passed in,
never decreases):

- every index is released at most once, with its first outcome or as missing (``outcome`` None); an outcome for
  an index already released is refused (``LATE``), a second one for an index still held (``DUPLICATE``);
- an outcome is released as soon as every lower index is released; otherwise it is held at most ``max_hold`` after
  it arrived, then released ahead of the lower indices still missing (``ahead``), together with every outcome held
  for an index below it. A lower index stays owed: its outcome, when it comes, is released at once (``late``);
- an index still missing ``gap_timeout`` after the earliest outcome of a later index arrived (held or released
  ahead) is released as missing (the caller sends ``missing_result``);
- so, with ``gap_timeout >= max_hold``: when every outcome arrives less than ``max_hold`` after each later one,
  all are released in index order; ``max_hold`` infinite is strict order (nothing is ever released ahead).
"""

from __future__ import annotations

import enum
import math
from typing import Generic, NamedTuple, TypeVar

import attrs

T = TypeVar("T")


class Added(enum.Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # the index already has an outcome waiting
    LATE = "late"  # the index was already released (delivered or declared missing)


class Release(NamedTuple, Generic[T]):
    """One index released (a tuple: the writer makes one per outcome)."""

    utterance_index: int
    outcome: T | None  # None: the index is released as missing (gap timeout, or the caller's close)
    #: Released while a lower index is still owed (its hold was over).
    ahead: bool = False
    #: Released after a higher index was (it arrived after that one's hold was over).
    late: bool = False


@attrs.define
class ResultOrderer(Generic[T]):
    gap_timeout: float
    #: How long an outcome waits for lower indices; infinite: strict index order.
    max_hold: float = math.inf
    #: Every index below it is released.
    next_index: int = 0
    #: Held outcomes: index -> (outcome, arrived), in arrival order (``now`` never decreases).
    _pending: dict[int, tuple[T, float]] = attrs.field(factory=dict)
    #: Indices above ``next_index`` released ahead -> when their outcome arrived (they start gap waits).
    _ahead: dict[int, float] = attrs.field(factory=dict)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def ahead_count(self) -> int:
        return len(self._ahead)

    def is_released(self, index: int) -> bool:
        return index < self.next_index or index in self._ahead

    def add(self, index: int, outcome: T, now: float) -> Added:
        pending = self._pending
        if index < self.next_index:
            return Added.LATE
        if index in pending:
            return Added.DUPLICATE
        if self._ahead and index in self._ahead:
            return Added.LATE
        pending[index] = (outcome, now)
        return Added.ACCEPTED

    def ready(self) -> list[Release[T]]:
        """Everything releasable in order now (each held outcome whose lower indices are all released)."""
        released: list[Release[T]] = []
        pending, ahead = self._pending, self._ahead
        index = self.next_index
        if not ahead:  # nothing released ahead: the common case, kept as lean as strict order
            while index in pending:
                released.append(Release(index, pending.pop(index)[0]))
                index += 1
            self.next_index = index
            return released
        while True:
            entry = pending.pop(index, None)
            if entry is not None:
                released.append(Release(index, entry[0], late=bool(ahead)))
            elif ahead and index in ahead:
                del ahead[index]
            else:
                break
            index += 1
        self.next_index = index
        return released

    def hold_deadline(self) -> float | None:
        """When the earliest held outcome is released ahead; None in strict order or with nothing held."""
        if not self._pending or self.max_hold == math.inf:
            return None
        return next(iter(self._pending.values()))[1] + self.max_hold

    def gap_deadline(self) -> float | None:
        """When the index we wait for is given up: gap_timeout after the earliest outcome of a later index."""
        pending, ahead = self._pending, self._ahead
        if pending:
            since = next(iter(pending.values()))[1]
            if ahead:
                since = min(since, min(ahead.values()))
        elif ahead:
            since = min(ahead.values())
        else:
            return None
        return since + self.gap_timeout

    def deadline(self) -> float | None:
        """The next time ``expire`` has something to release."""
        gap, hold = self.gap_deadline(), self.hold_deadline()
        if hold is None:
            return gap
        return hold if gap is None else min(gap, hold)

    def expire(self, now: float) -> list[Release[T]]:
        """Release whatever waited long enough, in the order the waits ended: a missing index whose gap wait is
        over (and what it held back), held outcomes whose hold is over (ahead)."""
        released = self.ready()
        while True:
            gap, hold = self.gap_deadline(), self.hold_deadline()
            if gap is not None and gap <= now and (hold is None or gap <= hold):
                released.append(Release(self.next_index, None, late=bool(self._ahead)))
                self.next_index += 1
                released.extend(self.ready())
            elif hold is not None and hold <= now:
                released.extend(self._release_ahead())
            else:
                return released

    def drain(self) -> list[Release[T]]:
        """Session end: release everything held, the holes below it as missing, in order."""
        released = self.ready()
        while self._pending or self._ahead:
            released.append(Release(self.next_index, None, late=bool(self._ahead)))
            self.next_index += 1
            released.extend(self.ready())
        return released

    def _release_ahead(self) -> list[Release[T]]:
        """The earliest held outcome's hold is over: release it, and every outcome held below it, in index order."""
        pending, ahead = self._pending, self._ahead
        first = next(iter(pending))
        highest_ahead = max(ahead, default=-1)
        released: list[Release[T]] = []
        for index in sorted(i for i in pending if i <= first):
            outcome, arrived = pending.pop(index)
            released.append(Release(index, outcome, ahead=True, late=index < highest_ahead))
            ahead[index] = arrived
        return released
