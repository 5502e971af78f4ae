"""The node SDK (``trioscheduler.node``) against a live scheduler over real WebSockets, and against a scripted
scheduler where the test must send what a real one never does (more jobs than the capacity)."""

from __future__ import annotations

import functools
import json
import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import WAIT, Daemon, b64, pcm, session, start_daemon, until
from trioscheduler import node as sdk
from trioscheduler.config import Config

Handler = Callable[..., Awaitable[Any]]


async def start_node(nursery: trio.Nursery, url: str, handle: Handler, **kwargs: Any) -> str:
    kwargs.setdefault("drain_signals", ())
    node_id: str = await nursery.start(functools.partial(sdk.run, url, handle, **kwargs))
    return node_id


async def one_utterance(url: str, audio: bytes = b"", **fields: Any) -> dict[str, Any]:
    """The first outcome (translation_result, missing_result or error) of one pcm16 utterance."""
    async with session(url, audio_format="pcm16", **fields) as (client, session_id):
        await client.send(type="audio_chunk", session_id=session_id, seq=0, is_final=True,
                          payload=b64(audio or pcm(200)))
        return await client.recv_type("translation_result", "missing_result", "error", skip=("asr_partial",))


# ---------------------------------------------------------------------------------------------- answering


async def test_an_answer_reaches_the_client_with_its_decoded_job(daemon: Daemon, nursery: trio.Nursery) -> None:
    jobs: list[sdk.Job] = []

    async def handle(job: sdk.Job) -> sdk.Answer:
        jobs.append(job)
        return sdk.Answer(text_asr=f"heard {len(job.audio)} B", text_translated="translated", tts_audio=b"\x01\x02",
                          extra={"engine": "test"})

    node_id = await start_node(nursery, daemon.node_url, handle, languages=("zh", "en"), capacity=2)
    audio = pcm(300, fill=5)
    result = await one_utterance(daemon.session_url, audio)
    assert result["type"] == "translation_result", result
    assert (result["text_asr"], result["text_translated"]) == (f"heard {len(audio)} B", "translated")
    assert result["tts_audio"] == b64(b"\x01\x02")
    assert result["node_id"] == node_id
    assert result["extra"]["engine"] == "test"
    (job,) = jobs
    assert job.audio == audio and job.audio_format == "pcm16" and job.sample_rate == 16000
    assert (job.src_lang, job.tgt_lang, job.utterance_index) == ("zh", "en", 0)
    assert job.is_manual_cut and job.pipeline.use_tts


async def test_a_dict_of_job_result_fields_is_an_answer(daemon: Daemon, nursery: trio.Nursery) -> None:
    async def handle(job: sdk.Job) -> dict[str, Any]:
        # identity fields from a handler are ignored: the SDK answers the job it was given
        return {"text_asr": "a", "text_translated": "b", "tts_audio": b"\x07" * 4, "tts_format": "opus",
                "job_id": "someone-else"}

    await start_node(nursery, daemon.node_url, handle)
    result = await one_utterance(daemon.session_url)
    assert result["type"] == "translation_result", result
    assert (result["text_asr"], result["tts_audio"], result["tts_format"]) == ("a", b64(b"\x07" * 4), "opus")


async def test_partials_go_through_the_callback(daemon: Daemon, nursery: trio.Nursery) -> None:
    async def handle(job: sdk.Job, partial: sdk.PartialSender) -> sdk.Answer:
        await partial("hel")
        return sdk.Answer(text_asr="hello", text_translated="ni hao")

    await start_node(nursery, daemon.node_url, handle)
    async with session(daemon.session_url, audio_format="pcm16") as (client, session_id):
        await client.send(type="audio_chunk", session_id=session_id, seq=0, is_final=True, payload=b64(pcm(200)))
        partial = await client.recv_type("asr_partial")
        assert (partial["text"], partial["is_final"], partial["utterance_index"]) == ("hel", False, 0)
        assert (await client.recv_type("translation_result"))["text_asr"] == "hello"


# ---------------------------------------------------------------------------------------------- failures


async def test_an_exception_becomes_an_error_with_a_code_and_the_node_keeps_serving(
    daemon: Daemon, nursery: trio.Nursery
) -> None:
    calls = 0

    async def handle(job: sdk.Job) -> sdk.Answer:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("engine fell over")
        if calls == 2:
            raise sdk.JobFailed("ASR_MODEL_MISSING", "no model for zh")
        return sdk.Answer(text_asr="ok", text_translated="ok")

    await start_node(nursery, daemon.node_url, handle)
    first = await one_utterance(daemon.session_url)
    assert (first["type"], first["code"]) == ("error", "PROCESSING_ERROR"), first
    assert "engine fell over" in first["message"]
    second = await one_utterance(daemon.session_url)
    assert (second["type"], second["code"], second["message"]) == ("error", "ASR_MODEL_MISSING", "no model for zh")
    third = await one_utterance(daemon.session_url)
    assert third["type"] == "translation_result"


