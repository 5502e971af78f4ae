"""The room owner task: sole owner of every room and membership. It answers requests from its bounded inbox, one
at a time, and never awaits a member: what a member is told goes into that member's writer inbox, which never
blocks (a member that does not read is closed by its own writer, never waited for).

Guarantees:

- every membership change (create, join, leave, a session's end, a raw-voice preference) sends ``room_members``
  to every member then in the room; the creator is its room's first member (as the original);
- a speaker's ``Plan`` opens, before its jobs exist, a slot in the ``ListenerQueue`` of every member listening in
  a language (docs/protocol.md "Rooms"), and counts as speaking: a room nobody spoke in for
  ``rooms.idle_expiry_seconds`` is closed and its members get ``room_expired``;
- WebRTC signalling reaches the member it names only when that member accepts the sender's raw voice, and best
  effort: a receiver whose writer inbox is full misses it (rather than being closed for another member's flood);
- a session's end is never lost (``RoomsClient.session_gone_nowait`` goes around a full inbox) and leaves its room.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs
import trio

from trioscheduler.config import RoomsConfig
from trioscheduler.ids import random_uuid
from trioscheduler.logs import emit
from trioscheduler.protocol import rooms as rm
from trioscheduler.protocol.messages import Id
from trioscheduler.registry.requests import Reply, ask_at
from trioscheduler.rooms.codes import RoomErrorCode
from trioscheduler.rooms.delivery import ListenerQueue
from trioscheduler.rooms.policy import (
    CODE_SPACE,
    Member,
    Port,
    Room,
    accepts_raw_voice,
    fanout_groups,
    listening_language,
    members_wire,
    new_room_code,
)
from trioscheduler.wallclock import wall_ms

log = logging.getLogger("trioscheduler.rooms")
INFO, WARNING = logging.INFO, logging.WARNING


# ------------------------------------------------------------------------------------------------ requests


RoomMessageT = TypeVar("RoomMessageT", bound=rm.RoomClientMessage)


@attrs.define(eq=False)
class MemberRequest(Generic[RoomMessageT]):
    """A room message from a session, with the port the owner answers that session through; the owner handles it
    by the message's class."""

    port: Port
    session_id: str
    message: RoomMessageT


@attrs.define(eq=False)
class Plan:
    """A member finalized utterance ``index``: the reply is target language -> the ListenerQueues of the members
    listening in it (their slots already open), empty when nobody else listens, None when not in a room."""

    session_id: str
    index: int
    reply: Reply


@attrs.define(eq=False)
class SessionGone:
    session_id: str


class RoomsClient:
    """The only way into the room owner: every call is a message on its bounded inbox, within a deadline."""

    def __init__(self, inbox: trio.MemorySendChannel[Any], notices: collections.deque[SessionGone]) -> None:
        self._inbox = inbox
        self._notices = notices

    async def post(self, request: MemberRequest[Any], deadline: float) -> bool:
        """Queue ``request``; False when the inbox had no room by ``deadline`` (the request is dropped)."""
        with trio.move_on_at(deadline):
            await self._inbox.send(request)
            return True
        return False

    async def plan(self, session_id: str, index: int, deadline: float) -> tuple[bool, Any]:
        """(answered, the Plan's reply); not answered by ``deadline``: the owner will not open any slot for it."""
        request = Plan(session_id, index, Reply())
        answered = await ask_at(self._inbox, request, request.reply, deadline)
        return answered, request.reply.value

    def session_gone_nowait(self, session_id: str) -> None:
        """The session left by ending: never blocks, never lost, safe in a ``finally``."""
        notice = SessionGone(session_id)
        try:
            self._inbox.send_nowait(notice)
        except trio.WouldBlock:
            self._notices.append(notice)  # the owner drains these on every loop; one per session at most
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the owner is gone: the scheduler is stopping


