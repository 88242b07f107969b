"""Seeded churn: creates, updates and deletes objects the way a busy cluster does.

Each *operation* is one thing that happens in a cluster (a pod turns unready, a pod
is replaced, a deployment scales, a route's weights shift, a config changes, an
application is removed and another deployed) and writes every object that thing
touches, keeping them consistent (EndpointSlices follow their Service's Pods).
The rate is in operations per second per virtual cluster.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence

from fleetsync.model import types as t
from fleetsync.model.status import ApiError
from fleetsync.sim.workloads import ClusterBuilder, Workload, virtual_service_spec

log = logging.getLogger(__name__)

#: (operation, weight) -- how often each kind of change happens.
OPERATIONS: tuple[tuple[str, int], ...] = (
    ("pod_readiness", 45),
    ("pod_replace", 20),
    ("scale", 10),
    ("istio_route", 12),
    ("config", 8),
    ("app_replace", 5),
    ("event", 10),
    ("job", 3),
    ("statefulset", 4),
)


class Churn:
    """Applies random operations to a set of clusters at ``rate`` operations/s per cluster."""

    def __init__(self, builders: Sequence[ClusterBuilder], *, rate: float, seed: int, tick: float = 0.05) -> None:
        self.builders = list(builders)
        self.rate = rate
        self.tick = tick
        self.rng = random.Random(f"{seed}:churn")
        self.counts: Counter[str] = Counter()
        self._names = [name for name, _ in OPERATIONS]
        self._weights = [w for _, w in OPERATIONS]
        self._credit = 0.0

    def set_rate(self, rate: float) -> None:
        if rate < 0:
            raise ValueError("churn rate must be >= 0")
        self.rate = rate
        log.info("churn rate set to %s operations/s per cluster", rate)

    async def run(self) -> None:
        """Run until cancelled; a rate of 0 pauses without stopping the loop."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            elapsed, last = now - last, now
            if self.rate <= 0:
                self._credit = 0.0
                continue
            self._credit += self.rate * elapsed
            ops, self._credit = int(self._credit), self._credit - int(self._credit)
            for _ in range(ops):
                for builder in self.builders:
                    try:
                        self.step(builder)
                    except Exception:  # churn must outlive any one bad operation
                        log.exception("churn operation failed in cluster %s", builder.cluster.name)

    def step(self, builder: ClusterBuilder) -> str | None:
        """One random operation on one cluster; returns its name (None if nothing to do)."""
        candidates = [w for w in builder.workloads if not w.protected]
        if not candidates:
            return None
        op = self.rng.choices(self._names, self._weights)[0]
        w = self.rng.choice(candidates)
        try:
            getattr(self, f"_{op}")(builder, w)
        except ApiError as exc:
            # A user changed the cluster under us (deleted the namespace or the app's
            # objects through the API): forget the application rather than fight.
            log.info("churn: dropping %s/%s in %s after %s", w.namespace, w.name, builder.cluster.name, exc.message)
            builder.workloads.remove(w)
            return None
        self.counts[op] += 1
        return op

    def _pod_readiness(self, b: ClusterBuilder, w: Workload) -> None:
        pods = b.pods_of(w)
        if not pods:
            return self._scale(b, w)
        stored = self.rng.choice(pods)
        pod = stored.decode()
        now = b.now
        ready = not any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])
        for cond in pod["status"]["conditions"]:
            if cond["type"] in ("Ready", "ContainersReady"):
                cond["status"] = "True" if ready else "False"
                cond["lastTransitionTime"] = now
        app = pod["status"]["containerStatuses"][0]
        app["ready"] = ready
        if ready:  # came back: the container restarted
            app["restartCount"] += 1
            app["state"] = {"running": {"startedAt": now}}
            app["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": now}}
        b.cluster.update(t.POD, pod)
        b.sync_workload(w)
        return None

    def _pod_replace(self, b: ClusterBuilder, w: Workload) -> None:
        pods = b.pods_of(w)
        if pods:
            b.cluster.delete(t.POD, w.namespace, self.rng.choice(pods).name)
        b.create_pod(w)
        b.sync_workload(w)

    def _scale(self, b: ClusterBuilder, w: Workload) -> None:
        pods = b.pods_of(w)
        if len(pods) > 1 and self.rng.random() < 0.5:
            w.replicas = len(pods) - 1
            b.cluster.delete(t.POD, w.namespace, self.rng.choice(pods).name)
        else:
            w.replicas = len(pods) + 1
            b.create_pod(w)
        b.sync_workload(w)

    def _istio_route(self, b: ClusterBuilder, w: Workload) -> None:
        # a cluster without Istio (``--no-istio``) serves no VirtualServices: a config change instead
        vs = b.cluster.get(t.VIRTUAL_SERVICE, w.namespace, w.name) if b.cluster.serves(t.VIRTUAL_SERVICE) else None
        if vs is None:
            return self._config(b, w)
        obj = vs.decode()
        host = obj["spec"]["hosts"][0]
        obj["spec"] = virtual_service_spec(host, self.rng.choice((100, 90, 75, 50, 25, 0)))
        b.cluster.update(t.VIRTUAL_SERVICE, obj)
        return None

    def _config(self, b: ClusterBuilder, w: Workload) -> None:
        cm = b.cluster.get(t.CONFIG_MAP, w.namespace, f"{w.name}-config")
        if cm is None:
            return None
        obj = cm.decode()
        data = obj.setdefault("data", {})
        data["LOG_LEVEL"] = self.rng.choice(("debug", "info", "warn"))
        data["revision"] = str(int(data.get("revision", "0")) + 1)
        b.cluster.update(t.CONFIG_MAP, obj)
        return None

    _EVENTS = (
        ("Normal", "Pulled", "Container image already present on machine"),
        ("Normal", "Started", "Started container app"),
        ("Warning", "BackOff", "Back-off restarting failed container app"),
        ("Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503"),
    )

    def _event(self, b: ClusterBuilder, w: Workload) -> None:
        pods = b.pods_of(w)
        if not pods or not b.kinds.serves():
            return self._config(b, w)
        kind, reason, message = self.rng.choice(self._EVENTS)
        b.kinds.record_event(self.rng.choice(pods).decode(), reason, message, type_=kind)
        return None

    def _job(self, b: ClusterBuilder, w: Workload) -> None:
        if not b.kinds.serves():
            return self._config(b, w)
        b.kinds.create_job(w.namespace)
        return None

    def _statefulset(self, b: ClusterBuilder, w: Workload) -> None:
        if not b.kinds.serves():
            return self._config(b, w)
        b.kinds.restart_stateful_set(w.namespace)
        return None

    def _app_replace(self, b: ClusterBuilder, w: Workload) -> None:
        namespaces = sorted({x.namespace for x in b.workloads if not x.protected})
        b.delete_workload(w)
        b.create_workload(self.rng.choice(namespaces), max(1, w.replicas), istio=b.cluster.serves(t.VIRTUAL_SERVICE))
