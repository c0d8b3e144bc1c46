"""The Prometheus endpoint: what the fleet is doing, for dashboards and alerts.

Off unless server.toml sets ``metrics_listen`` (``127.0.0.1:9464``); served
on a port of its own, plain HTTP, by the ecosystem's client library
(prometheus_client), so the names, types and text format are what every
Prometheus expects. Put it on loopback or a management network: it names
no secret, but it does name nodes.

Most values are read when Prometheus scrapes (nothing to keep in step):

- ``plumb_agents_connected``: agents with a live session;
- ``plumb_nodes{state}``: nodes by the state ``plumb nodes`` shows;
- ``plumb_compliance_ratio{waivers}``: the fleet's compliant / expected,
  without (``waivers="excluded"``) and with waived results;
- ``plumb_resources{state}``: the expected resources by compliance state;
- ``plumb_drift_events_total``: drift events stored so far;
- ``plumb_revision``: the latest revision.

Two are counted as things happen, in this process (they start at 0 when it
does, as Prometheus counters may):

- ``plumb_reports_received_total``: run reports stored from sessions;
- ``plumb_push_applied_seconds``: from sending a node a new catalog to its
  agent's acknowledgement that it verified and took it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from protos import plumb_pb2 as pb
from server.compliance import node_state
from server.errors import PlumbServerError
from server.fleet import Fleet
from server.hub import Hub
from server.store import Store

#: Buckets of push -> applied latency, seconds: from a LAN round trip to a slow host.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
NODE_STATES = ("connected", "disconnected", "pending", "no_report", "revoked")


class FleetCollector(Collector):
    """Values read from the fleet at each scrape."""

    def __init__(self, store: Store, fleet: Fleet, hub: Hub) -> None:
        self.store = store
        self.fleet = fleet
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        connected = GaugeMetricFamily(
            "plumb_agents_connected", "Agents with a live session to this server."
        )
        connected.add_metric([], self.hub.connected_count())
        yield connected

        result = self.fleet.compliance()
        now = time.time()
        states = dict.fromkeys(NODE_STATES, 0)
        for node in result.nodes:
            state = node_state(
                node,
                self.hub.connected(node.name),
                result.revision,
                now,
                self.fleet.no_report_after_runs,
            )
            states[state] = states.get(state, 0) + 1
        nodes = GaugeMetricFamily(
            "plumb_nodes", "Enrolled nodes by the state plumb nodes shows.", labels=["state"]
        )
        for state, count in sorted(states.items()):
            nodes.add_metric([state], count)
        yield nodes

        ratio = GaugeMetricFamily(
            "plumb_compliance_ratio",
            "The fleet's compliant / expected resources (NaN when nothing is expected).",
            labels=["waivers"],
        )
        fleet = result.fleet
        ratio.add_metric(["excluded"], _ratio(fleet.percent))
        ratio.add_metric(["included"], _ratio(fleet.percent_with_waivers))
        yield ratio

        resources = GaugeMetricFamily(
            "plumb_resources",
            "Resources the latest revision expects, by compliance state.",
            labels=["state"],
        )
        for state, count in fleet.ordered_counts().items():
            resources.add_metric([state], count)
        yield resources

        drift = CounterMetricFamily(
            "plumb_drift_events", "Drift events stored (found by the agents' runs)."
        )
        drift.add_metric([], self.store.count_drift_events())
        yield drift

        revision = GaugeMetricFamily("plumb_revision", "The latest revision.")
        revision.add_metric([], result.revision)
        yield revision


def _ratio(percent: float | None) -> float:
    return float("nan") if percent is None else percent / 100


class Metrics:
    """The registry the endpoint serves, and the events it counts as they happen."""

    def __init__(self, store: Store, fleet: Fleet, hub: Hub) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(FleetCollector(store, fleet, hub))
        self.reports = Counter(
            "plumb_reports_received",
            "Run reports this server process stored from agents' sessions.",
            registry=self.registry,
        )
        self.applied = Histogram(
            "plumb_push_applied_seconds",
            "From sending a node a new catalog to its agent acknowledging it.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        hub.listen(self._reported, lambda node: None)
        hub.on_acknowledged(self.applied.observe)

    def _reported(self, node: str, report: pb.Report) -> None:
        self.reports.inc()

    def serve(self, address: str) -> Callable[[], None]:
        """Serve on ``address`` (HOST:PORT) until the returned function is called."""
        host, _, port = address.rpartition(":")
        try:
            server, thread = start_http_server(
                int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry
            )
        except (OSError, ValueError) as exc:
            raise PlumbServerError(
                f"cannot serve metrics on {address!r} (metrics_listen in server.toml): {exc}"
            ) from exc

        def stop() -> None:
            server.shutdown()
            thread.join(timeout=5)

        return stop
