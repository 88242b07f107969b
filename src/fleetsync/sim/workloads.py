"""Realistic objects for a simulated cluster, and the controller logic that keeps them consistent.

The simulator plays the part of the controllers it does not run: a workload is a
Service + Deployment + ReplicaSet + Pods + EndpointSlice (+ a ConfigMap and Istio
routing), and :func:`sync_workload` recomputes what kube-controller-manager would
(the EndpointSlice from the ready Pods, Deployment and ReplicaSet status) after any
change to its Pods.
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass, field
from typing import Any

from fleetsync.model import types as t
from fleetsync.model.objects import rfc3339
from fleetsync.sim.fieldmanager import encode_fields, field_set
from fleetsync.sim.kinds import OtherKinds
from fleetsync.sim.store import ClusterState

ISTIO_VERSION = "1.24.2"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "istio-system")
_SERVICE_WORDS = (
    "frontend", "cart", "checkout", "payment", "shipping", "email", "currency", "recommend", "ads", "catalog",
    "search", "reviews", "ratings", "inventory", "orders", "accounts", "auth", "gateway", "billing", "notify",
)  # fmt: skip
_ZONES = ("a", "b", "c")


def _suffix(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choices("bcdfghjklmnpqrstvwxz2456789", k=n))


def _controller_managed(obj: dict[str, Any], manager: str, now: str) -> dict[str, Any]:
    """Give a generated object the managedFields a real controller would leave (agents must strip them)."""
    obj["metadata"]["managedFields"] = [
        {
            "manager": manager,
            "operation": "Update",
            "apiVersion": obj["apiVersion"],
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": encode_fields(field_set(obj, include_status=True)),
        }
    ]
    return obj


@dataclass
class Workload:
    """One application in a simulated cluster, by name; its objects live in the cluster's store."""

    namespace: str
    name: str
    replicas: int
    version: int = 1
    protected: bool = False  # system workloads (istiod) are never deleted by churn
    template_hash: str = ""
    image: str = ""
    pod_labels: dict[str, str] = field(default_factory=dict)
    container: str = "app"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def rs_name(self) -> str:
        return f"{self.name}-{self.template_hash}"


def _container(w: Workload, port: int) -> dict[str, Any]:
    container: dict[str, Any] = {"name": w.container, "image": w.image, "ports": [{"containerPort": port, "protocol": "TCP"}]}
    if w.env:
        container["env"] = [{"name": k, "value": v} for k, v in w.env.items()]
    return container


