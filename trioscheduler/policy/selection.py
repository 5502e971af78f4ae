"""Node choice for one job: session affinity first, then power-of-two-choices on in-flight/capacity.

A node whose services for the job's pipeline are not all ready is chosen only when no ready member has room, and
only if the caller does not ``require_ready`` (pool membership already means the node serves the language pair).

P2C is O(1) whatever the pool size (bench/selection_bench.py); a full scan runs only when both random picks are
ineligible, so the answer is None exactly when no member can take the job.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from typing import Protocol

#: Random pairs drawn before falling back to a full scan. At 50 % load both picks of one pair are unusable 3–4 %
#: of the time (bench/README.md, selection); after 4 draws that is ~1e-6, so the O(n) scan runs only when the pool is
#: (nearly) full, and the answer is still None exactly when no member can take the job.
P2C_DRAWS = 4


class Candidate(Protocol):
    """What selection reads of a node; the registry's node records satisfy it."""

    node_id: str
    alive: bool
    in_flight: int
    capacity: int
    quarantined_until: float

    def serves(self, services: frozenset[str]) -> bool: ...


class MemberList:
    """Pool members with O(1) add, remove, membership and random index (swap-remove keeps the list dense)."""

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, node_id: str) -> None:
        if node_id not in self._index:
            self._index[node_id] = len(self._items)
            self._items.append(node_id)

    def discard(self, node_id: str) -> None:
        pos = self._index.pop(node_id, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._index[last] = pos

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, pos: int) -> str:
        return self._items[pos]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def eligible(
    node: Candidate, services: frozenset[str], excluded: Container[str], now: float
) -> bool:
    return (
        node.alive
        and node.in_flight < node.capacity
        and node.quarantined_until <= now
        and node.node_id not in excluded
        and node.serves(services)
    )


def has_room(node: Candidate, excluded: Container[str], now: float) -> bool:
    """Everything ``eligible`` asks except readiness of the job's services."""
    return (
        node.alive
        and node.in_flight < node.capacity
        and node.quarantined_until <= now
        and node.node_id not in excluded
    )


def _less_loaded(a: Candidate, b: Candidate) -> Candidate:
    # a.in_flight / a.capacity <= b.in_flight / b.capacity, without division
    return a if a.in_flight * b.capacity <= b.in_flight * a.capacity else b


def choose_node(
    members: MemberList,
    nodes: dict[str, Candidate],
    *,
    services: frozenset[str],
    excluded: Container[str] = frozenset(),
    preferred: str | None = None,
    handover: str | None = None,
    require_ready: bool = True,
    now: float,
    rand: Callable[[], float],
) -> str | None:
    """Pick an eligible member: the ``handover`` node if the job can take over a slot it already holds there
    (the next job of a turn), else the preferred one if it is eligible, else the less loaded of two random picks
    (up to P2C_DRAWS pairs), else the least loaded of all (rare: the pool is nearly full).

    Without ``require_ready``, when no member is eligible, the least loaded member with room whose services are
    not ready is chosen: a ready member with room is always preferred over an unready one."""
    if handover is not None and handover in members:
        node = nodes.get(handover)
        if (node is not None and node.alive and handover not in excluded
                and (not require_ready or node.serves(services))):
            return handover
    chosen = _choose_ready(members, nodes, services, excluded, preferred, now, rand)
    if chosen is not None or require_ready:
        return chosen
    return _least_loaded(members, nodes, lambda node: has_room(node, excluded, now))


def _least_loaded(members: MemberList, nodes: dict[str, Candidate],
                  accept: Callable[[Candidate], bool]) -> str | None:
    """The least loaded member that ``accept`` takes (a full scan: the fallback when sampling found none)."""
    best: Candidate | None = None
    for node_id in members:
        node = nodes.get(node_id)
        if node is not None and accept(node):
            best = node if best is None else _less_loaded(node, best)
    return None if best is None else best.node_id


def _choose_ready(
    members: MemberList,
    nodes: dict[str, Candidate],
    services: frozenset[str],
    excluded: Container[str],
    preferred: str | None,
    now: float,
    rand: Callable[[], float],
) -> str | None:
    if preferred is not None and preferred in members:
        node = nodes.get(preferred)
        if node is not None and eligible(node, services, excluded, now):
            return preferred
    n = len(members)
    if n == 0:
        return None
    if n == 1:
        node = nodes.get(members[0])
        return members[0] if node is not None and eligible(node, services, excluded, now) else None
    for _ in range(P2C_DRAWS):
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        first, second = nodes.get(members[i]), nodes.get(members[j])
        ok_first = first is not None and eligible(first, services, excluded, now)
        ok_second = second is not None and eligible(second, services, excluded, now)
        if ok_first and ok_second:
            return _less_loaded(first, second).node_id  # type: ignore[arg-type]
        if ok_first:
            return first.node_id  # type: ignore[union-attr]
        if ok_second:
            return second.node_id  # type: ignore[union-attr]
    return _least_loaded(members, nodes, lambda node: eligible(node, services, excluded, now))


def rejection_reasons(
    members: MemberList,
    nodes: dict[str, Candidate],
    *,
    services: frozenset[str],
    excluded: Container[str] = frozenset(),
    require_ready: bool = True,
    now: float,
    limit: int = 20,
) -> dict[str, str]:
    """Why each member was passed over: what a missed deadline logs, so operators see the candidates."""
    reasons: dict[str, str] = {}
    for node_id in members:
        if len(reasons) >= limit:
            break
        node = nodes.get(node_id)
        if node is None or not node.alive:
            reasons[node_id] = "dead"
        elif node_id in excluded:
            reasons[node_id] = "already_tried"
        elif node.quarantined_until > now:
            reasons[node_id] = "quarantined"
        elif require_ready and not node.serves(services):
            reasons[node_id] = "services_not_ready"
        elif node.in_flight >= node.capacity:
            reasons[node_id] = f"full({node.in_flight}/{node.capacity})"
        else:
            reasons[node_id] = "eligible"
    return reasons


# ------------------------------------------------------------------------------------------ effective capacity


def capacity_after_timeout(effective: int, held: int) -> int:
    """A node's effective capacity once a job it held timed out: half of what it held when it did (it could not
    handle that many), never more than before, never below 1 (a slot to prove itself again)."""
    return max(1, min(effective, held) // 2)


def capacity_after_answer(effective: int, claimed: int) -> int:
    """A node's effective capacity once it answered a job: it regrows, doubling, up to what it claimed."""
    return min(claimed, effective * 2)
