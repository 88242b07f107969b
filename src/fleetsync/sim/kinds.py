"""The simulator's other workload kinds: StatefulSets with their PersistentVolumeClaims,
DaemonSets, Jobs, Ingresses, and the cluster's core Events (``v1/Event``).

A platform team's clusters run more than Deployments; these give the agent's ``--types
all`` (and the hub's fleet-wide reads) the kinds users look for, and the churn changes
them (:mod:`fleetsync.sim.churn`): a StatefulSet's readiness, a new Job, an Event about a
pod. Events are capped per cluster (the oldest deleted, as the API server's TTL would),
so a long churn does not grow a cluster without bound.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from fleetsync.model import types as t
from fleetsync.sim.store import ClusterState

#: Events one simulated cluster keeps (the oldest is deleted beyond it).
MAX_EVENTS = 200
#: Jobs kept per namespace (the oldest is deleted beyond it, as a TTL controller would).
MAX_JOBS = 3


class OtherKinds:
    """Creates and changes one cluster's StatefulSets, PVCs, DaemonSets, Jobs, Ingresses and Events."""

    def __init__(self, cluster: ClusterState, rng: random.Random, now: Any) -> None:
        self.cluster = cluster
        self.rng = rng
        self._now = now
        self._events: deque[tuple[str, str]] = deque()
        self._jobs: dict[str, deque[str]] = {}

    def serves(self) -> bool:
        return all(self.cluster.serves(rt) for rt in (t.STATEFUL_SET, t.DAEMON_SET, t.JOB, t.INGRESS, t.PERSISTENT_VOLUME_CLAIM, t.EVENT))

    def populate(self, namespaces: list[str]) -> None:
        """A StatefulSet (and its claim) and an Ingress per namespace, a Job in the first, a DaemonSet in kube-system."""
        if not self.serves():
            return
        for ns in namespaces:
            self.create_stateful_set(ns, "db")
            self.create_ingress(ns, "web")
        if namespaces:
            self.create_job(namespaces[0])
        self.create_daemon_set("kube-system", "node-exporter")

    def _meta(self, ns: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": name, "namespace": ns, "labels": labels}

    def create_stateful_set(self, ns: str, name: str) -> None:
        labels = {"app": name}
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self._meta(ns, f"data-{name}-0", labels),
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}, "storageClassName": "standard"},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}},
        }
        self.cluster.create(t.PERSISTENT_VOLUME_CLAIM, claim)
        sts = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": self._meta(ns, name, labels),
            "spec": {
                "replicas": 1,
                "serviceName": name,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "postgres", "image": "postgres:17"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": claim["spec"]}],
            },
            "status": {"replicas": 1, "readyReplicas": 1, "currentReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
        }
        self.cluster.create(t.STATEFUL_SET, sts)

    def create_daemon_set(self, ns: str, name: str) -> None:
        labels = {"app": name}
        nodes = self.cluster.count(t.NODE)
        ds = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": self._meta(ns, name, labels),
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": name, "image": "prom/node-exporter:v1.8.2"}]}},
            },
            "status": {"desiredNumberScheduled": nodes, "currentNumberScheduled": nodes, "numberReady": nodes, "numberAvailable": nodes},
        }
        self.cluster.create(t.DAEMON_SET, ds)

    def create_ingress(self, ns: str, name: str) -> None:
        ingress = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": self._meta(ns, name, {"app": name}),
            "spec": {
                "ingressClassName": "nginx",
                "rules": [
                    {
                        "host": f"{ns}.example.com",
                        "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": name, "port": {"number": 80}}}}]},
                    }
                ],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": f"203.0.113.{self.rng.randint(1, 254)}"}]}},
        }
        self.cluster.create(t.INGRESS, ingress)

    def create_job(self, ns: str) -> None:
        """A finished Job (a migration run); the namespace's oldest beyond MAX_JOBS is deleted."""
        name = f"migrate-{self.rng.getrandbits(32):08x}"
        now = self._now()
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": self._meta(ns, name, {"job-name": name}),
            "spec": {
                "completions": 1,
                "backoffLimit": 2,
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "migrate", "image": "migrate:1"}]}},
            },
            "status": {"succeeded": 1, "startTime": now, "completionTime": now, "conditions": [{"type": "Complete", "status": "True"}]},
        }
        self.cluster.create(t.JOB, job)
        kept = self._jobs.setdefault(ns, deque())
        kept.append(name)
        while len(kept) > MAX_JOBS:
            old = kept.popleft()
            if self.cluster.get(t.JOB, ns, old):
                self.cluster.delete(t.JOB, ns, old)

    def restart_stateful_set(self, ns: str) -> None:
        """A StatefulSet's pod restarts: not ready, or ready again."""
        found = list(self.cluster.scan(t.STATEFUL_SET, ns))
        if not found:
            return
        sts = self.rng.choice(found).decode()
        status = sts.setdefault("status", {})
        status["readyReplicas"] = 0 if status.get("readyReplicas") else 1
        self.cluster.update(t.STATEFUL_SET, sts)

    def record_event(self, involved: dict[str, Any], reason: str, message: str, *, type_: str = "Normal") -> None:
        """A core Event about ``involved`` (an object's apiVersion, kind, namespace, name, uid)."""
        meta = involved.get("metadata", {})
        ns = meta.get("namespace") or "default"
        name = f"{meta.get('name', 'unknown')}.{self.rng.getrandbits(64):016x}"
        now = self._now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", "v1"),
                "kind": involved.get("kind", ""),
                "namespace": ns,
                "name": meta.get("name", ""),
                "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "kubelet"},
            "reportingComponent": "kubelet",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.cluster.create(t.EVENT, event)
        self._events.append((ns, name))
        while len(self._events) > MAX_EVENTS:
            old_ns, old = self._events.popleft()
            if self.cluster.get(t.EVENT, old_ns, old):
                self.cluster.delete(t.EVENT, old_ns, old)
