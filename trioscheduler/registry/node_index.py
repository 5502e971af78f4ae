"""Which live nodes may take a job of each index key (a pool, or a direction ``src>tgt``).

Owned by the registry task like every other registry structure. Pure bookkeeping over node records: no I/O, no
logging; the registry counts and logs what the returned figures say.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator

from trioscheduler.policy.capability import NodeCapability
from trioscheduler.policy.selection import MemberList
from trioscheduler.registry.state import NodeRecord


def _is_pool(key: str) -> bool:
    return ">" not in key


class NodeIndex:
    """Members per index key. Guarantees: a node is a member of exactly the keys of its record's ``index_keys``;
    no key is held with no member."""

    __slots__ = ("_members",)

    def __init__(self) -> None:
        self._members: dict[str, MemberList] = {}

    def get(self, key: str) -> MemberList | None:
        return self._members.get(key)

    def size(self, key: str) -> int:
        members = self._members.get(key)
        return 0 if members is None else len(members)

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def items(self) -> ItemsView[str, MemberList]:
        return self._members.items()

    def pools(self) -> dict[str, list[str]]:
        """Pool name → sorted member ids (directions left out)."""
        return {key: sorted(members) for key, members in self._members.items() if _is_pool(key)}

    def reindex(self, node: NodeRecord, capability: NodeCapability) -> tuple[int, int]:
        """Move the node to ``capability``'s index keys, touching only the keys that differ.
        Returns (pools created, pools removed)."""
        keys = capability.index_keys()
        node.capability = capability
        removed = self.unindex(node, node.index_keys - keys)
        created = 0
        for key in keys - node.index_keys:
            members = self._members.get(key)
            if members is None:
                members = self._members[key] = MemberList()
                if _is_pool(key):
                    created += 1
            members.add(node.node_id)
        node.index_keys = keys
        return created, removed

    def unindex(self, node: NodeRecord, keys: frozenset[str]) -> int:
        """Take the node out of ``keys``; a key left empty is dropped. Returns the number of pools dropped."""
        removed = 0
        for key in keys:
            members = self._members.get(key)
            if members is None:
                continue
            members.discard(node.node_id)
            if not len(members):
                del self._members[key]
                if _is_pool(key):
                    removed += 1
        return removed
