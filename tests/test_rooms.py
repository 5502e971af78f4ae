"""Issue 14 point 1: rooms over real WebSockets (and MockClock for expiry)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

from tests.wire import (
    Daemon,
    Peer,
    b64,
    connect,
    memory_peer,
    memory_session,
    pcm,
    registered_node,
    result_for,
    session,
    start_daemon,
    until,
)
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.rooms.owner import open_rooms


@pytest.fixture
async def fast(nursery: trio.Nursery, make_config: Callable[..., Config]) -> Daemon:
    return await start_daemon(nursery, make_config(
        segmentation={"pause_ms": 300, "max_duration_ms": 1000, "max_buffer_bytes": 64000},
        scheduler={"pending_timeout_seconds": 0.5}, rooms={"max_members": 3}))


async def speak(client: Peer, sid: str, fill: int = 1) -> None:
    """One utterance: 100 ms of pcm16, then is_final."""
    await client.send(type="audio_chunk", session_id=sid, seq=0, is_final=True, payload=b64(pcm(100, fill=fill)))


async def create_room(client: Peer, **fields: Any) -> str:
    await client.send(type="room_create", client_ts=1, **fields)
    ack = await client.recv_type("room_create_ack")
    assert len(ack["room_code"]) == 6 and ack["room_code"].isdigit() and ack["room_id"]
    members = await client.recv_type("room_members")
    assert members["room_code"] == ack["room_code"]
    return ack["room_code"]  # type: ignore[no-any-return]


async def join_room(client: Peer, code: str, **fields: Any) -> list[dict[str, Any]]:
    await client.send(type="room_join", room_code=code, **fields)
    return (await client.recv_type("room_members"))["members"]  # type: ignore[no-any-return]


@asynccontextmanager
async def three_in_a_room(daemon: Daemon, langs: tuple[str | None, str | None, str | None] = (None, "en", "de"),
                          ) -> AsyncIterator[tuple[str, list[tuple[Peer, str]]]]:
    """Sessions A, B, C (pcm16, zh→en) in one room, with these preferred languages; everyone has seen the last
    room_members."""
    async with AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(session(daemon.session_url, audio_format="pcm16"))
                 for _ in range(3)]
        prefs = [{} if lang is None else {"preferred_lang": lang} for lang in langs]
        code = await create_room(peers[0][0], display_name="A", **prefs[0])
        await join_room(peers[1][0], code, display_name="B", **prefs[1])
        await peers[0][0].recv_type("room_members")
        await join_room(peers[2][0], code, display_name="C", **prefs[2])
        for peer, _ in peers[:2]:
            await peer.recv_type("room_members")
        yield code, peers


async def assigns(node: Peer, count: int) -> dict[str, dict[str, Any]]:
    """The next ``count`` job_assigns, by tgt_lang."""
    got = [await node.recv_type("job_assign") for _ in range(count)]
    by_lang = {assign["tgt_lang"]: assign for assign in got}
    assert len(by_lang) == count, got
    return by_lang


async def test_create_join_leave_broadcast_members(fast: Daemon) -> None:
    async with session(fast.session_url) as (a, sid_a), session(fast.session_url) as (b, sid_b):
        code = await create_room(a, display_name="Ann", preferred_lang="zh")
        members = await join_room(b, code, display_name="Bob", preferred_lang="EN ")
        seen_by_a = (await a.recv_type("room_members"))["members"]
        assert members == seen_by_a
        assert [(x["participant_id"], x["session_id"]) for x in members] == [(sid_a, sid_a), (sid_b, sid_b)]
        assert [(x["display_name"], x["preferred_lang"]) for x in members] == [("Ann", "zh"), ("Bob", "en")]
        assert all(x["raw_voice_preferences"] == {} and type(x["joined_at"]) is int for x in members)
        await b.send(type="room_leave", room_code=code)
        left = await a.recv_type("room_members")
        assert [x["session_id"] for x in left["members"]] == [sid_a]
        await b.nothing_for(0.2)


async def test_room_errors(make_config: Callable[..., Config], nursery: trio.Nursery) -> None:
    daemon = await start_daemon(nursery, make_config(rooms={"max_members": 2, "max_rooms": 1}))
    async with AsyncExitStack() as stack:
        (a, _), (b, _), (c, _) = [await stack.enter_async_context(session(daemon.session_url)) for _ in range(3)]
        await b.send(type="room_join", room_code="000000")
        assert (await b.recv_type("room_error"))["code"] == "ROOM_NOT_FOUND"
        await b.send(type="room_leave", room_code="000000")
        assert (await b.recv_type("room_error"))["code"] == "ROOM_NOT_FOUND"
        code = await create_room(a)
        await a.send(type="room_join", room_code=code)
        assert (await a.recv_type("room_error"))["code"] == "ALREADY_IN_ROOM"
        await a.send(type="room_create", client_ts=2)
        assert (await a.recv_type("room_error"))["code"] == "ALREADY_IN_ROOM"
        await c.send(type="room_leave", room_code=code)
        assert (await c.recv_type("room_error"))["code"] == "NOT_IN_ROOM"
        await c.send(type="webrtc_offer", room_code=code, to="x", sdp={"type": "offer", "sdp": ""})
        assert (await c.recv_type("room_error"))["code"] == "NOT_IN_ROOM"
        await c.send(type="room_create", client_ts=3)
        error = await c.recv_type("room_error")
        assert error["code"] == "ROOM_LIMIT_REACHED" and "rooms.max_rooms" in error["message"]
        await join_room(b, code)
        await c.send(type="room_join", room_code=code)
        error = await c.recv_type("room_error")
        assert error["code"] == "ROOM_FULL" and "rooms.max_members" in error["message"]
        await b.send(type="room_raw_voice_preference", room_code=code, target_session_id="s-NOBODY00",
                     receive_raw_voice=False)
        assert (await b.recv_type("room_error", skip=("room_members",)))["code"] == "NOT_IN_ROOM"


async def test_room_messages_need_a_session(fast: Daemon) -> None:
    async with connect(fast.session_url) as client:
        await client.send(type="room_create", client_ts=1)
        assert (await client.recv_type("error"))["code"] == "INVALID_SESSION"


async def test_three_clients_two_languages_speaker_excluded(fast: Daemon) -> None:
    async with registered_node(fast.node_url, languages=("zh", "en", "de")) as (node, _), \
            three_in_a_room(fast, langs=("zh", "en", "de")) as (_, [(a, sid_a), (b, _), (c, _)]):
        await speak(a, sid_a)
        jobs = await assigns(node, 2)
        assert set(jobs) == {"en", "de"}  # the speaker's own preferred_lang is nobody's target
        assert all(j["session_id"] == sid_a and j["utterance_index"] == 0 for j in jobs.values())
        assert jobs["en"]["turn_id"] != jobs["de"]["turn_id"]  # a node never merges two languages' audio
        for lang, job in jobs.items():
            await node.send(**result_for(job, text_translated=f"in {lang}"))
        got_b = await b.recv_type("translation_result")
        got_c = await c.recv_type("translation_result")
        assert (got_b["text_translated"], got_c["text_translated"]) == ("in en", "in de")
        assert got_b["session_id"] == got_c["session_id"] == sid_a and got_b["utterance_index"] == 0
        await a.nothing_for(0.3)  # never the speaker
        await b.nothing_for(0.01)
        await c.nothing_for(0.01)


async def test_listener_order_follows_the_speakers_utterance_order(fast: Daemon) -> None:
    async with registered_node(fast.node_url, languages=("zh", "en", "de")) as (node, _), \
            three_in_a_room(fast, langs=(None, "en", "en")) as (_, [(a, sid_a), (b, _), (c, _)]):
        await speak(a, sid_a, fill=1)
        first = (await assigns(node, 1))["en"]
        await speak(a, sid_a, fill=2)
        second = (await assigns(node, 1))["en"]
        await node.send(**result_for(second))
        await b.nothing_for(0.2)  # held: utterance 0 comes first
        await node.send(**result_for(first))
        for listener in (b, c):
            got = [await listener.recv_type("translation_result") for _ in range(2)]
            assert [r["utterance_index"] for r in got] == [0, 1]


async def test_a_failed_language_reaches_only_its_listeners(fast: Daemon) -> None:
    """Each language is its own job: no node for de → its listener gets the error, en's still gets its result."""
    async with registered_node(fast.node_url, languages=("zh", "en")) as (node, _), \
            three_in_a_room(fast) as (_, [(a, sid_a), (b, _), (c, _)]):
        await speak(a, sid_a)
        job = (await assigns(node, 1))["en"]
        await node.send(**result_for(job))
        assert (await b.recv_type("translation_result"))["utterance_index"] == 0
        error = await c.recv_type("error")
        assert error["code"] == "NO_AVAILABLE_NODE" and error["utterance_index"] == 0
        await a.nothing_for(0.2)


