"""Issue 8 point 9: hypothesis drives a live daemon over real sockets with hostile connections on both endpoints,
while a well-behaved client and node keep doing round trips (tests/fuzz/harness.py states what every example
checks: the daemon keeps serving, the well-behaved peers get correct results, the daemon returns to idle).

Each reproducer the fuzzer found is a named test below and an explicit example of the fuzz test that found it, so
a test that fails today fails deterministically (marked xfail, strict, naming the issue point); once the fix lands
and the mark goes, the fuzz test goes on to generate. ``test_fuzz_malformed_frames`` (frames no known bug reacts
to) runs generated examples today. Under the ``ci`` profile the module stays within about two minutes on a 2-core
box; ``HYPOTHESIS_PROFILE=thorough`` runs ten times the examples with longer action lists.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.fuzz import MAX_FRAMES, MAX_HOSTILE_CONNECTIONS, fuzz_examples
from tests.fuzz.actions import (
    CONNECTED_ENDINGS,
    GOOD_SRC,
    GOOD_TGT,
    Ending,
    Frame,
    Hostile,
    Kind,
    hostile_plans,
    hostile_register,
    json_values,
    nested,
    session_init,
)
from tests.fuzz.frames import OPCODE_TEXT, RawPeer
from tests.fuzz.harness import LiveDaemon, fuzz_config, run_example, start_live_daemon
from tests.wire import WAIT, masked_frame, pcm
from trioscheduler.server.listener import SESSION_PATH


def utterance(**fields: Any) -> dict[str, Any]:
    return {"type": "utterance", "utterance_index": 0, "audio": base64.b64encode(pcm(100)).decode(),
            "audio_format": "pcm16", "sample_rate": 16000, **fields}


#: Issue 8 point 1: the upgrade request, then a TCP reset (one per endpoint).
ABORTED_HANDSHAKES = [Hostile("session", None, (), Ending.HANDSHAKE_RESET, False),
                      Hostile("node", None, (), Ending.HANDSHAKE_RESET, False)]
#: Issue 8 point 2: features nested 300 deep reach the well-behaved node in its job_assign.
DEEP_FEATURES = [Hostile("session", {**session_init(GOOD_SRC, GOOD_TGT), "features": nested(300)},
                         (Frame(Kind.JSON, utterance()),), Ending.LINGER, True)]
#: Issue 8 point 6: an utterance_index beyond 64 bits, and one as a float too big for any integer.
HUGE_INDEX = [Hostile("session", session_init("zh", "en"), (Frame(Kind.JSON, utterance(utterance_index=2**64)),),
                      Ending.CLOSE, True)]
FLOAT_INDEX = [Hostile("session", session_init("zh", "en"), (Frame(Kind.JSON, utterance(utterance_index=1e308)),),
                       Ending.CLOSE, True)]
#: Issue 8 point 7: nodes that send node_register and their close frame in one write. Each has about one chance in
#: five to be left registered and pooled (its handler is cancelled before it learns its node_id), so thirty of them
#: make the failure certain in practice.
REGISTER_AND_HANG_UP = [Hostile("node", hostile_register(None), (), Ending.CLOSE, False, at_once=True)] * 30


# ------------------------------------------------------------------------------------------ generated

@settings(max_examples=fuzz_examples())
@example(plans=HUGE_INDEX)
@given(plans=hostile_plans(endpoints=("session",), endings=CONNECTED_ENDINGS))
def test_fuzz_session_endpoint(plans: list[Hostile]) -> None:
    run_example(plans)


@settings(max_examples=fuzz_examples())
@example(plans=REGISTER_AND_HANG_UP)
@given(plans=hostile_plans(endpoints=("node",), endings=CONNECTED_ENDINGS))
def test_fuzz_node_endpoint(plans: list[Hostile]) -> None:
    run_example(plans)


@settings(max_examples=fuzz_examples())
@example(plans=ABORTED_HANDSHAKES[:1])
@given(plans=hostile_plans())
def test_fuzz_everything(plans: list[Hostile]) -> None:
    run_example(plans)


malformed_frames = st.one_of(
    json_values.map(lambda value: Frame(Kind.JSON, value)),
    st.text(max_size=40).map(lambda text: Frame(Kind.TEXT, text)),
    st.binary(max_size=64).map(lambda data: Frame(Kind.BINARY, data)),
    st.sampled_from([b"\xff", b"\xc3", b"\x80abc"]).map(lambda data: Frame(Kind.BAD_UTF8, data)),
)
malformed_connections = st.builds(
    Hostile, endpoint=st.sampled_from(["session", "node"]), introduce=st.none(),
    frames=st.lists(malformed_frames, max_size=MAX_FRAMES).map(tuple), ending=st.sampled_from(CONNECTED_ENDINGS),
    reads=st.booleans(), at_once=st.booleans(),
)


@settings(max_examples=fuzz_examples())
@given(plans=st.lists(malformed_connections, min_size=1, max_size=MAX_HOSTILE_CONNECTIONS))
def test_fuzz_malformed_frames(plans: list[Hostile]) -> None:
    """Random JSON values, text, binary and invalid UTF-8 frames on both endpoints, without an introduction."""
    run_example(plans)


# ------------------------------------------------------------------------------------------ reproducers

@pytest.mark.parametrize("plan", ABORTED_HANDSHAKES, ids=["session", "node"])
def test_aborted_handshake_leaves_the_daemon_serving(plan: Hostile) -> None:
    run_example([plan])


def test_deep_features_do_not_cost_the_node_its_connection() -> None:
    run_example(DEEP_FEATURES)


@pytest.mark.parametrize("plans", [HUGE_INDEX, FLOAT_INDEX], ids=["2**64", "1e308"])
def test_out_of_range_utterance_index_is_an_error_not_a_crash(plans: list[Hostile]) -> None:
    run_example(plans)


def test_nodes_that_register_and_hang_up_at_once_leave_no_node() -> None:
    run_example(REGISTER_AND_HANG_UP)


def test_invalid_utf8_text_frame_is_closed_with_1007() -> None:
    async def main() -> None:
        live = LiveDaemon()
        async with trio.open_nursery() as nursery:
            await start_live_daemon(nursery, fuzz_config(), live)
            assert live.daemon is not None
            listening = live.daemon.listening
            peer = await RawPeer.open(listening.host, listening.port, SESSION_PATH)
            await peer.stream.send_all(peer.text_bytes('{"type": "client_heartbeat"}'))
            await peer.stream.send_all(masked_frame(OPCODE_TEXT, b'{"type": "\xff"}'))
            with trio.fail_after(WAIT):
                await peer.drain()
            await peer.stream.aclose()
            assert peer.close_code == 1007, f"close code {peer.close_code} (None: no close frame)"
            nursery.cancel_scope.cancel()

    trio.run(main)
