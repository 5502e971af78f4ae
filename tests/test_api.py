"""The JSON API under /api/v1/ (issue 11, point 2), over real sockets with httpx: nodes, sessions, recent jobs and
a job's timeline with every attempt; unknown ids are 404 and a wedged registry is 503, both with a JSON body."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import (
    WAIT,
    Daemon,
    b64,
    pcm,
    registered_node,
    result_for,
    session,
    start_daemon,
    until,
)
from trioscheduler.api import ROUTES, ApiError, _limit, match_route
from trioscheduler.config import Config


def now_ms() -> int:
    return int(time.time() * 1000)


async def get(http: httpx.AsyncClient, daemon: Daemon, path: str, status: int = 200) -> Any:
    response = await http.get(f"{daemon.listening.http_url}{path}")
    assert response.status_code == status, (path, response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def get_when(http: httpx.AsyncClient, daemon: Daemon, path: str, ready: Callable[[Any], bool]) -> Any:
    """GET ``path`` until ``ready(body)``: the writer stamps "delivered" just after its send returns, which may be
    after the client read the outcome."""
    with trio.fail_after(WAIT):
        while not ready(body := await get(http, daemon, path)):
            await trio.sleep(0.01)
    return body


def assert_error(body: Any, code: str) -> None:
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]


async def test_nodes_list_and_detail(daemon: Daemon) -> None:
    before = now_ms()
    async with registered_node(daemon.node_url, "node-API1", capacity=3, languages=("zh", "en", "ja")), \
            httpx.AsyncClient(timeout=WAIT) as http:
        nodes = await get(http, daemon, "/api/v1/nodes")
        assert nodes["count"] == 1 and [n["node_id"] for n in nodes["nodes"]] == ["node-API1"]
        assert "node-API1" in nodes["pools"]["en-zh"]
        node = await get(http, daemon, "/api/v1/nodes/node-API1")
    assert node["languages"] == ["en", "ja", "zh"]
    assert "en-zh" in node["pools"] and "zh>ja" in node["pairs"]
    assert (node["capacity"], node["in_flight"], node["state"]) == (3, 0, "ready")
    assert before - 1000 <= node["last_heartbeat_ms"] <= now_ms() + 1000
    assert node["in_flight_jobs"] == [] and node["recent_failures"] == [] and node["quarantined_until_ms"] is None


async def test_unknown_ids_are_404_with_a_json_body(daemon: Daemon) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as http:
        for path in ("/api/v1/nodes/node-NOPE", "/api/v1/sessions/sess-nope", "/api/v1/jobs/job-nope",
                     "/dashboard/nope.js"):
            assert_error(await get(http, daemon, path, 404), "NOT_FOUND")


async def test_job_timeline_shows_every_attempt_of_a_failover(daemon: Daemon) -> None:
    """The first node takes the job and loses its socket; the second answers. The timeline names both attempts
    (job_id and node), in order, with wall-clock times, and either attempt's job_id finds it."""
    before = now_ms()
    async with httpx.AsyncClient(timeout=WAIT) as http, \
            registered_node(daemon.node_url, "node-LOSE", capacity=1) as (first, _), \
            session(daemon.session_url) as (client, session_id):
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(200)), is_final=True)
        lost = await first.recv_type("job_assign", skip=("node_heartbeat_ack",))
        running = await get(http, daemon, f"/api/v1/jobs/{lost['job_id']}")
        assert running["outcome"] == "in_progress" and running["state"] == "dispatched"
        async with registered_node(daemon.node_url, "node-SAVE") as (second, _):
            await first.ws.aclose()
            assign = await second.recv_type("job_assign", skip=("node_heartbeat_ack",))
            assert assign["job_id"] != lost["job_id"]
            await second.send(**result_for(assign, node_id="node-SAVE"))
            await client.recv_type("translation_result")
            job = await get_when(http, daemon, f"/api/v1/jobs/{lost['job_id']}", lambda j: j["delivered"])
            by_second_id = await get(http, daemon, f"/api/v1/jobs/{assign['job_id']}")
    stages = [(s["stage"], s["node_id"], s["job_id"]) for s in job["timeline"]]
    first_id, second_id = lost["job_id"], assign["job_id"]
    assert stages[:4] == [("finalized", None, first_id), ("created", None, first_id),
                          ("selected", "node-LOSE", first_id), ("dispatched", "node-LOSE", first_id)]
    assert ("node_lost", "node-LOSE", first_id) in stages and ("failover", "node-LOSE", first_id) in stages
    assert stages[-5:] == [("selected", "node-SAVE", second_id), ("dispatched", "node-SAVE", second_id),
                           ("result", "node-SAVE", second_id), ("outcome", "node-SAVE", second_id),
                           ("delivered", "node-SAVE", second_id)]
    assert job["attempt_list"] == [
        {"attempt": 1, "job_id": first_id, "node_id": "node-LOSE", "selected_at_ms": job["timeline"][2]["at_ms"]},
        {"attempt": 2, "job_id": second_id, "node_id": "node-SAVE",
         "selected_at_ms": job["timeline"][-5]["at_ms"]}]
    assert job["job_ids"] == [first_id, second_id] and job["session_id"] == session_id
    assert (job["outcome"], job["attempts"], job["node_id"], job["delivered"]) == ("result", 2, "node-SAVE", True)
    times = [s["at_ms"] for s in job["timeline"]]
    assert times == sorted(times) and before - 1000 <= times[0] and times[-1] <= now_ms() + 1000
    assert job["latency_ms"] == job["timeline"][-1]["elapsed_ms"] > 0
    assert by_second_id["job_ids"] == job["job_ids"]


