"""Utterance groups: consecutive results of one session that belong together, and the text they give the next job.

Pure state: time comes in as arguments, group ids from an injected factory. Guarantees, whatever the sequence of
calls:

- a result joins the current group only if it comes within ``window`` of the group's last activity (its newest
  part, or a ``tts_started`` / ``tts_play_ended`` naming it) and the group has fewer than ``max_parts`` parts;
  otherwise it starts a new group with a new id;
- within a group ``part_index`` counts 0, 1, 2, ... so it is always below ``max_parts``;
- ``context_text`` is the newest at most ``max_context_chars`` characters of the current group's text, offered only
  while the group can still take a part (the next result would join it); what is kept never exceeds that bound.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from trioscheduler.ids import random_uuid

#: Between the texts of two parts in ``context_text``.
PART_SEPARATOR = "\n"


def new_group_id() -> str:
    return "g-" + random_uuid()


@attrs.frozen
class Placement:
    """Where one result went: its group and its index in it."""

    group_id: str
    part_index: int


class UtteranceGroups:
    """One session's current group (only the current one: an older group can take no part)."""

    __slots__ = ("_window", "_max_parts", "_max_chars", "_new_id", "group_id", "parts", "_last_at", "_context")

    def __init__(self, window_seconds: float, max_parts: int, max_context_chars: int,
                 new_id: Callable[[], str]) -> None:
        self._window = window_seconds
        self._max_parts = max_parts
        self._max_chars = max_context_chars
        self._new_id = new_id
        #: The current group's id (None before the first result).
        self.group_id: str | None = None
        #: Parts in the current group.
        self.parts = 0
        self._last_at = 0.0
        self._context = ""

    def is_open(self, now: float) -> bool:
        """Whether a result at ``now`` would join the current group."""
        return (self.group_id is not None and self.parts < self._max_parts
                and now - self._last_at <= self._window)

    def add(self, text: str, now: float) -> Placement:
        """Place a result whose recognised text is ``text``: in the current group if it is open, else in a new one."""
        if not self.is_open(now):
            self.group_id = self._new_id()
            self.parts = 0
            self._context = ""
        assert self.group_id is not None
        index = self.parts
        self.parts += 1
        self._last_at = now
        if self._max_chars:
            joined = f"{self._context}{PART_SEPARATOR}{text}" if self._context else text
            self._context = joined[-self._max_chars:]
        return Placement(self.group_id, index)

    def touch(self, group_id: str | None, now: float) -> bool:
        """TTS playback of ``group_id`` started or ended on the client: the group's window restarts now, if it is
        the current group. Returns whether it was."""
        if group_id is None or group_id != self.group_id:
            return False
        self._last_at = max(self._last_at, now)
        return True

    def context_text(self, now: float) -> str | None:
        """The current group's recent text, for the next job; None when the next result would start a new group."""
        if not self._context or not self.is_open(now):
            return None
        return self._context
