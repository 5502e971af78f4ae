"""HTTP for operators (ASGI, served by hypercorn): /health, /api/v1/stats, /metrics.

When ``http_port`` equals ``port`` the same app also carries the two WebSocket endpoints, adapted to the Transport
interface, so one server serves everything.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from trioscheduler.app import Scheduler
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.transport import TransportClosed

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

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
        for name, doc in LATENCY_HISTOGRAMS:
            hist = snap["latency"][name]
            yield HistogramMetricFamily(
                f"scheduler_{name}", doc, sum_value=hist["sum"],
                buckets=[(bound if isinstance(bound, str) else repr(bound), n) for bound, n in hist["buckets"]])


def make_app(scheduler: Scheduler, *, websockets: bool = False) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "http":
            await _http(scheduler, scope, send)
        elif kind == "websocket" and websockets and scope["path"] in ("/ws/session", "/ws/node"):
            transport = AsgiWebSocketTransport(scope, receive, send)
            if await transport.accept():
                if scope["path"] == "/ws/session":
                    await scheduler.handle_session(transport)
                else:
                    await scheduler.handle_node(transport)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _http(scheduler: Scheduler, scope: Scope, send: Send) -> None:
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
    else:
        await _respond(send, 404, b"not found\n", "text/plain")


class AsgiWebSocketTransport:
    """hypercorn's ASGI WebSocket behind the Transport interface."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        client = scope.get("client") or ("?", 0)
        self.peer = f"{client[0]}:{client[1]}"
        self._closed = False

    async def accept(self) -> bool:
        event = await self._receive()
        if event["type"] != "websocket.connect":
            return False
        await self._send({"type": "websocket.accept"})
        return True

    async def get_message(self) -> str | bytes:
        if self._closed:
            raise TransportClosed
        event = await self._receive()
        if event["type"] == "websocket.receive":
            text = event.get("text")
            return text if text is not None else event.get("bytes") or b""
        self._closed = True
        raise TransportClosed

    async def send_message(self, message: str) -> None:
        if self._closed:
            raise TransportClosed
        try:
            await self._send({"type": "websocket.send", "text": message})
        except Exception:  # hypercorn raises its own types once the client is gone
            self._closed = True
            raise TransportClosed from None

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._send({"type": "websocket.close", "code": int(code), "reason": reason})
            except Exception:
                pass
