"""Raw protocol peers for integration tests: JSON dicts over real WebSockets, no scheduler code on this side."""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from trioscheduler.app import Scheduler
from trioscheduler.config import Config
from trioscheduler.server.listener import Listening, serve

WAIT = 10.0  # every wait in a test has a deadline, so a bug fails instead of hanging
POLL_SECONDS = 0.01


async def until(condition: Callable[[], bool], seconds: float = WAIT) -> None:
    """Return once ``condition()`` holds; raise trio.TooSlowError after ``seconds`` (virtual under MockClock).
    For state that another task owns and changes without an event a test could wait on (the door's and the
    scheduler's counters, a writer that ends)."""
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(POLL_SECONDS)


@attrs.define
class Daemon:
    scheduler: Scheduler
    listening: Listening

    @property
    def session_url(self) -> str:
        return self.listening.session_url

    @property
    def node_url(self) -> str:
        return self.listening.node_url


async def start_daemon(nursery: trio.Nursery, config: Config) -> Daemon:
    scheduler = Scheduler(config)
    listening = await nursery.start(lambda task_status: serve(config, scheduler=scheduler,
                                                              task_status=task_status))
    return Daemon(scheduler, listening)


class Peer:
    """One WebSocket peer that sends and receives JSON objects."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send_message(json.dumps(message))

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send_message(text)

    async def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        with trio.fail_after(timeout):
            message = json.loads(await self.ws.get_message())
        self.received.append(message)
        return message

    async def recv_type(self, *types: str, timeout: float = WAIT, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """The next message, which must be of one of ``types`` (messages of a ``skip`` type are passed over)."""
        with trio.fail_after(timeout):
            while True:
                message = await self.recv(timeout=timeout)
                if message["type"] in skip:
                    continue
                assert message["type"] in types, message
                return message

    async def read_until_closed(self) -> None:
        """Read and drop messages until the connection ends; raises what its end raised."""
        while True:
            await self.ws.get_message()

    async def nothing_for(self, seconds: float) -> None:
        """Assert no message arrives within ``seconds``."""
        with trio.move_on_after(seconds):
            message = await self.ws.get_message()
            raise AssertionError(f"unexpected message {message[:300]!r}")


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[Peer]:
    async with trio_websocket.open_websocket_url(url, max_message_size=16 * 2**20) as ws:
        yield Peer(ws)


def node_register(node_id: str | None = None, languages: tuple[str, ...] = ("zh", "en"),
                  capacity: int | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "node_register",
        "version": "test",
        "capability_schema_version": "2.0",
        "platform": "linux",
        "hardware": {"cpu_cores": 8, "memory_gb": 32},
        "installed_models": [],
        "installed_services": [{"service_id": f"{t}-svc", "type": t, "device": "gpu", "status": "running"}
                               for t in ("asr", "nmt", "tts", "semantic")],
        "capability_by_type": [{"type": t, "ready": True} for t in ("asr", "nmt", "tts", "semantic")],
        "features_supported": {},
        "accept_public_jobs": True,
        "language_capabilities": {"asr_languages": list(languages), "tts_languages": list(languages),
                                  "semantic_languages": list(languages)},
    }
    if node_id is not None:
        message["node_id"] = node_id
    if capacity is not None:
        message["max_concurrent_jobs"] = capacity
    message.update(extra)
    return message


def heartbeat(node_id: str, languages: tuple[str, ...] = ("zh", "en"), running_jobs: int = 0) -> dict[str, Any]:
    return {
        "type": "node_heartbeat",
        "node_id": node_id,
        "timestamp": 0,
        "resource_usage": {"cpu_percent": 10.0, "mem_percent": 20.0, "running_jobs": running_jobs},
        "installed_services": [{"service_id": f"{t}-svc", "type": t, "device": "gpu", "status": "running"}
                               for t in ("asr", "nmt", "tts", "semantic")],
        "capability_by_type": [{"type": t, "ready": True} for t in ("asr", "nmt", "tts", "semantic")],
        "language_capabilities": {"asr_languages": list(languages), "tts_languages": list(languages),
                                  "semantic_languages": list(languages)},
    }


def masked_frame_head(opcode: int, length: int, fin: bool = True) -> bytes:
    """The head of one client frame (FIN, opcode, the mask bit and ``length``), before its 4-byte mask key."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        return head + bytes([0x80 | length])
    if length < 1 << 16:
        return head + bytes([0x80 | 126]) + struct.pack("!H", length)
    return head + bytes([0x80 | 127]) + struct.pack("!Q", length)


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One client frame with a random mask, built by hand so nothing checks the payload (any opcode, invalid UTF-8,
    a fragment boundary inside a character)."""
    mask = os.urandom(4)
    if len(payload) < 4096:
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    else:  # one big-integer XOR instead of a Python loop over every byte
        key = int.from_bytes((mask * (len(payload) // 4 + 1))[:len(payload)], "big")
        body = (int.from_bytes(payload, "big") ^ key).to_bytes(len(payload), "big")
    return masked_frame_head(opcode, len(payload), fin) + mask + body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pcm(ms: int, sample_rate: int = 16000, fill: int = 1) -> bytes:
    """``ms`` of pcm16 audio; ``fill`` varies the bytes so concatenations are checkable."""
    return bytes([fill % 256]) * (2 * sample_rate * ms // 1000)


def opus_packets(count: int, size: int = 60, fill: int = 7) -> bytes:
    """``count`` packets in the original's [u16 LE length][packet] framing."""
    packet = bytes([fill % 256]) * size
    return b"".join(len(packet).to_bytes(2, "little") + packet for _ in range(count))


