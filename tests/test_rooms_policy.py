"""Rooms' pure parts: per-listener ordered delivery, room codes, fan-out groups (hypothesis for the invariants)."""

from __future__ import annotations

import collections
import random
from typing import Any

import trio
from hypothesis import given
from hypothesis import strategies as st

from trioscheduler.config import Config, config_with
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.rooms import RoomCreate, RoomJoin, WebRtcIce
from trioscheduler.registry.requests import Outcome, Reply
from trioscheduler.rooms.delivery import ListenerQueue, RoomUtterance
from trioscheduler.rooms.owner import MemberRequest, Plan, open_rooms
from trioscheduler.rooms.policy import (
    CODE_HIGH,
    CODE_LOW,
    Member,
    Room,
    accepts_raw_voice,
    fanout_groups,
    listening_language,
    members_wire,
    new_room_code,
)
from trioscheduler.rooms.session_side import SessionPort
from trioscheduler.server.outcome_writer import OutcomeWriter
from trioscheduler.transport import memory_transport_pair


class Inbox:
    def __init__(self, accept: int = 10**9) -> None:
        self.got: list[Any] = []
        self.accept = accept

    def deliver(self, message: Any) -> bool:
        if len(self.got) >= self.accept:
            return False
        self.got.append(message)
        return True


def result(speaker: str, index: int) -> m.TranslationResult:
    return m.TranslationResult(session_id=speaker, utterance_index=index, job_id=f"j{index}", text_asr="a",
                               text_translated="t", tts_audio="", tts_format="pcm16", trace_id="t",
                               scheduler_sent_at_ms=0)


@given(plan=st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 30)), max_size=40, unique=True),
       seed=st.randoms(use_true_random=False), max_held=st.integers(1, 8))
def test_each_speakers_slots_are_delivered_once_in_order(plan: list[tuple[str, int]], seed: random.Random,
                                                        max_held: int) -> None:
    inbox = Inbox()
    queue = ListenerQueue(inbox.deliver, max_held)
    expected = sorted(plan, key=lambda slot: slot[1])  # opened in utterance order per speaker
    for speaker, index in expected:
        queue.expect(speaker, index)
        assert queue.held() <= 2 * max_held
    fills = list(expected)
    seed.shuffle(fills)
    for speaker, index in fills:
        queue.fill(speaker, index, result(speaker, index))
        queue.fill(speaker, index, result(speaker, index))  # a second outcome is ignored
    assert queue.held() == 0
    for speaker in "ab":
        indices = [msg.utterance_index for msg in inbox.got if msg.session_id == speaker]
        assert indices == sorted(i for s, i in plan if s == speaker)  # each once, in order (some given up)
    given_up = [msg for msg in inbox.got if type(msg) is m.MissingResult]
    assert all(msg.reason == "gap_timeout" for msg in given_up)
    if max_held >= len(plan):
        assert not given_up


def test_a_slot_waits_for_the_earlier_one_and_close_drops_everything() -> None:
    inbox = Inbox()
    queue = ListenerQueue(inbox.deliver, 8)
    for index in (0, 1, 2):
        queue.expect("a", index)
    queue.fill("a", 2, result("a", 2))
    queue.fill("a", 1, result("a", 1))
    assert inbox.got == []
    queue.fill("a", 0, result("a", 0))
    assert [msg.utterance_index for msg in inbox.got] == [0, 1, 2]
    queue.expect("a", 3)
    queue.close()
    queue.fill("a", 3, result("a", 3))
    queue.expect("a", 4)
    assert len(inbox.got) == 3 and queue.held() == 0


def test_past_the_bound_the_earliest_slot_is_given_up() -> None:
    inbox = Inbox()
    queue = ListenerQueue(inbox.deliver, 2)
    queue.expect("a", 0)
    queue.expect("a", 1)
    queue.fill("a", 1, result("a", 1))
    queue.expect("a", 2)  # 0 is given up, 1 follows
    assert [(type(msg).__name__, msg.utterance_index) for msg in inbox.got] == [("MissingResult", 0),
                                                                                 ("TranslationResult", 1)]
    queue.fill("a", 0, result("a", 0))  # too late: ignored
    assert len(inbox.got) == 2 and queue.held() == 1


def test_a_listener_that_cannot_take_more_is_closed() -> None:
    inbox = Inbox(accept=1)
    queue = ListenerQueue(inbox.deliver, 8)
    queue.expect("a", 0)
    queue.expect("a", 1)
    queue.fill("a", 1, result("a", 1))
    queue.fill("a", 0, result("a", 0))
    assert queue.closed and queue.held() == 0 and len(inbox.got) == 1


