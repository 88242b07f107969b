"""The hub's Prometheus metrics, in a registry of their own (one per hub, so tests can run several),
with the process's own (:mod:`fleetsync.processmetrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleetsync.processmetrics import register_process_metrics


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        register_process_metrics(self.registry)
        self._declare_applies()
        self._declare_sessions()
        self._declare_refreshes()
        self._declare_batches()
        self._by_type: dict[str, tuple[Counter, Counter]] = {}

    def _declare_applies(self) -> None:
        self.bundles_applied = Counter(
            "fleetsync_bundles_applied_total", "Bundles committed to the store (a conflated run of bundles commits once)", ["type"], registry=self.registry
        )
        self.objects_applied = Counter("fleetsync_objects_applied_total", "Object upserts and deletes committed", ["type"], registry=self.registry)
        self.apply_seconds = Histogram(
            "fleetsync_apply_seconds",
            "Time to commit one bundle",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )

    def _declare_sessions(self) -> None:
        self.connected_agents = Gauge("fleetsync_connected_agents", "Agents with an open session on this hub", registry=self.registry)
        self.rejected = Counter("fleetsync_agents_rejected_total", "Agent connections rejected", ["reason"], registry=self.registry)
        self.hello_throttled = Counter(
            "fleetsync_hello_throttled_total", "Refused Hellos beyond their peer's rate (answered late, recorded nowhere else)", registry=self.registry
        )
        self.resyncs_requested = Counter(
            "fleetsync_resync_requests_total",
            "ResyncRequests sent to agents, by reason (gap, periodic, reactivated, hub-startup, api)",
            ["reason"],
            registry=self.registry,
        )
        self.digests_answered = Counter(
            "fleetsync_digests_answered_total", "Digests compared, by outcome (clean, repair, full)", ["outcome"], registry=self.registry
        )
        self.conflated = Counter(
            "fleetsync_bundles_conflated_total",
            "Bundles merged into a queued one or dropped as redundant while the hub was behind",
            registry=self.registry,
        )
        self.queued_bytes = Gauge("fleetsync_inbox_bytes", "Bytes received and not yet applied, per cluster", ["cluster"], registry=self.registry)
        self.budget_bytes = Gauge(
            "fleetsync_inbox_budget_bytes", "Bytes received and not yet applied, every cluster together (held against --inbox-budget)", registry=self.registry
        )
        self.budget_peak_bytes = Gauge(
            "fleetsync_inbox_budget_peak_bytes", "The most fleetsync_inbox_budget_bytes has been since the hub started", registry=self.registry
        )
        self.feed_changes = Gauge(
            "fleetsync_feed_changes_held",
            "Changes the change feed holds in memory for watches (none while nothing watches)",
            registry=self.registry,
        )
        self.events = Counter("fleetsync_events_total", "Cluster events recorded, by reason", ["reason"], registry=self.registry)
        self.inactive = Gauge("fleetsync_inactive_clusters", "Clusters with no message for the inactivity timeout", registry=self.registry)
        self.refused = Counter(
            "fleetsync_messages_refused_total", "Agent messages refused (malformed, oversized, not allowed)", ["reason"], registry=self.registry
        )
        self.objects = Gauge("fleetsync_objects", "Objects held, per cluster (updated on read of /metrics)", ["cluster"], registry=self.registry)

    def _declare_refreshes(self) -> None:
        self.refreshes = Counter(
            "fleetsync_refreshes_total",
            "Cluster refreshes by the scheduler, by mode (push, pull) and result (ok, failed, discarded: another refresh of the cluster was running)",
            ["mode", "result"],
            registry=self.registry,
        )
        self.refresh_seconds = Histogram(
            "fleetsync_refresh_seconds", "Time to refresh one cluster", ["mode"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry
        )
        self.sync_lag = Gauge(
            "fleetsync_sync_lag_seconds",
            "For the last bundle applied per cluster: commit time minus when the agent saw its newest change",
            ["cluster"],
            registry=self.registry,
        )

    def _declare_batches(self) -> None:
        self.batch_bundles = Histogram(
            "fleetsync_batch_bundles",
            "Bundles committed per store transaction (group commit)",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "fleetsync_batch_seconds",
            "Time to commit one batch of bundles",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.store_errors = Counter(
            "fleetsync_store_errors_total",
            "Failed writes of bundles, by kind (unavailable: the store could not be written; bundle: one bundle could not be; fenced: its session had lost the cluster's lease)",
            ["kind"],
            registry=self.registry,
        )

    def committed(self, bundles: int, seconds: float) -> None:
        self.batch_bundles.observe(bundles)
        self.batch_seconds.observe(seconds)

    def max_lag(self) -> float:
        return max((float(s.value) for m in self.sync_lag.collect() for s in m.samples), default=0.0)

    def applied(self, type_: str, objects: int, seconds: float) -> None:
        children = self._by_type.get(type_)
        if children is None:
            children = self._by_type[type_] = (self.bundles_applied.labels(type_), self.objects_applied.labels(type_))
        children[0].inc()
        children[1].inc(objects)
        self.apply_seconds.observe(seconds)
