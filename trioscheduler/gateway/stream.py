"""``WS /v1/stream``: the gateway's streaming socket, in the original gateway's messages.

- ``start{src_lang, tgt_lang, audio_format?, sample_rate?}`` → ``started{session_id}`` (another ``start`` ends the
  previous session and opens a new one);
- ``audio{chunk}`` (base64 of one whole utterance, pcm16 16 kHz unless ``start`` said otherwise) → ``final{text,
  audio, text_asr, text_translated, tts_audio, tts_format, duration_ms, job_id, node_id, session_id,
  utterance_index}``;
- anything wrong → ``error{message, code, field?}``; the socket stays open.

One utterance runs at a time per socket (the socket is not read meanwhile), each under the tenant's rate and
``gateway.max_concurrent_requests`` like a REST call. The session is the socket's: when it closes, the registry is
told and cancels whatever is left.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import trio

from trioscheduler.gateway.core import Gateway
from trioscheduler.gateway.translate import answer, request_of_fields
from trioscheduler.ids import new_session_id
from trioscheduler.logs import emit
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.protocol.errors import CloseCode, ErrorCode, ProtocolError
from trioscheduler.transport import Transport, TransportClosed

log = logging.getLogger("trioscheduler.gateway.stream")
STREAM_PATH = "/v1/stream"


class _Stream:
    __slots__ = ("_gateway", "_transport", "_principal", "session_id", "_fields", "_index", "_started")

    def __init__(self, gateway: Gateway, transport: Transport, principal: Principal) -> None:
        self._gateway = gateway
        self._transport = transport
        self._principal = principal
        self.session_id: str | None = None
        self._fields: dict[str, Any] = {}
        self._index = 0
        self._started = False

    async def _send(self, **message: Any) -> None:
        await self._transport.send_message(orjson.dumps(message))

    async def _error(self, message: str, code: str = ErrorCode.INVALID_MESSAGE, field: str | None = None) -> None:
        error: dict[str, Any] = {"type": "error", "message": message, "code": str(code)}
        if field is not None:
            error["field"] = field
        await self._send(**error)

    async def run(self) -> None:
        """Until the socket closes; one that sends no ``start`` within ``limits.handshake_timeout_seconds`` is
        closed with CloseCode.HANDSHAKE_TIMEOUT, as a session socket without session_init."""
        deadline = trio.current_time() + self._gateway.config.limits.handshake_timeout_seconds
        while True:
            frame: str | bytes | None = None
            if self._started:
                frame = await self._transport.get_message()
            else:
                with trio.move_on_at(deadline):
                    frame = await self._transport.get_message()
                if frame is None:
                    self._gateway.counters["gateway_stream_handshake_timeout"] += 1
                    await self._transport.aclose(CloseCode.HANDSHAKE_TIMEOUT, "no start")
                    return
            try:
                message = orjson.loads(frame)
            except orjson.JSONDecodeError:
                await self._error("Invalid JSON")
                continue
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "start":
                await self._start(message)
            elif kind == "audio":
                await self._audio(message)
            else:
                await self._error("Unknown message type", field="type")

    async def _start(self, message: dict[str, Any]) -> None:
        fields = {name: message.get(name) for name in ("src_lang", "tgt_lang", "audio_format", "sample_rate")}
        try:
            request_of_fields({"audio": "AA==", **fields})  # the same checks as a REST call's fields
        except ProtocolError as exc:
            await self._error(exc.message, exc.code, exc.field)
            return
        self.end()
        self._started = True
        self.session_id = new_session_id()
        self._fields = fields
        self._index = 0
        await self._send(type="started", session_id=self.session_id)

    async def _audio(self, message: dict[str, Any]) -> None:
        session_id = self.session_id
        if session_id is None:
            await self._error("Session not started: send start first", ErrorCode.INVALID_SESSION, "type")
            return
        gateway = self._gateway
        refusal = gateway.admit(self._principal)
        if refusal is not None:
            _, body = refusal
            await self._error(body["message"], body["code"])
            return
        started = trio.current_time()
        try:
            request = request_of_fields({**self._fields, "audio": message.get("chunk")})
            spec = gateway.job(request, self._principal, session_id, self._index)
        except ProtocolError as exc:
            field = "chunk" if exc.field == "audio" else exc.field
            await self._error(exc.message, exc.code, field)
            return
        outcome = await gateway.run(spec)
        index = self._index
        self._index += 1
        status, body = answer(outcome, (trio.current_time() - started) * 1000.0)
        if status != 200:
            await self._error(body["message"], body["code"], body.get("field"))
            return
        await self._send(type="final", text=body["text_translated"], audio=body["tts_audio"], **body,
                         session_id=session_id, utterance_index=index)

    def end(self) -> None:
        if self.session_id is not None:
            self._gateway.registry.session_ended_nowait(self.session_id)
            self.session_id = None


async def serve_stream(gateway: Gateway, transport: Transport, principal: Principal = ANONYMOUS) -> None:
    """One ``/v1/stream`` socket, until it closes. Never raises for what the peer does."""
    stream = _Stream(gateway, transport, principal)
    gateway.counters["gateway_streams"] += 1
    try:
        await stream.run()
    except TransportClosed:
        pass
    finally:
        stream.end()
        emit(log, logging.DEBUG, "gateway_stream_ended", peer=getattr(transport, "peer", None))
