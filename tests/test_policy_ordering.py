"""Properties of ResultOrderer: in-order release, each index at most once, bounded gap wait. Pure, no trio."""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from trioscheduler.policy.ordering import Added, Release, ResultOrderer

GAP = 30.0

op_strategy = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 9), st.sampled_from([0.0, 0.5, 5.0, 29.0])),
    st.tuples(st.just("ready")),
    st.tuples(st.just("expire"), st.sampled_from([0.0, 1.0, 10.0, 29.999, 30.0, 31.0, 100.0])),
)


@given(ops=st.lists(op_strategy, min_size=1, max_size=50), gap=st.sampled_from([0.5, 1.0, GAP]))
@settings(max_examples=300, deadline=None)
def test_release_order_uniqueness_and_gap_rule(ops, gap: float) -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=gap)
    now = 0.0
    released: list[Release[str]] = []
    # model: what is waiting (index -> (outcome, arrival)) and the next index to release
    pending: dict[int, tuple[str, float]] = {}
    next_index = 0
    first_outcome: dict[int, str] = {}
    serial = 0

    def take(batch: list[Release[str]], via: str) -> None:
        nonlocal next_index
        for rel in batch:
            assert rel.utterance_index == next_index, (
                f"index {rel.utterance_index} released out of order (expected {next_index})")
            if rel.outcome is None:
                assert via in ("expire", "drain"), "a hole was released by ready()"
                assert rel.utterance_index not in pending, "an index with an outcome was released as missing"
                if via == "expire":
                    assert pending, "a hole was released with nothing later waiting"
                    waited_since = min(arrived for _, arrived in pending.values())
                    assert now >= waited_since + gap, "a hole was released before gap_timeout"
                event("hole released via " + via)
            else:
                assert rel.utterance_index in pending
                assert pending[rel.utterance_index][0] == rel.outcome == first_outcome[rel.utterance_index]
                del pending[rel.utterance_index]
            released.append(rel)
            next_index += 1

    for op in ops:
        if op[0] == "add":
            _, index, dt = op
            now += dt
            serial += 1
            outcome = f"{index}#{serial}"
            got = orderer.add(index, outcome, now)
            if index < next_index:
                assert got is Added.LATE
                event("late")
            elif index in pending:
                assert got is Added.DUPLICATE
                event("duplicate")
            else:
                assert got is Added.ACCEPTED
                pending[index] = (outcome, now)
                first_outcome[index] = outcome
        elif op[0] == "ready":
            take(orderer.ready(), "ready")
            assert next_index not in pending, "ready() left a releasable index behind"
        else:
            now += op[1]
            take(orderer.expire(now), "expire")
            # expire releases everything whose wait is over
            assert next_index not in pending
            if pending:
                assert now < min(arrived for _, arrived in pending.values()) + gap
        assert orderer.next_index == next_index
        assert orderer.pending_count == len(pending)
        expected_deadline = min((a for _, a in pending.values()), default=None)
        assert orderer.gap_deadline() == (None if expected_deadline is None else expected_deadline + gap)

    highest = max(pending, default=-1)
    take(orderer.drain(), "drain")
    assert orderer.pending_count == 0 and orderer.gap_deadline() is None
    assert next_index >= highest + 1
    indices = [r.utterance_index for r in released]
    assert indices == list(range(len(indices))), "not strictly increasing without skips"
    # Nothing is released twice, whatever arrives afterwards.
    for index in indices:
        assert orderer.add(index, "again", now) is Added.LATE
    assert orderer.ready() == [] and orderer.expire(now + 10 * gap) == [] and orderer.drain() == []


@given(n=st.integers(1, 12), data=st.data())
@settings(max_examples=150, deadline=None)
def test_any_arrival_order_of_a_complete_set_releases_everything_in_order(n: int, data: st.DataObject) -> None:
    order = data.draw(st.permutations(range(n)))
    orderer: ResultOrderer[int] = ResultOrderer(gap_timeout=GAP)
    out: list[Release[int]] = []
    for t, index in enumerate(order):
        assert orderer.add(index, index * 10, float(t)) is Added.ACCEPTED
        out.extend(orderer.ready())
    assert [(r.utterance_index, r.outcome) for r in out] == [(i, i * 10) for i in range(n)]
    assert orderer.pending_count == 0 and orderer.drain() == []


def test_gap_deadline_is_gap_timeout_after_the_earliest_pending_arrival() -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=GAP)
    assert orderer.gap_deadline() is None
    orderer.add(3, "c", 10.0)
    orderer.add(2, "b", 12.0)
    assert orderer.gap_deadline() == 40.0
    assert orderer.expire(39.999) == []
    got = orderer.expire(40.0)
    assert [(r.utterance_index, r.outcome) for r in got] == [(0, None), (1, None), (2, "b"), (3, "c")]
    assert orderer.gap_deadline() is None


