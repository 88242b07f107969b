"""The resource types fleetsync knows, and one place that resolves a type by name.

A type is identified on the wire by group/version/kind (``apps/v1/Deployment``,
``v1/Pod`` for the core group) and on HTTP paths by group/version/plural. Both the
simulator and (later) the hub's Kubernetes-compatible API serve from this registry,
so a type is described exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fleetsync.errors import FleetsyncError


@dataclass(frozen=True, slots=True)
class PrinterColumn:
    """A column a CRD declares for ``kubectl get`` (``additionalPrinterColumns``)."""

    name: str
    type: str  # integer, number, string, boolean, date
    json_path: str  # a simple JSONPath, e.g. ``.spec.size`` or ``.status.conditions[0].type``
    priority: int = 0  # 0: always shown; more: with ``-o wide``
    description: str = ""
    format: str = ""


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served Kubernetes resource (a group/version/kind and its REST name)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = False
    #: Extra field-selector keys beyond ``metadata.name`` / ``metadata.namespace``.
    selectable_fields: tuple[str, ...] = ()
    #: True for types that are served as custom resources (they get a CRD object).
    custom: bool = False
    #: True for types with a ``scale`` subresource (``kubectl scale``).
    scalable: bool = False
    singular: str = field(default="")
    #: Made by the agent from another source (Prometheus, the cluster's Istio install), not served by
    #: the cluster's API: the hub stores and serves it like any type; the simulator does not serve it.
    collected: bool = False
    #: The columns ``kubectl get`` shows for a type an agent reported (its CRD's printer columns).
    printer_columns: tuple[PrinterColumn, ...] = ()
    #: Reported by an agent (not one of the types this hub was built with).
    reported: bool = False

    def __post_init__(self) -> None:
        if not self.singular:
            object.__setattr__(self, "singular", self.kind.lower())

    @property
    def api_version(self) -> str:
        """``apiVersion`` as it appears in objects: ``v1`` or ``apps/v1``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvk(self) -> str:
        """The wire name of the type: ``apps/v1/Deployment``, ``v1/Pod``."""
        return f"{self.api_version}/{self.kind}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def field_selector_keys(self) -> frozenset[str]:
        return frozenset(("metadata.name", "metadata.namespace", *self.selectable_fields))

    def collection_path(self, namespace: str | None = None) -> str:
        """REST path of the collection, e.g. ``/api/v1/namespaces/ns/pods``."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace and self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def __str__(self) -> str:
        return self.gvk


def _core(kind: str, plural: str, namespaced: bool = True, **kw: object) -> ResourceType:
    return ResourceType(group="", version="v1", kind=kind, plural=plural, namespaced=namespaced, **kw)  # type: ignore[arg-type]


NAMESPACE = _core("Namespace", "namespaces", False, short_names=("ns",), has_status=True, selectable_fields=("status.phase",))
NODE = _core("Node", "nodes", False, short_names=("no",), has_status=True, selectable_fields=("spec.unschedulable",))
SERVICE = _core("Service", "services", short_names=("svc",), categories=("all",), has_status=True, selectable_fields=("spec.clusterIP", "spec.type"))
POD = _core(
    "Pod",
    "pods",
    short_names=("po",),
    categories=("all",),
    has_status=True,
    selectable_fields=(
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
)
CONFIG_MAP = _core("ConfigMap", "configmaps", short_names=("cm",))
#: Served by every cluster, synced by no default: only when ``--types`` names it (its data
#: only with ``--sync-secret-data``), as a Secret's content is the cluster's credentials.
SECRET = _core("Secret", "secrets")
ENDPOINT_SLICE = ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True)
DEPLOYMENT = ResourceType("apps", "v1", "Deployment", "deployments", True, short_names=("deploy",), categories=("all",), has_status=True, scalable=True)
REPLICA_SET = ResourceType("apps", "v1", "ReplicaSet", "replicasets", True, short_names=("rs",), categories=("all",), has_status=True, scalable=True)
STATEFUL_SET = ResourceType("apps", "v1", "StatefulSet", "statefulsets", True, short_names=("sts",), categories=("all",), has_status=True, scalable=True)
DAEMON_SET = ResourceType("apps", "v1", "DaemonSet", "daemonsets", True, short_names=("ds",), categories=("all",), has_status=True)
JOB = ResourceType("batch", "v1", "Job", "jobs", True, categories=("all",), has_status=True, selectable_fields=("status.successful",))
INGRESS = ResourceType("networking.k8s.io", "v1", "Ingress", "ingresses", True, short_names=("ing",), has_status=True)
PERSISTENT_VOLUME_CLAIM = _core("PersistentVolumeClaim", "persistentvolumeclaims", short_names=("pvc",), has_status=True)
#: The clusters' own Kubernetes Events (fleetsync's events are ``fleetsync.io/v1`` FleetsyncEvents).
EVENT = _core(
    "Event",
    "events",
    short_names=("ev",),
    selectable_fields=(
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "type",
    ),
)
CRD = ResourceType(
    "apiextensions.k8s.io",
    "v1",
    "CustomResourceDefinition",
    "customresourcedefinitions",
    False,
    short_names=("crd", "crds"),
    has_status=True,
)


def _istio(group: str, version: str, kind: str, plural: str, short: tuple[str, ...]) -> ResourceType:
    return ResourceType(group, version, kind, plural, True, short_names=short, categories=("istio-io",), has_status=True, custom=True)


VIRTUAL_SERVICE = _istio("networking.istio.io", "v1", "VirtualService", "virtualservices", ("vs",))
DESTINATION_RULE = _istio("networking.istio.io", "v1", "DestinationRule", "destinationrules", ("dr",))
GATEWAY = _istio("networking.istio.io", "v1", "Gateway", "gateways", ("gw",))
SERVICE_ENTRY = _istio("networking.istio.io", "v1", "ServiceEntry", "serviceentries", ("se",))
SIDECAR = _istio("networking.istio.io", "v1", "Sidecar", "sidecars", ())
ENVOY_FILTER = _istio("networking.istio.io", "v1alpha3", "EnvoyFilter", "envoyfilters", ())
PEER_AUTHENTICATION = _istio("security.istio.io", "v1", "PeerAuthentication", "peerauthentications", ("pa",))
REQUEST_AUTHENTICATION = _istio("security.istio.io", "v1", "RequestAuthentication", "requestauthentications", ("ra",))
AUTHORIZATION_POLICY = _istio("security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies", ("ap",))
WASM_PLUGIN = _istio("extensions.istio.io", "v1alpha1", "WasmPlugin", "wasmplugins", ())

KUBERNETES_TYPES: tuple[ResourceType, ...] = (
    NAMESPACE,
    NODE,
    SERVICE,
    POD,
    CONFIG_MAP,
    ENDPOINT_SLICE,
    DEPLOYMENT,
    REPLICA_SET,
    CRD,
    STATEFUL_SET,
    DAEMON_SET,
    JOB,
    INGRESS,
    PERSISTENT_VOLUME_CLAIM,
    EVENT,
)
ISTIO_TYPES: tuple[ResourceType, ...] = (
    VIRTUAL_SERVICE,
    DESTINATION_RULE,
    GATEWAY,
    SERVICE_ENTRY,
    SIDECAR,
    ENVOY_FILTER,
    PEER_AUTHENTICATION,
    REQUEST_AUTHENTICATION,
    AUTHORIZATION_POLICY,
    WASM_PLUGIN,
)
ALL_TYPES: tuple[ResourceType, ...] = KUBERNETES_TYPES + ISTIO_TYPES

#: The mesh's service graph over a window, one object per source -> destination service pair
#: (see :mod:`fleetsync.model.servicegraph`), collected from a Prometheus-compatible API.
SERVICE_EDGE = ResourceType(
    group="metrics.fleetsync.io", version="v1", kind="ServiceEdge", plural="serviceedges", namespaced=True, short_names=("edge",), collected=True
)
#: What the agent found of Istio in its cluster: control planes (istiod), their mesh config, the
#: Istio CRDs installed and absent. One cluster-scoped object named ``istio``.
ISTIO_MESH = ResourceType(group="mesh.fleetsync.io", version="v1", kind="IstioMesh", plural="istiomeshes", namespaced=False, collected=True)
COLLECTED_TYPES: tuple[ResourceType, ...] = (SERVICE_EDGE, ISTIO_MESH)
#: What the hub stores and serves: every cluster type and the collected ones.
HUB_TYPES: tuple[ResourceType, ...] = ALL_TYPES + COLLECTED_TYPES


class UnknownResourceType(FleetsyncError, LookupError):
    """A name that resolves to no known resource type."""


class TypeRegistry:
    """Resolves resource types by REST path parts, by wire name or by kubectl-style name."""

    def __init__(self, types: Iterable[ResourceType] = ALL_TYPES) -> None:
        self._types = tuple(types)
        self._by_path = {(t.group, t.version, t.plural): t for t in self._types}
        self._by_gvk = {t.gvk: t for t in self._types}

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def by_path(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def by_gvk(self, gvk: str) -> ResourceType:
        try:
            return self._by_gvk[gvk]
        except KeyError:
            raise UnknownResourceType(f"unknown resource type {gvk!r}") from None

    def resolve(self, name: str) -> ResourceType:
        """Resolve what a user types (``pods``, ``po``, ``Pod``, ``deployments.apps``, ``apps/v1/Deployment``)."""
        if name in self._by_gvk:
            return self._by_gvk[name]
        base, _, group = name.partition(".")
        lowered = base.lower()
        for t in self._types:
            if group and t.group != group:
                continue
            if lowered in (t.plural, t.singular, t.kind.lower()) or lowered in t.short_names:
                return t
        raise UnknownResourceType(f'the server doesn\'t have a resource type "{name}"')

    def groups(self) -> dict[str, list[str]]:
        """API group name -> served versions (preferred first), core group excluded."""
        groups: dict[str, list[str]] = {}
        for t in self._types:
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        return groups

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [t for t in self._types if t.group == group and t.version == version]
