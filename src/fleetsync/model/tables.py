"""Server-side printing: ``meta.k8s.io/v1`` Table responses, which ``kubectl get`` asks for.

kubectl renders whatever columns the server sends, so these define what a user sees
for each type (the same columns the real apiserver prints). A fleet-wide Table (the hub's
``/api/...`` paths, every cluster at once) has a ``Cluster`` column before ``Name``, as
Clusterpedia prints it: names repeat across clusters, and kubectl cannot say which row is
from where otherwise. Per-cluster Tables keep kubectl's usual columns.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fleetsync.model import printercolumns
from fleetsync.model.objects import CLUSTER_LABEL, dig, human_duration, parse_rfc3339
from fleetsync.model.types import PrinterColumn

Row = list[Any]
Column = tuple[str, str, int]  # (name, type, priority: 0 = always, 1 = -o wide)


def _age(obj: dict[str, Any]) -> str:
    created = dig(obj, "metadata.creationTimestamp")
    if not created:
        return "<unknown>"
    return human_duration(time.time() - parse_rfc3339(created))


def _pod(obj: dict[str, Any]) -> Row:
    statuses = dig(obj, "status.containerStatuses") or []
    containers = dig(obj, "spec.containers") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    status = dig(obj, "status.reason") or dig(obj, "status.phase") or "Unknown"
    for s in statuses:
        waiting = (s.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            status = waiting["reason"]
    if dig(obj, "metadata.deletionTimestamp"):
        status = "Terminating"
    return [f"{ready}/{len(containers)}", status, restarts, _age(obj), dig(obj, "status.podIP") or "<none>", dig(obj, "spec.nodeName") or "<none>"]


def _service(obj: dict[str, Any]) -> Row:
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in dig(obj, "spec.ports") or []) or "<none>"
    external = ",".join(i.get("ip") or i.get("hostname", "") for i in dig(obj, "status.loadBalancer.ingress") or []) or "<none>"
    selector = ",".join(f"{k}={v}" for k, v in (dig(obj, "spec.selector") or {}).items()) or "<none>"
    return [dig(obj, "spec.type") or "ClusterIP", dig(obj, "spec.clusterIP") or "<none>", external, ports, _age(obj), selector]


def _deployment(obj: dict[str, Any]) -> Row:
    spec = dig(obj, "spec.replicas") or 0
    containers = dig(obj, "spec.template.spec.containers") or []
    return [
        f"{dig(obj, 'status.readyReplicas') or 0}/{spec}",
        dig(obj, "status.updatedReplicas") or 0,
        dig(obj, "status.availableReplicas") or 0,
        _age(obj),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
    ]


def _replica_set(obj: dict[str, Any]) -> Row:
    return [dig(obj, "spec.replicas") or 0, dig(obj, "status.replicas") or 0, dig(obj, "status.readyReplicas") or 0, _age(obj)]


def _node(obj: dict[str, Any]) -> Row:
    ready: dict[str, Any] = next((c for c in dig(obj, "status.conditions") or [] if c.get("type") == "Ready"), {})
    roles = ",".join(k.rsplit("/", 1)[1] for k in (dig(obj, "metadata.labels") or {}) if k.startswith("node-role.kubernetes.io/")) or "<none>"
    internal = next((a["address"] for a in dig(obj, "status.addresses") or [] if a.get("type") == "InternalIP"), "<none>")
    return ["Ready" if ready.get("status") == "True" else "NotReady", roles, _age(obj), dig(obj, "status.nodeInfo.kubeletVersion") or "", internal]


def _namespace(obj: dict[str, Any]) -> Row:
    return [dig(obj, "status.phase") or "Active", _age(obj)]


def _config_map(obj: dict[str, Any]) -> Row:
    return [len(dig(obj, "data") or {}) + len(dig(obj, "binaryData") or {}), _age(obj)]


def _endpoint_slice(obj: dict[str, Any]) -> Row:
    ports = ",".join(str(p.get("port")) for p in dig(obj, "ports") or []) or "<unset>"
    addresses = [a for e in dig(obj, "endpoints") or [] for a in e.get("addresses", [])]
    shown = ",".join(addresses[:3]) + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")
    return [dig(obj, "addressType") or "", ports, shown or "<unset>", _age(obj)]


def _crd(obj: dict[str, Any]) -> Row:
    return [dig(obj, "metadata.creationTimestamp") or ""]


def _event(obj: dict[str, Any]) -> Row:
    last = dig(obj, "lastTimestamp") or dig(obj, "eventTime") or dig(obj, "metadata.creationTimestamp")
    seen = human_duration(time.time() - parse_rfc3339(last)) if last else "<unknown>"
    involved = f"{str(dig(obj, 'involvedObject.kind') or '').lower()}/{dig(obj, 'involvedObject.name') or ''}"
    return [seen, dig(obj, "type") or "", dig(obj, "reason") or "", involved, dig(obj, "message") or ""]


def _since(rfc: str | None) -> str:
    return human_duration(time.time() - parse_rfc3339(rfc)) if rfc else "<never>"


def _cluster(obj: dict[str, Any]) -> Row:
    lag = dig(obj, "status.syncLagSeconds")
    nodes = dig(obj, "status.nodeCount")
    labels = ",".join(f"{k}={v}" for k, v in (dig(obj, "metadata.labels") or {}).items()) or "<none>"
    return [
        dig(obj, "status.phase") or "",
        "True" if dig(obj, "status.connected") else "False",
        dig(obj, "status.agent") or "<none>",
        _since(dig(obj, "status.lastHeartbeatTime")),
        "<unknown>" if lag is None else f"{lag:.3f}s",
        dig(obj, "status.kubernetesVersion") or "<unknown>",
        "<unknown>" if nodes is None else nodes,
        labels,
        dig(obj, "status.hub") or "<none>",
    ]


def _fleetsync_event(obj: dict[str, Any]) -> Row:
    return [
        obj.get("id"),
        _since(dig(obj, "metadata.creationTimestamp")),
        obj.get("cluster") or "",
        obj.get("reason") or "",
        obj.get("type") or "",
        obj.get("message") or "",
    ]


def _default(obj: dict[str, Any]) -> Row:
    return [_age(obj)]


_PRINTERS: dict[str, tuple[list[Column], Callable[[dict[str, Any]], Row]]] = {
    "Pod": (
        [("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "integer", 0), ("Age", "string", 0), ("IP", "string", 1), ("Node", "string", 1)],
        _pod,
    ),
    "Service": (
        [
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        _service,
    ),
    "Deployment": (
        [
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
        ],
        _deployment,
    ),
    "ReplicaSet": ([("Desired", "integer", 0), ("Current", "integer", 0), ("Ready", "integer", 0), ("Age", "string", 0)], _replica_set),
    "Node": ([("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0), ("Version", "string", 0), ("Internal-IP", "string", 1)], _node),
    "Namespace": ([("Status", "string", 0), ("Age", "string", 0)], _namespace),
    "ConfigMap": ([("Data", "integer", 0), ("Age", "string", 0)], _config_map),
    "EndpointSlice": ([("AddressType", "string", 0), ("Ports", "string", 0), ("Endpoints", "string", 0), ("Age", "string", 0)], _endpoint_slice),
    "CustomResourceDefinition": ([("Created At", "date", 0)], _crd),
    "Cluster": (
        [
            ("Status", "string", 0),
            ("Connected", "string", 0),
            ("Agent", "string", 0),
            ("Last Heartbeat", "string", 0),
            ("Sync Lag", "string", 0),
            ("Version", "string", 0),
            ("Nodes", "string", 0),
            ("Labels", "string", 0),
            ("Hub", "string", 1),
        ],
        _cluster,
    ),
    "FleetsyncEvent": (
        [("ID", "integer", 0), ("Age", "string", 0), ("Cluster", "string", 0), ("Reason", "string", 0), ("Type", "string", 0), ("Message", "string", 0)],
        _fleetsync_event,
    ),
    "Event": ([("Last Seen", "string", 0), ("Type", "string", 0), ("Reason", "string", 0), ("Object", "string", 0), ("Message", "string", 0)], _event),
}


def _columns(kind: str) -> tuple[list[Column], Callable[[dict[str, Any]], Row]]:
    return _PRINTERS.get(kind, ([("Age", "date", 0)], _default))


def table(
    kind: str,
    objects: Iterable[dict[str, Any]],
    *,
    resource_version: str = "",
    continue_token: str | None = None,
    remaining: int | None = None,
    include_object: str = "Metadata",
    fleet: bool = False,
    printer_columns: Sequence[PrinterColumn] = (),
) -> dict[str, Any]:
    """A Table of ``objects`` (all of one ``kind``); ``include_object`` is None | Metadata | Object.
    ``fleet``: the objects are from several clusters (each labelled ``fleetsync.io/cluster``),
    shown in a first ``Cluster`` column. ``printer_columns``: the columns a reported type's CRD
    declares, shown instead of the default Age."""
    columns, printer = _columns(kind)
    if printer_columns:
        columns, printer = printercolumns.columns(printer_columns), functools.partial(printercolumns.row, printer_columns)
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}]
    if fleet:
        definitions.insert(0, {"name": "Cluster", "type": "string", "format": "", "description": "The cluster the object is from.", "priority": 0})
    definitions += [{"name": n, "type": ty, "format": "", "description": n, "priority": p} for n, ty, p in columns]
    rows = []
    for obj in objects:
        try:
            cells = printer(obj)
        except (TypeError, ValueError, AttributeError):  # an agent's object of an unexpected shape: its row says so, the table is still served
            cells = ["<invalid>"] * len(columns)
        row: dict[str, Any] = {"cells": [dig(obj, "metadata.name"), *cells]}
        if fleet:
            row["cells"].insert(0, (dig(obj, "metadata.labels") or {}).get(CLUSTER_LABEL, ""))
        if include_object == "Object":
            row["object"] = obj
        elif include_object == "Metadata":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}
        rows.append(row)
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    if remaining is not None:
        meta["remainingItemCount"] = remaining
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": definitions, "rows": rows}