async def test_a_handler_returning_something_else_is_a_processing_error(daemon: Daemon, nursery: trio.Nursery) -> None:
    async def handle(job: sdk.Job) -> Any:
        return "not an answer"

    await start_node(nursery, daemon.node_url, handle)
    result = await one_utterance(daemon.session_url)
    assert (result["type"], result["code"]) == ("error", "PROCESSING_ERROR")
    assert "Answer" in result["message"]


async def test_job_cancel_cancels_the_handler(daemon: Daemon, nursery: trio.Nursery) -> None:
    started, cancelled = trio.Event(), trio.Event()

    async def handle(job: sdk.Job) -> sdk.Answer:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    await start_node(nursery, daemon.node_url, handle)
    async with session(daemon.session_url, audio_format="pcm16") as (client, session_id):
        await client.send(type="audio_chunk", session_id=session_id, seq=0, is_final=True, payload=b64(pcm(200)))
        with trio.fail_after(WAIT):
            await started.wait()
        await client.send(type="session_close", session_id=session_id)  # the scheduler sends job_cancel
        with trio.fail_after(WAIT):
            await cancelled.wait()


# ---------------------------------------------------------------------------------------------- a scripted scheduler


class ScriptedScheduler:
    """A WebSocket server that acks every node_register and lets the test drive each node connection."""

    def __init__(self) -> None:
        self.registers: list[dict[str, Any]] = []
        self.requests: list[trio_websocket.WebSocketRequest] = []
        send, self.connections = trio.open_memory_channel[trio_websocket.WebSocketConnection](10)
        self._send = send
        self.port = 0
        self.close_after_ack = False

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        self.requests.append(request)
        ws = await request.accept()
        self.registers.append(json.loads(await ws.get_message()))
        ack = {"type": "node_register_ack", "node_id": "node-SCRIPTED", "heartbeat_interval_seconds": 15}
        await ws.send_message(json.dumps(ack))
        if self.close_after_ack:
            await ws.aclose()
            return
        await self._send.send(ws)
        await trio.sleep_forever()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/node"


@asynccontextmanager
async def scripted_scheduler() -> AsyncIterator[ScriptedScheduler]:
    scripted = ScriptedScheduler()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, scripted.handler, "127.0.0.1", 0, None)
        scripted.port = server.port
        yield scripted
        nursery.cancel_scope.cancel()


def assign(job_id: str, index: int = 0, audio: bytes = b"\x00\x00") -> str:
    return json.dumps({
        "type": "job_assign", "job_id": job_id, "attempt_id": 1, "session_id": "s-1", "utterance_index": index,
        "src_lang": "zh", "tgt_lang": "en", "pipeline": {"use_asr": True, "use_nmt": True, "use_tts": True},
        "audio": b64(audio), "audio_format": "pcm16", "sample_rate": 16000, "trace_id": "t",
    })


async def next_of(ws: trio_websocket.WebSocketConnection, kind: str) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] == kind:
                return message  # type: ignore[no-any-return]


async def test_registration_says_languages_services_capacity_and_the_token() -> None:
    async def handle(job: sdk.Job) -> sdk.Answer:
        return sdk.Answer()

    async with scripted_scheduler() as scripted, trio.open_nursery() as nursery:
        await start_node(nursery, scripted.url, handle, languages="en,fr", capacity=3, token="s3cret",
                         node_id="node-MINE")
        (register,) = scripted.registers
        assert register["node_id"] == "node-MINE"
        assert register["max_concurrent_jobs"] == 3
        assert register["language_capabilities"]["asr_languages"] == ["en", "fr"]
        assert {c["type"] for c in register["capability_by_type"] if c["ready"]} == {"asr", "nmt", "tts"}
        assert register["features_supported"] == {"answers_every_job": True}
        assert scripted.requests[0].headers
        assert (b"authorization", b"Bearer s3cret") in [(k.lower(), v) for k, v in scripted.requests[0].headers]
        nursery.cancel_scope.cancel()


async def test_no_more_than_capacity_handlers_run_and_the_excess_is_refused() -> None:
    gate = trio.Event()
    running = 0
    most = 0

    async def handle(job: sdk.Job) -> sdk.Answer:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return sdk.Answer(text_asr=job.job_id, text_translated="x")

    async with scripted_scheduler() as scripted, trio.open_nursery() as nursery:
        await start_node(nursery, scripted.url, handle, capacity=2)
        ws = await scripted.connections.receive()
        for i in range(3):
            await ws.send_message(assign(f"j{i}", i))
        refused = await next_of(ws, "job_result")
        assert (refused["job_id"], refused["success"], refused["error"]["code"]) == ("j2", False, sdk.OVER_CAPACITY)
        await until(lambda: running == 2)
        await ws.send_message(assign("j0", 0))  # the same job_id again while it runs
        duplicate = await next_of(ws, "job_result")
        assert (duplicate["job_id"], duplicate["error"]["code"]) == ("j0", sdk.DUPLICATE_JOB_ID)
        gate.set()
        answered = {(await next_of(ws, "job_result"))["job_id"] for _ in range(2)}
        assert answered == {"j0", "j1"} and most == 2
        nursery.cancel_scope.cancel()


