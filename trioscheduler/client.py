"""The client SDK: stream speech to ``/ws/session`` and read typed outcomes.

    async with trioscheduler.client.connect(url, src_lang="en", tgt_lang="zh") as session:
        await session.send_audio(pcm16)
        await session.end_utterance()
        async for outcome in session:
            ...  # Result, Partial, MissingResult or Error

Guarantees: :func:`connect` returns once ``session_init_ack`` arrived (or raises :class:`SessionRefused`);
``send_audio`` takes mono pcm16 at the session's ``sample_rate`` whatever the ``audio_format``: with ``"opus"``
it is encoded to 20 ms Opus packets in the original's length-prefixed framing (:mod:`trioscheduler.opus`), a rest
shorter than a frame waiting for the next call or for ``end_utterance``. Iterating yields each outcome as it comes
and ends when the session ends (``session_close_ack``, or the connection closed: ``close_reason`` says which).

Reconnecting is the caller's choice: a session is not resumable, so after a lost connection open a new one with
:func:`connect` and resend what had no outcome yet. Nothing here reconnects on its own.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal

import attrs
import trio
import trio_websocket
from trio_websocket import ConnectionClosed

from trioscheduler.errors import TrioschedulerError
from trioscheduler.opus import Pcm16Encoder

__all__ = [
    "DEFAULT_SESSION_URL",
    "Error",
    "MissingResult",
    "Outcome",
    "Partial",
    "Result",
    "Session",
    "SessionRefused",
    "connect",
]

DEFAULT_SESSION_URL = "ws://127.0.0.1:5010/ws/session"
WS_RECEIVE_BUFFER = 65536
WS_MAX_MESSAGE = 16 * 2**20  # a translation_result carries base64 TTS audio
#: ``send_audio`` splits what it is given into chunks of at most this much pcm16 (about 2 s at 16 kHz).
MAX_CHUNK_PCM_BYTES = 65536
INIT_TIMEOUT_S = 10.0


class SessionRefused(TrioschedulerError):
    """The scheduler answered ``session_init`` with ``error`` or closed before ``session_init_ack``."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code


def _b64decode(text: object) -> bytes:
    if not isinstance(text, str) or not text:
        return b""
    try:
        return base64.b64decode(text)
    except (binascii.Error, ValueError):
        return b""


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@attrs.frozen
class Result:
    """A ``translation_result``: ``tts_audio`` is decoded (``tts_format`` says what it is, pcm16 or opus)."""

    utterance_index: int | None
    job_id: str
    text_asr: str
    text_translated: str
    tts_audio: bytes = attrs.field(repr=lambda audio: f"<{len(audio)} bytes>")
    tts_format: str
    trace_id: str | None = None
    node_id: str | None = None
    extra: Mapping[str, Any] | None = None


@attrs.frozen
class Partial:
    """An ``asr_partial``: recognised text so far for an utterance still being processed."""

    utterance_index: int | None
    job_id: str
    text: str
    is_final: bool


@attrs.frozen
class MissingResult:
    """A ``missing_result``: the utterance gets no text (``reason``: silence_detected, gap_timeout, merged —
    then ``merged_into`` is the utterance whose result covers its audio — or session_closed)."""

    utterance_index: int | None
    reason: str
    job_id: str | None = None
    merged_into: int | None = None


@attrs.frozen
class Error:
    """An ``error`` from the scheduler (its own code, or the code a node reported for the utterance's job)."""

    code: str
    message: str
    utterance_index: int | None = None
    job_id: str | None = None
    field: str | None = None
    details: Any = None


Outcome = Result | Partial | MissingResult | Error


def outcome_from_message(message: Mapping[str, Any]) -> Outcome | None:
    """The typed outcome of one message from the scheduler; None for messages that are not outcomes."""
    kind = message.get("type")
    index = _opt_int(message.get("utterance_index"))
    if kind == "translation_result":
        extra = message.get("extra")
        return Result(
            utterance_index=index,
            job_id=str(message.get("job_id") or ""),
            text_asr=str(message.get("text_asr") or ""),
            text_translated=str(message.get("text_translated") or ""),
            tts_audio=_b64decode(message.get("tts_audio")),
            tts_format=str(message.get("tts_format") or "pcm16"),
            trace_id=message.get("trace_id") if isinstance(message.get("trace_id"), str) else None,
            node_id=message.get("node_id") if isinstance(message.get("node_id"), str) else None,
            extra=extra if isinstance(extra, Mapping) else None,
        )
    if kind == "asr_partial":
        return Partial(index, str(message.get("job_id") or ""), str(message.get("text") or ""),
                       message.get("is_final") is True)
    if kind == "missing_result":
        job_id = message.get("job_id")
        return MissingResult(index, str(message.get("reason") or ""), job_id if isinstance(job_id, str) else None,
                             _opt_int(message.get("merged_into")))
    if kind == "error":
        job_id = message.get("job_id")
        field = message.get("field")
        return Error(str(message.get("code") or ""), str(message.get("message") or ""), index,
                     job_id if isinstance(job_id, str) else None, field if isinstance(field, str) else None,
                     message.get("details"))
    return None


