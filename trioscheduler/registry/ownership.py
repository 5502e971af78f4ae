"""Which credential a node_id belongs to. Owned by the registry task; pure bookkeeping, no I/O.

A node_id registered by an authenticated connection belongs to that connection's credential while the node is
live, and after it is gone for ``limits.node_id_reuse_seconds`` and, beyond that, as long as a job lost with it is
unsettled (a job lost with a connection may be sent again to the same node_id: it must not reach an impostor).
Nodes without a credential (authentication off) are not recorded: anyone may take their ids, as before.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

import attrs

JobKey = tuple[str, int, str]


@attrs.define(eq=False)
class _Owner:
    credential: str
    live: bool = True
    gone_at: float = 0.0
    #: Keys of the jobs the node held when its connection went.
    lost_jobs: tuple[JobKey, ...] = ()


class NodeOwners:
    """Guarantees: while ``holder`` names a credential for a node_id, the registry refuses that id to any other
    credential. Bounded: one record per live authenticated node, plus those gone within the reuse window or with
    jobs unsettled (pruned, oldest first, on every registration and loss)."""

    __slots__ = ("_gone", "_owners", "_reuse_seconds")

    def __init__(self, reuse_seconds: float) -> None:
        self._reuse_seconds = reuse_seconds
        self._owners: dict[str, _Owner] = {}
        #: Ids of gone owners, in the order they went.
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()

    def holder(self, node_id: str, now: float, unsettled: Callable[[JobKey], bool]) -> str | None:
        """The credential ``node_id`` belongs to now, or None when it is free."""
        self.prune(now, unsettled)
        owner = self._owners.get(node_id)
        return None if owner is None else owner.credential

    def registered(self, node_id: str, credential: str | None) -> None:
        """``credential`` registered ``node_id`` (its holder already checked); None records nothing."""
        if credential is None:
            return
        self._gone.pop(node_id, None)
        self._owners[node_id] = _Owner(credential)

    def gone(self, node_id: str, now: float, lost_jobs: Iterable[JobKey]) -> None:
        """The node's connection went, holding ``lost_jobs``."""
        owner = self._owners.get(node_id)
        if owner is None or not owner.live:
            return
        owner.live, owner.gone_at, owner.lost_jobs = False, now, tuple(lost_jobs)
        self._gone[node_id] = None

    def prune(self, now: float, unsettled: Callable[[JobKey], bool]) -> None:
        """Forget gone owners past the window whose lost jobs are all settled; one still waiting on a job is
        looked at again one window later."""
        horizon = now - self._reuse_seconds
        for _ in range(len(self._gone)):
            node_id = next(iter(self._gone))
            owner = self._owners[node_id]
            if owner.gone_at > horizon:
                return
            del self._gone[node_id]
            owner.lost_jobs = tuple(key for key in owner.lost_jobs if unsettled(key))
            if owner.lost_jobs:
                owner.gone_at = now
                self._gone[node_id] = None
            else:
                del self._owners[node_id]

    def __len__(self) -> int:
        return len(self._owners)