async def test_recent_jobs_newest_first_with_latency_and_outcome(daemon: Daemon) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as http, \
            registered_node(daemon.node_url, "node-JOBS") as (node, _), \
            session(daemon.session_url) as (client, session_id):
        for index in range(3):
            await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(200)), is_final=True)
            assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
            if index == 1:
                failed = result_for(assign, node_id="node-JOBS", success=False,
                                    error={"code": "NMT_FAILED", "message": "model crashed"})
                await node.send(**failed)
                await client.recv_type("error")
            else:
                await node.send(**result_for(assign, node_id="node-JOBS"))
                await client.recv_type("translation_result")
        jobs = await get_when(http, daemon, "/api/v1/jobs", lambda b: all(j["delivered"] for j in b["jobs"]))
        two = await get(http, daemon, "/api/v1/jobs?limit=2")
        detail = await get(http, daemon, "/api/v1/nodes/node-JOBS")
    assert [j["utterance_index"] for j in jobs["jobs"]] == [2, 1, 0]
    assert [(j["outcome"], j["code"]) for j in jobs["jobs"]] == [("result", None), ("error", "NMT_FAILED"),
                                                                 ("result", None)]
    assert all(j["latency_ms"] > 0 and j["delivered"] and j["node_id"] == "node-JOBS" for j in jobs["jobs"])
    assert [j["utterance_index"] for j in two["jobs"]] == [2, 1]
    assert [f["stage"] for f in detail["recent_failures"]] == ["result"]
    assert detail["recent_failures"][0]["job_id"] == jobs["jobs"][1]["job_id"]


async def test_job_history_is_bounded(nursery: trio.Nursery, make_config: Callable[..., Config]) -> None:
    daemon = await start_daemon(nursery, make_config(observability={"job_history_size": 2}))
    job_ids = []
    async with httpx.AsyncClient(timeout=WAIT) as http, \
            registered_node(daemon.node_url, "node-HIST") as (node, _), \
            session(daemon.session_url) as (client, session_id):
        for _ in range(3):
            await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(200)), is_final=True)
            assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
            job_ids.append(assign["job_id"])
            await node.send(**result_for(assign, node_id="node-HIST"))
            await client.recv_type("translation_result")
        jobs = await get(http, daemon, "/api/v1/jobs")
        assert_error(await get(http, daemon, f"/api/v1/jobs/{job_ids[0]}", 404), "NOT_FOUND")
        await get(http, daemon, f"/api/v1/jobs/{job_ids[1]}")
    assert [j["job_id"] for j in jobs["jobs"]] == job_ids[:0:-1]
    assert (jobs["kept"], jobs["history_size"]) == (2, 2)


async def test_a_cancelled_job_ends_its_timeline_cancelled(daemon: Daemon) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as http, \
            registered_node(daemon.node_url, "node-CANCEL") as (node, _):
        async with session(daemon.session_url) as (client, session_id):
            await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(200)), is_final=True)
            assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
        await node.recv_type("job_cancel", skip=("node_heartbeat_ack",))
        job = await get(http, daemon, f"/api/v1/jobs/{assign['job_id']}")
    assert (job["outcome"], job["code"], job["state"]) == ("cancelled", "session_closed", "done")
    assert job["timeline"][-1]["stage"] == "cancelled" and not job["delivered"]


