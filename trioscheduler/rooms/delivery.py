"""How a room utterance's outcomes reach the listeners: in each speaker's utterance order for every listener,
through each listener's own bounded writer. Plain code run by whichever task calls it (the room owner, the
registry, a session); nothing here awaits.

- ``ListenerQueue`` is one membership's delivery. The room owner opens a slot (``expect``) for every utterance
  the member is a target of before any job of it exists; ``fill`` gives a slot its one message (the first; later
  ones are ignored) and releases, per speaker, every filled slot in utterance order up to the first empty one.
  A speaker holds at most ``max_held`` slots of one listener: one more gives up the earliest empty slot as
  ``missing_result{reason: "gap_timeout"}``. ``close`` (the member left) drops every slot: nothing more is
  delivered, and nothing is held.
- ``RoomUtterance`` is one fanned-out utterance of a speaker: one ``LanguageSink`` (the registry's sink of that
  language's job) per target language. Each language's one outcome (result, missing_result or error) fills the
  slot of every listener of that language. ``abandon`` (the speaker's session ended, its jobs cancelled) fills the
  slots still empty with ``missing_result{reason: "session_closed"}``, so no listener waits for it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from trioscheduler.protocol import messages as m
from trioscheduler.registry.requests import Outcome, Passthrough
from trioscheduler.wallclock import wall_ms

#: A slot not filled yet.
_EMPTY = None


class ListenerQueue:
    """One member's delivery of the other members' outcomes (see the module docstring)."""

    __slots__ = ("_deliver", "_max_held", "_slots", "_order", "closed")

    def __init__(self, deliver: Callable[[Any], bool], max_held: int) -> None:
        #: Sends one message to the member at once (its writer's bounded inbox); False when it cannot any more.
        self._deliver = deliver
        self._max_held = max_held
        #: speaker -> utterance_index -> its message (_EMPTY until filled), and the indices in order.
        self._slots: dict[str, dict[int, Any]] = {}
        self._order: dict[str, list[int]] = {}
        self.closed = False

    def held(self) -> int:
        """Slots open now, over all speakers."""
        return sum(len(order) for order in self._order.values())

    def expect(self, speaker: str, index: int) -> None:
        """Open the slot of ``speaker``'s utterance ``index``; the earliest empty one is given up past the bound."""
        if self.closed:
            return
        slots = self._slots.setdefault(speaker, {})
        order = self._order.setdefault(speaker, [])
        if index in slots:
            return
        if len(order) >= self._max_held:
            head = order[0]
            self._fill(speaker, head, _missing(speaker, head, "gap_timeout"))
            self.expect(speaker, index)  # the head is released (or the queue closed): one level deeper at most
            return
        slots[index] = _EMPTY
        bisect.insort(order, index)

    def fill(self, speaker: str, index: int, message: Any) -> None:
        """The slot's one message; ignored when the slot is filled, given up, or was never opened here."""
        if not self.closed:
            self._fill(speaker, index, message)

    def close(self) -> None:
        self.closed = True
        self._slots.clear()
        self._order.clear()

    def _fill(self, speaker: str, index: int, message: Any) -> None:
        slots = self._slots.get(speaker)
        if slots is None or slots.get(index, 0) is not _EMPTY:
            return  # no such slot (0 is never a slot's value), or filled already
        slots[index] = message
        order = self._order[speaker]
        while order and slots[order[0]] is not _EMPTY:
            ready = slots.pop(order.pop(0))
            if not self._deliver(ready):
                self.close()
                return
        if not order:
            del self._slots[speaker], self._order[speaker]


class LanguageSink:
    """The registry's sink of one language's job of a room utterance. Never blocks."""

    __slots__ = ("_utterance", "listeners", "done", "_partials")

    def __init__(self, utterance: RoomUtterance, listeners: list[ListenerQueue],
                 partials: Callable[[Any], None] | None) -> None:
        self._utterance = utterance
        self.listeners = listeners
        self.done = False
        #: Where this job's asr_partial messages go (the speaker's writer, for one language only), or None.
        self._partials = partials

    def send_nowait(self, item: Any) -> None:
        if type(item) is Outcome:
            self._utterance.settle(self, item.message)
        elif type(item) is Passthrough and self._partials is not None:
            self._partials(item)


class RoomUtterance:
    """One utterance of a speaker, fanned out to the room's listening languages."""

    __slots__ = ("speaker", "index", "trace_id", "sinks", "_remaining", "_on_done")

    def __init__(self, speaker: str, index: int, trace_id: str,
                 on_done: Callable[[RoomUtterance], None]) -> None:
        self.speaker = speaker
        self.index = index
        self.trace_id = trace_id
        self.sinks: list[LanguageSink] = []
        self._remaining = 0
        #: Called once, when every language has its outcome.
        self._on_done = on_done

    def add_language(self, listeners: list[ListenerQueue],
                     partials: Callable[[Any], None] | None = None) -> LanguageSink:
        sink = LanguageSink(self, listeners, partials)
        self.sinks.append(sink)
        self._remaining += 1
        return sink

    def settle(self, sink: LanguageSink, message: Any) -> None:
        """``sink``'s language has its one outcome: every listener of it gets ``message`` in its turn."""
        if sink.done:
            return
        sink.done = True
        for listener in sink.listeners:
            listener.fill(self.speaker, self.index, message)
        self._remaining -= 1
        if self._remaining == 0:
            self._on_done(self)

    def abandon(self) -> None:
        """The speaker's session ended: each language still without an outcome is reported missing."""
        for sink in self.sinks:
            if not sink.done:
                message = _missing(self.speaker, self.index, "session_closed", self.trace_id)
                self.settle(sink, message)


def _missing(speaker: str, index: int, reason: m.MissingResultReason,
             trace_id: str | None = None) -> m.MissingResult:
    return m.MissingResult(session_id=speaker, utterance_index=index, reason=reason, created_at_ms=wall_ms(),
                           trace_id=trace_id)