class ClusterBuilder:
    """Creates and changes the objects of one simulated cluster, deterministically from a seed."""

    def __init__(self, cluster: ClusterState, *, seed: int, region: str) -> None:
        self.cluster = cluster
        self.rng = random.Random(f"{seed}:{cluster.name}:objects")
        self.region = region
        self.nodes: list[str] = []
        self.workloads: list[Workload] = []
        self._ip = 0
        self._names: set[str] = set()
        #: StatefulSets, DaemonSets, Jobs, Ingresses, PVCs and Events (a random sequence of their own:
        #: the other objects are the same as without them).
        self.kinds = OtherKinds(cluster, random.Random(f"{seed}:{cluster.name}:kinds"), lambda: self.now)

    @property
    def now(self) -> str:
        return rfc3339(self.cluster.clock())

    # ---- population --------------------------------------------------------------

    def populate(self, *, pods: int, namespaces: int, pods_per_service: int, istio: bool = True) -> None:
        """Create the initial cluster: namespaces, nodes, istiod, CRDs, apps totalling ``pods`` pods."""
        app_namespaces = [f"ns-{i}" for i in range(max(1, namespaces))]
        for ns in (*SYSTEM_NAMESPACES, *app_namespaces):
            self.create_namespace(ns, injection=ns in app_namespaces)
        for i in range(max(3, (pods + 99) // 100)):
            self.create_node(f"{self.cluster.name}-node-{i}", zone=_ZONES[i % len(_ZONES)])
        if istio:
            self._create_istio_control_plane()
        services = max(1, (pods + pods_per_service - 1) // pods_per_service) if pods else 0
        left = pods
        for i in range(services):
            replicas = min(pods_per_service, left)
            left -= replicas
            self.create_workload(app_namespaces[i % len(app_namespaces)], replicas, istio=istio)
        if istio:
            for ns in app_namespaces:
                self._create_namespace_mesh_policy(ns)
        self.kinds.populate(app_namespaces)

    def create_namespace(self, name: str, *, injection: bool = False) -> None:
        labels = {"kubernetes.io/metadata.name": name}
        if injection:
            labels["istio-injection"] = "enabled"
        self.cluster.create(
            t.NAMESPACE,
            {"metadata": {"name": name, "labels": labels}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}},
        )
        self.cluster.create(
            t.CONFIG_MAP,
            {
                "metadata": {
                    "name": "kube-root-ca.crt",
                    "namespace": name,
                    "annotations": {
                        "kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc."
                    },
                },
                "data": {
                    "ca.crt": "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBADAKBggqhkjOPQQDAjAjMSEwHwYDVQQDDBhrM3Mtc2Vy\n-----END CERTIFICATE-----\n"
                },
            },
        )

    def create_node(self, name: str, *, zone: str) -> None:
        self.nodes.append(name)
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "m5.xlarge",
                    "topology.kubernetes.io/region": self.region,
                    "topology.kubernetes.io/zone": f"{self.region}{zone}",
                },
            },
            "spec": {"podCIDR": f"10.{len(self.nodes)}.0.0/24", "providerID": f"sim://{name}"},
            "status": {
                "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": "3920m", "memory": "15Gi", "pods": "110"},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": self.now,
                        "lastTransitionTime": self.now,
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": f"192.168.{len(self.nodes) // 250}.{len(self.nodes) % 250 + 1}"},
                    {"type": "Hostname", "address": name},
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.31.0-sim",
                    "containerRuntimeVersion": "containerd://1.7.0",
                    "osImage": "fleetsync sim",
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kernelVersion": "6.1.0",
                },
            },
        }
        self.cluster.create(t.NODE, _controller_managed(node, "kubelet", self.now))

    def _create_istio_control_plane(self) -> None:
        for rtype in t.ISTIO_TYPES:
            self.cluster.create(t.CRD, crd_for(rtype))
        self.cluster.create(
            t.CONFIG_MAP,
            {
                "metadata": {"name": "istio", "namespace": "istio-system", "labels": {"istio.io/rev": "default", "app": "istiod"}},
                "data": {
                    "mesh": "accessLogFile: /dev/stdout\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\nenablePrometheusMerge: true\nrootNamespace: istio-system\ntrustDomain: cluster.local\n",
                    "meshNetworks": "networks: {}",
                },
            },
        )
        # CLUSTER_ID: the name Istio's metrics give this cluster, as the simulated mesh's exporter does
        istiod = Workload(
            "istio-system",
            "istiod",
            replicas=1,
            protected=True,
            image=f"docker.io/istio/pilot:{ISTIO_VERSION}",
            container="discovery",
            env={"CLUSTER_ID": self.cluster.name},
        )
        self._create_workload_objects(istiod, port=15012, istio=False)
        ns = "istio-system"
        self._istio(
            t.GATEWAY,
            ns,
            "ingress-gateway",
            {
                "selector": {"istio": "ingressgateway"},
                "servers": [
                    {
                        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                        "hosts": ["*.example.com"],
                        "tls": {"mode": "SIMPLE", "credentialName": "ingress-cert"},
                    }
                ],
            },
        )
        self._istio(
            t.SERVICE_ENTRY,
            ns,
            "external-payments-api",
            {
                "hosts": ["api.payments.example.com"],
                "location": "MESH_EXTERNAL",
                "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
                "resolution": "DNS",
            },
        )
        self._istio(
            t.ENVOY_FILTER,
            ns,
            "stats-tags",
            {
                "configPatches": [
                    {
                        "applyTo": "HTTP_FILTER",
                        "match": {"context": "SIDECAR_INBOUND"},
                        "patch": {"operation": "INSERT_BEFORE", "value": {"name": "istio.stats"}},
                    }
                ]
            },
        )
        self._istio(
            t.REQUEST_AUTHENTICATION,
            ns,
            "jwt",
            {"jwtRules": [{"issuer": "https://auth.example.com", "jwksUri": "https://auth.example.com/.well-known/jwks.json"}]},
        )
        self._istio(
            t.WASM_PLUGIN,
            ns,
            "request-id",
            {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "url": "oci://registry.example.com/wasm/request-id:1.0", "phase": "AUTHN"},
        )

    def _create_namespace_mesh_policy(self, ns: str) -> None:
        self._istio(t.PEER_AUTHENTICATION, ns, "default", {"mtls": {"mode": "STRICT"}})
        self._istio(t.SIDECAR, ns, "default", {"egress": [{"hosts": ["./*", "istio-system/*"]}]})

    def _istio(self, rtype: t.ResourceType, namespace: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> None:
        self.cluster.create(rtype, {"metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "spec": spec})

    # ---- workloads -------------------------------------------------------------------

    def _fresh_name(self) -> str:
        while True:
            name = f"{self.rng.choice(_SERVICE_WORDS)}-{_suffix(self.rng, 4)}"
            if name not in self._names:
                self._names.add(name)
                return name

    def create_workload(self, namespace: str, replicas: int, *, istio: bool = True) -> Workload:
        name = self._fresh_name()
        w = Workload(namespace, name, replicas=replicas, image=f"registry.example.com/{name.split('-')[0]}:1.{self.rng.randint(0, 9)}.0")
        self._create_workload_objects(w, port=8080, istio=istio)
        return w

    def _create_workload_objects(self, w: Workload, *, port: int, istio: bool) -> None:
        w.template_hash = hashlib.sha1(f"{w.name}{w.image}".encode()).hexdigest()[:10]
        w.pod_labels = {"app": w.name, "version": "v1", "pod-template-hash": w.template_hash}
        if w.name == "istiod":
            w.pod_labels |= {"istio": "pilot", "istio.io/rev": "default"}
        self.workloads.append(w)
        ns, now = w.namespace, self.now
        svc: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": w.name, "namespace": ns, "labels": {"app": w.name}},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": f"10.96.{self.rng.randint(0, 255)}.{self.rng.randint(1, 254)}",
                "selector": {"app": w.name},
                "ports": [{"name": "http", "port": 80 if port == 8080 else port, "targetPort": port, "protocol": "TCP"}],
                "sessionAffinity": "None",
            },
            "status": {"loadBalancer": {}},
        }
        self.cluster.create(t.SERVICE, svc)
        deploy: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": w.name, "namespace": ns, "labels": {"app": w.name}, "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {
                "replicas": w.replicas,
                "selector": {"matchLabels": {"app": w.name}},
                "template": {
                    "metadata": {"labels": {"app": w.name, "version": "v1"}},
                    "spec": {"containers": [_container(w, port)]},
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            },
            "status": {},
        }
        self.cluster.create(t.DEPLOYMENT, _controller_managed(deploy, "kube-controller-manager", now))
        rs: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": w.rs_name,
                "namespace": ns,
                "labels": {"app": w.name, "pod-template-hash": w.template_hash},
                "ownerReferences": [_owner("apps/v1", "Deployment", w.name, deploy["metadata"]["uid"])],
            },
            "spec": {
                "replicas": w.replicas,
                "selector": {"matchLabels": {"app": w.name, "pod-template-hash": w.template_hash}},
                "template": deploy["spec"]["template"],
            },
            "status": {},
        }
        self.cluster.create(t.REPLICA_SET, _controller_managed(rs, "kube-controller-manager", now))
        eps: dict[str, Any] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{w.name}-{_suffix(self.rng)}",
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": w.name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [_owner("v1", "Service", w.name, svc["metadata"]["uid"])],
            },
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }
        self.cluster.create(t.ENDPOINT_SLICE, eps)
        if w.name != "istiod":
            self.cluster.create(
                t.CONFIG_MAP,
                {
                    "metadata": {"name": f"{w.name}-config", "namespace": ns, "labels": {"app": w.name}},
                    "data": {"LOG_LEVEL": "info", "FEATURE_FLAGS": "", "revision": "1"},
                },
            )
        if istio:
            host = f"{w.name}.{ns}.svc.cluster.local"
            self._istio(t.VIRTUAL_SERVICE, ns, w.name, virtual_service_spec(host, 100), {"app": w.name})
            self._istio(
                t.DESTINATION_RULE,
                ns,
                w.name,
                {
                    "host": host,
                    "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 100}}, "outlierDetection": {"consecutive5xxErrors": 5, "interval": "30s"}},
                    "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
                },
                {"app": w.name},
            )
            if self.rng.random() < 0.3:
                self._istio(
                    t.AUTHORIZATION_POLICY,
                    ns,
                    w.name,
                    {
                        "selector": {"matchLabels": {"app": w.name}},
                        "action": "ALLOW",
                        "rules": [
                            {"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/frontend"]}}], "to": [{"operation": {"methods": ["GET", "POST"]}}]}
                        ],
                    },
                    {"app": w.name},
                )
        for _ in range(w.replicas):
            self.create_pod(w)
        self.sync_workload(w)

    def delete_workload(self, w: Workload) -> None:
        """Delete an application's objects (as a cascade delete of its Deployment and Service would)."""
        self.workloads.remove(w)
        for pod in list(self.pods_of(w)):
            self.cluster.delete(t.POD, w.namespace, pod.name)
        for rtype in (t.ENDPOINT_SLICE, t.VIRTUAL_SERVICE, t.DESTINATION_RULE, t.AUTHORIZATION_POLICY, t.CONFIG_MAP):
            if not self.cluster.serves(rtype):  # a cluster without Istio
                continue
            for obj in list(self.cluster.scan(rtype, w.namespace)):
                if obj.labels.get("app") == w.name or obj.labels.get("kubernetes.io/service-name") == w.name:
                    self.cluster.delete(rtype, w.namespace, obj.name)
        for rtype, name in ((t.REPLICA_SET, w.rs_name), (t.DEPLOYMENT, w.name), (t.SERVICE, w.name)):
            if self.cluster.get(rtype, w.namespace, name):
                self.cluster.delete(rtype, w.namespace, name)

    def pods_of(self, w: Workload) -> list[Any]:
        # Pod names start with the workload's name (via its ReplicaSet's); the label decides.
        return [p for p in self.cluster.scan_prefix(t.POD, w.namespace, f"{w.name}-") if p.labels.get("app") == w.name]

    def _next_ip(self) -> str:
        self._ip += 1
        return f"10.244.{(self._ip >> 8) & 255}.{self._ip & 255}"

    def create_pod(self, w: Workload) -> None:
        rs = self.cluster.get(t.REPLICA_SET, w.namespace, w.rs_name)
        rs_uid = rs.decode()["metadata"]["uid"] if rs else ""
        name = f"{w.rs_name}-{_suffix(self.rng)}"
        node = self.rng.choice(self.nodes)
        now = self.now
        containers = [
            {
                "name": "app",
                "image": w.image,
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": f"{w.name}-config", "key": "LOG_LEVEL"}}},
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}],
                "terminationMessagePath": "/dev/termination-log",
                "imagePullPolicy": "IfNotPresent",
            }
        ]
        if w.name != "istiod":
            containers.append(
                {
                    "name": "istio-proxy",
                    "image": f"docker.io/istio/proxyv2:{ISTIO_VERSION}",
                    "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
                    "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "10m", "memory": "40Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
                    "imagePullPolicy": "IfNotPresent",
                }
            )
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": w.namespace,
                "labels": dict(w.pod_labels),
                "annotations": {
                    "sidecar.istio.io/status": '{"containers":["istio-proxy"],"revision":"default"}',
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": "15020",
                },
                "ownerReferences": [_owner("apps/v1", "ReplicaSet", w.rs_name, rs_uid)],
            },
            "spec": {
                "containers": containers,
                "nodeName": node,
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "serviceAccountName": "default",
                "terminationGracePeriodSeconds": 30,
                "dnsPolicy": "ClusterFirst",
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            },
            "status": {
                "phase": "Running",
                "conditions": [_condition(c, "True", now) for c in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")],
                "hostIP": "192.168.0.1",
                "podIP": self._next_ip(),
                "startTime": now,
                "qosClass": "Burstable",
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                        "containerID": f"containerd://{_suffix(self.rng, 24)}",
                    }
                    for c in containers
                ],
            },
        }
        pod["status"]["podIPs"] = [{"ip": pod["status"]["podIP"]}]
        self.cluster.create(t.POD, _controller_managed(pod, "kubelet", now))

    def sync_workload(self, w: Workload) -> None:
        """Recompute what the controllers derive from a workload's Pods: EndpointSlice, ReplicaSet and Deployment status."""
        pods = [p.decode() for p in self.pods_of(w)]
        ready = sum(1 for p in pods if _pod_ready(p))
        for eps_stored in self.cluster.scan(t.ENDPOINT_SLICE, w.namespace):
            if eps_stored.labels.get("kubernetes.io/service-name") != w.name:
                continue
            eps = eps_stored.decode()
            eps["endpoints"] = [
                {
                    "addresses": [p["status"]["podIP"]],
                    "conditions": {"ready": _pod_ready(p), "serving": _pod_ready(p), "terminating": False},
                    "nodeName": p["spec"]["nodeName"],
                    "targetRef": {"kind": "Pod", "namespace": w.namespace, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]},
                }
                for p in sorted(pods, key=lambda p: p["metadata"]["name"])
            ]
            self.cluster.update(t.ENDPOINT_SLICE, eps)
        status = {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready, "fullyLabeledReplicas": len(pods)}
        rs_stored = self.cluster.get(t.REPLICA_SET, w.namespace, w.rs_name)
        if rs_stored is not None:
            rs = rs_stored.decode()
            rs["spec"]["replicas"] = w.replicas
            rs["status"] = {**status, "observedGeneration": rs["metadata"].get("generation", 1)}
            self.cluster.update(t.REPLICA_SET, rs)
        deploy_stored = self.cluster.get(t.DEPLOYMENT, w.namespace, w.name)
        if deploy_stored is not None:
            deploy = deploy_stored.decode()
            generation = deploy["metadata"].get("generation", 1) + (deploy["spec"].get("replicas") != w.replicas)
            deploy["spec"]["replicas"] = w.replicas  # the store moves generation with the spec, as we predict here
            available = ready >= max(1, w.replicas - 1)
            deploy["status"] = {
                "observedGeneration": generation,
                "replicas": len(pods),
                "updatedReplicas": len(pods),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "unavailableReplicas": max(0, w.replicas - ready),
                "conditions": [
                    {
                        "type": "Available",
                        "status": "True" if available else "False",
                        "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                        "message": "Deployment has minimum availability." if available else "Deployment does not have minimum availability.",
                    },
                    {
                        "type": "Progressing",
                        "status": "True",
                        "reason": "NewReplicaSetAvailable",
                        "message": f'ReplicaSet "{w.rs_name}" has successfully progressed.',
                    },
                ],
            }
            self.cluster.update(t.DEPLOYMENT, deploy)


