"""Issue 14 point 2: utterance groups. The pure policy's invariants (hypothesis), then over real sockets: group_id
and part_index in translation_result, context_text in job_assign, tts_play_ended keeping a group open."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import Daemon, b64, memory_node, memory_session, pcm, registered_node, result_for, session, start_daemon
from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.groups import PART_SEPARATOR, UtteranceGroups

WINDOW = 2.0


def make_groups(max_parts: int = 8, max_chars: int = 800) -> UtteranceGroups:
    numbers = itertools.count()
    return UtteranceGroups(WINDOW, max_parts, max_chars, lambda: f"g{next(numbers)}")


actions = st.lists(st.one_of(
    st.tuples(st.just("add"), st.floats(0.0, 5.0), st.text(min_size=1, max_size=300)),  # the writer adds no empty text
    st.tuples(st.just("touch"), st.floats(0.0, 5.0), st.booleans()),
), max_size=60)


@given(steps=actions, max_parts=st.integers(1, 10), max_chars=st.integers(0, 500))
def test_group_invariants(steps: list[tuple[str, float, Any]], max_parts: int, max_chars: int) -> None:
    """Whatever the sequence: part_index counts 0, 1, ... per group and stays below max_parts; a result joins the
    previous group exactly when it comes within the window of the group's last activity and the group has room;
    context_text is the group's newest text, at most max_chars long, offered only while the group is open."""
    groups = make_groups(max_parts, max_chars)
    now = 0.0
    last_activity: float | None = None
    current: str | None = None
    parts = 0
    texts: list[str] = []
    seen_ids: set[str] = set()
    for kind, step, value in steps:
        now += step
        if kind == "touch":
            assert groups.touch(current if value else "g-other", now) is bool(value and current is not None)
            if value and current is not None:
                last_activity = now
            continue
        joins = current is not None and parts < max_parts and last_activity is not None \
            and now - last_activity <= WINDOW
        placement = groups.add(value, now)
        if joins:
            assert placement.group_id == current and placement.part_index == parts
            parts += 1
            texts.append(value)
        else:
            assert placement.group_id != current and placement.group_id not in seen_ids
            assert placement.part_index == 0
            current, parts, texts = placement.group_id, 1, [value]
        seen_ids.add(placement.group_id)
        assert placement.part_index < max_parts
        last_activity = now
        context = groups.context_text(now)
        expected = PART_SEPARATOR.join(texts)[-max_chars:] if max_chars else ""
        if parts < max_parts and expected:
            assert context == expected
        else:
            assert context is None
        assert context is None or len(context) <= max_chars
    assert groups.context_text(now + WINDOW + 0.001) is None  # a window of silence closes any group


def test_group_examples() -> None:
    groups = make_groups(max_parts=2, max_chars=10)
    assert groups.context_text(0.0) is None
    first = groups.add("hello", 0.0)
    assert (first.group_id, first.part_index) == ("g0", 0)
    assert groups.context_text(1.0) == "hello"
    second = groups.add("world", 1.5)
    assert (second.group_id, second.part_index) == ("g0", 1)
    assert groups.context_text(1.6) is None  # full: the next result starts a new group
    third = groups.add("again", 1.7)
    assert (third.group_id, third.part_index) == ("g1", 0)
    assert groups.touch("g1", 3.6) and not groups.touch("g0", 3.6)
    assert groups.add("late", 5.5).group_id == "g1"  # within the window of the tts event
    assert groups.context_text(5.5) is None  # g1 is full now
    assert groups.add("x" * 30, 9.0).group_id == "g2"


# ------------------------------------------------------------------------------------------ over the wire


@pytest.fixture
async def grouped(nursery: trio.Nursery, make_config: Callable[..., Config]) -> Daemon:
    return await start_daemon(nursery, make_config(groups={"window_ms": 2000, "max_parts": 3}))


async def _utterance(client: Any, node: Any, sid: str, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    await client.send(type="audio_chunk", session_id=sid, is_final=True, payload=b64(pcm(100)))
    assign = await node.recv_type("job_assign")
    await node.send(**result_for(assign, text_asr=text, text_translated=f"t:{text}"))
    return assign, await client.recv_type("translation_result")


async def test_results_carry_group_and_jobs_carry_context(grouped: Daemon) -> None:
    async with registered_node(grouped.node_url) as (node, _), \
            session(grouped.session_url, audio_format="pcm16") as (client, sid):
        first_assign, first = await _utterance(client, node, sid, "one")
        second_assign, second = await _utterance(client, node, sid, "two")
        third_assign, third = await _utterance(client, node, sid, "three")
        fourth_assign, fourth = await _utterance(client, node, sid, "four")
    assert "context_text" not in first_assign  # no group yet: the field is omitted, old nodes see nothing new
    assert second_assign["context_text"] == "one"
    assert third_assign["context_text"] == "one\ntwo"
    assert "context_text" not in fourth_assign  # the group is full (max_parts 3)
    assert first["group_id"] == second["group_id"] == third["group_id"] != fourth["group_id"]
    assert [r["part_index"] for r in (first, second, third, fourth)] == [0, 1, 2, 0]


async def test_a_quiet_window_starts_a_new_group_unless_tts_names_the_group(autojump_clock: Any) -> None:
    """Under MockClock: 2.5 s after a result the next one starts a new group; a tts_play_ended naming the group
    in between restarts its window, so the result joins it (and its job got the group's text)."""
    config = Config()
    scheduler = Scheduler(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        node = await memory_node(nursery, scheduler, "node-G")
        client, sid = await memory_session(nursery, scheduler)
        _, first = await _utterance(client, node, sid, "alpha")
        await trio.sleep(2.5)
        assign, second = await _utterance(client, node, sid, "beta")
        assert "context_text" not in assign and second["group_id"] != first["group_id"]
        await trio.sleep(1.5)
        await client.send(type="tts_play_ended", session_id=sid, group_id=second["group_id"], ts_end_ms=0)
        await trio.sleep(1.5)  # 3 s after "beta", 1.5 s after its playback ended
        assign, third = await _utterance(client, node, sid, "gamma")
        assert assign["context_text"] == "beta"
        assert third["group_id"] == second["group_id"] and third["part_index"] == 1
        nursery.cancel_scope.cancel()
