"""Which socket holds which session_id, which ids were let go recently, and how many sessions each tenant has open.

Owned by the Scheduler and used by the session sockets only, synchronously (no awaits), so a check and its claim
cannot be interleaved with another socket's. Bounded: ids held are the sessions open; ids remembered after their
session ended are at most ``limits.max_connections`` (the oldest are forgotten first, early if need be); tenants
counted are those with a session open.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable

from trioscheduler.config import LimitsConfig
from trioscheduler.protocol.errors import ErrorCode


class SessionDirectory:
    """Guarantees: a session_id is held by at most one socket; an id let go is not claimed by another socket within
    ``limits.session_id_reuse_seconds`` (unless more than ``limits.max_connections`` ids were let go since); a tenant
    never holds more than ``limits.sessions_per_tenant`` sessions."""

    __slots__ = ("_held", "_holders", "_max_remembered", "_per_tenant", "_released", "_reuse_seconds", "_tenants")

    def __init__(self, limits: LimitsConfig) -> None:
        self._reuse_seconds = limits.session_id_reuse_seconds
        self._max_remembered = limits.max_connections
        self._per_tenant = limits.sessions_per_tenant
        #: session_id -> the holder token of the socket that holds it.
        self._held: dict[str, int] = {}
        #: session_id -> (holder token, when it was let go), oldest first.
        self._released: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()
        self._tenants: collections.Counter[str] = collections.Counter()
        self._holders = itertools.count(1)

    def new_holder(self) -> int:
        """A token naming one socket, never given twice."""
        return next(self._holders)

    def unused_id(self, factory: Callable[[], str], now: float) -> str:
        """A fresh id from ``factory`` that nobody holds or held recently."""
        self._forget(now)
        while True:
            session_id = factory()
            if session_id not in self._held and session_id not in self._released:
                return session_id

    def claim(self, session_id: str, holder: int, tenant_id: str | None, now: float) -> ErrorCode | None:
        """Hold ``session_id`` for ``holder`` and count it for ``tenant_id``; or, changing nothing, the code of the
        refusal: SESSION_ID_IN_USE (another socket holds it or let it go within the reuse window),
        TENANT_SESSION_LIMIT_EXCEEDED."""
        self._forget(now)
        owner = self._held.get(session_id)
        if owner is not None and owner != holder:
            return ErrorCode.SESSION_ID_IN_USE
        released = self._released.get(session_id)
        if released is not None and released[0] != holder:
            return ErrorCode.SESSION_ID_IN_USE
        if tenant_id is not None and self._tenants[tenant_id] >= self._per_tenant:
            return ErrorCode.TENANT_SESSION_LIMIT_EXCEEDED
        if released is not None:
            del self._released[session_id]
        self._held[session_id] = holder
        if tenant_id is not None:
            self._tenants[tenant_id] += 1
        return None

    def release(self, session_id: str, holder: int, tenant_id: str | None, now: float) -> None:
        """The session ended: its id stays reserved for ``holder`` for the reuse window. Idempotent."""
        if self._held.get(session_id) != holder:
            return
        del self._held[session_id]
        if tenant_id is not None:
            left = self._tenants[tenant_id] - 1
            if left > 0:
                self._tenants[tenant_id] = left
            else:
                del self._tenants[tenant_id]
        self._released[session_id] = (holder, now)
        self._released.move_to_end(session_id)
        while len(self._released) > self._max_remembered:
            self._released.popitem(last=False)

    def tenant_sessions(self, tenant_id: str) -> int:
        return self._tenants.get(tenant_id, 0)

    def __len__(self) -> int:
        """Ids held or remembered."""
        return len(self._held) + len(self._released)

    def _forget(self, now: float) -> None:
        released, horizon = self._released, now - self._reuse_seconds
        while released:
            session_id, (_, at) = next(iter(released.items()))
            if at > horizon:
                return
            del released[session_id]
