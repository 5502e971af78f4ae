"""The Prometheus exposition of ``/metrics``: every family is named ``trioscheduler_*`` (counters ``_total``,
durations ``_seconds``) and built per scrape from one scheduler snapshot (``Scheduler.stats``, taken by the
registry under a deadline), so the hot paths never touch a metrics object. prometheus-client's own process,
platform and garbage-collector collectors are added to each scrape.

docs/operations.md lists the families and the alerts worth setting on them.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

PREFIX = "trioscheduler_"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_HISTOGRAMS = (
    ("selection_seconds", "Time to choose a node for one dispatch attempt (inside the registry)"),
    ("dispatch_delay_seconds", "Finalize of an utterance to its job_assign queued for the node, per dispatch"),
    ("result_seconds", "Finalize of an utterance to its job's result accepted from the node"),
)
#: Node states the registry reports (registry/actor.py ``_node_state``); each gets a sample, 0 included.
NODE_STATES = ("ready", "full", "quarantined", "draining")
#: Registry counter ``results_dropped_<why>`` → the kind it is exported as.
DROPPED_RESULT_KINDS = {
    "finished_job": "late",
    "old_attempt": "late",
    "duplicate_reply": "duplicate",
    "duplicate_after_reconnect": "duplicate",
    "foreign_node": "foreign",
    "unknown_job": "unknown",
}
FAILOVER_REASONS = ("job_timeout", "node_lost", "duplicate_after_reconnect")


def _with_prefix(counters: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {name[len(prefix):]: value for name, value in counters.items() if name.startswith(prefix)}


class SnapshotCollector(Collector):
    """Exposes one scheduler snapshot (``Scheduler.stats``)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot
        registry_counters: Mapping[str, int] = snap["counters"]
        session_counters: Mapping[str, int] = snap["sessions"]["counters"]
        counters = collections.Counter(registry_counters)
        counters.update(session_counters)
        counters.update(snap.get("gateway", {}).get("counters", {}))
        counters.update(snap.get("node_sockets", {}).get("counters", {}))  # the node sockets' message budget

        nodes = GaugeMetricFamily(f"{PREFIX}nodes", "Registered live nodes by state", labels=["state"])
        by_state = collections.Counter(node["state"] for node in snap["nodes"])
        for state in (*NODE_STATES, *sorted(set(by_state) - set(NODE_STATES))):
            nodes.add_metric([state], by_state[state])
        yield nodes
        yield GaugeMetricFamily(f"{PREFIX}pools", "Language pools with at least one node", value=len(snap["pools"]))
        yield GaugeMetricFamily(f"{PREFIX}sessions", "Open client sessions", value=snap["sessions"]["active"])
        waiting = GaugeMetricFamily(f"{PREFIX}jobs_waiting", "Jobs waiting for a slot, per pool (selection key)",
                                    labels=["pool"])
        for key, count in sorted(snap["waiting_by_key"].items()):
            waiting.add_metric([key], count)
        yield waiting
        in_flight = GaugeMetricFamily(f"{PREFIX}jobs_in_flight", "Jobs dispatched to a node, per pool (selection key)",
                                      labels=["pool"])
        for key, count in sorted(snap["in_flight_by_key"].items()):
            in_flight.add_metric([key], count)
        yield in_flight
        slots = GaugeMetricFamily(f"{PREFIX}node_slots", "Node job slots", labels=["kind"])
        slots.add_metric(["in_flight"], snap["slots"]["in_flight"])
        slots.add_metric(["capacity"], snap["slots"]["capacity"])
        yield slots
        yield GaugeMetricFamily(f"{PREFIX}registry_inbox_depth", "Requests waiting in the registry inbox",
                                value=snap["inbox_pending"])
        yield GaugeMetricFamily(f"{PREFIX}draining", "1 while the scheduler drains", value=int(snap["draining"]))

        yield CounterMetricFamily(f"{PREFIX}jobs_created", "Jobs the registry created",
                                  value=registry_counters.get("jobs_created", 0))
        completed = CounterMetricFamily(f"{PREFIX}jobs_completed", "Jobs that ended in a result or a missing_result",
                                        labels=["outcome"])
        completed.add_metric(["result"], registry_counters.get("outcome_result", 0))
        for reason, value in sorted(_with_prefix(registry_counters, "outcome_missing_").items()):
            completed.add_metric([f"missing_{reason}"], value)
        yield completed
        failed = CounterMetricFamily(f"{PREFIX}jobs_failed", "Utterances that ended in an error, by code",
                                     labels=["code"])
        for code, value in sorted(_with_prefix(counters, "outcome_error_").items()):
            failed.add_metric([code], value)
        yield failed
        cancelled = CounterMetricFamily(f"{PREFIX}jobs_cancelled", "Jobs the session no longer wanted, by reason",
                                        labels=["reason"])
        for reason, value in sorted(_with_prefix(registry_counters, "jobs_cancelled_").items()):
            cancelled.add_metric([reason], value)
        yield cancelled
        failovers = CounterMetricFamily(f"{PREFIX}failovers", "Jobs moved off a node, by reason", labels=["reason"])
        for reason in FAILOVER_REASONS:
            failovers.add_metric([reason], registry_counters.get(f"failovers_{reason}", 0))
        yield failovers
        dropped = CounterMetricFamily(f"{PREFIX}results_dropped", "Node results not applied, by kind",
                                      labels=["kind"])
        kinds: collections.Counter[str] = collections.Counter(dict.fromkeys(DROPPED_RESULT_KINDS.values(), 0))
        for why, value in _with_prefix(registry_counters, "results_dropped_").items():
            kinds[DROPPED_RESULT_KINDS.get(why, why)] += value
        for kind, value in sorted(kinds.items()):
            dropped.add_metric([kind], value)
        yield dropped
        events = CounterMetricFamily(f"{PREFIX}events", "Registry and session events, by name", labels=["event"])
        for name, value in sorted(counters.items()):
            events.add_metric([name], value)
        yield events
        yield GaugeMetricFamily(f"{PREFIX}connections_open", "Open WebSocket connections (sessions and nodes)",
                                value=snap["edge"]["open"])
        edge = CounterMetricFamily(f"{PREFIX}edge_events",
                                   "Connections the door refused or lost (by what happened)", labels=["event"])
        for name, value in sorted(snap["edge"]["counters"].items()):
            edge.add_metric([name], value)
        yield edge
        for name, doc in LATENCY_HISTOGRAMS:
            hist = snap["latency"][name]
            yield HistogramMetricFamily(
                f"{PREFIX}{name}", doc, sum_value=hist["sum"],
                buckets=[(bound if isinstance(bound, str) else repr(bound), n) for bound, n in hist["buckets"]])


def exposition(snapshot: dict[str, Any]) -> bytes:
    """The text format of one scrape: the snapshot's families, then the process, platform and gc collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    ProcessCollector(namespace="", registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry)