async def test_sessions_list_and_detail(daemon: Daemon) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as http, \
            registered_node(daemon.node_url, "node-SESS") as (node, _), \
            session(daemon.session_url, src="zh", tgt="en") as (client, session_id), \
            session(daemon.session_url, src="en", tgt="zh"):
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(200)), is_final=True)
        assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)), is_final=False)
        await until(lambda: any(c.footprint()["buffered_bytes"] for c in daemon.scheduler.sessions.live))
        listed = await get(http, daemon, "/api/v1/sessions")
        one = await get(http, daemon, "/api/v1/sessions?limit=1")
        detail = await get(http, daemon, f"/api/v1/sessions/{session_id}")
        await node.send(**result_for(assign, node_id="node-SESS"))
        await client.recv_type("translation_result")
        settled = await get(http, daemon, f"/api/v1/sessions/{session_id}")
    assert listed["count"] == 2 and {s["src_lang"] for s in listed["sessions"]} == {"zh", "en"}
    assert (one["count"], one["listed"], len(one["sessions"])) == (2, 1, 1)
    assert (detail["src_lang"], detail["tgt_lang"], detail["next_index"]) == ("zh", "en", 1)
    assert detail["outcomes_pending"] == 1 and detail["buffered_bytes"] == len(pcm(100))
    assert detail["node_used"] == "node-SESS"
    assert detail["jobs"] == [{"job_id": assign["job_id"], "utterance_index": 0, "tgt_lang": "en",
                               "state": "dispatched", "node_id": "node-SESS", "attempt": 1}]
    assert settled["outcomes_pending"] == 0 and settled["jobs"] == [] and settled["node_used"] == "node-SESS"


async def test_a_wedged_registry_is_503_never_a_hang(nursery: trio.Nursery,
                                                     make_config: Callable[..., Config]) -> None:
    from trioscheduler.app import Scheduler
    from trioscheduler.server.listener import serve

    config = make_config(observability={"api_deadline_seconds": 0.2})
    scheduler = Scheduler(config)

    async def wedged(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    scheduler.registry.run = wedged  # type: ignore[method-assign]
    listening = await nursery.start(lambda task_status: serve(config, scheduler=scheduler, task_status=task_status))
    daemon = Daemon(scheduler, listening)
    async with httpx.AsyncClient(timeout=WAIT) as http, session(daemon.session_url) as (_, session_id):
        for path in ("/api/v1/nodes", "/api/v1/nodes/node-X", "/api/v1/jobs", "/api/v1/jobs/job-X",
                     f"/api/v1/sessions/{session_id}"):
            assert_error(await get(http, daemon, path, 503), "REGISTRY_UNAVAILABLE")
        # Session state lives in the sockets: the list still answers.
        assert (await get(http, daemon, "/api/v1/sessions"))["count"] == 1


async def test_bad_requests_are_json_errors(daemon: Daemon) -> None:
    async with httpx.AsyncClient(timeout=WAIT) as http:
        assert_error(await get(http, daemon, "/api/v1/jobs?limit=x", 400), "BAD_REQUEST")
        assert_error(await get(http, daemon, "/api/v1/sessions?limit=0", 400), "BAD_REQUEST")
        response = await http.post(f"{daemon.listening.http_url}/api/v1/nodes")
        assert response.status_code == 405
        assert_error(response.json(), "METHOD_NOT_ALLOWED")
        stats = await get(http, daemon, "/api/v1/stats")
        assert stats["jobs"]["total"] == 0


@pytest.mark.parametrize(("path", "route"), [
    ("/api/v1/nodes", ("nodes", None)),
    ("/api/v1/nodes/n-1", ("node", "n-1")),
    ("/api/v1/sessions", ("sessions", None)),
    ("/api/v1/sessions/s", ("session", "s")),
    ("/api/v1/jobs", ("jobs", None)),
    ("/api/v1/jobs/j", ("job", "j")),
    ("/dashboard", ("dashboard", "")),
    ("/dashboard/dashboard.js", ("dashboard", "dashboard.js")),
    # Left to http.py's other routes: stats, drain, node drain, anything unknown.
    ("/api/v1/stats", None),
    ("/api/v1/drain", None),
    ("/api/v1/nodes/n-1/drain", None),
    ("/api/v1/nodes/", None),
    ("/health", None),
])
def test_routes_this_module_answers(path: str, route: tuple[str, str | None] | None) -> None:
    assert match_route(path) == route


@given(st.text(st.characters(codec="utf-8"), max_size=60))
def test_any_path_is_one_route_or_left_to_http(tail: str) -> None:
    for path in (tail, "/" + tail, "/api/v1/" + tail, "/dashboard/" + tail):
        route = match_route(path)
        if route is None:
            continue
        name, ident = route
        assert name in ROUTES
        if name != "dashboard":
            assert ident is None or (ident and "/" not in ident)
            assert path.count("/") <= 4  # /api/v1/<kind>[/<id>]: a deeper path (node drain, ...) is http.py's


@given(st.text(max_size=12), st.integers(1, 500))
def test_limit_is_one_to_most_or_a_400(text: str, most: int) -> None:
    try:
        limit = _limit({"limit": text}, most)
    except ApiError as exc:
        assert exc.status == 400 and exc.code == "BAD_REQUEST"
        return
    assert 1 <= limit <= most and limit == min(int(text), most)
