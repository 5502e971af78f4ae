"""Issue 11, point 5: /health is 200 only when the registry answers within ``server.health_timeout_seconds``;
/ready is 503 before the listeners are up and while draining. Point 6: the admin endpoints refuse a peer that is
not on the loopback with 403 (until admin tokens arrive)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from tests.wire import start_daemon
from trioscheduler.app import Scheduler
from trioscheduler.auth import Credentials, Refusal, http_admin_refusal
from trioscheduler.config import Config
from trioscheduler.http import make_app
from trioscheduler.server.listener import serve


async def test_health_is_200_while_the_registry_answers(nursery: trio.Nursery,
                                                        make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config())
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{daemon.listening.http_url}/health")
    assert response.status_code == 200 and response.text == "OK"


async def test_health_is_503_when_the_registry_stops_reading_its_inbox(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    config = make_config(server={"health_timeout_seconds": 0.2})
    scheduler = Scheduler(config)

    async def wedged(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()  # alive, but never reads its inbox

    scheduler.registry.run = wedged  # type: ignore[method-assign]
    listening = await nursery.start(lambda task_status: serve(config, scheduler=scheduler, task_status=task_status))
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{listening.http_url}/health")
        metrics = await http.get(f"{listening.http_url}/metrics")
        ready = await http.get(f"{listening.http_url}/ready")
    assert health.status_code == 503
    assert "registry did not answer" in health.json()["error"]
    assert metrics.status_code == 503
    assert ready.status_code == 200  # readiness is about taking sessions, not the registry's health


async def _asgi_get(app: Any, path: str, method: str = "GET",
                    client: tuple[str, int] = ("127.0.0.1", 40000)) -> tuple[int, bytes]:
    """One request through the ASGI app itself (no listener: the state before the listeners are up)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "client": client, "headers": [],
             "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "", "raw_path": path.encode()}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_ready_is_503_before_the_listeners_are_up_then_200_then_503_while_draining(
        nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    config = make_config()
    scheduler = Scheduler(config)
    status, body = await _asgi_get(make_app(scheduler), "/ready")
    assert (status, body) == (503, b"starting\n")
    listening = await nursery.start(lambda task_status: serve(config, scheduler=scheduler, task_status=task_status))
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{listening.http_url}/ready")).status_code == 200
        assert (await http.post(f"{listening.http_url}/ready")).status_code == 405
        # The drain below ends serve() at once (no session is open): ask /ready through the app after it.
        response = await http.post(f"{listening.http_url}/api/v1/drain")
    assert response.status_code == 202 and response.json()["started"] is True
    status, body = await _asgi_get(make_app(scheduler), "/ready")
    assert (status, body) == (503, b"draining\n")


@pytest.mark.parametrize(("path", "method"), [
    ("/api/v1/drain", "POST"), ("/api/v1/nodes/node-X/drain", "POST"), ("/api/v1/nodes/node-X/drain", "DELETE")])
async def test_admin_endpoints_refuse_a_peer_off_the_loopback(make_config: Callable[..., Config], path: str,
                                                              method: str) -> None:
    scheduler = Scheduler(make_config())
    status, _ = await _asgi_get(make_app(scheduler), path, method, client=("203.0.113.7", 5555))
    assert status == 403
    assert not scheduler.drain.draining


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("2001:db8::1", False), ("not-an-address", False)])
def test_write_endpoints_are_loopback_only_while_auth_is_off(host: str, allowed: bool) -> None:
    off = Credentials()
    assert (http_admin_refusal(off, {"client": (host, 1)}, write=True) is None) is allowed
    assert http_admin_refusal(off, {"client": None}, write=True) is Refusal.WRONG
    assert http_admin_refusal(off, {"client": (host, 1)}, write=False) is None  # reads are open while auth is off


async def test_admin_endpoints_take_only_their_methods(nursery: trio.Nursery,
                                                       make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config())
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{daemon.listening.http_url}/api/v1/drain")).status_code == 405
        assert (await http.delete(f"{daemon.listening.http_url}/api/v1/drain")).status_code == 405
        assert (await http.get(f"{daemon.listening.http_url}/api/v1/nodes/node-X/drain")).status_code == 405
        response = await http.post(f"{daemon.listening.http_url}/api/v1/nodes/node-NOPE/drain")
    assert response.status_code == 404 and response.json()["node_id"] == "node-NOPE"
    assert not daemon.scheduler.drain.draining
