"""Properties of node selection: choose_node, MemberList, eligible, rejection_reasons. Pure, no trio."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from fractions import Fraction

from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from trioscheduler.policy.selection import (
    P2C_DRAWS,
    MemberList,
    choose_node,
    eligible,
    has_room,
    rejection_reasons,
)

NODE_IDS = [f"n{i}" for i in range(8)]
MACHINE_IDS = NODE_IDS[:5]
SERVICES = ["asr", "nmt", "tts", "semantic"]


@dataclass
class Rec:
    node_id: str
    alive: bool = True
    in_flight: int = 0
    capacity: int = 4
    quarantined_until: float = 0.0
    ready: frozenset[str] = field(default_factory=lambda: frozenset(SERVICES))

    def serves(self, services: frozenset[str]) -> bool:
        return services <= self.ready


def load(node: Rec) -> Fraction:
    return Fraction(node.in_flight, node.capacity)


def members_of(ids: list[str]) -> MemberList:
    ml = MemberList()
    for node_id in ids:
        ml.add(node_id)
    return ml


class RecordingRand:
    """A seeded rand that remembers what it returned, so a test can replay choose_node's two picks."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self.values: list[float] = []

    def __call__(self) -> float:
        value = self._rng.random()
        self.values.append(value)
        return value


@st.composite
def records(draw: st.DrawFn, node_id: str) -> Rec:
    capacity = draw(st.integers(0, 4))
    return Rec(
        node_id=node_id,
        alive=draw(st.booleans()),
        in_flight=draw(st.integers(0, max(capacity, 0) + 1)),
        capacity=capacity,
        quarantined_until=draw(st.sampled_from([0.0, 5.0, 10.0, 20.0])),
        ready=frozenset(draw(st.sets(st.sampled_from(SERVICES)))),
    )