async def test_missing_result_fills_the_slot(fast: Daemon) -> None:
    """A failed utterance still takes its place: the later one is released after its error, not before."""
    async with registered_node(fast.node_url, languages=("zh", "en")) as (node, _), \
            three_in_a_room(fast, langs=(None, "en", None)) as (_, [(a, sid_a), (b, _), _c]):
        await speak(a, sid_a, fill=1)
        first = (await assigns(node, 1))["en"]
        await speak(a, sid_a, fill=2)
        second = (await assigns(node, 1))["en"]
        await node.send(**result_for(second))
        await node.send(**result_for(first, success=False, error={"code": "PROCESSING_ERROR", "message": "gpu"}))
        error = await b.recv_type("error")
        assert (error["code"], error["utterance_index"]) == ("PROCESSING_ERROR", 0)
        assert (await b.recv_type("translation_result"))["utterance_index"] == 1


async def test_listener_leaving_mid_utterance_gets_nothing_more(fast: Daemon) -> None:
    async with registered_node(fast.node_url, languages=("zh", "en", "de")) as (node, _), \
            three_in_a_room(fast) as (code, [(a, sid_a), (b, sid_b), (c, _)]):
        await speak(a, sid_a)
        jobs = await assigns(node, 2)
        await b.send(type="room_leave", room_code=code)
        members = (await c.recv_type("room_members"))["members"]
        assert sid_b not in {x["session_id"] for x in members}
        for job in jobs.values():
            await node.send(**result_for(job))
        assert (await c.recv_type("translation_result"))["utterance_index"] == 0
        await b.nothing_for(0.3)
        # It holds no slot: the next utterance has no en job at all.
        await speak(a, sid_a, fill=2)
        assert set(await assigns(node, 1)) == {"de"}
        stats = await fast.scheduler.stats()
        assert stats is not None and stats["rooms"]["members"] == 2


