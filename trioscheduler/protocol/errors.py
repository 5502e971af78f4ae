"""Error codes on the wire, WebSocket close codes, and the protocol error type.

``ErrorCode`` is the one set of ``error.code`` values the scheduler sends (the original's set plus the codes of
this scheduler's bounds); ``CloseCode`` the close codes it closes a socket with. docs/protocol.md lists both.
"""

from __future__ import annotations

import enum
from typing import Any

from trioscheduler.errors import TrioschedulerError


class ErrorCode(enum.StrEnum):
    INVALID_MESSAGE = "INVALID_MESSAGE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    INVALID_SESSION = "INVALID_SESSION"
    UNSUPPORTED_FEATURE = "UNSUPPORTED_FEATURE"
    NO_AVAILABLE_NODE = "NO_AVAILABLE_NODE"
    NODE_UNAVAILABLE = "NODE_UNAVAILABLE"
    JOB_TIMEOUT = "JOB_TIMEOUT"
    SCHEDULER_BUSY = "SCHEDULER_BUSY"
    INVALID_CAPABILITY_SCHEMA = "INVALID_CAPABILITY_SCHEMA"
    PROCESSING_ERROR = "PROCESSING_ERROR"
    #: A node claimed more than ``limits.max_node_languages`` / ``max_node_pairs`` / ``max_node_services``.
    CAPABILITY_LIMIT_EXCEEDED = "CAPABILITY_LIMIT_EXCEEDED"
    #: The session's audio in waiting and running jobs would exceed ``limits.max_session_audio_bytes``.
    SESSION_AUDIO_LIMIT_EXCEEDED = "SESSION_AUDIO_LIMIT_EXCEEDED"
    #: The session has ``limits.max_session_outstanding`` utterances without an outcome already.
    SESSION_OUTSTANDING_LIMIT_EXCEEDED = "SESSION_OUTSTANDING_LIMIT_EXCEEDED"
    # issue 14: the gateway (POST /v1/speech/translate, WS /v1/stream)
    #: Over a rate: a gateway tenant over ``gateway.requests_per_second`` (beyond ``gateway.burst``): HTTP 429; a
    #: connection over ``limits.messages_per_second`` (beyond ``limits.messages_burst``): that message dropped.
    RATE_LIMITED = "RATE_LIMITED"
    #: An HTTP request without the API key (or admin token) it needs while authentication is on: HTTP 401.
    UNAUTHORIZED = "UNAUTHORIZED"
    #: An HTTP request whose API key (or admin token) is not accepted: HTTP 403.
    FORBIDDEN = "FORBIDDEN"
    #: ``gateway.max_concurrent_requests`` requests are running: HTTP 503.
    GATEWAY_BUSY = "GATEWAY_BUSY"
    #: A request body over ``gateway.max_body_bytes``: HTTP 413.
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    # -- operations (drain)
    #: The scheduler is draining: no new session here; what a session still owed at the drain deadline.
    SCHEDULER_DRAINING = "SCHEDULER_DRAINING"
    # -- identities, claims and tenants
    #: A node_register under a node_id that another credential holds (live, or gone with jobs not yet settled).
    NODE_ID_IN_USE = "NODE_ID_IN_USE"
    #: An implicit session (an utterance without session_init) under a session_id another socket holds or held
    #: within ``limits.session_id_reuse_seconds``.
    SESSION_ID_IN_USE = "SESSION_ID_IN_USE"
    #: The tenant already has ``limits.sessions_per_tenant`` sessions open.
    TENANT_SESSION_LIMIT_EXCEEDED = "TENANT_SESSION_LIMIT_EXCEEDED"


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455 §7.4, and private-use 4000-4999 for this scheduler's own reasons)."""

    NORMAL = 1000
    #: A frame the WebSocket layer refuses as a protocol error.
    PROTOCOL_ERROR = 1002
    #: A text frame that is not valid UTF-8.
    INVALID_PAYLOAD = 1007
    #: A frame over ``limits.max_message_bytes``.
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    #: Service restart: the scheduler is draining; the client reconnects (to another scheduler).
    SERVICE_RESTART = 1012
    #: No ``session_init`` / ``node_register`` (or ``utterance``) within ``limits.handshake_timeout_seconds``.
    HANDSHAKE_TIMEOUT = 4008
    #: The peer does not read what it is sent: its outbound queue reached ``limits.max_send_queue``.
    SLOW_CONSUMER = 4009
    # -- identities, claims and tenants
    #: The connection kept sending over ``limits.messages_per_second`` after RATE_LIMITED errors.
    RATE_LIMITED = 4029
    #: A node_register under a node_id another credential holds (after the NODE_ID_IN_USE error).
    NODE_ID_IN_USE = 4030


class ProtocolError(TrioschedulerError):
    """Bad input from a peer: answered with ``error{code, message, details.field}``; the connection stays open."""

    def __init__(self, message: str, *, field: str | None = None,
                 code: ErrorCode = ErrorCode.INVALID_MESSAGE) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code
        #: Set when the bad message was about one utterance, so the error carries its utterance_index.
        self.utterance_index: int | None = None

    def details(self) -> dict[str, str] | None:
        return {"field": self.field} if self.field is not None else None

    def to_message(self, **ids: Any) -> Any:
        """The ``error`` message for the peer: code, message, the field (top level and in details), ``ids``."""
        from trioscheduler.protocol.messages import ErrorMessage

        return ErrorMessage(code=self.code, message=self.message, details=self.details(), field=self.field, **ids)


class EncodeError(TrioschedulerError):
    """An outbound message that cannot be JSON (``codec.encode``): that message's failure, to be logged and
    dropped or answered with an error by its sender; the connection it was meant for is not at fault."""

    def __init__(self, message: str, *, message_type: str | None = None) -> None:
        super().__init__(message)
        self.message_type = message_type
