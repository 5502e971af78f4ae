"""What ``/api/v1/sessions`` shows of the open sessions; read from their sockets, not from the registry.

Session state lives in each session's socket (server/session_socket.py), so these views read the Scheduler's live
session set in the HTTP request's own task: no registry round trip, and a list is cut at ``limit`` items.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from trioscheduler.server.session_socket import SessionConnection


def session_summary(connection: SessionConnection) -> dict[str, Any] | None:
    """One open session (None when the socket has no session open: before session_init, between sessions)."""
    state = connection.state
    if state is None:
        return None
    footprint = connection.footprint()
    return {
        "session_id": state.session_id,
        "trace_id": state.trace_id,
        "src_lang": state.src_lang,
        "tgt_lang": state.tgt_lang,
        "selection_key": state.selection_key,
        "audio_format": state.audio_format,
        "sample_rate": state.sample_rate,
        "next_index": state.next_index,
        "outcomes_pending": footprint["outcomes_owed"],
        "outcomes_held": footprint["outcomes_held"],
        "jobs_outstanding": footprint["jobs_outstanding"],
        "buffered_bytes": footprint["buffered_bytes"],
        "peer": connection.peer,
    }


def sessions_view(live: Iterable[SessionConnection], limit: int) -> dict[str, Any]:
    """``/api/v1/sessions``: the open sessions' count and at most ``limit`` of them."""
    sessions: list[dict[str, Any]] = []
    count = 0
    for connection in live:
        summary = session_summary(connection)
        if summary is None:
            continue
        count += 1
        if len(sessions) < limit:
            sessions.append(summary)
    return {"count": count, "listed": len(sessions), "sessions": sessions}


def find_session(live: Iterable[SessionConnection], session_id: str) -> SessionConnection | None:
    for connection in live:
        state = connection.state
        if state is not None and state.session_id == session_id:
            return connection
    return None
