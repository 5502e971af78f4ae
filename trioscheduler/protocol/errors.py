"""Error codes on the wire (SCREAMING_SNAKE, the original's set plus SCHEDULER_BUSY) and the protocol error type."""

from __future__ import annotations

from typing import Any, Final

INVALID_MESSAGE: Final = "INVALID_MESSAGE"
INTERNAL_ERROR: Final = "INTERNAL_ERROR"
INVALID_SESSION: Final = "INVALID_SESSION"
UNSUPPORTED_FEATURE: Final = "UNSUPPORTED_FEATURE"
NO_AVAILABLE_NODE: Final = "NO_AVAILABLE_NODE"
NODE_UNAVAILABLE: Final = "NODE_UNAVAILABLE"
JOB_TIMEOUT: Final = "JOB_TIMEOUT"
SCHEDULER_BUSY: Final = "SCHEDULER_BUSY"
SESSION_CLOSED: Final = "SESSION_CLOSED"
INVALID_CAPABILITY_SCHEMA: Final = "INVALID_CAPABILITY_SCHEMA"
NODE_ID_CONFLICT: Final = "NODE_ID_CONFLICT"
PROCESSING_ERROR: Final = "PROCESSING_ERROR"


class ProtocolError(Exception):
    """Bad input from a peer: answered with ``error{code, message, details.field}``; the connection stays open."""

    def __init__(self, message: str, *, field: str | None = None, code: str = INVALID_MESSAGE) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code
        #: Set when the bad message was about one utterance, so the error carries its utterance_index.
        self.utterance_index: int | None = None

    def details(self) -> dict[str, str] | None:
        return {"field": self.field} if self.field else None

    def to_message(self, **ids: Any) -> Any:
        """The ``error`` message for the peer: code, message, the field (top level and in details), ``ids``."""
        from trioscheduler.protocol.messages import ErrorMessage

        return ErrorMessage(code=self.code, message=self.message, details=self.details(), field=self.field, **ids)