class Session:
    """One open session (see the module docstring); made by :func:`connect`."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, ack: Mapping[str, Any],
                 audio_format: Literal["pcm16", "opus"], sample_rate: int, encoder: Pcm16Encoder | None) -> None:
        self._ws = ws
        self.session_id: str = str(ack.get("session_id"))
        self.trace_id: str = str(ack.get("trace_id"))
        self.audio_format = audio_format
        self.sample_rate = sample_rate
        self._encoder = encoder
        self._seq = 0
        self._ended = False
        #: Why iteration ended: "session_close_ack", or "connection closed (<code> <reason>)"; None while open.
        self.close_reason: str | None = None

    async def _send(self, message: dict[str, Any]) -> None:
        await self._ws.send_message(json.dumps(message, separators=(",", ":")))

    async def _chunk(self, payload: bytes, *, is_final: bool) -> None:
        await self._send({
            "type": "audio_chunk", "session_id": self.session_id, "seq": self._seq, "is_final": is_final,
            "payload": base64.b64encode(payload).decode("ascii"),
        })
        self._seq += 1

    async def send_audio(self, pcm16: bytes) -> None:
        """Stream mono pcm16 at ``sample_rate`` (encoded to framed opus first with ``audio_format="opus"``)."""
        for start in range(0, len(pcm16), MAX_CHUNK_PCM_BYTES):
            piece = pcm16[start:start + MAX_CHUNK_PCM_BYTES]
            payload = self._encoder.encode(piece) if self._encoder is not None else piece
            if payload:
                await self._chunk(payload, is_final=False)

    async def end_utterance(self) -> None:
        """Cut the utterance here: the audio sent since the last cut becomes one job (``is_final`` chunk)."""
        rest = self._encoder.flush() if self._encoder is not None else b""
        await self._chunk(rest, is_final=True)

    async def close(self, reason: str = "client_close") -> None:
        """Ask the scheduler to end the session; iteration then ends at ``session_close_ack``. Utterances still
        without an outcome get ``missing_result`` (session_closed) first."""
        with suppress(ConnectionClosed):
            await self._send({"type": "session_close", "session_id": self.session_id, "reason": reason})

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self

    async def __anext__(self) -> Outcome:
        while not self._ended:
            try:
                raw = await self._ws.get_message()
            except ConnectionClosed as exc:
                reason = exc.reason
                self.close_reason = f"connection closed ({getattr(reason, 'code', '?')} " \
                                    f"{getattr(reason, 'name', '')})".rstrip()
                self._ended = True
                break
            if isinstance(raw, bytes):
                continue
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("type") == "session_close_ack":
                self.close_reason = "session_close_ack"
                self._ended = True
                break
            outcome = outcome_from_message(message)
            if outcome is not None:
                return outcome
        raise StopAsyncIteration


@asynccontextmanager
async def connect(
    url: str = DEFAULT_SESSION_URL,
    *,
    src_lang: str,
    tgt_lang: str,
    audio_format: Literal["pcm16", "opus"] = "pcm16",
    sample_rate: int = 16000,
    token: str | None = None,
    client_version: str = "trioscheduler-client/0.1.0",
    platform: str = "api-gateway",
    **session_fields: Any,
) -> AsyncIterator[Session]:
    """Open a session at ``url`` (the scheduler's ``/ws/session``); ``session_fields`` go into ``session_init`` as
    they are (``pipeline``, ``mode``, ``trace_id``...). ``token`` is sent as ``Authorization: Bearer``. On exit
    the connection is closed (without waiting for outcomes: iterate first, or :meth:`Session.close` and iterate)."""
    if audio_format not in ("pcm16", "opus"):
        raise ValueError(f"audio_format must be 'pcm16' or 'opus', not {audio_format!r}")
    # before connecting: a rate opus cannot do is a ValueError, a missing libopus an OpusUnavailable
    encoder = Pcm16Encoder(sample_rate) if audio_format == "opus" else None
    headers = [(b"Authorization", f"Bearer {token}".encode())] if token else None
    async with trio_websocket.open_websocket_url(
        url, receive_buffer_size=WS_RECEIVE_BUFFER, max_message_size=WS_MAX_MESSAGE, extra_headers=headers
    ) as ws:
        init = {"type": "session_init", "client_version": client_version, "platform": platform,
                "src_lang": src_lang, "tgt_lang": tgt_lang, "audio_format": audio_format,
                "sample_rate": sample_rate, **session_fields}
        await ws.send_message(json.dumps(init, separators=(",", ":")))
        ack = await _await_ack(ws)
        yield Session(ws, ack, audio_format, sample_rate, encoder)


async def _await_ack(ws: trio_websocket.WebSocketConnection) -> Mapping[str, Any]:
    try:
        with trio.fail_after(INIT_TIMEOUT_S):
            while True:
                raw = await ws.get_message()
                message = json.loads(raw) if isinstance(raw, str) else None
                if not isinstance(message, dict):
                    continue
                if message.get("type") == "session_init_ack":
                    return message
                if message.get("type") == "error":
                    raise SessionRefused(str(message.get("message") or ""), str(message.get("code") or ""))
    except ConnectionClosed as exc:
        raise SessionRefused(f"connection closed before session_init_ack ({exc.reason})") from exc
    except trio.TooSlowError as exc:
        raise SessionRefused(f"no session_init_ack within {INIT_TIMEOUT_S} s") from exc
    except ValueError as exc:
        raise SessionRefused(f"a frame that is not JSON before session_init_ack: {exc}") from exc
