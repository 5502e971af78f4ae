"""The submits a session reader handed to the registry and does not wait for.

The reader puts each finalized utterance in the registry's inbox and goes back to its socket at once; the
registry's answer (the job was created, or a duplicate) lands in the submit's ``Reply``. This queue holds each
submit with the time by which that answer must have come (``scheduler.selection_deadline_ms`` after the
utterance was finalized). Guarantees: ``expired`` hands back, oldest first, every submit whose deadline passed
without an answer, and marks it abandoned in the same step, so the registry will never create its job (the
reader gives it its SCHEDULER_BUSY outcome instead); a submit that was answered is never handed back.
"""

from __future__ import annotations

import collections

from trioscheduler.registry.requests import JobSpec, Reply

__all__ = ["UnansweredSubmits"]


class UnansweredSubmits:
    """Submits not yet answered, in the order they were made (their deadlines are in that order too: each is a
    fixed delay after its utterance was finalized, and a session finalizes its utterances in time order)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: collections.deque[tuple[float, Reply, JobSpec]] = collections.deque()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, deadline: float, reply: Reply, spec: JobSpec) -> None:
        self._entries.append((deadline, reply, spec))

    def next_deadline(self) -> float | None:
        """The deadline of the oldest submit still unanswered (answered ones are dropped on the way), or None."""
        entries = self._entries
        while entries:
            deadline, reply, _ = entries[0]
            if not reply.done:
                return deadline
            entries.popleft()
        return None

    def expired(self, now: float) -> list[JobSpec]:
        """The submits whose deadline is at or before ``now`` and that have no answer, now abandoned."""
        entries = self._entries
        late: list[JobSpec] = []
        while entries and (entries[0][1].done or entries[0][0] <= now):
            _, reply, spec = entries.popleft()
            if not reply.done:
                reply.abandoned = True
                late.append(spec)
        return late

    def abandon_all(self) -> None:
        """The reader stops (its socket or session is gone): nothing still unanswered becomes a job."""
        for _, reply, _ in self._entries:
            if not reply.done:
                reply.abandoned = True
        self._entries.clear()
