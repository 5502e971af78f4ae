"""HTTP for operators (ASGI, served by hypercorn): /health, /api/v1/stats, /metrics; and the /try page.

WebSockets never reach this app: the door in server/listener.py carries /ws/session and /ws/node in both listener modes
(when ``http_port`` equals ``port`` it hands every other request to hypercorn, and so to this app).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from trioscheduler.app import Scheduler
from trioscheduler.web import TRY_PATH, try_page_asset

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_HISTOGRAMS = (
    ("selection_seconds", "Time to choose a node for one dispatch attempt (inside the registry)"),
    ("dispatch_delay_seconds", "Finalize of an utterance to its job_assign queued for the node, per dispatch"),
)


class SnapshotCollector(Collector):
    """Exposes one registry snapshot; built per scrape so the hot path never touches a metrics object."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot
        yield GaugeMetricFamily("scheduler_nodes", "Registered live nodes", value=len(snap["nodes"]))
        yield GaugeMetricFamily("scheduler_pools", "Language pools with at least one node", value=len(snap["pools"]))
        yield GaugeMetricFamily("scheduler_sessions_active", "Open client sessions",
                                value=snap["sessions"]["active"])
        jobs = GaugeMetricFamily("scheduler_jobs", "Jobs by state", labels=["state"])
        for state in ("dispatched", "waiting"):
            jobs.add_metric([state], snap["jobs"][state])
        yield jobs
        slots = GaugeMetricFamily("scheduler_slots", "Node job slots", labels=["kind"])
        slots.add_metric(["in_flight"], snap["slots"]["in_flight"])
        slots.add_metric(["capacity"], snap["slots"]["capacity"])
        yield slots
        yield GaugeMetricFamily("scheduler_nodes_quarantined", "Nodes in quarantine",
                                value=sum(1 for n in snap["nodes"] if n["quarantined"]))
        yield GaugeMetricFamily("scheduler_registry_inbox_pending", "Requests waiting in the registry inbox",
                                value=snap["inbox_pending"])
        events = CounterMetricFamily("scheduler_events", "Registry and session events", labels=["event"])
        for name, value in sorted({**snap["counters"], **snap["sessions"]["counters"]}.items()):
            events.add_metric([name], value)
        yield events
        yield GaugeMetricFamily("scheduler_connections_open", "Open WebSocket connections (sessions and nodes)",
                                value=snap["edge"]["open"])
        edge = CounterMetricFamily("scheduler_edge_events",
                                   "Connections the door refused or lost (by what happened)", labels=["event"])
        for name, value in sorted(snap["edge"]["counters"].items()):
            edge.add_metric([name], value)
        yield edge
        for name, doc in LATENCY_HISTOGRAMS:
            hist = snap["latency"][name]
            yield HistogramMetricFamily(
                f"scheduler_{name}", doc, sum_value=hist["sum"],
                buckets=[(bound if isinstance(bound, str) else repr(bound), n) for bound, n in hist["buckets"]])


def make_app(scheduler: Scheduler) -> ASGIFramework:
    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
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


async def _respond(send: ASGISendCallable, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _http(scheduler: Scheduler, scope: HTTPScope, send: ASGISendCallable) -> None:
    path, method = scope["path"], scope["method"]
    if method not in ("GET", "HEAD"):
        await _respond(send, 405, b"method not allowed\n", "text/plain")
    elif path == "/health":
        await _respond(send, 200, b"OK", "text/plain")
    elif path in ("/api/v1/stats", "/metrics"):
        snapshot = await scheduler.stats()
        if snapshot is None:
            await _respond(send, 503, b'{"error":"registry did not answer"}', "application/json")
        elif path == "/metrics":
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(snapshot))
            await _respond(send, 200, generate_latest(registry), PROMETHEUS_CONTENT_TYPE)
        else:
            await _respond(send, 200, json.dumps(snapshot).encode(), "application/json")
    elif path.startswith(TRY_PATH) and (asset := try_page_asset(path, scheduler.config.server.port)) is not None:
        await _respond(send, 200, *asset)
    else:
        await _respond(send, 404, b"not found\n", "text/plain")
