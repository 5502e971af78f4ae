"""The operators' JSON API under ``/api/v1/`` (beyond ``stats``) and the ``/dashboard`` page; docs/http-api.md.

``serve`` answers the paths it knows and returns False for every other one, so http.py keeps its own routes.
Nodes and jobs come from the registry task through its inbox (registry/queries.py), each read under
``observability.api_deadline_seconds``: a registry that does not answer in time is a 503 with a JSON body, never
a hang. Sessions are read from the scheduler's live session set (session_view.py). Every error is JSON,
``{"error": {"code": ..., "message": ...}}``; an unknown id is a 404. Who may read what is decided in one place,
:func:`authorize`.
"""

from __future__ import annotations

import importlib.resources
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from hypercorn.typing import ASGISendCallable, HTTPScope

from trioscheduler.app import Scheduler
from trioscheduler.auth import Refusal, http_admin_refusal
from trioscheduler.protocol.errors import ErrorCode
from trioscheduler.registry import queries
from trioscheduler.registry.queries import NOT_FOUND, RegistryUnavailable
from trioscheduler.session_view import find_session, session_summary, sessions_view

API_PREFIX = "/api/v1/"
DASHBOARD_PATH = "/dashboard"
JSON_TYPE = "application/json"
#: The dashboard's files, served from the package (trioscheduler/web/), by their path under /dashboard/.
DASHBOARD_ASSETS = {
    "": ("dashboard.html", "text/html; charset=utf-8"),
    "dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
#: Routes whose answer names peers, sessions or jobs one by one: they will need an admin token once
#: authentication is on (see :func:`authorize`).
DETAILED_ROUTES = frozenset({"nodes", "node", "sessions", "session", "jobs", "job"})

#: The JSON error codes of this API (``error.code``).
NOT_FOUND_CODE = "NOT_FOUND"
UNAUTHORIZED_CODE = ErrorCode.UNAUTHORIZED.value
FORBIDDEN_CODE = ErrorCode.FORBIDDEN.value
REGISTRY_UNAVAILABLE_CODE = "REGISTRY_UNAVAILABLE"
METHOD_NOT_ALLOWED_CODE = "METHOD_NOT_ALLOWED"
BAD_REQUEST_CODE = "BAD_REQUEST"

Response = tuple[int, bytes, str]


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def match_route(path: str) -> tuple[str, str | None] | None:
    """(route name, the id in the path or the dashboard asset) for a path this module serves, else None."""
    if path == DASHBOARD_PATH or path == DASHBOARD_PATH + "/":
        return "dashboard", ""
    if path.startswith(DASHBOARD_PATH + "/"):
        return "dashboard", path[len(DASHBOARD_PATH) + 1:]
    if not path.startswith(API_PREFIX):
        return None
    parts = path[len(API_PREFIX):].split("/")
    if len(parts) == 1 and parts[0] in ("nodes", "sessions", "jobs"):
        return parts[0], None
    if len(parts) == 2 and parts[1] and parts[0] in ("nodes", "sessions", "jobs"):
        return parts[0][:-1], parts[1]
    return None


def authorize(scheduler: Scheduler, scope: HTTPScope, route: str) -> ApiError | None:
    """Whether this request may read ``route``: None when it may, else the error to answer with. With
    authentication on, the routes in DETAILED_ROUTES need an admin token (401 without one, 403 for another)."""
    if route not in DETAILED_ROUTES:
        return None
    refusal = http_admin_refusal(scheduler.credentials, scope, write=False)
    if refusal is None:
        return None
    return ApiError(int(refusal), UNAUTHORIZED_CODE if refusal == Refusal.MISSING else FORBIDDEN_CODE,
                    "an admin token is required (Authorization: Bearer, or the token query parameter)")


async def serve(scheduler: Scheduler, scope: HTTPScope, send: ASGISendCallable) -> bool:
    """Answer the request when its path is the dashboard's or one of the API routes here; False otherwise."""
    matched = match_route(scope["path"])
    if matched is None:
        return False
    route, ident = matched
    try:
        if scope["method"] not in ("GET", "HEAD"):
            raise ApiError(405, METHOD_NOT_ALLOWED_CODE, f"{scope['method']} is not allowed here; use GET")
        refusal = authorize(scheduler, scope, route)
        if refusal is not None:
            raise refusal
        status, body, content_type = await ROUTES[route](scheduler, ident, _query(scope))
    except ApiError as exc:
        status, body, content_type = exc.status, _error_body(exc.code, exc.message), JSON_TYPE
    except RegistryUnavailable as exc:
        status, body, content_type = 503, _error_body(REGISTRY_UNAVAILABLE_CODE, str(exc)), JSON_TYPE
    await _respond(send, status, b"" if scope["method"] == "HEAD" else body, content_type, len(body))
    return True


# ------------------------------------------------------------------------------------------------ routes


async def _nodes(scheduler: Scheduler, ident: str | None, query: dict[str, str]) -> Response:
    return _json(await _ask(scheduler, queries.nodes_view))


async def _node(scheduler: Scheduler, ident: str | None, query: dict[str, str]) -> Response:
    assert ident is not None
    view = queries.node_detail(ident, scheduler.config.observability.api_max_items)
    return _json(_found(await _ask(scheduler, view), "node", ident))


async def _sessions(scheduler: Scheduler, ident: str | None, query: dict[str, str]) -> Response:
    limit = _limit(query, scheduler.config.observability.api_max_items)
    return _json(sessions_view(scheduler.sessions.live, limit))


async def _session(scheduler: Scheduler, ident: str | None, query: dict[str, str]) -> Response:
    assert ident is not None
    connection = find_session(scheduler.sessions.live, ident)
    summary = None if connection is None else session_summary(connection)
    if summary is None:
        raise ApiError(404, NOT_FOUND_CODE, f"no open session {ident!r}")
    jobs = await _ask(scheduler, queries.session_jobs(ident, scheduler.config.observability.api_max_items))
    return _json({**summary, **jobs})


async def _jobs(scheduler: Scheduler, ident: str | None, query: dict[str, str]) -> Response:
    limit = _limit(query, scheduler.config.observability.api_max_items)
    return _json(await _ask(scheduler, queries.jobs_view(limit)))


async def _job(scheduler: Scheduler, ident: str | None, query: dict[str, str]) -> Response:
    assert ident is not None
    return _json(_found(await _ask(scheduler, queries.job_detail(ident)), "job", ident))


async def _dashboard(scheduler: Scheduler, ident: str | None, query: dict[str, str]) -> Response:
    asset = DASHBOARD_ASSETS.get(ident or "")
    if asset is None:
        raise ApiError(404, NOT_FOUND_CODE, f"no dashboard file {ident!r}")
    name, content_type = asset
    return 200, importlib.resources.files("trioscheduler.web").joinpath(name).read_bytes(), content_type


ROUTES: dict[str, Callable[[Scheduler, str | None, dict[str, str]], Awaitable[Response]]] = {
    "nodes": _nodes, "node": _node, "sessions": _sessions, "session": _session, "jobs": _jobs, "job": _job,
    "dashboard": _dashboard,
}


# ------------------------------------------------------------------------------------------------ helpers


async def _ask(scheduler: Scheduler, view: queries.View) -> Any:
    return await queries.ask(scheduler.client, view, scheduler.config.observability.api_deadline_seconds)


def _found(answer: Any, kind: str, ident: str) -> Any:
    if answer == NOT_FOUND:
        raise ApiError(404, NOT_FOUND_CODE, f"no {kind} {ident!r}" + (" (or no longer kept)" if kind == "job" else ""))
    return answer


def _query(scope: HTTPScope) -> dict[str, str]:
    return {key: values[-1] for key, values in urllib.parse.parse_qs(scope["query_string"].decode("latin-1")).items()}


def _limit(query: dict[str, str], most: int) -> int:
    """``?limit=N``, 1..``most`` (larger is cut to ``most``); ``most`` when absent."""
    text = query.get("limit")
    if text is None:
        return most
    try:
        limit = int(text)
    except ValueError:
        raise ApiError(400, BAD_REQUEST_CODE, f"limit must be an integer, got {text[:40]!r}") from None
    if limit < 1:
        raise ApiError(400, BAD_REQUEST_CODE, f"limit must be >= 1, got {limit}")
    return min(limit, most)


def _json(value: Any) -> Response:
    return 200, orjson.dumps(value), JSON_TYPE


def _error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


async def _respond(send: ASGISendCallable, status: int, body: bytes, content_type: str, length: int) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(length).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
