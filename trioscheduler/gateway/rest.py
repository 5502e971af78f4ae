"""``POST /v1/speech/translate``: one utterance as a one-shot session, answered with JSON.

Every failure has its status and ``code``: 400 INVALID_MESSAGE naming the ``field`` at fault, 401 without a
caller, 405 for another method, 413 REQUEST_TOO_LARGE over ``gateway.max_body_bytes``, 429 RATE_LIMITED over the
tenant's rate, 503 GATEWAY_BUSY / NO_AVAILABLE_NODE / NODE_UNAVAILABLE / SCHEDULER_BUSY, 504 JOB_TIMEOUT, 502 for
an error a node reported. The one-shot session ends with the request, whatever ended it (the caller hanging up
included), so the registry keeps nothing for it.
"""

from __future__ import annotations

from typing import Any

import orjson
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope

from trioscheduler.auth import Refusal
from trioscheduler.gateway.core import Gateway, caller_principal
from trioscheduler.gateway.translate import answer, error_body, parse_body
from trioscheduler.ids import new_session_id
from trioscheduler.protocol.errors import ErrorCode, ProtocolError

TRANSLATE_PATH = "/v1/speech/translate"


async def respond_json(send: ASGISendCallable, status: int, body: dict[str, Any],
                       headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _header(scope: HTTPScope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class ClientGone(Exception):
    """The client hung up before its request body was read."""


async def _read_body(receive: ASGIReceiveCallable, limit: int) -> bytes | None:
    """The request body, or None once it goes over ``limit`` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] != "http.request":
            raise ClientGone
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


async def _cancel_on_disconnect(receive: ASGIReceiveCallable, scope: trio.CancelScope, gateway: Gateway) -> None:
    """While the job runs: a caller that hangs up ends the wait (and so, with its session, the job)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gateway.counters["gateway_caller_gone"] += 1
    scope.cancel()


async def handle_translate(gateway: Gateway, scope: HTTPScope, receive: ASGIReceiveCallable,
                           send: ASGISendCallable) -> None:
    if scope["method"] != "POST":
        await respond_json(send, 405, error_body(ErrorCode.INVALID_MESSAGE, "use POST", "method"),
                           ((b"allow", b"POST"),))
        return
    principal = caller_principal(gateway.credentials, scope)
    if principal is Refusal.MISSING:
        await respond_json(send, 401, error_body(ErrorCode.UNAUTHORIZED, "an API key is required"),
                           ((b"www-authenticate", b'Bearer realm="trioscheduler"'),))
        return
    if principal is Refusal.WRONG:
        await respond_json(send, 403, error_body(ErrorCode.FORBIDDEN, "API key not accepted"))
        return
    refusal = gateway.admit(principal)
    if refusal is not None:
        status, refused = refusal
        retry_after = str(max(1, round(refused["retry_after_s"]))).encode()
        await respond_json(send, status, refused, ((b"retry-after", retry_after),))
        return
    limit = gateway.config.gateway.max_body_bytes
    declared = _header(scope, b"content-length")
    too_large = error_body(ErrorCode.REQUEST_TOO_LARGE, f"the body is over gateway.max_body_bytes ({limit})", "body")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        gateway.counters["gateway_too_large"] += 1
        await respond_json(send, 413, too_large)
        return
    try:
        body = await _read_body(receive, limit)
    except ClientGone:
        return
    if body is None:
        gateway.counters["gateway_too_large"] += 1
        await respond_json(send, 413, too_large)
        return
    started = trio.current_time()
    session_id = new_session_id()
    outcome: Any = None
    try:
        spec = gateway.job(parse_body(body, _header(scope, b"content-type") or ""), principal, session_id, 0)
        del body
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope, gateway)
            outcome = await gateway.run(spec)
            nursery.cancel_scope.cancel()
    except ProtocolError as exc:
        gateway.counters["gateway_bad_request"] += 1
        await respond_json(send, 400, error_body(exc.code, exc.message, exc.field))
        return
    finally:
        gateway.registry.session_ended_nowait(session_id)
    if outcome is None:
        return  # the caller hung up: its job was cancelled with its session
    status, answer_body = answer(outcome, (trio.current_time() - started) * 1000.0)
    await respond_json(send, status, answer_body)