def result_for(assign: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    message = {
        "type": "job_result",
        "job_id": assign["job_id"],
        "attempt_id": assign["attempt_id"],
        "node_id": overrides.pop("node_id", "n"),
        "session_id": assign["session_id"],
        "utterance_index": assign["utterance_index"],
        "success": True,
        "text_asr": f"asr {assign['utterance_index']}",
        "text_translated": f"translated {assign['utterance_index']}",
        "tts_audio": b64(b"tts"),
        "tts_format": "pcm16",
        "extra": {"service_timings": {"asr_ms": 1, "nmt_ms": 1, "tts_ms": 1}},
        "trace_id": assign["trace_id"],
    }
    message.update(overrides)
    return message


@asynccontextmanager
async def registered_node(url: str, node_id: str | None = None, timeout: float = WAIT,
                          **kwargs: Any) -> AsyncIterator[tuple[Peer, str]]:
    async with connect(url) as node:
        await node.send(**node_register(node_id, **kwargs))
        ack = await node.recv_type("node_register_ack", timeout=timeout)
        yield node, ack["node_id"]


@asynccontextmanager
async def session(url: str, src: str = "zh", tgt: str = "en", timeout: float = WAIT,
                  **fields: Any) -> AsyncIterator[tuple[Peer, str]]:
    async with connect(url) as client:
        await client.send(type="session_init", client_version="test", platform="web", src_lang=src, tgt_lang=tgt,
                          **fields)
        ack = await client.recv_type("session_init_ack", timeout=timeout)
        yield client, ack["session_id"]



def memory_peer(nursery: trio.Nursery, scheduler: Scheduler, kind: str) -> Peer:
    """A peer over an in-memory transport (no socket), so MockClock can drive time without racing the OS.
    Close it with ``await peer.ws.aclose()``; the scheduler sees that as the socket closing."""
    from trioscheduler.transport import memory_transport_pair

    server_side, client_side = memory_transport_pair(kind)
    handler = scheduler.handle_session if kind == "session" else scheduler.handle_node
    nursery.start_soon(handler, server_side)
    return Peer(client_side)  # type: ignore[arg-type]


async def memory_node(nursery: trio.Nursery, scheduler: Scheduler, node_id: str, **kwargs: Any) -> Peer:
    """A registered raw node over an in-memory transport."""
    node = memory_peer(nursery, scheduler, "node")
    await node.send(**node_register(node_id, **kwargs))
    await node.recv_type("node_register_ack")
    return node


async def memory_session(nursery: trio.Nursery, scheduler: Scheduler, src: str = "zh", tgt: str = "en",
                         **fields: Any) -> tuple[Peer, str]:
    """An open raw pcm16 session over an in-memory transport: (peer, session_id)."""
    client = memory_peer(nursery, scheduler, "session")
    await client.send(type="session_init", src_lang=src, tgt_lang=tgt, audio_format="pcm16", **fields)
    return client, (await client.recv_type("session_init_ack"))["session_id"]


ROOT = Path(__file__).resolve().parent.parent


async def exit_and_rest(process: trio.Process, stream: trio.abc.ReceiveStream | None,
                        seconds: float = 20) -> tuple[int, bytes]:
    """Wait (at most ``seconds``) for ``process`` to exit; its exit code and what was left to read on ``stream`` (one
    of its pipes)."""
    with trio.fail_after(seconds):
        code = await process.wait()
    assert stream is not None
    rest = b""
    while chunk := await stream.receive_some():
        rest += chunk
    return code, rest


async def start_daemon_process(*args: str, env: dict[str, str] | None = None) -> tuple[trio.Process, re.Match[str]]:
    """``python -m trioscheduler *args`` in its own process (stdout and stderr piped; stderr is never read here),
    once it printed its listening line; the match's groups are the session, node and HTTP URLs."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "trioscheduler", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=ROOT, env={**os.environ, **(env or {})})
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(20):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some()
            assert chunk, f"daemon exited early: {buffer!r}"
            buffer += chunk
    line = buffer.decode().splitlines()[0]
    match = re.match(r"trioscheduler listening: sessions (ws://\S+) nodes (ws://\S+) http (http://\S+)", line)
    assert match, line
    return process, match