def test_room_utterance_settles_each_language_once_and_abandon_fills_the_rest() -> None:
    en, de = Inbox(), Inbox()
    en_queue, de_queue = ListenerQueue(en.deliver, 8), ListenerQueue(de.deliver, 8)
    en_queue.expect("a", 0)
    de_queue.expect("a", 0)
    done: list[int] = []
    utterance = RoomUtterance("a", 0, "trace", lambda u: done.append(u.index))
    en_sink = utterance.add_language([en_queue])
    utterance.add_language([de_queue])
    en_sink.send_nowait(Outcome(0, result("a", 0), "j"))
    en_sink.send_nowait(Outcome(0, result("a", 0), "j"))
    assert len(en.got) == 1 and not done
    utterance.abandon()
    assert done == [0]
    assert [(msg.reason, msg.session_id, msg.trace_id) for msg in de.got] == [("session_closed", "a", "trace")]
    utterance.abandon()
    assert done == [0] and len(de.got) == 1


@given(taken=st.sets(st.integers(CODE_LOW, CODE_HIGH).map(str), max_size=50), seed=st.integers(0, 2**32))
def test_room_codes_are_six_digits_and_free(taken: set[str], seed: int) -> None:
    code = new_room_code(random.Random(seed).randint, taken, len(taken))
    assert len(code) == 6 and code.isdigit() and code not in taken


def test_room_code_found_when_random_draws_keep_colliding() -> None:
    taken = {str(CODE_LOW + i) for i in range(10)}
    assert new_room_code(lambda low, high: low, taken, len(taken)) == str(CODE_LOW + 10)


def member(session_id: str, lang: str | None, **raw_voice: bool) -> Member:
    return Member(session_id=session_id, port=None, listener=ListenerQueue(Inbox().deliver, 1),  # type: ignore
                  joined_at_ms=1, preferred_lang=listening_language(lang), raw_voice=dict(raw_voice))


def test_fanout_groups_exclude_the_speaker_and_members_without_a_language() -> None:
    room = Room(code="123456", room_id="r")
    for entry in (member("a", "en"), member("b", " EN"), member("c", None), member("d", "de"), member("e", " ")):
        room.members[entry.session_id] = entry
    groups = fanout_groups(room, "a")
    assert {lang: [x.session_id for x in listeners] for lang, listeners in groups.items()} == {"en": ["b"],
                                                                                               "de": ["d"]}
    assert fanout_groups(Room(code="1", room_id="r", members={"a": room.members["a"]}), "a") == {}
    wire = members_wire(room)
    assert [x["session_id"] for x in wire] == ["a", "b", "c", "d", "e"]
    assert "preferred_lang" not in wire[2] and wire[1]["preferred_lang"] == "en"


def test_raw_voice_is_accepted_unless_refused() -> None:
    receiver = member("b", "en", a=False, c=True)
    assert not accepts_raw_voice(receiver, "a")
    assert accepts_raw_voice(receiver, "c") and accepts_raw_voice(receiver, "d")


async def test_relayed_signalling_is_dropped_not_fatal_when_the_receiver_is_behind(nursery: trio.Nursery) -> None:
    """Another member's flood of WebRTC signalling may fill a receiver's writer inbox: the excess is dropped and
    the receiver keeps its socket (a full inbox of ordered messages would close it as a slow consumer)."""
    config = config_with(Config(), limits={"max_send_queue": 2})
    server_side, _client_side = memory_transport_pair()
    writer = OutcomeWriter(server_side, None, config, collections.Counter(), nursery)  # type: ignore[arg-type]
    port = SessionPort(writer)
    ice = WebRtcIce(room_code="123456", to="s-A", candidate={"candidate": "c"})
    assert port.offer(ice) and port.offer(ice)
    assert not port.offer(ice)
    assert not writer.closed


class FakePort:
    def __init__(self) -> None:
        self.room_code: str | None = None
        self.got: list[Any] = []

    def deliver(self, message: Any) -> bool:
        self.got.append(message)
        return True

    def offer(self, message: Any) -> bool:
        return self.deliver(message)


async def test_speaking_costs_the_room_owner_no_timer_entry(autojump_clock: trio.testing.MockClock) -> None:
    """Each utterance keeps the room alive without a heap entry of its own: one entry per open room."""
    owner, _ = open_rooms(Config().rooms)
    speaker, listener = FakePort(), FakePort()
    owner.handle(MemberRequest(speaker, "s-A", RoomCreate()), trio.current_time())
    code = speaker.got[0].room_code
    owner.handle(MemberRequest(listener, "s-B", RoomJoin(room_code=code, preferred_lang="en")), trio.current_time())
    for index in range(100):
        plan = Plan("s-A", index, Reply())
        owner.handle(plan, trio.current_time())
        assert list(plan.reply.value) == ["en"]
        plan.reply.value["en"][0].fill("s-A", index, result("s-A", index))
    assert owner.snapshot()["timers"] == 1
