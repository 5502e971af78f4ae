"""Issue 11, point 1: /metrics names every family ``trioscheduler_*`` (counters ``_total``, durations ``_seconds``)
and exports what an operator needs, scraped over real sockets and parsed with prometheus_client's parser."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.wire import Daemon, b64, pcm, registered_node, result_for, session, until

#: Family (as the parser names it: counters without ``_total``) → its type.
EXPECTED = {
    "trioscheduler_jobs_created": "counter",
    "trioscheduler_jobs_completed": "counter",
    "trioscheduler_jobs_failed": "counter",
    "trioscheduler_jobs_cancelled": "counter",
    "trioscheduler_failovers": "counter",
    "trioscheduler_results_dropped": "counter",
    "trioscheduler_selection_seconds": "histogram",
    "trioscheduler_dispatch_delay_seconds": "histogram",
    "trioscheduler_result_seconds": "histogram",
    "trioscheduler_jobs_waiting": "gauge",
    "trioscheduler_jobs_in_flight": "gauge",
    "trioscheduler_nodes": "gauge",
    "trioscheduler_pools": "gauge",
    "trioscheduler_sessions": "gauge",
    "trioscheduler_registry_inbox_depth": "gauge",
    "trioscheduler_draining": "gauge",
    "trioscheduler_connections_open": "gauge",
    "trioscheduler_edge_events": "counter",
    "trioscheduler_events": "counter",
    # prometheus-client's own collectors
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "python_info": "gauge",
    "python_gc_collections": "counter",
}


def _samples(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    types: dict[str, str] = {}
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, values


def value(values: dict[Any, float], name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


async def test_a_round_trip_shows_in_every_family_with_sane_values(daemon: Daemon) -> None:
    http_url = daemon.listening.http_url
    async with registered_node(daemon.node_url, "node-MET1") as (node, _), \
            session(daemon.session_url) as (client, session_id), httpx.AsyncClient() as http:
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(200)), is_final=True)
        assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
        # Mid-flight: the job is in flight in its pool.
        _, during = _samples((await http.get(f"{http_url}/metrics")).text)
        await node.send(**result_for(assign, node_id="node-MET1"))
        await client.recv_type("translation_result")
        await node.send(**result_for(assign, node_id="node-MET1"))  # again: a late result, dropped
        await until(lambda: daemon.scheduler.registry.counters["results_dropped_finished_job"] == 1)
        response = await http.get(f"{http_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    types, values = _samples(response.text)
    for name, kind in EXPECTED.items():
        assert types.get(name) == kind, (name, types.get(name))
    assert not [name for name in types if name.startswith("scheduler_")]
    for name, kind in types.items():  # the conventions: counters end in _total, durations in _seconds
        if name.startswith("trioscheduler_") and "latency" in name:
            assert name.endswith("_seconds"), name
        if kind == "counter":
            assert all(sample_name == f"{name}_total" for sample_name, _ in values
                       if sample_name.startswith(f"{name}_") or sample_name == name), name

    assert sum(v for (n, _), v in during.items() if n == "trioscheduler_jobs_in_flight") == 1
    assert value(values, "trioscheduler_jobs_created_total") == 1
    assert value(values, "trioscheduler_jobs_completed_total", outcome="result") == 1
    assert value(values, "trioscheduler_results_dropped_total", kind="late") == 1
    for kind in ("duplicate", "foreign", "unknown"):
        assert value(values, "trioscheduler_results_dropped_total", kind=kind) == 0
    for reason in ("job_timeout", "node_lost", "duplicate_after_reconnect"):
        assert value(values, "trioscheduler_failovers_total", reason=reason) == 0
    for histogram in ("selection", "dispatch_delay", "result"):
        assert value(values, f"trioscheduler_{histogram}_seconds_count") == 1
        assert value(values, f"trioscheduler_{histogram}_seconds_bucket", le="+Inf") == 1
        assert value(values, f"trioscheduler_{histogram}_seconds_sum") >= 0
    assert value(values, "trioscheduler_nodes", state="ready") == 1
    for state in ("full", "quarantined", "draining"):
        assert value(values, "trioscheduler_nodes", state=state) == 0
    assert value(values, "trioscheduler_pools") >= 1
    assert value(values, "trioscheduler_sessions") == 1
    assert value(values, "trioscheduler_registry_inbox_depth") >= 0
    assert value(values, "trioscheduler_draining") == 0
    assert sum(v for (n, _), v in values.items() if n == "trioscheduler_jobs_in_flight") == 0
    assert value(values, "process_resident_memory_bytes") > 0


async def test_failed_jobs_are_counted_by_code(daemon: Daemon) -> None:
    async with registered_node(daemon.node_url, "node-MET2") as (node, _), \
            session(daemon.session_url) as (client, session_id), httpx.AsyncClient() as http:
        await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(200)), is_final=True)
        assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
        await node.send(**result_for(assign, node_id="node-MET2", success=False,
                                     error={"code": "PROCESSING_ERROR", "message": "model crashed"}))
        assert (await client.recv_type("error"))["code"] == "PROCESSING_ERROR"
        _, values = _samples((await http.get(f"{daemon.listening.http_url}/metrics")).text)
    assert value(values, "trioscheduler_jobs_failed_total", code="PROCESSING_ERROR") == 1
    assert value(values, "trioscheduler_result_seconds_count") == 1
