"""Issue 14 point 5: the gateway. ``POST /v1/speech/translate`` with httpx against a real daemon (success as JSON
and as multipart, no node, node timeout, bad input naming the field, body bound, concurrency bound, tenant rate),
``WS /v1/stream`` round trip, and the token bucket's guarantee (hypothesis)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import WAIT, Daemon, b64, connect, pcm, registered_node, result_for, start_daemon, until
from trioscheduler.config import Config
from trioscheduler.gateway.ratelimit import TokenBuckets

AUDIO = pcm(300, fill=5)


def translate_url(daemon: Daemon) -> str:
    return f"{daemon.listening.http_url}/v1/speech/translate"


def json_body(**overrides: Any) -> dict[str, Any]:
    return {"audio": b64(AUDIO), "src_lang": "zh", "tgt_lang": "en", "audio_format": "pcm16",
            "sample_rate": 16000, **overrides}


async def post(daemon: Daemon, timeout: float = WAIT, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as http:
        return await http.post(translate_url(daemon), **kwargs)


async def answered(daemon: Daemon, node: Any, **kwargs: Any) -> tuple[dict[str, Any], httpx.Response]:
    """POST while the node answers the job it gets: (job_assign, response)."""
    response: list[httpx.Response] = []

    async def call() -> None:
        response.append(await post(daemon, **kwargs))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        assign = await node.recv_type("job_assign")
        await node.send(**result_for(assign, text_asr="你好", text_translated="hello", tts_format="opus"))
    return assign, response[0]


async def registry_is_empty(daemon: Daemon) -> bool:
    snapshot = await daemon.scheduler.client.snapshot(detail=True)
    assert snapshot is not None
    held = snapshot["held"]
    return held["jobs_by_key"] == 0 and held["sessions"] == 0 and held["affinity"] == 0


async def test_translate_json(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url, "node-GW") as (node, _):
        assign, response = await answered(daemon, node, json=json_body())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text_asr"] == "你好" and body["text_translated"] == "hello"
    assert body["tts_audio"] == b64(b"tts") and body["tts_format"] == "opus"
    assert body["job_id"] == assign["job_id"] and body["node_id"] == "node-GW"
    assert isinstance(body["duration_ms"], float) and body["duration_ms"] >= 0
    assert assign["audio"] == b64(AUDIO) and (assign["src_lang"], assign["tgt_lang"]) == ("zh", "en")
    assert assign["audio_format"] == "pcm16" and assign["sample_rate"] == 16000
    assert assign["is_manual_cut"] is True and assign["utterance_index"] == 0
    await until(lambda: True)
    assert await registry_is_empty(daemon)


async def test_translate_multipart(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url) as (node, _):
        assign, response = await answered(
            daemon, node, files={"audio": ("speech.raw", AUDIO, "application/octet-stream")},
            data={"src_lang": "zh", "tgt_lang": "en", "audio_format": "pcm16", "sample_rate": "8000"})
    assert response.status_code == 200, response.text
    assert base64.b64decode(assign["audio"]) == AUDIO and assign["sample_rate"] == 8000
    assert response.json()["text_translated"] == "hello"


@pytest.fixture
async def impatient(nursery: trio.Nursery, make_config: Callable[..., Config]) -> Daemon:
    return await start_daemon(nursery, make_config(scheduler={
        "pending_timeout_seconds": 0.3, "job_timeout_seconds": 0.3, "failover_max_attempts": 0}))


async def test_no_node_is_503(impatient: Daemon) -> None:
    response = await post(impatient, json=json_body())
    assert response.status_code == 503
    assert response.json()["code"] == "NO_AVAILABLE_NODE"
    assert await registry_is_empty(impatient)


async def test_node_timeout_is_504_and_the_node_is_told(impatient: Daemon) -> None:
    async with registered_node(impatient.node_url) as (node, _), trio.open_nursery() as nursery:
        responses: list[httpx.Response] = []

        async def call() -> None:
            responses.append(await post(impatient, json=json_body()))

        nursery.start_soon(call)
        assign = await node.recv_type("job_assign")  # and never answered
        cancel = await node.recv_type("job_cancel")
    assert cancel["job_id"] == assign["job_id"] and cancel["reason"] == "job_timeout"
    assert responses[0].status_code == 504 and responses[0].json()["code"] == "JOB_TIMEOUT"
    assert await registry_is_empty(impatient)


async def test_a_caller_that_hangs_up_cancels_its_job(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url) as (node, _), trio.open_nursery() as nursery:
        async def call() -> None:
            with pytest.raises(httpx.ReadTimeout):
                await post(daemon, timeout=0.5, json=json_body())

        nursery.start_soon(call)
        assign = await node.recv_type("job_assign")
        cancel = await node.recv_type("job_cancel")
    assert cancel["job_id"] == assign["job_id"] and cancel["reason"] == "session_closed"
    await until(lambda: True)
    assert await registry_is_empty(daemon)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"json": json_body(audio=None)}, "audio"),
    ({"json": json_body(audio="not base64!")}, "audio"),
    ({"json": json_body(audio="")}, "audio"),
    ({"json": json_body(tgt_lang=None)}, "tgt_lang"),
    ({"json": json_body(src_lang=7)}, "src_lang"),
    ({"json": json_body(sample_rate=4000)}, "sample_rate"),
    ({"json": json_body(sample_rate="fast")}, "sample_rate"),
    ({"json": json_body(audio_format="mp3")}, "audio_format"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "body"),
    ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, "body"),
    ({"content": b"audio", "headers": {"content-type": "text/plain"}}, "content-type"),
    ({"files": {"speech": ("a.raw", AUDIO)}, "data": {"src_lang": "zh", "tgt_lang": "en"}}, "audio"),
    ({"files": {"audio": ("a.raw", AUDIO)}, "data": {"src_lang": "zh", "tgt_lang": "en", "sample_rate": "x"}},
     "sample_rate"),
])
async def test_bad_input_is_400_naming_the_field(daemon: Daemon, kwargs: dict[str, Any], field: str) -> None:
    if "json" in kwargs:
        kwargs = {"json": {k: v for k, v in kwargs["json"].items() if v is not None}}
    response = await post(daemon, **kwargs)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and response.json()["code"] == "INVALID_MESSAGE"


async def test_method_and_body_bounds(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(gateway={"max_body_bytes": 4096}))
    async with httpx.AsyncClient(timeout=WAIT) as http:
        assert (await http.get(translate_url(daemon))).status_code == 405
        big = await http.post(translate_url(daemon), json=json_body(audio=b64(pcm(200))))
    assert big.status_code == 413 and big.json()["code"] == "REQUEST_TOO_LARGE"


async def test_rate_limit_per_tenant_is_429(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(gateway={"requests_per_second": 0.01, "burst": 2}))
    statuses = [(await post(daemon, json=json_body(audio=None))).status_code for _ in range(3)]
    assert statuses == [400, 400, 429]  # a refused request still spends its token
    response = await post(daemon, json=json_body())
    assert response.status_code == 429 and response.json()["code"] == "RATE_LIMITED"
    assert int(response.headers["retry-after"]) >= 1


async def test_concurrent_requests_bound_is_503(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(gateway={"max_concurrent_requests": 1}))
    async with registered_node(daemon.node_url) as (node, _):
        first: list[httpx.Response] = []
        async with trio.open_nursery() as requests:
            async def call() -> None:
                first.append(await post(daemon, json=json_body()))

            requests.start_soon(call)
            assign = await node.recv_type("job_assign")
            second = await post(daemon, json=json_body())
            assert second.status_code == 503 and second.json()["code"] == "GATEWAY_BUSY"
            await node.send(**result_for(assign))
    assert first[0].status_code == 200


# ------------------------------------------------------------------------------------------ WS /v1/stream


async def test_stream_round_trip(daemon: Daemon) -> None:
    url = f"ws://{daemon.listening.host}:{daemon.listening.port}/v1/stream"
    async with registered_node(daemon.node_url, "node-ST") as (node, _), connect(url) as stream:
        await stream.send(type="audio", chunk=b64(AUDIO))
        early = await stream.recv_type("error")
        await stream.send(type="start", src_lang="zh", tgt_lang="en")
        started = await stream.recv_type("started")
        for index in range(2):
            await stream.send(type="audio", chunk=b64(pcm(100, fill=index)))
            assign = await node.recv_type("job_assign")
            assert assign["session_id"] == started["session_id"] and assign["utterance_index"] == index
            assert base64.b64decode(assign["audio"]) == pcm(100, fill=index)
            await node.send(**result_for(assign))
            final = await stream.recv_type("final")
            assert final["text"] == final["text_translated"] == f"translated {index}"
            assert final["audio"] == final["tts_audio"] == b64(b"tts") and final["job_id"] == assign["job_id"]
            assert final["node_id"] == "node-ST" and final["utterance_index"] == index
        await stream.send(type="audio", chunk="%%%")
        bad = await stream.recv_type("error")
        await stream.send_raw("{nope")
        not_json = await stream.recv_type("error")
        await stream.send(type="dance")
        unknown = await stream.recv_type("error")
    assert early["message"].startswith("Session not started")
    assert bad["field"] == "chunk" and not_json["message"] == "Invalid JSON" and unknown["field"] == "type"
    await until(lambda: True)
    with trio.fail_after(WAIT):
        while not await registry_is_empty(daemon):
            await trio.sleep(0.01)


async def test_stream_start_checks_its_fields(daemon: Daemon) -> None:
    url = f"ws://{daemon.listening.host}:{daemon.listening.port}/v1/stream"
    async with connect(url) as stream:
        await stream.send(type="start", src_lang="zh")
        error = await stream.recv_type("error")
    assert error["field"] == "tgt_lang"
    json.dumps(error)


# ------------------------------------------------------------------------------------------ the token bucket


@given(rate=st.floats(0.1, 50.0), burst=st.integers(1, 20),
       gaps=st.lists(st.tuples(st.floats(0.0, 2.0), st.sampled_from(["a", "b"])), max_size=200))
def test_token_bucket_never_grants_more_than_burst_plus_rate(rate: float, burst: int,
                                                             gaps: list[tuple[float, str]]) -> None:
    buckets = TokenBuckets(rate, burst, max_tenants=10)
    now = 0.0
    granted: dict[str, list[float]] = {"a": [], "b": []}
    for gap, tenant in gaps:
        now += gap
        if buckets.take(tenant, now):
            granted[tenant].append(now)
    for times in granted.values():  # over every window [t0, t1], at most burst + rate * (t1 - t0)
        for i, start in enumerate(times):
            for j in range(i, len(times)):
                assert j - i + 1 <= burst + rate * (times[j] - start) + 1e-6


def test_token_bucket_keeps_tenants_apart_and_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_tenants=2)
    assert buckets.take("a", 0.0) and not buckets.take("a", 0.5)
    assert buckets.take("b", 0.5)  # another tenant's bucket
    assert buckets.retry_after("a", 0.5) == pytest.approx(0.5)
    assert buckets.take("a", 1.0)
    buckets.take("c", 1.0)
    assert len(buckets) == 2


async def test_stream_utterance_past_the_gateway_deadline(nursery: trio.Nursery,
                                                          make_config: Callable[..., Config]) -> None:
    """``gateway.request_timeout_seconds`` bounds the wait even when the registry would wait longer: the caller
    gets JOB_TIMEOUT, the node a job_cancel, and the socket goes on."""
    daemon = await start_daemon(nursery, make_config(gateway={"request_timeout_seconds": 0.3}))
    url = f"ws://{daemon.listening.host}:{daemon.listening.port}/v1/stream"
    async with registered_node(daemon.node_url) as (node, _), connect(url) as stream:
        await stream.send(type="start", src_lang="zh", tgt_lang="en")
        await stream.recv_type("started")
        await stream.send(type="audio", chunk=b64(AUDIO))
        assign = await node.recv_type("job_assign")
        error = await stream.recv_type("error")
        cancel = await node.recv_type("job_cancel")
        await stream.send(type="audio", chunk=b64(AUDIO))
        second = await node.recv_type("job_assign")
        await node.send(**result_for(second))
        final = await stream.recv_type("final")
    assert error["code"] == "JOB_TIMEOUT" and cancel["job_id"] == assign["job_id"]
    assert second["utterance_index"] == 1 and final["utterance_index"] == 1


async def test_stream_without_start_is_closed_at_the_handshake_deadline(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    import trio_websocket

    daemon = await start_daemon(nursery, make_config(limits={"handshake_timeout_seconds": 0.3}))
    url = f"ws://{daemon.listening.host}:{daemon.listening.port}/v1/stream"
    async with connect(url) as stream:
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await stream.read_until_closed()
    assert closed.value.reason.code == 4008


async def test_gateway_counters_in_stats(daemon: Daemon) -> None:
    await post(daemon, json=json_body(audio=None))
    async with httpx.AsyncClient(timeout=WAIT) as http:
        stats = (await http.get(f"{daemon.listening.http_url}/api/v1/stats")).json()
        metrics = (await http.get(f"{daemon.listening.http_url}/metrics")).text
    assert stats["gateway"]["counters"]["gateway_bad_request"] == 1 and stats["gateway"]["running"] == 0
    assert 'trioscheduler_events_total{event="gateway_bad_request"} 1.0' in metrics


async def test_node_failure_is_502_and_silence_is_an_empty_answer(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url) as (node, _):
        for answer_with, status in (({"success": False, "error": {"code": "MODEL_NOT_AVAILABLE",
                                                                   "message": "no model"}}, 502),
                                    ({"extra": {"reason": "ASR_EMPTY"}, "text_asr": "", "text_translated": "",
                                      "tts_audio": ""}, 200)):
            responses: list[httpx.Response] = []
            async with trio.open_nursery() as requests:
                async def call(into: list[httpx.Response]) -> None:
                    into.append(await post(daemon, json=json_body()))

                requests.start_soon(call, responses)
                assign = await node.recv_type("job_assign")
                await node.send(**result_for(assign, **answer_with))
            assert responses[0].status_code == status
            body = responses[0].json()
            if status == 502:
                assert body["code"] == "MODEL_NOT_AVAILABLE" and body["job_id"] == assign["job_id"]
            else:
                assert body["missing_reason"] == "silence_detected" and body["text_asr"] == ""