def _owner(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True, "blockOwnerDeletion": True}


def _condition(kind: str, status: str, now: str) -> dict[str, Any]:
    return {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": now}


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", ()))


def virtual_service_spec(host: str, v1_weight: int) -> dict[str, Any]:
    return {
        "hosts": [host],
        "http": [
            {
                "route": [
                    {"destination": {"host": host, "subset": "v1"}, "weight": v1_weight},
                    {"destination": {"host": host, "subset": "v2"}, "weight": 100 - v1_weight},
                ],
                "timeout": "5s",
                "retries": {"attempts": 3, "perTryTimeout": "2s"},
            }
        ],
    }


def crd_for(rtype: t.ResourceType) -> dict[str, Any]:
    """The CustomResourceDefinition an Istio install would create for ``rtype``."""
    return {
        "metadata": {
            "name": f"{rtype.plural}.{rtype.group}",
            "labels": {"app": "istio-pilot", "chart": "istio", "heritage": "Tiller", "release": "istio"},
        },
        "spec": {
            "group": rtype.group,
            "names": {
                "kind": rtype.kind,
                "listKind": rtype.list_kind,
                "plural": rtype.plural,
                "singular": rtype.singular,
                "shortNames": list(rtype.short_names),
                "categories": list(rtype.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": rtype.version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
        "status": {
            "acceptedNames": {"kind": rtype.kind, "plural": rtype.plural},
            "storedVersions": [rtype.version],
            "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}],
        },
    }


def random_name_suffix(rng: random.Random) -> str:
    """The 5 characters an apiserver appends to ``generateName``."""
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=5))
