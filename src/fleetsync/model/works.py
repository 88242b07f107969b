"""Works: Kubernetes manifests for the clusters a placement picks (seed 002's bidirectional
mode, OCM's ManifestWork).

One place for what the hub and the agent must agree on: a work's shape and limits (the API
validates with :func:`parse_work`), which clusters it targets (:class:`Placement`), how a
manifest is named in status (:func:`manifest_id`), when an applied object counts as
available (:func:`is_available`) and when it has drifted from its manifest
(:func:`drifted`).

A work as the API takes and shows it::

    apiVersion: fleetsync.io/v1
    kind: Work
    metadata: {name: web}
    spec:
      placement:
        clusters: [c1, c2]              # by name, and/or
        clusterSelector: env=prod       # by the clusters' labels (the agents' --label)
      adopt: false                      # true: take over objects that exist and fleetsync did not create
      manifests:
        - {apiVersion: v1, kind: ConfigMap, metadata: {name: web, namespace: default}, data: {...}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from fleetsync.errors import FleetsyncError
from fleetsync.model.objects import CLUSTER_LABEL
from fleetsync.model.selectors import LabelSelector, SelectorError

API_VERSION = "fleetsync.io/v1"
KIND = "Work"
#: The label an agent puts on every object it applies for a work: the work's name. It is how
#: the agent finds what a work owns (drift, removal) and refuses to take over another work's object.
WORK_LABEL = "fleetsync.io/work"
#: The annotation an agent puts on an object it *adopted* (it existed, without the work label,
#: and the work said ``adopt: true``): the work's name. Such an object is handed back (label and
#: annotation removed), never deleted, when the work lets it go.
ADOPTED_ANNOTATION = "fleetsync.io/adopted"
#: The server-side apply field manager of the agent's applies.
FIELD_MANAGER = "fleetsync"

#: Bounds on a work. A work always travels to an agent in one message, so the whole spec stays
#: under the hub's default max message size (512 KiB) and NATS' default max payload (1 MiB).
MAX_MANIFESTS = 100
MAX_MANIFEST_BYTES = 128 * 1024
MAX_WORK_BYTES = 384 * 1024

#: Per-manifest conditions an agent reports, and the hub's own word for "not reported yet".
APPLIED, AVAILABLE, FAILED, PENDING = "Applied", "Available", "Failed", "Pending"
CONDITIONS = (APPLIED, AVAILABLE, FAILED)

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SPEC_FIELDS = {"placement", "manifests", "adopt"}
_PLACEMENT_FIELDS = {"clusters", "clusterSelector"}
#: Metadata the API shows and ignores on input, so that ``get -o yaml`` output applies as is.
_SHOWN_METADATA = {"name", "generation", "resourceVersion", "creationTimestamp", "annotations", "uid"}


class WorkError(FleetsyncError, ValueError):
    """An invalid work, with one (field, message) per problem."""

    def __init__(self, name: str, causes: list[tuple[str, str]]) -> None:
        self.name = name
        self.causes = causes
        super().__init__("; ".join(f"{field}: {message}" for field, message in causes))


def name_problem(name: object) -> str:
    """Why ``name`` cannot name a work ("" if it can): it becomes a label value on every object."""
    if not isinstance(name, str) or not name:
        return "a work needs a name"
    if len(name) > 63 or not _NAME.fullmatch(name):  # (match: '$' also matches before a final newline)
        return f"{name!r} is not a valid work name: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63"
    return ""


@dataclass(frozen=True)
class Placement:
    """Which clusters a work targets: those named, and those whose labels match the selector.

    A cluster's labels are those an admin set on the hub (never its agent's ``--label``
    metadata: an agent must not pick its own works) plus ``fleetsync.io/cluster=NAME``, so
    ``clusterSelector: fleetsync.io/cluster`` targets every cluster. No names and no
    selector: no cluster (a parked work).
    """

    clusters: tuple[str, ...] = ()
    cluster_selector: str = ""

    @cached_property
    def _selector(self) -> LabelSelector | None:
        return LabelSelector.parse(self.cluster_selector) if self.cluster_selector else None

    def targets(self, cluster: str, labels: Mapping[str, str]) -> bool:
        if cluster in self.clusters:
            return True
        if self._selector is None:
            return False
        return self._selector.matches({**labels, CLUSTER_LABEL: cluster})

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.clusters:
            doc["clusters"] = list(self.clusters)
        if self.cluster_selector:
            doc["clusterSelector"] = self.cluster_selector
        return doc


@dataclass(frozen=True)
class WorkSpec:
    placement: Placement
    manifests: tuple[dict[str, Any], ...]
    #: Take over objects that exist without the work label (see :data:`ADOPTED_ANNOTATION`);
    #: False: such a manifest fails, and the object is left as it is.
    adopt: bool = False

    def to_json(self) -> bytes:
        """The stored form: canonical (sorted keys), so an unchanged spec compares equal byte for byte
        (``adopt`` only when true: specs stored before it existed stay the same)."""
        doc: dict[str, Any] = {"placement": self.placement.to_json(), "manifests": list(self.manifests)}
        if self.adopt:
            doc["adopt"] = True
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> WorkSpec:
        """A spec as stored (validated when it was written)."""
        doc = orjson.loads(data)
        placement = doc.get("placement") or {}
        return cls(Placement(tuple(placement.get("clusters") or ()), placement.get("clusterSelector") or ""), tuple(doc["manifests"]), doc.get("adopt") is True)

    @property
    def manifest_ids(self) -> list[str]:
        return [manifest_id(m) for m in self.manifests]


def manifest_id(manifest: Mapping[str, Any]) -> str:
    """``group/version/Kind/namespace/name`` (``v1/Namespace//web`` when there is no namespace)."""
    meta = manifest.get("metadata") or {}
    return f"{manifest.get('apiVersion')}/{manifest.get('kind')}/{meta.get('namespace') or ''}/{meta.get('name')}"


def split_manifest_id(ident: str) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name) of a :func:`manifest_id` (apiVersion may hold a '/')."""
    api_version, kind, namespace, name = ident.rsplit("/", 3)
    return api_version, kind, namespace, name


def parse_work(doc: Any, *, name: str | None = None) -> tuple[str, WorkSpec]:
    """Validate a work as sent to the API; its name (``name``: the one in the URL) and spec.

    Raises WorkError naming every problem found. Manifests are checked for shape and bounds
    only: whether the cluster accepts them is the cluster's to say (the status shows it).
    """
    if not isinstance(doc, dict):
        raise WorkError(name or "", [("", f"a work must be an object, got {type(doc).__name__}")])
    causes: list[tuple[str, str]] = []
    unknown = set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"}
    if unknown:
        causes.append(("", f"unknown fields {sorted(unknown)}"))
    if doc.get("apiVersion", API_VERSION) != API_VERSION:
        causes.append(("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}"))
    if doc.get("kind", KIND) != KIND:
        causes.append(("kind", f"must be {KIND}, got {doc.get('kind')!r}"))
    meta = doc.get("metadata")
    if meta is None:  # (YAML's empty value) as if not given; any other value but an object is refused
        meta = {}
    if not isinstance(meta, dict):
        raise WorkError(name or "", [("metadata", "must be an object")])
    if unknown_meta := set(meta) - _SHOWN_METADATA:
        causes.append(("metadata", f"unknown fields {sorted(unknown_meta)}"))
    given = meta.get("name", name)
    if problem := name_problem(given):
        causes.append(("metadata.name", problem))
    elif name is not None and given != name:
        causes.append(("metadata.name", f"{given!r} does not match the name in the URL ({name!r})"))
    work_name = given if isinstance(given, str) else (name or "")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        causes.append(("spec", "a work needs a spec with placement and manifests"))
        raise WorkError(work_name, causes)
    if unknown_spec := set(spec) - _SPEC_FIELDS:
        causes.append(("spec", f"unknown fields {sorted(unknown_spec)}"))
    placement = _placement(spec.get("placement"), causes)
    manifests = _manifests(spec.get("manifests"), causes)
    adopt = spec.get("adopt")
    if adopt is None:  # (YAML's empty value) as if not given
        adopt = False
    if not isinstance(adopt, bool):
        causes.append(("spec.adopt", f"must be true or false, got {adopt!r}"[:200]))
        adopt = False
    result = WorkSpec(placement, manifests, adopt)
    if not causes and (size := len(result.to_json())) > MAX_WORK_BYTES:
        causes.append(("spec.manifests", f"the work is {size} bytes; at most {MAX_WORK_BYTES} bytes of manifests fit one work: split it"))
    if causes:
        raise WorkError(work_name, causes)
    return work_name, result


def _placement(value: Any, causes: list[tuple[str, str]]) -> Placement:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        causes.append(("spec.placement", "must be an object with clusters and/or clusterSelector"))
        return Placement()
    if unknown := set(value) - _PLACEMENT_FIELDS:
        causes.append(("spec.placement", f"unknown fields {sorted(unknown)}"))
    clusters = value.get("clusters")
    if clusters is None:
        clusters = []
    if not isinstance(clusters, list) or not all(isinstance(c, str) and c for c in clusters):
        causes.append(("spec.placement.clusters", "must be a list of cluster names"))
        clusters = []
    selector = value.get("clusterSelector")
    if selector is None:
        selector = ""
    if not isinstance(selector, str):
        causes.append(("spec.placement.clusterSelector", "must be a label selector string such as 'env=prod,region in (eu,us)'"))
        selector = ""
    try:
        LabelSelector.parse(selector)
    except SelectorError as exc:
        causes.append(("spec.placement.clusterSelector", str(exc)))
    return Placement(tuple(dict.fromkeys(clusters)), selector.strip())


def manifest_problems(value: Any) -> list[tuple[str, str]]:
    """What is wrong with a list of manifests (empty: nothing): what the API checks, for an
    agent to check again what reaches it (whatever sent it)."""
    causes: list[tuple[str, str]] = []
    _manifests(value, causes)
    return causes


def _manifests(value: Any, causes: list[tuple[str, str]]) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        causes.append(("spec.manifests", "a work needs a list of at least one manifest"))
        return ()
    if len(value) > MAX_MANIFESTS:
        causes.append(("spec.manifests", f"{len(value)} manifests; a work holds at most {MAX_MANIFESTS}: split it"))
        return ()
    seen: set[str] = set()
    for i, manifest in enumerate(value):
        where = f"spec.manifests[{i}]"
        if not isinstance(manifest, dict):
            causes.append((where, "must be a Kubernetes object"))
            continue
        for field in ("apiVersion", "kind"):
            if not isinstance(manifest.get(field), str) or not manifest[field]:
                causes.append((f"{where}.{field}", "required"))
        meta = manifest.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            causes.append((f"{where}.metadata.name", "required"))
            continue
        if "/" in meta["name"] or not isinstance(meta.get("namespace", ""), str) or "/" in meta.get("namespace", ""):
            causes.append((f"{where}.metadata", "name and namespace must be strings without '/'"))
            continue
        labels = meta.get("labels") or {}
        if isinstance(labels, dict) and WORK_LABEL in labels:
            causes.append((f"{where}.metadata.labels", f"{WORK_LABEL} is set by fleetsync (the owning work's name)"))
        annotations = meta.get("annotations") or {}
        if isinstance(annotations, dict) and ADOPTED_ANNOTATION in annotations:
            causes.append((f"{where}.metadata.annotations", f"{ADOPTED_ANNOTATION} is set by fleetsync (on objects a work adopted)"))
        if (size := len(orjson.dumps(manifest))) > MAX_MANIFEST_BYTES:
            causes.append((where, f"{manifest_id(manifest)} is {size} bytes; a manifest may have at most {MAX_MANIFEST_BYTES}"))
        ident = manifest_id(manifest)
        if ident in seen:
            causes.append((where, f"{ident} appears twice"))
        seen.add(ident)
    return tuple(value)


# ---- on the cluster --------------------------------------------------------------------------


def is_available(obj: Mapping[str, Any]) -> bool:
    """Whether an applied object is available: workloads when their replicas are, Pods when
    Ready, Jobs when complete; any other object as soon as it exists."""
    kind = obj.get("kind")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if kind in ("Deployment", "ReplicaSet", "StatefulSet"):
        wanted = spec.get("replicas", 1)
        field = "readyReplicas" if kind == "StatefulSet" else "availableReplicas"
        observed = status.get("observedGeneration")
        generation = (obj.get("metadata") or {}).get("generation")
        current = observed is None or generation is None or observed >= generation
        return bool(current and int(status.get(field) or 0) >= int(wanted))
    if kind == "DaemonSet":
        return int(status.get("numberAvailable") or 0) >= int(status.get("desiredNumberScheduled") or 0)
    if kind == "Pod":
        if status.get("phase") == "Succeeded":
            return True
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if kind == "Job":
        return int(status.get("succeeded") or 0) > 0
    return True


def drifted(desired: Any, live: Any) -> bool:
    """Whether ``live`` no longer holds what ``desired`` (a manifest) says.

    Fields the manifest does not set (defaults, status, other managers' fields) are not
    drift; a manifest's field with another value, or missing, is.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return True
        return any(key not in live or drifted(value, live[key]) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return True
        return any(drifted(d, v) for d, v in zip(desired, live, strict=True))
    return bool(desired != live)