def test_the_gap_wait_restarts_from_the_next_later_arrival() -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=GAP)
    orderer.add(1, "b", 0.0)
    orderer.add(5, "f", 25.0)
    got = orderer.expire(30.0)
    assert [(r.utterance_index, r.outcome) for r in got] == [(0, None), (1, "b")]
    assert orderer.gap_deadline() == 55.0  # index 2's wait began when index 5 arrived
    assert orderer.expire(54.0) == []
    assert orderer.add(3, "d", 54.5) is Added.ACCEPTED
    got = orderer.expire(55.0)
    assert [(r.utterance_index, r.outcome) for r in got] == [(2, None), (3, "d"), (4, None), (5, "f")]


def test_duplicates_and_late_arrivals() -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=GAP)
    assert orderer.add(1, "b", 0.0) is Added.ACCEPTED
    assert orderer.add(1, "b2", 1.0) is Added.DUPLICATE
    assert orderer.add(0, "a", 2.0) is Added.ACCEPTED
    assert [(r.utterance_index, r.outcome) for r in orderer.ready()] == [(0, "a"), (1, "b")]
    assert orderer.add(0, "a2", 3.0) is Added.LATE
    assert orderer.add(1, "b3", 3.0) is Added.LATE
    assert orderer.add(-1, "neg", 3.0) is Added.LATE
    assert orderer.ready() == []
    # A hole declared missing is never filled afterwards.
    orderer.add(3, "d", 4.0)
    assert [(r.utterance_index, r.outcome) for r in orderer.expire(34.0)] == [(2, None), (3, "d")]
    assert orderer.add(2, "late c", 35.0) is Added.LATE
    assert orderer.drain() == []


def test_drain_releases_holes_in_order() -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=GAP)
    orderer.add(2, "c", 0.0)
    orderer.add(4, "e", 0.0)
    got = orderer.drain()
    assert [(r.utterance_index, r.outcome) for r in got] == [(0, None), (1, None), (2, "c"), (3, None), (4, "e")]
    assert orderer.next_index == 5


# ------------------------------------------------------------------------------------------ bounded hold

HOLD = 1.0

bounded_ops = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 9), st.sampled_from([0.0, 0.25, 0.5, 1.0, 5.0])),
    st.tuples(st.just("ready")),
    st.tuples(st.just("expire"), st.sampled_from([0.0, 0.5, 0.999, 1.0, 2.0, 10.0, 31.0])),
)


@given(ops=st.lists(bounded_ops, min_size=1, max_size=60), hold=st.sampled_from([0.0, 0.5, HOLD]),
       gap=st.sampled_from([0.5, 2.0, GAP]))
@settings(max_examples=400, deadline=None)
def test_bounded_hold_releases_each_index_once_and_holds_nothing_past_max_hold(ops, hold: float, gap: float) -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=gap, max_hold=hold)
    now = 0.0
    held: dict[int, tuple[str, float]] = {}  # model: accepted, not released yet
    released: dict[int, str | None] = {}
    serial = 0

    def take(batch: list[Release[str]], via: str) -> None:
        for rel in batch:
            assert rel.utterance_index not in released, f"index {rel.utterance_index} released twice"
            lower_owed = any(i < rel.utterance_index for i in held if i != rel.utterance_index) or any(
                i not in released for i in range(rel.utterance_index))
            higher_done = any(i > rel.utterance_index for i in released)
            assert rel.late == higher_done, "late flag does not say whether a higher index went first"
            if rel.outcome is None:
                assert via in ("expire", "drain") and rel.utterance_index not in held, "a hole released wrongly"
                assert all(i in released for i in range(rel.utterance_index)), "holes are released in order"
            else:
                assert held[rel.utterance_index][0] == rel.outcome, "not the first outcome of the index"
                assert rel.ahead == lower_owed, "ahead flag does not say whether a lower index is still owed"
                if rel.ahead:
                    assert via == "expire", "only a hold that is over releases ahead"
                    first_arrival = min(a for _, a in held.values())
                    assert now >= first_arrival + hold, "released ahead before any hold was over"
                del held[rel.utterance_index]
            released[rel.utterance_index] = rel.outcome
            event(f"released via {via}{' ahead' if rel.ahead else ''}{' late' if rel.late else ''}")

    for op in ops:
        if op[0] == "add":
            _, index, dt = op
            now += dt
            serial += 1
            got = orderer.add(index, f"{index}#{serial}", now)
            if index in released:
                assert got is Added.LATE
            elif index in held:
                assert got is Added.DUPLICATE
            else:
                assert got is Added.ACCEPTED
                held[index] = (f"{index}#{serial}", now)
        elif op[0] == "ready":
            take(orderer.ready(), "ready")
        else:
            now += op[1]
            take(orderer.expire(now), "expire")
            # Nothing waits longer than max_hold behind a missing index, and no gap wait is left overdue.
            for _, arrived in held.values():
                assert now < arrived + hold
            deadline = orderer.deadline()
            assert deadline is None or deadline > now
        if held:
            assert orderer.deadline() is not None
            assert orderer.deadline() <= min(a for _, a in held.values()) + hold
        assert orderer.pending_count == len(held)
        assert all(orderer.is_released(i) == (i in released) for i in range(12))

    take(orderer.drain(), "drain")
    assert not held and orderer.pending_count == 0 and orderer.ahead_count == 0 and orderer.deadline() is None
    assert sorted(released) == list(range(len(released))), "every index up to the highest released exactly once"