async def test_bad_audio_is_answered_as_a_bad_job() -> None:
    async def handle(job: sdk.Job) -> sdk.Answer:
        raise AssertionError("must not run")

    async with scripted_scheduler() as scripted, trio.open_nursery() as nursery:
        await start_node(nursery, scripted.url, handle)
        ws = await scripted.connections.receive()
        message = json.loads(assign("j0"))
        message["audio"] = "***not base64***"
        await ws.send_message(json.dumps(message))
        result = await next_of(ws, "job_result")
        assert (result["success"], result["error"]["code"]) == (False, sdk.BAD_JOB)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["stop", "signal"])
async def test_drain_finishes_running_jobs_refuses_new_ones_then_returns(how: str) -> None:
    gate = trio.Event()
    stop = trio.Event()
    returned = trio.Event()

    async def handle(job: sdk.Job) -> sdk.Answer:
        await gate.wait()
        return sdk.Answer(text_asr="finished", text_translated="x")

    async def node_task(url: str, task_status: trio.TaskStatus[str]) -> None:
        kwargs: dict[str, Any] = {"stop": stop} if how == "stop" else {"drain_signals": (signal.SIGUSR1,)}
        await sdk.run(url, handle, task_status=task_status, **kwargs)
        returned.set()

    async with scripted_scheduler() as scripted, trio.open_nursery() as nursery:
        await nursery.start(node_task, scripted.url)
        ws = await scripted.connections.receive()
        await ws.send_message(assign("j0"))
        await next_of(ws, "node_heartbeat")
        if how == "stop":
            stop.set()
        else:
            os.kill(os.getpid(), signal.SIGUSR1)
        beat = await next_of(ws, "node_heartbeat")
        assert not any(c["ready"] for c in beat["capability_by_type"])
        assert beat["resource_usage"]["running_jobs"] == 1
        await ws.send_message(assign("j1", 1))
        refused = await next_of(ws, "job_result")
        assert (refused["job_id"], refused["error"]["code"]) == ("j1", sdk.DRAINING)
        assert not returned.is_set()
        gate.set()
        finished = await next_of(ws, "job_result")
        assert (finished["job_id"], finished["success"], finished["text_asr"]) == ("j0", True, "finished")
        with trio.fail_after(WAIT):
            await returned.wait()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------- reconnecting


async def test_reconnects_to_a_restarted_scheduler_under_the_same_node_id(
    make_config: Callable[..., Config], nursery: trio.Nursery
) -> None:
    async def handle(job: sdk.Job) -> sdk.Answer:
        return sdk.Answer(text_asr="again", text_translated="x")

    first_run = trio.CancelScope()
    first: Daemon | None = None

    async def first_daemon(task_status: trio.TaskStatus[Daemon]) -> None:
        with first_run:
            async with trio.open_nursery() as inner:
                task_status.started(await start_daemon(inner, make_config()))

    first = await nursery.start(first_daemon)
    port = first.listening.node_url.rsplit(":", 1)[1].split("/")[0]
    node_id = await start_node(nursery, first.node_url, handle, backoff=sdk.Backoff(min_s=0.05, max_s=0.2))
    first_run.cancel()  # the scheduler goes away
    second = await start_daemon(nursery, make_config(server={"port": int(port)}))
    await until(lambda: node_id in second.scheduler.registry.nodes)
    result = await one_utterance(second.session_url)
    assert (result["type"], result["node_id"], result["text_asr"]) == ("translation_result", node_id, "again")


@given(st.floats(0.01, 5), st.floats(0.01, 60), st.floats(0, 1), st.integers(0, 2**32))
def test_backoff_doubles_to_its_cap_within_its_jitter(min_s: float, max_s: float, jitter: float, seed: int) -> None:
    backoff = sdk.Backoff(min_s=min_s, max_s=max_s, jitter=jitter)
    delays = backoff.delays(random.Random(seed))
    base = min_s
    for delay in (next(iter(delays)) for _ in range(12)):
        assert base * (1 - jitter) - 1e-9 <= delay <= base + 1e-9
        base = min(max_s, base * 2)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=10)
JOB_KEYS = ["job_id", "attempt_id", "session_id", "utterance_index", "src_lang", "tgt_lang", "audio", "audio_format",
            "sample_rate", "trace_id", "pipeline", "features", "turn_id", "is_manual_cut", "dialect", "mode"]


@given(st.dictionaries(st.sampled_from(JOB_KEYS), JSON | st.binary(max_size=20).map(b64), max_size=len(JOB_KEYS)))
def test_any_job_assign_decodes_to_a_job_or_a_value_error(message: dict[str, Any]) -> None:
    try:
        job = sdk.Job.from_message(message)
    except ValueError:
        return
    assert job.job_id == message["job_id"] and isinstance(job.audio, bytes)
    assert isinstance(job.utterance_index, int) and isinstance(job.is_manual_cut, bool)