async def test_speaker_gone_mid_utterance_reports_missing_to_listeners(fast: Daemon) -> None:
    async with registered_node(fast.node_url, languages=("zh", "en")) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (b, _):
        async with session(fast.session_url, audio_format="pcm16") as (a, sid_a):
            code = await create_room(a)
            await join_room(b, code, preferred_lang="en")
            await a.recv_type("room_members")
            await speak(a, sid_a)
            await assigns(node, 1)
        missing = await b.recv_type("missing_result", skip=("room_members",))
        assert (missing["session_id"], missing["utterance_index"], missing["reason"]) == (sid_a, 0, "session_closed")
        cancel = await node.recv_type("job_cancel")
        assert cancel["reason"] == "session_closed"


async def test_session_close_waits_for_room_outcomes_then_leaves(fast: Daemon) -> None:
    async with registered_node(fast.node_url, languages=("zh", "en")) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (b, _), \
            session(fast.session_url, audio_format="pcm16") as (a, sid_a):
        code = await create_room(a)
        await join_room(b, code, preferred_lang="en")
        await a.recv_type("room_members")
        await speak(a, sid_a)
        job = (await assigns(node, 1))["en"]
        await a.send(type="session_close", session_id=sid_a, reason="bye")
        await a.nothing_for(0.2)  # the ack waits for the room's outcome
        await node.send(**result_for(job))
        assert (await b.recv_type("translation_result"))["utterance_index"] == 0
        await a.recv_type("session_close_ack")
        assert (await b.recv_type("room_members"))["members"][0]["session_id"] != sid_a


async def test_alone_in_a_room_the_speaker_hears_its_own_result(fast: Daemon) -> None:
    """No other member with a preferred language: one job for the session's own tgt_lang, result to the speaker."""
    async with registered_node(fast.node_url, languages=("zh", "en")) as (node, _), \
            session(fast.session_url, audio_format="pcm16") as (a, sid_a), \
            session(fast.session_url, audio_format="pcm16") as (b, _):
        code = await create_room(a, preferred_lang="de")
        await join_room(b, code)  # no preferred_lang: skipped
        await a.recv_type("room_members")
        await speak(a, sid_a)
        job = (await assigns(node, 1))["en"]
        await node.send(**result_for(job))
        assert (await a.recv_type("translation_result"))["utterance_index"] == 0
        await b.nothing_for(0.2)


