"""HTTP for operators (ASGI, served by hypercorn): /api/v1/stats, and the routes of trioscheduler/ops_http.py
(/health, /ready, /metrics, the drain endpoints); the /try page (trioscheduler/web/try_page.py).

WebSockets never reach this app: the door in server/listener.py carries /ws/session and /ws/node in both listener modes
(when ``http_port`` equals ``port`` it hands every other request to hypercorn, and so to this app).
"""

from __future__ import annotations

import json

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope

from trioscheduler import api, ops_http
from trioscheduler.app import Scheduler
from trioscheduler.auth import http_admin_refusal
from trioscheduler.gateway import TRANSLATE_PATH, Gateway, handle_translate
from trioscheduler.web.try_page import TRY_PATH, try_page_asset


def make_app(scheduler: Scheduler, gateway: Gateway | None = None) -> ASGIFramework:
    """``gateway``: serve ``POST /v1/speech/translate`` with it (issue 14); None: that path is 404."""

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http" and gateway is not None and scope["path"] == TRANSLATE_PATH:
            await handle_translate(gateway, scope, receive, send)
        elif scope["type"] == "http":
            await _http(scheduler, scope, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": None})

    return app


async def _lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


_respond = ops_http.respond


async def _http(scheduler: Scheduler, scope: HTTPScope, send: ASGISendCallable) -> None:
    if await ops_http.handle(scheduler, scope, send):
        return
    if await api.serve(scheduler, scope, send):  # /api/v1/ nodes, sessions, jobs and /dashboard (api.py)
        return
    path, method = scope["path"], scope["method"]
    if method not in ("GET", "HEAD"):
        await _respond(send, 405, b"method not allowed\n", "text/plain")
    elif path == "/api/v1/stats" and (refusal := http_admin_refusal(scheduler.credentials, scope,
                                                                     write=False)) is not None:
        # The detailed read (node ids, pools) needs an admin token when authentication is on.
        await _respond(send, int(refusal), b"admin token required\n", "text/plain")
    elif path == "/api/v1/stats":
        snapshot = await scheduler.stats()
        if snapshot is None:
            await _respond(send, 503, b'{"error":"registry did not answer"}', "application/json")
        else:
            await _respond(send, 200, json.dumps(snapshot).encode(), "application/json")
    elif path.startswith(TRY_PATH) and (asset := try_page_asset(path, scheduler.config.server.port)) is not None:
        await _respond(send, 200, *asset)
    else:
        await _respond(send, 404, b"not found\n", "text/plain")
