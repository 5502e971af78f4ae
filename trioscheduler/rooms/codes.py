"""The ``room_error.code`` values (docs/protocol.md "Rooms")."""

from __future__ import annotations

import enum


class RoomErrorCode(enum.StrEnum):
    #: No open room has this code (never created, expired, or its last member left).
    ROOM_NOT_FOUND = "ROOM_NOT_FOUND"
    #: The session is a member of a room already (one room per session; leave it first).
    ALREADY_IN_ROOM = "ALREADY_IN_ROOM"
    #: The session (or the member it names) is not a member of this room.
    NOT_IN_ROOM = "NOT_IN_ROOM"
    #: The room has ``rooms.max_members`` members.
    ROOM_FULL = "ROOM_FULL"
    #: ``rooms.max_rooms`` rooms are open.
    ROOM_LIMIT_REACHED = "ROOM_LIMIT_REACHED"
    #: The room owner task did not take the request within ``rooms.request_deadline_ms``; nothing changed.
    ROOMS_BUSY = "ROOMS_BUSY"