async def test_signalling_is_relayed_only_where_raw_voice_is_accepted(fast: Daemon) -> None:
    async with three_in_a_room(fast) as (code, [(a, sid_a), (b, sid_b), (c, sid_c)]):
        await b.send(type="room_raw_voice_preference", room_code=code, target_session_id=sid_a,
                     receive_raw_voice=False)
        for peer in (a, b, c):
            members = (await peer.recv_type("room_members"))["members"]
            assert members[1]["raw_voice_preferences"] == {sid_a: False}
        offer = {"type": "offer", "sdp": "v=0\r\n"}
        await a.send(type="webrtc_offer", room_code=code, to=sid_b, sdp=offer)
        await a.send(type="webrtc_offer", room_code=code, to=sid_c, sdp=offer)
        relayed = await c.recv_type("webrtc_offer")
        assert relayed == {"type": "webrtc_offer", "room_code": code, "to": sid_a, "sdp": offer}
        candidate = {"candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
        await c.send(type="webrtc_ice", room_code=code, to=sid_a, candidate=candidate)
        assert await a.recv_type("webrtc_ice") == {"type": "webrtc_ice", "room_code": code, "to": sid_c,
                                                   "candidate": candidate}
        await c.send(type="webrtc_answer", room_code=code, to=sid_a, sdp={"type": "answer", "sdp": "v=0\r\n"})
        assert (await a.recv_type("webrtc_answer"))["to"] == sid_c
        await b.nothing_for(0.3)  # B refused A's raw voice: A's offer never reached it
        # B may still signal A: A accepts B's voice.
        await b.send(type="webrtc_offer", room_code=code, to=sid_a, sdp=offer)
        assert (await a.recv_type("webrtc_offer"))["to"] == sid_b


async def test_closing_a_session_leaves_its_room(fast: Daemon) -> None:
    async with session(fast.session_url) as (a, sid_a), session(fast.session_url) as (b, sid_b):
        code = await create_room(a)
        await join_room(b, code)
        await a.recv_type("room_members")
        await b.send(type="session_close", session_id=sid_b)
        await b.recv_type("session_close_ack")
        members = (await a.recv_type("room_members"))["members"]
        assert [x["session_id"] for x in members] == [sid_a]
        await a.send(type="session_close", session_id=sid_a)
        await a.recv_type("session_close_ack")
        await until(lambda: not fast.scheduler.room_owner.rooms)
        await b.send(type="session_init", src_lang="zh", tgt_lang="en")
        await b.recv_type("session_init_ack")
        await b.send(type="room_join", room_code=code)
        assert (await b.recv_type("room_error"))["code"] == "ROOM_NOT_FOUND"


async def test_room_expires_when_nobody_speaks(nursery: trio.Nursery, make_config: Callable[..., Config],
                                               autojump_clock: trio.testing.MockClock) -> None:
    daemon = await start_daemon(nursery, make_config(rooms={"idle_expiry_seconds": 600}))
    scheduler = daemon.scheduler
    a, sid_a = await memory_session(nursery, scheduler)
    b, _ = await memory_session(nursery, scheduler)
    code = await create_room(a)
    await join_room(b, code, preferred_lang="en")
    await a.recv_type("room_members")
    start = trio.current_time()
    await trio.sleep(500)
    await speak(a, sid_a)  # speaking keeps the room open another 600 s (no node: b hears of it as an error)
    assert (await b.recv_type("error", timeout=20))["code"] == "NO_AVAILABLE_NODE"
    await b.nothing_for(start + 1099 - trio.current_time())
    expired = await b.recv_type("room_expired", timeout=2)
    assert expired["room_code"] == code and "idle_expiry_seconds" in expired["message"]
    assert (await a.recv_type("room_expired", timeout=1))["room_code"] == code
    assert trio.current_time() - start == pytest.approx(1100, abs=0.1)
    assert not scheduler.room_owner.rooms and not scheduler.room_owner.room_of
    await a.send(type="room_join", room_code=code)
    assert (await a.recv_type("room_error"))["code"] == "ROOM_NOT_FOUND"


async def test_a_room_owner_that_does_not_answer_gives_rooms_busy(
        nursery: trio.Nursery, make_config: Callable[..., Config], autojump_clock: trio.testing.MockClock) -> None:
    """The owner's inbox is bounded (rooms.inbox_size): a request that cannot be queued within
    rooms.request_deadline_ms is refused with ROOMS_BUSY, and the session goes on."""
    scheduler = Scheduler(make_config(rooms={"inbox_size": 1, "request_deadline_ms": 50}))  # owner never runs
    client = memory_peer(nursery, scheduler, "session")
    await client.send(type="session_init", src_lang="zh", tgt_lang="en")
    sid = (await client.recv_type("session_init_ack"))["session_id"]
    await client.send(type="room_create", client_ts=1)  # queued: the inbox holds one
    await client.send(type="room_join", room_code="123456")
    started = trio.current_time()
    error = await client.recv_type("room_error")
    assert error["code"] == "ROOMS_BUSY" and "rooms.request_deadline_ms" in error["message"]
    assert trio.current_time() - started == pytest.approx(0.05, abs=0.01)
    await client.send(type="client_heartbeat", session_id=sid, timestamp=1)
    await client.recv_type("server_heartbeat")


async def test_an_unanswered_plan_opens_no_slot(nursery: trio.Nursery,
                                                autojump_clock: trio.testing.MockClock) -> None:
    owner, rooms = open_rooms(Config().rooms)
    answered, plan = await rooms.plan("s-A", 0, trio.current_time() + 1)  # the owner is not running yet
    assert (answered, plan) == (False, None)
    await nursery.start(owner.run)
    await until(lambda: owner.counters["plans_abandoned"] == 1)
