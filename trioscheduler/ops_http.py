"""The operators' HTTP routes of issue 11's operations part: ``/health``, ``/ready``, ``/metrics`` and the admin
endpoints ``POST /api/v1/drain`` and ``POST|DELETE /api/v1/nodes/{node_id}/drain``.

Guarantees: ``/health`` is 200 only when the registry answers within ``server.health_timeout_seconds`` (503
otherwise); ``/ready`` is 200 only once the listeners are up and while no drain runs; an admin endpoint answers
401/403 to a request :func:`trioscheduler.auth.http_admin_refusal` refuses, before it acts.
"""

from __future__ import annotations

import json
from typing import Any

from hypercorn.typing import ASGISendCallable, HTTPScope

from trioscheduler.app import Scheduler
from trioscheduler.auth import http_admin_refusal
from trioscheduler.metrics import PROMETHEUS_CONTENT_TYPE, exposition
from trioscheduler.registry.requests import NO_ANSWER, UNKNOWN_NODE

NODES_PREFIX = "/api/v1/nodes/"
DRAIN_SUFFIX = "/drain"
JSON = "application/json"


async def respond(send: ASGISendCallable, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _json(send: ASGISendCallable, status: int, body: dict[str, Any]) -> None:
    await respond(send, status, json.dumps(body).encode(), JSON)


def _node_drain_id(path: str) -> str | None:
    if path.startswith(NODES_PREFIX) and path.endswith(DRAIN_SUFFIX):
        node_id = path[len(NODES_PREFIX):-len(DRAIN_SUFFIX)]
        if node_id and "/" not in node_id:
            return node_id
    return None


async def handle(scheduler: Scheduler, scope: HTTPScope, send: ASGISendCallable) -> bool:
    """Answer the request if its path is one of this module's; returns whether it did."""
    path, method = scope["path"], scope["method"]
    node_id = _node_drain_id(path)
    if path in ("/health", "/ready", "/metrics"):
        if method not in ("GET", "HEAD"):
            await respond(send, 405, b"method not allowed\n", "text/plain")
        elif path == "/ready":
            ready = scheduler.drain.ready
            await respond(send, 200 if ready else 503, b"ready\n" if ready else
                          b"draining\n" if scheduler.drain.draining else b"starting\n", "text/plain")
        else:
            timeout = scheduler.config.server.health_timeout_seconds
            snapshot = await scheduler.stats(timeout)
            if snapshot is None:
                await _json(send, 503, {"error": f"registry did not answer within {timeout:g} s"})
            elif path == "/health":
                await respond(send, 200, b"OK", "text/plain")
            else:
                await respond(send, 200, exposition(snapshot), PROMETHEUS_CONTENT_TYPE)
        return True
    if path != "/api/v1/drain" and node_id is None:
        return False
    allowed_methods = ("POST",) if node_id is None else ("POST", "DELETE")
    if method not in allowed_methods:
        await respond(send, 405, b"method not allowed\n", "text/plain")
    elif (refusal := http_admin_refusal(scheduler.credentials, scope, write=True)) is not None:
        await _json(send, int(refusal), {"error": "an admin token is required" if scheduler.credentials.enabled
                                         else "admin endpoints are for loopback peers only"})
    elif node_id is None:
        started = scheduler.drain.request("api")
        await _json(send, 202, {"draining": True, "started": started,
                                "drain_timeout_seconds": scheduler.drain.timeout,
                                "sessions": scheduler.sessions.active})
    else:
        answer = await scheduler.client.set_node_draining(node_id, method == "POST",
                                                          scheduler.config.server.health_timeout_seconds)
        if answer == UNKNOWN_NODE:
            await _json(send, 404, {"error": "no live node with this id", "node_id": node_id})
        elif answer == NO_ANSWER:
            await _json(send, 503, {"error": "registry did not answer", "node_id": node_id})
        else:
            await _json(send, 200, {"node_id": node_id, "draining": answer})
    return True
