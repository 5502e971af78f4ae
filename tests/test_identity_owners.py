"""The node_id ownership record (registry/ownership.py), alone: who holds an id, for how long after the node goes,
and that gone records are forgotten (bounded)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trioscheduler.registry.ownership import NodeOwners

KEY = ("s-1", 0, "en")


def test_a_live_id_belongs_to_its_credential_and_none_records_nothing() -> None:
    owners = NodeOwners(10.0)
    owners.registered("gpu-1", "a")
    owners.registered("gpu-2", None)
    assert owners.holder("gpu-1", 1e9, lambda key: False) == "a"  # live: however long
    assert owners.holder("gpu-2", 0.0, lambda key: False) is None
    assert len(owners) == 1


def test_a_gone_id_is_held_for_the_window_then_while_its_lost_jobs_are_unsettled() -> None:
    owners = NodeOwners(10.0)
    owners.registered("gpu-1", "a")
    owners.gone("gpu-1", 5.0, [KEY])
    unsettled = {KEY}
    assert owners.holder("gpu-1", 14.9, unsettled.__contains__) == "a"
    assert owners.holder("gpu-1", 15.0, unsettled.__contains__) == "a"  # past the window, the job still open
    unsettled.clear()
    assert owners.holder("gpu-1", 24.9, unsettled.__contains__) == "a"  # looked at again one window later
    assert owners.holder("gpu-1", 25.0, unsettled.__contains__) is None
    assert len(owners) == 0


def test_registering_again_makes_it_live_again() -> None:
    owners = NodeOwners(10.0)
    owners.registered("gpu-1", "a")
    owners.gone("gpu-1", 0.0, [])
    owners.registered("gpu-1", "a")
    assert owners.holder("gpu-1", 100.0, lambda key: False) == "a"


@given(events=st.lists(st.tuples(st.sampled_from(["register", "gone", "tick"]), st.integers(0, 5),
                                 st.sampled_from(["a", "b"])), max_size=60))
def test_records_are_those_live_or_gone_within_the_window(events: list[tuple[str, int, str]]) -> None:
    owners = NodeOwners(10.0)
    now = 0.0
    live: dict[str, str] = {}
    gone_at: dict[str, tuple[str, float]] = {}
    for kind, number, credential in events:
        node_id = f"n{number}"
        if kind == "tick":
            now += 3.0
        elif kind == "register":
            holder = owners.holder(node_id, now, lambda key: False)
            expected = live.get(node_id) or (gone_at[node_id][0] if node_id in gone_at
                                             and now - gone_at[node_id][1] < 10.0 else None)
            assert holder == expected
            if holder is None or holder == credential:
                owners.registered(node_id, credential)
                live[node_id] = credential
                gone_at.pop(node_id, None)
        elif node_id in live:
            owners.gone(node_id, now, [])
            gone_at[node_id] = (live.pop(node_id), now)
    owners.prune(now, lambda key: False)
    assert len(owners) == len(live) + sum(1 for _, at in gone_at.values() if now - at < 10.0)
