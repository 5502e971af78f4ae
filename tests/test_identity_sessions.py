"""Issue 10, point 2: an implicit session never adopts a session_id another socket holds or held recently; a
session's messages act on its own socket's session only. Over real WebSockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import Daemon, b64, connect, pcm, registered_node, result_for, session, start_daemon
from trioscheduler.config import Config, config_with
from trioscheduler.ids import new_session_id
from trioscheduler.session_directory import SessionDirectory


def utterance(index: int, session_id: str | None = None, **extra: Any) -> dict[str, Any]:
    message = {"type": "utterance", "utterance_index": index, "manual_cut": True, "src_lang": "zh",
               "tgt_lang": "en", "audio": b64(pcm(200)), "audio_format": "pcm16", "sample_rate": 16000, **extra}
    if session_id is not None:
        message["session_id"] = session_id
    return message


async def test_an_implicit_session_cannot_swallow_a_live_sessions_utterance(daemon: Daemon) -> None:
    """The attacker sends an utterance under the victim's session_id first: before the fix the registry took it
    as the victim's, and the victim's own utterance 0 was then dropped as a duplicate (no outcome, ever)."""
    async with registered_node(daemon.node_url, "n1") as (node, _), \
            session(daemon.session_url, audio_format="pcm16") as (victim, victim_id), \
            connect(daemon.session_url) as attacker:
        await attacker.send(**utterance(0, victim_id))
        refused = await attacker.recv_type("error")
        assert refused["code"] == "SESSION_ID_IN_USE" and refused["utterance_index"] == 0
        await victim.send(**utterance(0, victim_id))
        assign = await node.recv_type("job_assign")
        assert assign["session_id"] == victim_id
        await node.send(**result_for(assign))
        result = await victim.recv_type("translation_result")
        assert result["utterance_index"] == 0
        await attacker.nothing_for(0.2)


async def test_closing_an_implicit_session_under_a_live_id_cancels_nothing(daemon: Daemon) -> None:
    """Before the fix the attacker's close ended "its" session, the victim's, and cancelled the victim's job."""
    async with registered_node(daemon.node_url, "n1") as (node, _), \
            session(daemon.session_url, audio_format="pcm16") as (victim, victim_id):
        await victim.send(**utterance(0, victim_id))
        assign = await node.recv_type("job_assign")
        async with connect(daemon.session_url) as attacker:
            await attacker.send(**utterance(7, victim_id))
            await attacker.recv_type("error")
        with trio.move_on_after(0.5):
            message = await node.recv()
            assert message["type"] != "job_cancel", message
        await node.send(**result_for(assign))
        assert (await victim.recv_type("translation_result"))["utterance_index"] == 0


async def test_a_session_id_let_go_is_not_adopted_by_another_socket_within_the_window(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url, "n1") as (node, _):
        async with connect(daemon.session_url) as first:
            await first.send(**utterance(0, "gateway-1"))
            await node.send(**result_for(await node.recv_type("job_assign")))
            await first.recv_type("translation_result")
        async with connect(daemon.session_url) as second:
            await second.send(**utterance(0, "gateway-1"))
            assert (await second.recv_type("error"))["code"] == "SESSION_ID_IN_USE"


async def test_the_same_socket_may_reopen_its_own_implicit_session(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url, "n1") as (node, _), connect(daemon.session_url) as client:
        await client.send(**utterance(0, "gateway-2"))
        await node.send(**result_for(await node.recv_type("job_assign")))
        await client.recv_type("translation_result")
        await client.send(type="session_close", session_id="gateway-2")
        await client.recv_type("session_close_ack")
        await client.send(**utterance(1, "gateway-2"))
        assign = await node.recv_type("job_assign", skip=("job_cancel",))
        assert assign["session_id"] == "gateway-2"


