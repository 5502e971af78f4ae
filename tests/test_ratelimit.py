"""Issue 10, point 4: messages_per_second per connection, a token bucket with a burst. The bucket is pure code
(hypothesis); over a real socket a breach gets RATE_LIMITED and a sustained one closes the socket (4029)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import connect, start_daemon
from trioscheduler.config import Config
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.ratelimit import ACCEPT, CLOSE, REFUSE, TokenBucket

GAPS = st.lists(st.floats(0.0, 0.5, allow_nan=False), min_size=1, max_size=300)


@given(rate=st.floats(0.5, 500.0), burst=st.integers(1, 50), gaps=GAPS)
def test_accepted_messages_never_exceed_burst_plus_rate_times_time(rate: float, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now, accepted_at = 0.0, []
    for gap in gaps:
        now += gap
        verdict = bucket.take(now)
        if verdict == ACCEPT:
            accepted_at.append(now)
        if verdict == CLOSE:
            break
    for i, start in enumerate(accepted_at):
        for j in range(i, len(accepted_at)):
            assert j - i + 1 <= burst + rate * (accepted_at[j] - start) + 1e-6


@given(rate=st.floats(1.0, 500.0), burst=st.integers(1, 50), gaps=GAPS)
def test_a_client_within_the_rate_is_never_refused(rate: float, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now = 0.0
    for gap in gaps:
        now += max(gap, 1.0 / rate)
        assert bucket.take(now) == ACCEPT


def test_sending_exactly_at_the_rate_is_accepted_despite_float_rounding() -> None:
    """Found by hypothesis: at 178.625 a second, 1/rate seconds later the bucket held 0.99999… of a token."""
    bucket = TokenBucket(178.625, 1, 0.0)
    assert bucket.take(1.0 / 178.625) == ACCEPT
    assert bucket.take(2.0 / 178.625) == ACCEPT


@given(rate=st.floats(1.0, 100.0), burst=st.integers(1, 50), extra=st.integers(0, 49))
def test_close_comes_only_after_a_debt_of_more_than_the_burst(rate: float, burst: int, extra: int) -> None:
    """All at one instant: ``burst`` accepted, then ``burst`` refused, then the socket must go."""
    bucket = TokenBucket(rate, burst, 0.0)
    verdicts = [bucket.take(1.0) for _ in range(2 * burst + 1 + extra)]
    assert verdicts[:burst] == [ACCEPT] * burst
    assert verdicts[burst:2 * burst] == [REFUSE] * burst
    assert verdicts[2 * burst] == CLOSE


def test_a_burst_then_a_quiet_spell_recovers() -> None:
    bucket = TokenBucket(10.0, 5, 0.0)
    assert [bucket.take(0.0) for _ in range(8)] == [ACCEPT] * 5 + [REFUSE] * 3
    assert bucket.take(1.0) == ACCEPT  # 3 of debt paid back, 5 saved again (capped at the burst)
    assert [bucket.take(1.0) for _ in range(5)] == [ACCEPT] * 4 + [REFUSE]


async def test_over_a_real_socket_a_breach_is_refused_and_a_flood_closes(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(limits={"messages_per_second": 1.0, "messages_burst": 5}))
    async with connect(daemon.session_url) as client:
        await client.send(type="session_init", src_lang="zh", tgt_lang="en")
        await client.recv_type("session_init_ack")
        for _ in range(5):
            await client.send(type="client_heartbeat")
        kinds = [(await client.recv())["type"] for _ in range(4)]
        assert kinds == ["server_heartbeat"] * 4  # the session_init took one token
        refused = await client.recv_type("error")
        assert refused["code"] == "RATE_LIMITED" and refused["session_id"]
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            for _ in range(20):
                await client.send(type="client_heartbeat")
            while True:
                await client.recv()
    assert closed.value.reason.code == CloseCode.RATE_LIMITED
    assert daemon.scheduler.sessions.counters["sessions_closed_rate_limited"] == 1


def test_the_default_budget_does_not_throttle_forty_chunks_a_second(make_config: Callable[..., Config]) -> None:
    """What the benchmarks send per session, with room to spare: the default is 200 a second, burst 400."""
    bucket = TokenBucket(make_config().limits.messages_per_second, make_config().limits.messages_burst, 0.0)
    assert all(bucket.take(i / 40.0) == ACCEPT for i in range(40 * 600))
    assert all(bucket.take(600.0) == ACCEPT for _ in range(399))