def open_rooms(config: RoomsConfig, *, randint: Callable[[int, int], int] | None = None) -> tuple[RoomOwner,
                                                                                                   RoomsClient]:
    """A room owner (run its ``run`` in a nursery) and the client sessions use."""
    send, receive = trio.open_memory_channel[Any](config.inbox_size)
    notices: collections.deque[SessionGone] = collections.deque()
    return RoomOwner(config, receive, notices, randint=randint), RoomsClient(send, notices)


# ------------------------------------------------------------------------------------------------ the task


class RoomOwner:
    def __init__(self, config: RoomsConfig, inbox: trio.MemoryReceiveChannel[Any],
                 notices: collections.deque[SessionGone], *,
                 randint: Callable[[int, int], int] | None = None) -> None:
        self._config = config
        self._inbox = inbox
        self._notices = notices
        self._randint = randint or secrets.SystemRandom().randint
        self.rooms: dict[str, Room] = {}
        #: session_id -> the room it is a member of (one at most).
        self.room_of: dict[str, Room] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        #: (deadline, seq, room code, the room's token): one entry per open room (and a closed room's, until it
        #: comes due and is skipped), so speaking costs no entry.
        self._timers: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        #: By the class of a request, or of a MemberRequest's message.
        self._handlers: dict[type, Callable[[Any, float], None]] = {
            rm.RoomCreate: self._on_create, rm.RoomJoin: self._on_join, rm.RoomLeave: self._on_leave,
            rm.RoomRawVoicePreference: self._on_raw_voice, rm.WebRtcOffer: self._on_signal,
            rm.WebRtcAnswer: self._on_signal, rm.WebRtcIce: self._on_signal, Plan: self._on_plan,
            SessionGone: self._on_session_gone,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        inbox, timers, notices = self._inbox, self._timers, self._notices
        while True:
            while notices:
                self.handle(notices.popleft(), trio.current_time())
            now = trio.current_time()
            while timers and timers[0][0] <= now:
                _, _, code, token = heapq.heappop(timers)
                self._expire(code, token, now)
            request = None
            if timers:
                with trio.move_on_at(timers[0][0]):
                    request = await inbox.receive()
            else:
                request = await inbox.receive()
            if request is not None:
                self.handle(request, trio.current_time())

    def handle(self, request: Any, now: float) -> None:
        """Apply one request; an exception here is a bug, logged, and never ends the owner."""
        try:
            kind = type(request.message) if type(request) is MemberRequest else type(request)
            self._handlers[kind](request, now)
        except Exception:
            self.counters["rooms_internal_errors"] += 1
            log.exception("room owner failed to handle %s", type(request).__name__)
            reply = getattr(request, "reply", None)
            if reply is not None and not reply.done:
                reply.set(None)

    def snapshot(self) -> dict[str, Any]:
        return {"rooms": len(self.rooms), "members": len(self.room_of), "timers": len(self._timers),
                "counters": dict(self.counters)}

    # ------------------------------------------------------------------------------------------ membership

    def _on_create(self, request: MemberRequest[rm.RoomCreate], now: float) -> None:
        port, session_id, message = request.port, request.session_id, request.message
        if session_id in self.room_of:
            self._refuse(port, RoomErrorCode.ALREADY_IN_ROOM,
                         f"session is in room {self.room_of[session_id].code} already; leave it first")
            return
        if len(self.rooms) >= min(self._config.max_rooms, CODE_SPACE):
            self._refuse(port, RoomErrorCode.ROOM_LIMIT_REACHED,
                         f"{len(self.rooms)} rooms are open (rooms.max_rooms)")
            return
        code = new_room_code(self._randint, self.rooms, len(self.rooms))
        room = self.rooms[code] = Room(code=code, room_id=random_uuid(), last_spoken=now,
                                       timer_token=next(self._seq))
        self._arm(room, now + self._config.idle_expiry_seconds)
        self.counters["rooms_created"] += 1
        emit(log, INFO, "room_created", room_code=code, room_id=room.room_id, session_id=session_id)
        port.deliver(rm.RoomCreateAck(room_code=code, room_id=room.room_id))
        self._admit(room, port, session_id, message.display_name, message.preferred_lang, now)

    def _on_join(self, request: MemberRequest[rm.RoomJoin], now: float) -> None:
        port, session_id, message = request.port, request.session_id, request.message
        room = self.rooms.get(message.room_code)
        current = self.room_of.get(session_id)
        if current is not None:
            self._refuse(port, RoomErrorCode.ALREADY_IN_ROOM,
                         f"session is in room {current.code} already; leave it first")
        elif room is None:
            self._refuse(port, RoomErrorCode.ROOM_NOT_FOUND, f"no room {message.room_code!r}")
        elif len(room.members) >= self._config.max_members:
            self._refuse(port, RoomErrorCode.ROOM_FULL,
                         f"room {room.code} has {len(room.members)} members (rooms.max_members)")
        else:
            self._admit(room, port, session_id, message.display_name, message.preferred_lang, now)

    def _admit(self, room: Room, port: Port, session_id: str, display_name: str | None,
               preferred_lang: str | None, now: float) -> None:
        listener = ListenerQueue(port.deliver, self._config.max_held_per_speaker)
        room.members[session_id] = Member(
            session_id=session_id, port=port, listener=listener, joined_at_ms=wall_ms(),
            display_name=display_name, preferred_lang=listening_language(preferred_lang))
        self.room_of[session_id] = room
        port.room_code = room.code
        self.counters["room_joins"] += 1
        emit(log, INFO, "room_joined", room_code=room.code, session_id=session_id, members=len(room.members),
             preferred_lang=preferred_lang)
        self._spoke(room, now)  # as the original: a join keeps the room alive
        self._broadcast_members(room)

    def _on_leave(self, request: MemberRequest[rm.RoomLeave], now: float) -> None:
        room = self.rooms.get(request.message.room_code)
        if room is None:
            self._refuse(request.port, RoomErrorCode.ROOM_NOT_FOUND, f"no room {request.message.room_code!r}")
        elif request.session_id not in room.members:
            self._refuse(request.port, RoomErrorCode.NOT_IN_ROOM, f"session is not in room {room.code}")
        else:
            self._remove(room, request.session_id, "room_leave")

    def _on_session_gone(self, request: SessionGone, now: float) -> None:
        room = self.room_of.get(request.session_id)
        if room is not None:
            self._remove(room, request.session_id, "session_ended")

    def _remove(self, room: Room, session_id: str, reason: str) -> None:
        """The member leaves: its deliveries stop, others forget its preferences, the rest hear of it; the last
        member's leaving closes the room."""
        member = room.members.pop(session_id)
        del self.room_of[session_id]
        member.listener.close()
        if member.port.room_code == room.code:
            member.port.room_code = None
        for other in room.members.values():
            other.raw_voice.pop(session_id, None)
        self.counters["room_leaves"] += 1
        emit(log, INFO, "room_left", room_code=room.code, session_id=session_id, reason=reason,
             members=len(room.members))
        if not room.members:
            del self.rooms[room.code]
            self.counters["rooms_closed_empty"] += 1
            emit(log, INFO, "room_closed", room_code=room.code, reason="empty")
            return
        self._broadcast_members(room)

    def _on_raw_voice(self, request: MemberRequest[rm.RoomRawVoicePreference], now: float) -> None:
        message = request.message
        member = self._member_of(request.port, request.session_id, message.room_code)
        if member is None:
            return
        room = self.room_of[request.session_id]
        if message.target_session_id not in room.members or message.target_session_id == request.session_id:
            self._refuse(request.port, RoomErrorCode.NOT_IN_ROOM,
                         f"{message.target_session_id!r} is not another member of room {room.code}")
            return
        member.raw_voice[message.target_session_id] = message.receive_raw_voice
        self._broadcast_members(room)

    def _on_signal(self, request: MemberRequest[rm.WebRtcSignal], now: float) -> None:
        message = request.message
        if self._member_of(request.port, request.session_id, message.room_code) is None:
            return
        room = self.room_of[request.session_id]
        receiver = room.members.get(message.to)
        if receiver is None or receiver.session_id == request.session_id:
            self.counters["signals_dropped_not_member"] += 1
            return
        if not accepts_raw_voice(receiver, request.session_id):
            self.counters["signals_dropped_raw_voice_refused"] += 1
            return
        # The receiver reads the sender in ``to`` (the original turned it around).
        if receiver.port.offer(attrs.evolve(message, to=Id(request.session_id))):
            self.counters[f"signals_relayed_{message.TYPE}"] += 1
        else:
            self.counters["signals_dropped_receiver_full"] += 1

    def _member_of(self, port: Port, session_id: str, room_code: str) -> Member | None:
        """The session's membership of ``room_code``, or None after telling it why not."""
        room = self.rooms.get(room_code)
        if room is None:
            self._refuse(port, RoomErrorCode.ROOM_NOT_FOUND, f"no room {room_code!r}")
            return None
        member = room.members.get(session_id)
        if member is None:
            self._refuse(port, RoomErrorCode.NOT_IN_ROOM, f"session is not in room {room.code}")
        return member

    # ------------------------------------------------------------------------------------------ speaking

    def _on_plan(self, request: Plan, now: float) -> None:
        if request.reply.abandoned:
            self.counters["plans_abandoned"] += 1
            return  # the session gave up waiting: no slot may wait for jobs it will not make
        room = self.room_of.get(request.session_id)
        if room is None:
            request.reply.set(None)
            return
        self._spoke(room, now)
        groups = fanout_groups(room, request.session_id)
        plan: dict[str, list[ListenerQueue]] = {}
        for language, members in groups.items():
            listeners = plan[language] = []
            for member in members:
                member.listener.expect(request.session_id, request.index)
                listeners.append(member.listener)
        self.counters["utterances_fanned_out" if plan else "utterances_without_listeners"] += 1
        request.reply.set(plan)

    def _spoke(self, room: Room, now: float) -> None:
        room.last_spoken = now  # its one timer entry re-arms itself from this when it comes due

    def _arm(self, room: Room, deadline: float) -> None:
        heapq.heappush(self._timers, (deadline, next(self._seq), room.code, room.timer_token))

    def _expire(self, code: str, token: int, now: float) -> None:
        """A room's timer came due: it expires if nobody spoke since, else waits again from the last speaking."""
        room = self.rooms.get(code)
        if room is None or room.timer_token != token:
            return  # closed (its code may be another room's now)
        idle = self._config.idle_expiry_seconds
        if now < room.last_spoken + idle:
            self._arm(room, room.last_spoken + idle)
            return
        del self.rooms[code]
        self.counters["rooms_expired"] += 1
        emit(log, INFO, "room_expired", room_code=code, members=len(room.members), idle_s=idle)
        notice = rm.RoomExpired(room_code=code, message=f"nobody spoke for {idle:g} s (rooms.idle_expiry_seconds)")
        for member in room.members.values():
            del self.room_of[member.session_id]
            member.listener.close()
            if member.port.room_code == code:
                member.port.room_code = None
            member.port.deliver(notice)

    # ------------------------------------------------------------------------------------------ messages

    def _broadcast_members(self, room: Room) -> None:
        message = rm.RoomMembers(room_code=room.code, members=members_wire(room))
        for member in room.members.values():
            member.port.deliver(message)

    def _refuse(self, port: Port, code: RoomErrorCode, why: str) -> None:
        self.counters[f"room_errors_{code}"] += 1
        port.deliver(rm.RoomError(code=code, message=why))