async def test_the_id_is_free_again_after_the_reuse_window(nursery: trio.Nursery,
                                                           make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(limits={"session_id_reuse_seconds": 0.2},
                                                     scheduler={"pending_timeout_seconds": 0.05}))
    async with connect(daemon.session_url) as first:
        await first.send(**utterance(0, "gateway-3"))
        assert (await first.recv_type("error"))["code"] == "NO_AVAILABLE_NODE"  # no node: scheduled, not refused
    await trio.sleep(0.3)
    async with connect(daemon.session_url) as second:
        await second.send(**utterance(0, "gateway-3"))
        assert (await second.recv_type("error"))["code"] == "NO_AVAILABLE_NODE"


async def test_another_sessions_id_in_a_message_is_refused(daemon: Daemon) -> None:
    async with session(daemon.session_url) as (victim, victim_id), session(daemon.session_url) as (other, _):
        await other.send(type="audio_chunk", session_id=victim_id, seq=0, is_final=True, payload=b64(b"x"))
        refused = await other.recv_type("error")
        assert refused["code"] == "INVALID_SESSION"
        await victim.nothing_for(0.1)


# ------------------------------------------------------------------------------------------ the directory alone

LIMITS = config_with(Config(), limits={"session_id_reuse_seconds": 10.0, "sessions_per_tenant": 2,
                                       "max_connections": 3}).limits

OPS = st.lists(st.tuples(st.sampled_from(["claim", "release", "tick"]), st.integers(0, 3),
                         st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([None, "t1", "t2"])),
               max_size=60)


@given(ops=OPS)
def test_directory_invariants(ops: list[tuple[str, int, str, str | None]]) -> None:
    """One holder per id; an id let go goes to nobody else within the window (while remembered); a tenant never
    holds more than its share; counts match a model."""
    directory = SessionDirectory(LIMITS)
    holders = [directory.new_holder() for _ in range(4)]
    now = 0.0
    held: dict[str, tuple[int, str | None]] = {}
    for op, who, sid, tenant in ops:
        holder = holders[who]
        if op == "tick":
            now += 4.0
        elif op == "claim":
            if sid in held:
                if held[sid][0] != holder:
                    assert directory.claim(sid, holder, tenant, now) is not None
                continue
            if any(h == holder for h, _ in held.values()):
                continue  # a socket holds one session at a time
            refusal = directory.claim(sid, holder, tenant, now)
            if refusal is None:
                held[sid] = (holder, tenant)
            else:
                assert refusal in ("SESSION_ID_IN_USE", "TENANT_SESSION_LIMIT_EXCEEDED")
        else:
            entry = held.get(sid)
            if entry is not None and entry[0] == holder:
                directory.release(sid, holder, entry[1], now)
                del held[sid]
                for other in holders:
                    if other != holder:
                        assert directory.claim(sid, other, None, now) == "SESSION_ID_IN_USE"
        for tenant_id in ("t1", "t2"):
            count = sum(1 for _, t in held.values() if t == tenant_id)
            assert count <= 2 and directory.tenant_sessions(tenant_id) == count
    assert len(directory) <= len(held) + LIMITS.max_connections


def test_unused_id_skips_ids_held_or_remembered() -> None:
    directory = SessionDirectory(LIMITS)
    holder = directory.new_holder()
    assert directory.claim("s-1", holder, None, 0.0) is None
    directory.release("s-1", holder, None, 0.0)
    assert directory.claim("s-2", directory.new_holder(), None, 0.0) is None
    ids = iter(["s-1", "s-2", "s-3"])
    assert directory.unused_id(lambda: next(ids), 1.0) == "s-3"
    assert directory.unused_id(new_session_id, 1.0).startswith("s-")


@pytest.mark.parametrize("tenant", [None, "t1"])
def test_a_released_id_is_free_for_anyone_after_the_window(tenant: str | None) -> None:
    directory = SessionDirectory(LIMITS)
    first, second = directory.new_holder(), directory.new_holder()
    assert directory.claim("x", first, tenant, 0.0) is None
    directory.release("x", first, tenant, 1.0)
    assert directory.claim("x", second, tenant, 10.9) == "SESSION_ID_IN_USE"
    assert directory.claim("x", second, tenant, 11.0) is None
