"""Room messages (issue 14 point 1), one frozen attrs class per ``type``, shaped as the original's web client sends
and reads them (docs/protocol.md "Rooms"). The codec registers ``ROOM_CLIENT_MESSAGES`` beside the session's own.

``sdp`` and ``candidate`` are free-form JSON (the web client sends the browser's objects; the original took any
value), bounded like every free-form field. The WebRTC messages go both ways with one shape: the client names the
member it writes ``to``; the relayed copy names the sender in ``to`` (the original turned ``to`` around, and its
web client reads it so).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from trioscheduler.protocol.messages import Id

# ---------------------------------------------------------------------------------------------- client → scheduler


@attrs.frozen
class RoomCreate:
    TYPE: ClassVar[str] = "room_create"
    client_ts: float | None = None
    display_name: Id | None = None
    preferred_lang: Id | None = None


@attrs.frozen
class RoomJoin:
    TYPE: ClassVar[str] = "room_join"
    room_code: Id
    display_name: Id | None = None
    preferred_lang: Id | None = None


@attrs.frozen
class RoomLeave:
    TYPE: ClassVar[str] = "room_leave"
    room_code: Id


@attrs.frozen
class RoomRawVoicePreference:
    TYPE: ClassVar[str] = "room_raw_voice_preference"
    room_code: Id
    target_session_id: Id
    receive_raw_voice: bool


@attrs.frozen
class WebRtcOffer:
    TYPE: ClassVar[str] = "webrtc_offer"
    room_code: Id
    to: Id
    sdp: Any


@attrs.frozen
class WebRtcAnswer:
    TYPE: ClassVar[str] = "webrtc_answer"
    room_code: Id
    to: Id
    sdp: Any


@attrs.frozen
class WebRtcIce:
    TYPE: ClassVar[str] = "webrtc_ice"
    room_code: Id
    to: Id
    candidate: Any


RoomClientMessage = (RoomCreate | RoomJoin | RoomLeave | RoomRawVoicePreference | WebRtcOffer | WebRtcAnswer
                     | WebRtcIce)
ROOM_CLIENT_MESSAGES: tuple[type[RoomClientMessage], ...] = (
    RoomCreate, RoomJoin, RoomLeave, RoomRawVoicePreference, WebRtcOffer, WebRtcAnswer, WebRtcIce,
)
WebRtcSignal = WebRtcOffer | WebRtcAnswer | WebRtcIce

# ---------------------------------------------------------------------------------------------- scheduler → client


@attrs.frozen
class RoomCreateAck:
    TYPE: ClassVar[str] = "room_create_ack"
    room_code: str
    room_id: str


@attrs.frozen
class RoomMembers:
    TYPE: ClassVar[str] = "room_members"
    room_code: str
    #: ``{participant_id, session_id, display_name?, preferred_lang?, raw_voice_preferences, joined_at}`` each,
    #: in the order they joined (``joined_at``: Unix milliseconds).
    members: list[Any]


@attrs.frozen
class RoomError:
    TYPE: ClassVar[str] = "room_error"
    #: A ``rooms.codes.RoomErrorCode``.
    code: str
    message: str


@attrs.frozen
class RoomExpired:
    TYPE: ClassVar[str] = "room_expired"
    room_code: str
    message: str