@st.composite
def scenarios(draw: st.DrawFn, min_members: int = 0) -> dict:
    """A pool (member order matters for P2C), a node table that may lack some members or hold non-members."""
    member_ids = draw(st.lists(st.sampled_from(NODE_IDS), unique=True, min_size=min_members,
                               max_size=len(NODE_IDS)))
    known = set(member_ids) - draw(st.sets(st.sampled_from(NODE_IDS), max_size=1))
    known |= draw(st.sets(st.sampled_from(NODE_IDS), max_size=2))
    # Most records are healthy so that every branch of choose_node is reached; members may lack a record.
    nodes: dict[str, Rec] = {}
    for node_id in sorted(known):
        if draw(st.integers(0, 2)) == 0:
            nodes[node_id] = draw(records(node_id))
        else:
            cap = draw(st.integers(1, 4))
            nodes[node_id] = Rec(node_id, in_flight=draw(st.integers(0, cap - 1)), capacity=cap)
    return {
        "members": member_ids,
        "nodes": nodes,
        "services": frozenset(draw(st.sets(st.sampled_from(SERVICES), max_size=3))),
        "excluded": frozenset(draw(st.sets(st.sampled_from(NODE_IDS), max_size=3))),
        "preferred": draw(st.none() | st.sampled_from(NODE_IDS)),
        "now": draw(st.sampled_from([0.0, 5.0, 10.0, 15.0, 30.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _eligible_members(sc: dict) -> list[str]:
    return [
        node_id for node_id in sc["members"]
        if node_id in sc["nodes"] and eligible(sc["nodes"][node_id], sc["services"], sc["excluded"], sc["now"])
    ]


def _choose(sc: dict, rand=None) -> str | None:
    return choose_node(
        members_of(sc["members"]), sc["nodes"], services=sc["services"], excluded=sc["excluded"],
        preferred=sc["preferred"], now=sc["now"], rand=rand or random.Random(sc["seed"]).random,
    )


# ------------------------------------------------------------------------------------------ eligible


@given(node=records("n0"), services=st.sets(st.sampled_from(SERVICES)).map(frozenset),
       excluded=st.sets(st.sampled_from(NODE_IDS[:2])), now=st.sampled_from([0.0, 5.0, 10.0, 30.0]))
@settings(max_examples=150, deadline=None)
def test_eligible_is_the_conjunction_of_its_conditions(node: Rec, services, excluded, now) -> None:
    expected = (
        node.alive and node.in_flight < node.capacity and node.quarantined_until <= now
        and node.node_id not in excluded and services <= node.ready
    )
    assert eligible(node, services, excluded, now) == expected


def test_quarantine_ends_exactly_at_quarantined_until() -> None:
    node = Rec("n0", quarantined_until=10.0)
    assert not eligible(node, frozenset(), frozenset(), 9.999)
    assert eligible(node, frozenset(), frozenset(), 10.0)


# ------------------------------------------------------------------------------------------ choose_node


@given(sc=scenarios())
@settings(max_examples=100, deadline=None)
def test_choose_node_returns_only_eligible_members(sc: dict) -> None:
    chosen = _choose(sc)
    if chosen is None:
        return
    assert chosen in sc["members"]
    node = sc["nodes"][chosen]
    assert node.alive, "dead node chosen"
    assert node.in_flight < node.capacity, "full node chosen"
    assert node.quarantined_until <= sc["now"], "quarantined node chosen"
    assert chosen not in sc["excluded"], "excluded node chosen"
    assert node.serves(sc["services"]), "node not serving the services chosen"


@given(sc=scenarios())
@settings(max_examples=100, deadline=None)
def test_choose_node_is_none_iff_no_member_is_eligible(sc: dict) -> None:
    chosen = _choose(sc)
    assert (chosen is None) == (not _eligible_members(sc))


@given(sc=scenarios())
@settings(max_examples=100, deadline=None)
def test_choose_node_returns_the_preferred_node_when_it_is_an_eligible_member(sc: dict) -> None:
    eligible_members = _eligible_members(sc)
    if not eligible_members:
        return
    sc = {**sc, "preferred": eligible_members[sc["seed"] % len(eligible_members)]}
    assert _choose(sc) == sc["preferred"]


@given(sc=scenarios())
@settings(max_examples=100, deadline=None)
def test_preferred_non_member_or_ineligible_is_not_forced(sc: dict) -> None:
    not_eligible = [n for n in NODE_IDS if n not in _eligible_members(sc)]
    if not not_eligible:
        return
    preferred = not_eligible[sc["seed"] % len(not_eligible)]
    assert _choose({**sc, "preferred": preferred}) != preferred


@given(sc=scenarios(min_members=2))
@settings(max_examples=100, deadline=None)
def test_p2c_picks_the_less_loaded_of_its_two_picks(sc: dict) -> None:
    sc = {**sc, "preferred": None}
    members = sc["members"]
    rand = RecordingRand(sc["seed"])
    chosen = _choose(sc, rand)
    assert len(rand.values) >= 2
    n = len(members)
    i = int(rand.values[0] * n)
    j = int(rand.values[1] * (n - 1))
    if j >= i:
        j += 1
    a, b = members[i], members[j]
    ok = [x for x in (a, b) if x in _eligible_members(sc)]
    if len(ok) == 2:
        assert chosen in (a, b)
        other = b if chosen == a else a
        assert load(sc["nodes"][chosen]) <= load(sc["nodes"][other])
    elif len(ok) == 1:
        assert chosen == ok[0]
    else:
        # Neither pick usable: further random pairs, then a full scan; None only if no member is eligible.
        candidates = _eligible_members(sc)
        if not candidates:
            assert chosen is None
        else:
            assert chosen in candidates


@given(sc=scenarios(), values=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=2, max_size=8))
@settings(max_examples=60, deadline=None)
def test_choose_node_accepts_any_rand_in_unit_interval(sc: dict, values: list[float]) -> None:
    it = itertools.cycle(values)  # choose_node may draw up to P2C_DRAWS pairs
    chosen = _choose(sc, lambda: next(it))
    assert (chosen is None) == (not _eligible_members(sc))
    assert chosen is None or chosen in _eligible_members(sc)


@given(sc=scenarios(), pick=st.integers(0, len(NODE_IDS) - 1))
@settings(max_examples=100, deadline=None)
def test_handover_takes_the_slot_it_holds_or_changes_nothing(sc: dict, pick: int) -> None:
    """``handover``: the next job of a turn takes over the slot the turn already holds on that node, so capacity
    is not checked; a dead, excluded, non-serving or non-member handover node is ignored."""
    handover = NODE_IDS[pick]
    chosen = choose_node(
        members_of(sc["members"]), sc["nodes"], services=sc["services"], excluded=sc["excluded"],
        preferred=sc["preferred"], handover=handover, now=sc["now"], rand=random.Random(sc["seed"]).random,
    )
    node = sc["nodes"].get(handover)
    usable = (handover in sc["members"] and node is not None and node.alive and handover not in sc["excluded"]
              and node.serves(sc["services"]))
    if usable:
        assert chosen == handover
    else:
        assert chosen == _choose(sc)


def test_two_members_p2c_prefers_lower_ratio_not_lower_count() -> None:
    nodes = {"a": Rec("a", in_flight=2, capacity=8), "b": Rec("b", in_flight=1, capacity=2)}
    for seed in range(20):
        chosen = choose_node(members_of(["a", "b"]), nodes, services=frozenset(), now=0.0,
                             rand=random.Random(seed).random)
        assert chosen == "a"  # 2/8 < 1/2


def test_empty_pool_and_missing_records() -> None:
    assert choose_node(MemberList(), {}, services=frozenset(), now=0.0, rand=random.random) is None
    assert choose_node(members_of(["ghost"]), {}, services=frozenset(), now=0.0, rand=random.random) is None
    assert choose_node(members_of(["ghost", "n1"]), {"n1": Rec("n1")}, services=frozenset(), now=0.0,
                       rand=random.random) == "n1"


# ------------------------------------------------------------------------------------------ rejection_reasons


@given(sc=scenarios(), limit=st.integers(1, 10))
@settings(max_examples=100, deadline=None)
def test_rejection_reasons_agree_with_eligible(sc: dict, limit: int) -> None:
    reasons = rejection_reasons(members_of(sc["members"]), sc["nodes"], services=sc["services"],
                                excluded=sc["excluded"], now=sc["now"], limit=limit)
    assert list(reasons) == sc["members"][:limit]
    for node_id, reason in reasons.items():
        node = sc["nodes"].get(node_id)
        is_eligible = node is not None and eligible(node, sc["services"], sc["excluded"], sc["now"])
        assert (reason == "eligible") == is_eligible
        if node is None or not node.alive:
            assert reason == "dead"
        elif not is_eligible:
            assert reason in {"already_tried", "quarantined", "services_not_ready"} or reason.startswith("full(")


# ------------------------------------------------------------------------------------------ MemberList


member_ops = st.lists(st.tuples(st.sampled_from(["add", "discard"]), st.sampled_from(NODE_IDS)), max_size=60)


@given(ops=member_ops)
@settings(max_examples=100, deadline=None)
def test_member_list_agrees_with_a_set(ops: list[tuple[str, str]]) -> None:
    ml = MemberList()
    model: set[str] = set()
    for op, node_id in ops:
        if op == "add":
            ml.add(node_id)
            model.add(node_id)
        else:
            ml.discard(node_id)
            model.discard(node_id)
        assert len(ml) == len(model)
        assert sorted(ml) == sorted(model)
        assert len(list(ml)) == len(set(ml))  # no duplicates
        assert sorted(ml[i] for i in range(len(ml))) == sorted(model)
        for other in NODE_IDS:
            assert (other in ml) == (other in model)


# ------------------------------------------------------------------------------------------ stateful


POOLS = ("en-zh", "de-fr")


class SelectionMachine(RuleBasedStateMachine):
    """Nodes join and leave pools, die, get quarantined; jobs select, reserve and release.

    The caller's contract modelled here: a selected node's in_flight is incremented (reservation) and every
    reservation is released exactly once (the bundle is consumed), whatever happens to the node meanwhile.
    """

    reservations = Bundle("reservations")

    @initialize(capacities=st.lists(st.integers(1, 3), min_size=len(MACHINE_IDS), max_size=len(MACHINE_IDS)),
                joins=st.lists(st.tuples(st.sampled_from(POOLS), st.sampled_from(MACHINE_IDS)), max_size=8))
    def setup(self, capacities: list[int], joins: list[tuple[str, str]]) -> None:
        self.nodes: dict[str, Rec] = {
            node_id: Rec(node_id, capacity=cap) for node_id, cap in zip(MACHINE_IDS, capacities)
        }
        self.pools = {name: MemberList() for name in POOLS}
        self.model_pools: dict[str, set[str]] = {name: set() for name in POOLS}
        for pool, node_id in joins:
            self.join(pool, node_id)
        self.outstanding: dict[int, str] = {}
        self.released: set[int] = set()
        self.next_token = 0
        self.now = 0.0

    @rule(node_id=st.sampled_from(MACHINE_IDS), capacity=st.integers(1, 3),
          ready=st.sets(st.sampled_from(SERVICES), min_size=2).map(frozenset))
    def register(self, node_id: str, capacity: int, ready: frozenset[str]) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            self.nodes[node_id] = Rec(node_id, capacity=capacity, ready=ready)
        else:  # reconnect: the record (and its outstanding reservations) survives
            node.alive = True
            node.ready = ready

    @rule(pool=st.sampled_from(POOLS), node_id=st.sampled_from(MACHINE_IDS))
    def join(self, pool: str, node_id: str) -> None:
        self.pools[pool].add(node_id)
        self.model_pools[pool].add(node_id)

    @rule(pool=st.sampled_from(POOLS), node_id=st.sampled_from(MACHINE_IDS))
    def leave(self, pool: str, node_id: str) -> None:
        self.pools[pool].discard(node_id)
        self.model_pools[pool].discard(node_id)

    @rule(node_id=st.sampled_from(MACHINE_IDS), remove_from_pools=st.booleans())
    def kill(self, node_id: str, remove_from_pools: bool) -> None:
        if node_id in self.nodes:
            self.nodes[node_id].alive = False
        if remove_from_pools:
            for name in POOLS:
                self.pools[name].discard(node_id)
                self.model_pools[name].discard(node_id)

    @rule(node_id=st.sampled_from(MACHINE_IDS), duration=st.sampled_from([0.5, 1.0, 5.0]))
    def quarantine(self, node_id: str, duration: float) -> None:
        if node_id in self.nodes:
            self.nodes[node_id].quarantined_until = self.now + duration

    @rule(dt=st.sampled_from([0.25, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(target=reservations, pool=st.sampled_from(POOLS),
          services=st.sets(st.sampled_from(SERVICES), max_size=2).map(frozenset),
          excluded=st.sets(st.sampled_from(MACHINE_IDS), max_size=2).map(frozenset),
          preferred=st.none() | st.sampled_from(MACHINE_IDS), seed=st.integers(0, 2**16), jobs=st.integers(1, 4))
    def select_and_reserve(self, pool, services, excluded, preferred, seed, jobs):
        """A burst of jobs for one pool: each selects a node and reserves a slot on it."""
        rand = random.Random(seed).random
        tokens = []
        for _ in range(jobs):
            chosen = choose_node(self.pools[pool], self.nodes, services=services, excluded=excluded,
                                 preferred=preferred, now=self.now, rand=rand)
            candidates = [
                n for n in self.model_pools[pool]
                if n in self.nodes and eligible(self.nodes[n], services, excluded, self.now)
            ]
            assert (chosen is None) == (not candidates)
            event("selected" if chosen is not None else "no node")
            if chosen is None:
                break
            assert chosen in candidates
            if preferred in candidates:
                assert chosen == preferred
            if len(candidates) > 1:
                event("selected among several")
            self.nodes[chosen].in_flight += 1
            token = self.next_token
            self.next_token += 1
            self.outstanding[token] = chosen
            tokens.append(token)
        if any(self.nodes[n].in_flight == self.nodes[n].capacity for n in self.nodes):
            event("some node full")
        return multiple(*tokens)

    @rule(token=consumes(reservations))
    def release(self, token: int) -> None:
        assert token not in self.released, "reservation released twice"
        event("released")
        node_id = self.outstanding.pop(token)
        self.released.add(token)
        self.nodes[node_id].in_flight -= 1

    @invariant()
    def in_flight_within_capacity(self) -> None:
        for node in getattr(self, "nodes", {}).values():
            assert 0 <= node.in_flight <= node.capacity, node

    @invariant()
    def in_flight_is_the_outstanding_reservations(self) -> None:
        if not hasattr(self, "nodes"):
            return
        for node_id, node in self.nodes.items():
            assert node.in_flight == sum(1 for n in self.outstanding.values() if n == node_id)

    @invariant()
    def pools_agree_with_model(self) -> None:
        if not hasattr(self, "pools"):
            return
        for name in POOLS:
            assert sorted(self.pools[name]) == sorted(self.model_pools[name])
            assert len(self.pools[name]) == len(self.model_pools[name])

    def teardown(self) -> None:
        if not hasattr(self, "nodes"):
            return
        for token in list(self.outstanding):
            self.release(token)
        assert all(node.in_flight == 0 for node in self.nodes.values())
        assert not (self.released & set(self.outstanding))


SelectionMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_selection_state_machine = SelectionMachine.TestCase


def test_full_scan_after_every_random_pair_failed_picks_the_least_loaded() -> None:
    nodes = {
        "full-1": Rec("full-1", True, 2, 2, 0.0, frozenset({"asr"})),
        "full-2": Rec("full-2", True, 4, 4, 0.0, frozenset({"asr"})),
        "half": Rec("half", True, 2, 4, 0.0, frozenset({"asr"})),
        "quarter": Rec("quarter", True, 1, 4, 0.0, frozenset({"asr"})),
    }
    draws: list[float] = []

    def rand() -> float:  # always the same pair: the two full nodes
        draws.append(0.0)
        return 0.0

    chosen = choose_node(members_of(["full-1", "full-2", "half", "quarter"]), nodes,  # type: ignore[arg-type]
                         services=frozenset({"asr"}), now=1.0, rand=rand)
    assert chosen == "quarter"
    assert len(draws) == 2 * P2C_DRAWS


# ------------------------------------------------------------------------------------------ readiness as a preference


def _members_with_room(sc: dict) -> list[str]:
    return [
        node_id for node_id in sc["members"]
        if node_id in sc["nodes"] and has_room(sc["nodes"][node_id], sc["excluded"], sc["now"])
    ]


def _choose_lenient(sc: dict) -> str | None:
    return choose_node(
        members_of(sc["members"]), sc["nodes"], services=sc["services"], excluded=sc["excluded"],
        preferred=sc["preferred"], require_ready=False, now=sc["now"], rand=random.Random(sc["seed"]).random,
    )


@given(sc=scenarios())
@settings(max_examples=300, deadline=None)
def test_a_ready_member_with_room_is_always_preferred_over_an_unready_one(sc: dict) -> None:
    """Without require_ready: a member whose services are ready is chosen whenever one has room; an unready
    member with room only when none does; None only when no member has room at all."""
    chosen = _choose_lenient(sc)
    ready = _eligible_members(sc)
    if ready:
        assert chosen in ready
        assert chosen == _choose(sc)  # the same choice the strict rule makes
    else:
        event("fell back to an unready member" if chosen is not None else "no member has room")
        assert (chosen is None) == (not _members_with_room(sc))
        assert chosen is None or chosen in _members_with_room(sc)


@given(sc=scenarios())
@settings(max_examples=200, deadline=None)
def test_require_ready_never_chooses_an_unready_member(sc: dict) -> None:
    chosen = _choose(sc)
    assert chosen is None or sc["nodes"][chosen].serves(sc["services"])


def test_an_unready_member_takes_the_job_only_when_the_ready_one_is_full() -> None:
    ready = Rec("ready", capacity=1)
    unready = Rec("unready", ready=frozenset({"asr", "nmt"}))
    nodes = {"ready": ready, "unready": unready}
    members = members_of(["unready", "ready"])
    needs = frozenset({"asr", "nmt", "tts"})
    for seed in range(50):
        assert choose_node(members, nodes, services=needs, require_ready=False, now=0.0,
                           rand=random.Random(seed).random) == "ready"
    ready.in_flight = 1
    assert choose_node(members, nodes, services=needs, require_ready=False, now=0.0,
                       rand=random.random) == "unready"
    assert choose_node(members, nodes, services=needs, now=0.0, rand=random.random) is None
