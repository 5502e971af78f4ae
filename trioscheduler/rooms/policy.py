"""Room policy as pure code: the records the room owner keeps, room codes, fan-out groups, who hears whose raw
voice, and the member list on the wire. No trio, no I/O: time and randomness come in as arguments."""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any, Protocol

import attrs

from trioscheduler.policy.capability import normalise_language
from trioscheduler.rooms.delivery import ListenerQueue

#: Room codes are six digits, never starting with 0 (the original's range).
CODE_LOW, CODE_HIGH = 100_000, 999_999
CODE_SPACE = CODE_HIGH - CODE_LOW + 1
RANDOM_CODE_TRIES = 16


class Port(Protocol):
    """A session's side of its membership, as the room owner sees it: where the member's messages go, and the
    room it is in (kept by the owner, read by the session to know whether its utterances fan out)."""

    room_code: str | None

    def deliver(self, message: Any) -> bool: ...

    def offer(self, message: Any) -> bool: ...


@attrs.define(eq=False)
class Member:
    session_id: str
    port: Port
    #: This membership's ordered delivery of other members' outcomes; closed when the member leaves.
    listener: ListenerQueue
    joined_at_ms: int
    display_name: str | None = None
    #: The language this member listens in (normalised); None: it hears no translation of the others.
    preferred_lang: str | None = None
    #: Other members' session_id -> whether this member accepts their raw voice (absent: it does). Only current
    #: members are keys, so it holds at most ``rooms.max_members`` entries.
    raw_voice: dict[str, bool] = attrs.field(factory=dict)


@attrs.define(eq=False)
class Room:
    code: str
    room_id: str
    #: session_id -> member, in the order they joined.
    members: dict[str, Member] = attrs.field(factory=dict)
    #: When someone last spoke (or joined, or the room was made); it expires ``rooms.idle_expiry_seconds`` later.
    last_spoken: float = 0.0
    #: Unique to this room among all rooms ever made: its timer entries carry it, so an entry of a closed room
    #: whose code was taken again is skipped.
    timer_token: int = 0


def new_room_code(randint: Callable[[int, int], int], taken: Container[str], open_rooms: int) -> str:
    """A six-digit code no open room has: random, and after a few collisions the next free one from a random
    start. ``open_rooms`` must be below ``CODE_SPACE`` (``rooms.max_rooms`` is, by its validator)."""
    if open_rooms >= CODE_SPACE:
        raise ValueError("every room code is taken")
    for _ in range(RANDOM_CODE_TRIES):
        code = str(randint(CODE_LOW, CODE_HIGH))
        if code not in taken:
            return code
    start = randint(CODE_LOW, CODE_HIGH) - CODE_LOW
    for step in range(CODE_SPACE):
        code = str(CODE_LOW + (start + step) % CODE_SPACE)
        if code not in taken:
            return code
    raise ValueError("every room code is taken")


def listening_language(preferred_lang: str | None) -> str | None:
    """The target language a member's ``preferred_lang`` asks for; blank means none."""
    if preferred_lang is None or not preferred_lang.strip():
        return None
    return normalise_language(preferred_lang)


def fanout_groups(room: Room, speaker: str) -> dict[str, list[Member]]:
    """Target language -> the members who listen in it: every member but the speaker that has a preferred
    language, in joining order. Empty when no other member has one (the speaker's utterance is then its own)."""
    groups: dict[str, list[Member]] = {}
    for member in room.members.values():
        if member.session_id != speaker and member.preferred_lang is not None:
            groups.setdefault(member.preferred_lang, []).append(member)
    return groups


def accepts_raw_voice(receiver: Member, sender: str) -> bool:
    """Whether ``receiver`` takes ``sender``'s raw voice (and so its WebRTC signalling); yes unless it said no."""
    return receiver.raw_voice.get(sender, True)


def members_wire(room: Room) -> list[dict[str, Any]]:
    """The ``room_members.members`` list, fields as the original's web client reads them."""
    listed: list[dict[str, Any]] = []
    for member in room.members.values():
        entry: dict[str, Any] = {"participant_id": member.session_id, "session_id": member.session_id}
        if member.display_name is not None:
            entry["display_name"] = member.display_name
        if member.preferred_lang is not None:
            entry["preferred_lang"] = member.preferred_lang
        entry["raw_voice_preferences"] = dict(member.raw_voice)
        entry["joined_at"] = member.joined_at_ms
        listed.append(entry)
    return listed