@given(n=st.integers(1, 9), data=st.data())
@settings(max_examples=200, deadline=None)
def test_bounded_is_in_order_when_outcomes_arrive_within_max_hold_of_each_other(n: int, data: st.DataObject) -> None:
    """All n outcomes arrive within a span shorter than max_hold, in any order, with expiries in between."""
    order = data.draw(st.permutations(range(n)))
    orderer: ResultOrderer[int] = ResultOrderer(gap_timeout=GAP, max_hold=HOLD)
    out: list[Release[int]] = []
    now = 0.0
    for index in order:
        now += data.draw(st.sampled_from([0.0, 0.05, 0.1]))
        if data.draw(st.booleans()):
            out.extend(orderer.expire(now))
        assert orderer.add(index, index * 10, now) is Added.ACCEPTED
        out.extend(orderer.ready())
    out.extend(orderer.expire(now + 100.0))
    released = [(r.utterance_index, r.outcome, r.ahead, r.late) for r in out]
    assert released == [(i, i * 10, False, False) for i in range(n)]


@given(n=st.integers(1, 9), gaps=st.lists(st.sampled_from([0.0, 0.5, 3.0, 100.0]), min_size=9, max_size=9))
@settings(max_examples=100, deadline=None)
def test_bounded_in_index_order_arrivals_are_released_at_once(n: int, gaps: list[float]) -> None:
    orderer: ResultOrderer[int] = ResultOrderer(gap_timeout=GAP, max_hold=HOLD)
    now = 0.0
    for index in range(n):
        now += gaps[index]
        assert orderer.expire(now) == []
        orderer.add(index, index, now)
        assert [(r.utterance_index, r.ahead, r.late) for r in orderer.ready()] == [(index, False, False)]


def test_bounded_releases_a_later_outcome_after_max_hold_and_the_earlier_one_late() -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=GAP, max_hold=HOLD)
    orderer.add(2, "c", 10.0)
    orderer.add(1, "b", 10.5)
    assert orderer.ready() == [] and orderer.deadline() == 11.0
    assert orderer.expire(10.999) == []
    # index 2's hold is over: it goes, and index 1 (held for the same missing index 0) with it, in order
    assert [(r.utterance_index, r.outcome, r.ahead) for r in orderer.expire(11.0)] == [(1, "b", True), (2, "c", True)]
    assert orderer.is_released(2) and not orderer.is_released(0) and orderer.next_index == 0
    assert orderer.add(2, "again", 12.0) is Added.LATE
    assert orderer.deadline() == 40.0  # index 0's gap wait runs from index 2's arrival
    orderer.add(0, "a", 20.0)  # the earlier outcome comes later: delivered, not dropped
    assert [(r.utterance_index, r.outcome, r.ahead, r.late) for r in orderer.ready()] == [(0, "a", False, True)]
    assert orderer.next_index == 3 and orderer.ahead_count == 0 and orderer.deadline() is None


def test_bounded_hole_never_answered_is_released_missing_after_the_gap_wait() -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=GAP, max_hold=HOLD)
    orderer.add(1, "b", 0.0)
    assert [(r.utterance_index, r.ahead) for r in orderer.expire(1.0)] == [(1, True)]
    assert orderer.expire(29.9) == []
    assert [(r.utterance_index, r.outcome, r.late) for r in orderer.expire(30.0)] == [(0, None, True)]
    assert orderer.next_index == 2 and orderer.deadline() is None


def test_strict_order_never_releases_ahead() -> None:
    orderer: ResultOrderer[str] = ResultOrderer(gap_timeout=GAP)
    orderer.add(1, "b", 0.0)
    assert orderer.hold_deadline() is None and orderer.deadline() == GAP
    assert orderer.expire(29.0) == []
    assert [(r.utterance_index, r.outcome) for r in orderer.expire(30.0)] == [(0, None), (1, "b")]
