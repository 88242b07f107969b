"""The OpenAPI 3.0 document of the hub's HTTP API (``GET /openapi.json``).

It is built from the :class:`~fleetsync.model.types.TypeRegistry` the hub serves, so the
Kubernetes-style paths it lists are exactly the types the hub knows:

- the fleetsync endpoints: ``/healthz``, ``/livez``, ``/readyz``, ``/metrics``, ``/api/v1/clusters``,
  ``POST /api/v1/clusters/{cluster}/resync``, ``/apis/fleetsync.io/v1/fleetsyncevents``, ``/apis/fleetsync.io/v1/clusters`` and ``/api/v1/servicegraph`` (the
  mesh's service graph, merged across clusters);
- ``/api/v1/settings`` and ``/api/v1/settings/{key}``: the hub's runtime settings, to list, set and unset;
- ``/api/v1/clusters/{cluster}/labels``: the labels an admin sets on a cluster (placement and ``clusterSelector``);
- ``/api/v1/works`` and ``/api/v1/works/{name}``: works (manifests for the clusters a placement
  picks) to list, create, read, replace and delete, each with its status per cluster; bodies
  are JSON or YAML (``Content-Type: application/yaml``);
- ``/1.0/feature-gates`` (seed 004's shapes: microcluster's envelope and error);
- per cluster, under ``/clusters/{cluster}``: discovery, and for every type its
  collection across namespaces, its namespaced collection and a get by name (the types the
  hub stores: the clusters' own, and those its agents collect, such as ``serviceedges`` and ``istiomeshes``);
- fleet-wide (every cluster as one API server): discovery, and for every type its
  collection across namespaces and its namespaced collection (names are per cluster, so
  there is no get by name there: it answers 400 and is not listed).

Schemas are deliberately loose where the hub passes objects through (objects are the
agents' own), and exact where the hub builds the answer itself (the ``Status`` of every
error, the fleetsync resources and works). A work's request body is described as exactly as
a JSON schema can say what :func:`~fleetsync.model.works.parse_work` takes (what it cannot say,
such as the size limits or a manifest given twice, the schemas' descriptions do). A watch (``watch=true``) answers ``application/json`` too,
but as a stream of JSON objects, one per line (``WatchEvent``s; the events of ``/apis/fleetsync.io/v1/fleetsyncevents``),
which a single JSON schema cannot describe; the operations' descriptions say so.

Everything but ``/healthz``, ``/livez``, ``/readyz`` and this document takes a bearer token
(``Authorization: Bearer TOKEN``; see :mod:`fleetsync.api.auth`).
"""

from __future__ import annotations

from typing import Any

from fleetsync import __version__
from fleetsync.api.servicegraph import PATH as SERVICE_GRAPH_PATH
from fleetsync.api.settings import PREFIX as SETTINGS_PREFIX
from fleetsync.api.settings import SETTINGS
from fleetsync.hub.events import REASONS
from fleetsync.model.clusterlabels import MAX_LABELS
from fleetsync.model.gates import GATE_KEY, MAX_KEY_LENGTH
from fleetsync.model.names import CLUSTER_NAME_PATTERN
from fleetsync.model.servicegraph import QUANTILES
from fleetsync.model.types import ResourceType, TypeRegistry
from fleetsync.model.works import API_VERSION as WORK_API_VERSION
from fleetsync.model.works import KIND as WORK_KIND
from fleetsync.model.works import MAX_MANIFEST_BYTES, MAX_MANIFESTS, MAX_WORK_BYTES, WORK_LABEL

JSON = "application/json"
Schema = dict[str, Any]

_STRING: Schema = {"type": "string"}
_NAME: Schema = {"type": "string", "minLength": 1}
_COUNT: Schema = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1}
_BOOLEAN: Schema = {"type": "boolean"}


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


# ---- schemas ---------------------------------------------------------------------------------


def _status() -> Schema:
    """The Kubernetes ``Status`` every error of the hub is (kubectl prints its ``message``)."""
    return {
        "type": "object",
        "description": "A failure, as the Kubernetes API reports it: `message` says what is wrong.",
        "required": ["kind", "apiVersion", "status", "message", "reason", "code"],
        "properties": {
            "kind": {"type": "string", "enum": ["Status"]},
            "apiVersion": {"type": "string", "enum": ["v1"]},
            "metadata": {"type": "object"},
            "status": {"type": "string", "enum": ["Failure"]},
            "message": {"type": "string", "minLength": 1},
            "reason": {"type": "string", "minLength": 1},
            "code": {"type": "integer", "minimum": 400, "maximum": 599},
            "details": {
                "type": "object",
                "description": "What the failure is about; a 422 for an invalid body names each problem in `causes`.",
                "properties": {
                    "name": _STRING,
                    "group": _STRING,
                    "kind": _STRING,
                    "causes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["reason", "message", "field"],
                            "properties": {
                                "reason": _STRING,
                                "message": _STRING,
                                "field": {"type": "string", "description": "The field at fault (`spec.manifests[0].kind`; empty: the whole object)."},
                            },
                        },
                    },
                },
            },
        },
    }


def _object() -> Schema:
    """A synced object as a read shows it (the agent's, with the hub revision as its ``resourceVersion``)."""
    return {
        "type": "object",
        "required": ["metadata"],
        "properties": {
            "kind": {"type": "string"},
            "apiVersion": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": ["name", "resourceVersion"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "resourceVersion": {"type": "string", "pattern": "^[0-9]+$"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    }


def _object_list() -> Schema:
    """A list (``PodList``, ...), or the ``Table`` that ``Accept: ...;as=Table`` asks for."""
    return {
        "type": "object",
        "required": ["kind", "apiVersion", "metadata"],
        "properties": {
            "kind": {"type": "string"},
            "apiVersion": {"type": "string"},
            "metadata": {
                "type": "object",
                "required": ["resourceVersion"],
                "properties": {"resourceVersion": {"type": "string", "pattern": "^[0-9]+$"}, "continue": {"type": "string"}},
            },
            "items": {"type": "array", "items": _ref("schemas", "Object")},
        },
    }


def _watch_event() -> Schema:
    """One line of a watch stream (``watch=true``); an ERROR carries a ``Status``."""
    return {
        "type": "object",
        "required": ["type", "object"],
        "properties": {"type": {"type": "string", "enum": ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]}, "object": {"type": "object"}},
    }


def _fleetsync_list(kind: str, item: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["kind", "apiVersion", "items"],
        "properties": {
            "kind": {"type": "string", "enum": [kind]},
            "apiVersion": {"type": "string", "enum": ["fleetsync.io/v1"]},
            "items": {"type": "array", "items": item},
        },
    }


def _cluster() -> Schema:
    counts = {"type": "object", "additionalProperties": {"type": "integer"}}
    return {
        "type": "object",
        "required": ["name", "status", "stale", "connected", "objects", "types", "errors", "istio", "serviceGraph", "gates"],
        "properties": {
            "name": {"type": "string"},
            "status": {"type": "string", "enum": ["never", "active", "inactive"]},
            "stale": {"type": "boolean"},
            "connected": {"type": "boolean"},
            "agent": _STRING,
            "incarnation": _STRING,
            "hub": _STRING,
            "connectedAt": {"type": "number"},
            "lastHeartbeat": {"type": "number"},
            "labels": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Set by an admin (`fleetsync clusters label`): what works' placement and `clusterSelector` match.",
            },
            "metadata": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "As the cluster's agent reported it (its `--label`s): shown, never trusted for placement.",
            },
            "objects": counts,
            "types": {"type": "array", "items": {"type": "string"}},
            "errors": {"type": "object", "additionalProperties": {"type": "string"}},
            "istio": {
                "type": "object",
                "nullable": True,
                "description": "What the cluster's agent found of Istio (its IstioMesh object); null: it has not reported any.",
                "required": ["controlPlanes", "absentCrds"],
                "properties": {
                    "controlPlanes": {
                        "type": "array",
                        "description": "The istiod Deployments, one per namespace and revision (none: Istio is not installed).",
                        "items": {
                            "type": "object",
                            "required": ["namespace", "revision", "version", "readyReplicas"],
                            "properties": {
                                "namespace": _STRING,
                                "revision": {"type": "string", "description": "`istio.io/rev` (`default` without one)."},
                                "version": {"type": "string", "description": "istiod's image tag (empty: unknown)."},
                                "readyReplicas": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                    "absentCrds": {"type": "integer", "minimum": 0, "description": "How many of the Istio types fleetsync syncs the cluster does not serve."},
                },
            },
            "serviceGraph": {
                "type": "object",
                "nullable": True,
                "description": "The cluster's metrics provider, as its agent reports it; null: the agent has none (it collects no service graph).",
                "required": ["healthy", "error"],
                "properties": {
                    "healthy": {"type": "boolean", "description": "Its last collection worked."},
                    "error": {"type": "string", "description": "Why it did not (empty when healthy)."},
                },
            },
            "gates": {
                "type": "object",
                "description": "Whether the cluster has the fleet's feature gates: its agent's applied snapshot against the newest.",
                "required": ["applied", "current"],
                "properties": {
                    "applied": {
                        "type": "integer",
                        "nullable": True,
                        "minimum": 0,
                        "description": "The gate revision the agent reports its local config reflects; null: it never reported one.",
                    },
                    "current": {"type": "integer", "minimum": 0, "description": "The fleet's newest gate revision (deletes included)."},
                },
            },
        },
    }


def _event() -> Schema:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "id", "time", "cluster", "reason", "message"],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["fleetsync.io/v1"]},
            "kind": {"type": "string", "enum": ["FleetsyncEvent"]},
            "metadata": {"type": "object", "properties": {"name": _STRING, "creationTimestamp": _STRING}},
            "id": {"type": "integer"},
            "time": {"type": "number"},
            "cluster": {"type": "string"},
            "reason": {"type": "string", "enum": list(REASONS)},
            "type": _STRING,
            "message": _STRING,
            "hub": _STRING,
        },
    }


def _cluster_object() -> Schema:
    """A ``fleetsync.io/v1`` Cluster (``model/clusters.py``)."""
    condition = {
        "type": "object",
        "required": ["type", "status", "reason"],
        "properties": {"type": _STRING, "status": {"type": "string", "enum": ["True", "False", "Unknown"]}, "reason": _STRING, "message": _STRING},
    }
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "status"],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["fleetsync.io/v1"]},
            "kind": {"type": "string", "enum": ["Cluster"]},
            "metadata": {"type": "object", "required": ["name"], "properties": {"name": _STRING, "labels": {"type": "object"}}},
            "status": {
                "type": "object",
                "required": ["phase", "connected", "conditions"],
                "properties": {
                    "phase": {"type": "string", "enum": ["never", "active", "inactive"]},
                    "connected": {"type": "boolean"},
                    "kubernetesVersion": {"type": "string", "nullable": True},
                    "nodeCount": {"type": "integer", "nullable": True},
                    "syncLagSeconds": {"type": "number", "nullable": True},
                    "conditions": {"type": "array", "items": condition},
                },
            },
        },
    }


def _resync_request() -> Schema:
    return {
        "type": "object",
        "required": ["kind", "apiVersion", "cluster", "type", "message"],
        "properties": {
            "kind": {"type": "string", "enum": ["ResyncRequest"]},
            "apiVersion": {"type": "string", "enum": ["fleetsync.io/v1"]},
            "cluster": {"type": "string"},
            "type": {"type": "string"},
            "message": {"type": "string"},
        },
    }


def _loose(*required: str) -> Schema:
    """A document the hub builds for Kubernetes clients (discovery, version): an object with these keys."""
    return {"type": "object", "required": list(required)}


def _schemas() -> dict[str, Schema]:
    return {
        "Status": _status(),
        "Object": _object(),
        "ObjectList": _object_list(),
        "WatchEvent": _watch_event(),
        "Cluster": _cluster(),
        "ClusterList": _fleetsync_list("ClusterList", _ref("schemas", "Cluster")),
        "FleetsyncEvent": _event(),
        "FleetsyncEventList": _fleetsync_list("FleetsyncEventList", _ref("schemas", "FleetsyncEvent")),
        "ClusterObject": _cluster_object(),
        "ClusterObjectList": _fleetsync_list("ClusterList", _ref("schemas", "ClusterObject")),
        "ResyncRequest": _resync_request(),
        "Version": _loose("major", "minor", "gitVersion"),
        "APIVersions": _loose("kind", "versions"),
        "APIGroupList": _loose("kind", "groups"),
        "APIGroup": _loose("kind", "name", "versions"),
        "APIResourceList": _loose("kind", "groupVersion", "resources"),
    }


# ---- parameters ------------------------------------------------------------------------------


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _parameters() -> dict[str, Schema]:
    return {
        "cluster": _path("cluster", {"type": "string", "pattern": CLUSTER_NAME_PATTERN}, "A cluster's name (as its agent's `--cluster-id`)."),
        "namespace": _path("namespace", _NAME, "A namespace of the cluster."),
        "name": _path("name", _NAME, "The object's name."),
        "labelSelector": _query("labelSelector", _STRING, "Only objects whose labels match (`app=web,tier!=db`, `env in (a,b)`, `!gone`)."),
        "fieldSelector": _query("fieldSelector", _STRING, "Only objects whose fields match (`metadata.name=x`, and the type's selectable fields)."),
        "limit": _query("limit", _COUNT, "At most this many items (0: all); `metadata.continue` then names the next page."),
        "continue": _query("continue", _STRING, "The `metadata.continue` of the previous page."),
        "resourceVersion": _query(
            "resourceVersion",
            {"type": "string", "pattern": "^[0-9]{0,19}$"},
            "For a watch: the hub revision to follow from (`0` or empty: the current state first, as ADDED events); anything but a revision is a 400.",
        ),
        "watch": _query("watch", _BOOLEAN, "Stream changes (one WatchEvent per line) instead of listing."),
        "allowWatchBookmarks": _query("allowWatchBookmarks", _BOOLEAN, "A watch also gets BOOKMARK events while idle."),
        "timeoutSeconds": _query("timeoutSeconds", _COUNT, "A watch ends after this many seconds (0: the default, 1800)."),
        "clusterSelector": _query(
            "clusterSelector",
            _STRING,
            "Only clusters whose labels (set by an admin: `fleetsync clusters label`; never an agent's own `--label`s) match, e.g. `region=eu`.",
        ),
    }


def _params(*names: str) -> list[Schema]:
    return [_ref("parameters", n) for n in names]


_LIST_PARAMETERS = ("labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch", "allowWatchBookmarks", "timeoutSeconds")


# ---- responses -------------------------------------------------------------------------------


def _json(description: str, schema: Schema, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _text(description: str) -> Schema:
    return {"description": description, "content": {"text/plain": {"schema": _STRING}}}


def _errors(*codes: int) -> dict[str, Schema]:
    """Error responses (each a ``Status``); 401 and 403 always: every one of these operations takes a token."""
    return {str(code): _ref("responses", str(code)) for code in sorted({401, 403, *codes})}


_ERROR_DESCRIPTIONS = {
    400: "Bad request: a parameter, or the body, is not valid (the message says which and why).",
    401: "No valid bearer token (the message says what is wrong with it).",
    403: "The token's role does not allow this (an agent token reads nothing; a read token only reads).",
    404: "Not found: an unknown cluster, path or object.",
    409: "Conflict: the request cannot be carried out now (the message says why).",
    413: "The body is larger than the hub takes (the message says the limit).",
    422: "Invalid: the object or its name is not valid (the message says why; for a body, `details.causes` names each problem).",
}

#: What a 401 asks for.
_CHALLENGE = {"WWW-Authenticate": {"description": '`Bearer realm="fleetsync"`.', "schema": _STRING}}
#: The Kubernetes ``Warning`` header a read of an inactive cluster carries (kubectl prints it).
_WARNING = {"Warning": {"description": "On reads of an inactive cluster: its objects are its last known state.", "schema": _STRING}}


def _operation(operation_id: str, summary: str, tag: str, responses: dict[str, Schema], parameters: list[Schema] | None = None) -> Schema:
    operation: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag], "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    return operation


# ---- path items ------------------------------------------------------------------------------


def _fleetsync_paths() -> dict[str, Schema]:
    """The hub's own endpoints."""
    public: list[dict[str, list[str]]] = []  # no token needed
    return {
        "/healthz": {"get": {**_operation("healthz", "The hub process is up.", "fleetsync", {"200": _text("ok")}), "security": public}},
        "/livez": {"get": {**_operation("livez", "The hub process is up (the Kubernetes name).", "fleetsync", {"200": _text("ok")}), "security": public}},
        "/readyz": {
            "get": {
                **_operation(
                    "readyz",
                    "The hub can serve: its store answers and it has subscribed to every broker.",
                    "fleetsync",
                    {"200": _text("ok"), "503": _text("Not ready, and what it waits for.")},
                ),
                "security": public,
            }
        },
        "/metrics": {"get": _operation("metrics", "Prometheus metrics.", "fleetsync", {"200": _text("Prometheus text exposition format."), **_errors()})},
        "/openapi.json": {
            "get": {**_operation("openapi", "This document.", "fleetsync", {"200": _json("OpenAPI 3.0 document.", {"type": "object"})}), "security": public}
        },
        "/api/v1/clusters": {
            "get": _operation(
                "listClusters",
                "Every cluster: status, agent, last message, objects and errors per type.",
                "fleetsync",
                {"200": _json("Clusters.", _ref("schemas", "ClusterList")), **_errors()},
            )
        },
        "/api/v1/clusters/{cluster}/resync": {
            "post": _operation(
                "resyncCluster",
                "Ask the cluster's agent for a digest resync now (a pull cluster: fetch its state now).",
                "fleetsync",
                {
                    "200": _json("A pull cluster's state was fetched.", _ref("schemas", "ResyncRequest")),
                    "202": _json("The resync was requested from the agent.", _ref("schemas", "ResyncRequest")),
                    **_errors(400, 404, 409),
                },
                [
                    *_params("cluster"),
                    _query("type", {"type": "string", "minLength": 1}, "Only this type (`pods`, `deployments.apps`, `apps/v1/Deployment`, ...)."),
                ],
            )
        },
        "/apis/fleetsync.io/v1/fleetsyncevents": {
            "get": _operation(
                "listFleetsyncEvents",
                "fleetsync's events, oldest first; with `watch=true`, a stream of new ones (one FleetsyncEvent per line) from every replica.",
                "fleetsync",
                {
                    "200": _json("Events (or, with `watch=true`, a stream of FleetsyncEvent objects, one per line).", _ref("schemas", "FleetsyncEventList")),
                    **_errors(400),
                },
                [
                    _query("cluster", _STRING, "Only this cluster's events (empty: any)."),
                    _query("reason", {"type": "string", "enum": list(REASONS)}, "Only events of this reason."),
                    _query("since", _COUNT, "Only events after this id."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100}, "At most this many events."),
                    *_params("watch", "timeoutSeconds"),
                ],
            )
        },
        "/clusters/{cluster}/apis/fleetsync.io/v1/fleetsyncevents": {
            "get": _operation(
                "listClusterFleetsyncEvents",
                "One cluster's fleetsync events, oldest first; with `watch=true`, a stream of new ones (one FleetsyncEvent per line) from every replica.",
                "fleetsync",
                {
                    "200": _json("Events (or, with `watch=true`, a stream of FleetsyncEvent objects, one per line).", _ref("schemas", "FleetsyncEventList")),
                    **_errors(400, 404),
                },
                [
                    *_params("cluster"),
                    _query("reason", {"type": "string", "enum": list(REASONS)}, "Only events of this reason."),
                    _query("since", _COUNT, "Only events after this id."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100}, "At most this many events."),
                    *_params("watch", "timeoutSeconds"),
                ],
            )
        },
        "/apis/fleetsync.io/v1/clusters": {
            "get": _operation(
                "listClusterObjects",
                "Every cluster as a Cluster object (a Table for kubectl): status, agent, heartbeat, sync lag, version, nodes, labels, conditions.",
                "fleetsync",
                {"200": _json("Clusters.", _ref("schemas", "ClusterObjectList")), **_errors()},
            )
        },
        "/apis/fleetsync.io/v1/clusters/{name}": {
            "get": _operation(
                "readClusterObject",
                "One cluster as a Cluster object.",
                "fleetsync",
                {"200": _json("The cluster.", _ref("schemas", "ClusterObject")), **_errors(400, 404)},
                [_path("name", {"type": "string", "pattern": CLUSTER_NAME_PATTERN}, "A cluster's name.")],
            ),
            "delete": _operation(
                "deleteCluster",
                "Delete the cluster (admin): revoke its agent tokens, remove its objects through the change log, its lease, streams, labels, "
                "work statuses and refresh target; its agent is disconnected. Records a ClusterDeleted event.",
                "fleetsync",
                {"200": _json("Deleted.", _ref("schemas", "Status")), **_errors(400, 404)},
                [_path("name", {"type": "string", "pattern": CLUSTER_NAME_PATTERN}, "A cluster's name.")],
            ),
        },
    }


def _discovery_paths(registry: TypeRegistry, prefix: str, tag: str, op_prefix: str) -> dict[str, Schema]:
    """``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/GROUP`` and ``/apis/GROUP/VERSION`` under ``prefix``."""
    per_cluster = prefix != ""
    parameters = _params("cluster") if per_cluster else None
    errors = _errors(404) if per_cluster else _errors()

    def get(operation_id: str, summary: str, schema: str) -> Schema:
        return {"get": _operation(f"{op_prefix}{operation_id}", summary, tag, {"200": _json(summary, _ref("schemas", schema)), **errors}, parameters)}

    paths = {
        f"{prefix}/version": get("Version", "The server version.", "Version"),
        f"{prefix}/api": get("CoreAPIVersions", "The core API's versions.", "APIVersions"),
        f"{prefix}/apis": get("APIGroups", "The API groups.", "APIGroupList"),
    }
    for group in registry.groups():
        paths[f"{prefix}/apis/{group}"] = get(f"APIGroup{_camel(group)}", f"The API group {group}.", "APIGroup")
    for group, version in sorted({(t.group, t.version) for t in registry}):
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        paths[f"{prefix}{base}"] = get(f"APIResources{_group_version_id(group, version)}", f"The resources of {group or 'core'}/{version}.", "APIResourceList")
    return paths


def _type_paths(rtype: ResourceType, *, per_cluster: bool) -> dict[str, Schema]:
    """The collection across namespaces, the namespaced collection (namespaced types) and, per
    cluster, the get by name of one type."""
    prefix = "/clusters/{cluster}" if per_cluster else ""
    tag = "cluster reads" if per_cluster else "fleet reads"
    where = "of the cluster" if per_cluster else "of every cluster (each labelled `fleetsync.io/cluster`)"
    op = f"{'cluster' if per_cluster else 'fleet'}{_group_version_id(rtype.group, rtype.version)}{rtype.kind}"
    scope = _params("cluster") if per_cluster else _params("clusterSelector")
    errors = _errors(400, 404) if per_cluster else _errors(400)
    headers = _WARNING if per_cluster else None
    listed = _json(
        f"The {rtype.list_kind} (or a Table, with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`); with `watch=true`, "
        "a stream of WatchEvent objects, one per line, that ends after `timeoutSeconds`.",
        _ref("schemas", "ObjectList"),
        headers,
    )
    base = f"{prefix}{rtype.collection_path()}"
    collection = f"{prefix}{rtype.collection_path('{namespace}')}" if rtype.namespaced else base
    paths: dict[str, Schema] = {}
    all_namespaces = " across namespaces" if rtype.namespaced else ""
    paths[base] = {
        "get": _operation(
            f"list{op}{'ForAllNamespaces' if rtype.namespaced else ''}",
            f"List or watch {rtype.plural}{all_namespaces} {where}.",
            tag,
            {"200": listed, **errors},
            [*scope, *_params(*_LIST_PARAMETERS)],
        )
    }
    if rtype.namespaced:
        paths[collection] = {
            "get": _operation(
                f"listNamespaced{op}",
                f"List or watch {rtype.plural} in a namespace {where}.",
                tag,
                {"200": listed, **errors},
                [*scope, *_params("namespace", *_LIST_PARAMETERS)],
            )
        }
    if per_cluster:
        item = f"{collection}/{{name}}"
        names = ("cluster", "namespace", "name") if rtype.namespaced else ("cluster", "name")
        paths[item] = {
            "get": _operation(
                f"read{op}",
                f"Get one of the cluster's {rtype.plural} by name.",
                tag,
                {"200": _json(f"The {rtype.kind}.", _ref("schemas", "Object"), headers), **_errors(404)},
                _params(*names),
            )
        }
    return paths


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("-", ".").split("."))


def _group_version_id(group: str, version: str) -> str:
    """``CoreV1``, ``AppsV1``, ``NetworkingIstioIoV1alpha3``: how operation ids name a group/version."""
    return f"{_camel(group) if group else 'Core'}{_camel(version)}"


def _gate_paths() -> dict[str, Schema]:
    """``/1.0/feature-gates`` (seed 004): microcluster's envelope, and its error shape for every failure."""

    def ok(description: str, metadata: Schema) -> Schema:
        envelope = {
            "type": "object",
            "required": ["type", "status", "status_code", "metadata"],
            "properties": {"type": {"type": "string", "enum": ["sync"]}, "status": _STRING, "status_code": {"type": "integer"}, "metadata": metadata},
        }
        return _json(description, envelope)

    def errors(*codes: int) -> dict[str, Schema]:
        described = {400: "The body is not JSON.", 404: "The gate is not set.", 409: "The gate is set already.", 422: "Not a valid gate (the error says why)."}
        described |= {401: _ERROR_DESCRIPTIONS[401], 403: _ERROR_DESCRIPTIONS[403]}
        return {str(code): _json(described[code], _ref("schemas", "GateError")) for code in sorted({401, 403, *codes})}

    key = _path("key", {"type": "string", "pattern": GATE_KEY.pattern, "maxLength": MAX_KEY_LENGTH}, "The gate's key, e.g. `feature.storage.ceph`.")
    gate, tag = _ref("schemas", "Gate"), "feature gates"
    changes = {"type": "array", "items": _ref("schemas", "GateChange")}
    history = [
        _query("cluster", _STRING, "Only this cluster's own changes (empty: only the fleet's gate writes)."),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "The newest this many entries (default 100)."),
    ]

    def body(schema_name: str) -> Schema:
        return {"required": True, "content": {JSON: {"schema": _ref("schemas", schema_name)}}}

    return {
        "/1.0/feature-gates": {
            "get": _operation(
                "listFeatureGates", "Every feature gate that is set.", tag, {"200": ok("The gates.", {"type": "array", "items": gate}), **errors()}
            ),
            "post": {
                **_operation("createFeatureGate", "Set a gate that is not set yet.", tag, {"201": ok("The new gate.", gate), **errors(400, 409, 422)}),
                "requestBody": body("GateCreate"),
            },
        },
        "/1.0/feature-gates/{key}": {
            "parameters": [key],
            "get": _operation("readFeatureGate", "One gate.", tag, {"200": ok("The gate.", gate), **errors(404, 422)}),
            "put": {
                **_operation("replaceFeatureGate", "Set a gate, new or not (the last write wins).", tag, {"200": ok("The gate.", gate), **errors(400, 422)}),
                "requestBody": body("GateUpdate"),
            },
            "delete": _operation("deleteFeatureGate", "Unset a gate (agents unset it too).", tag, {"200": ok("The gate as it was.", gate), **errors(404, 422)}),
        },
        "/1.0/feature-gates/{key}/clusters": {
            "parameters": [key],
            "get": _operation(
                "readFeatureGateClusters",
                "What each cluster's local config holds of the gate (seed 004's what's set where).",
                tag,
                {"200": ok("The fleet's value and each cluster's.", _ref("schemas", "GateWhere")), **errors(422)},
            ),
        },
        "/1.0/feature-gates/{key}/history": {
            "parameters": [key, *history],
            "get": _operation("readFeatureGateHistory", "The gate's history, newest first.", tag, {"200": ok("The entries.", changes), **errors(400, 422)}),
        },
        "/1.0/feature-gate-history": {
            "parameters": history,
            "get": _operation("listFeatureGateHistory", "Every gate's history, newest first.", tag, {"200": ok("The entries.", changes), **errors(400)}),
        },
    }


def _gate_schemas() -> dict[str, Schema]:
    key = {"type": "string", "pattern": GATE_KEY.pattern, "maxLength": MAX_KEY_LENGTH}
    value = {"type": "string", "enum": ["true", "false", "unset"]}
    return {
        "Gate": {
            "type": "object",
            "required": ["gate-key", "enabled", "updated-at", "updated-by", "revision"],
            "properties": {
                "gate-key": key,
                "enabled": {"type": "boolean"},
                "updated-at": {"type": "number"},
                "updated-by": _STRING,
                "revision": {"type": "integer"},
            },
        },
        "GateCreate": {
            "type": "object",
            "required": ["gate-key", "enabled"],
            "additionalProperties": False,
            "properties": {"gate-key": key, "enabled": {"type": "boolean"}},
        },
        "GateUpdate": {
            "type": "object",
            "required": ["enabled"],
            "additionalProperties": False,
            "properties": {"gate-key": key, "enabled": {"type": "boolean"}},
        },
        "GateChange": {
            "type": "object",
            "required": ["id", "gate-key", "cluster", "old", "new", "by", "at", "revision"],
            "properties": {
                "id": {"type": "integer"},
                "gate-key": key,
                "cluster": {"type": "string", "description": "Empty: a write of the fleet's gate; else that cluster's own value changed."},
                "old": value,
                "new": value,
                "by": _STRING,
                "at": {"type": "number"},
                "revision": {"type": "integer"},
            },
        },
        "GateWhere": {
            "type": "object",
            "required": ["gate-key", "fleet", "revision", "deployment-type", "clusters"],
            "properties": {
                "gate-key": key,
                "fleet": value,
                "revision": {"type": "integer"},
                "deployment-type": {"type": "string", "enum": ["local", "maas"]},
                "clusters": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["cluster", "value", "source", "in-sync", "applied-revision", "reported"],
                        "properties": {
                            "cluster": _STRING,
                            "value": {"type": "string", "enum": ["true", "false", "unset", "unknown"]},
                            "source": {"type": "string", "enum": ["fleet", "pending", "local", "unreported"]},
                            "in-sync": {"type": "boolean"},
                            "applied-revision": {"type": "integer", "nullable": True},
                            "reported": {
                                "type": "object",
                                "nullable": True,
                                "required": ["value", "at"],
                                "properties": {"value": value, "at": {"type": "number"}},
                            },
                        },
                    },
                },
            },
        },
        "GateError": {
            "type": "object",
            "required": ["type", "error_code", "error"],
            "properties": {"type": {"type": "string", "enum": ["error"]}, "error_code": {"type": "integer"}, "error": {"type": "string", "minLength": 1}},
        },
    }


# ---- works ---------------------------------------------------------------------------------------

#: A work's name (see :func:`fleetsync.model.works.name_problem`): a Kubernetes label value, as it labels every object of the work.
_WORK_NAME: Schema = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
#: A manifest's name or namespace: a path segment of its id (``apiVersion/kind/namespace/name``).
_SEGMENT = "^[^/]*$"
_IGNORED: Schema = {"description": "Shown by the hub, ignored on input (so that what a read shows can be applied as is)."}
_YAML = "application/yaml"


def _manifest() -> Schema:
    """A Kubernetes object of a work, checked for shape only: whether the cluster takes it is the cluster's to say."""
    return {
        "type": "object",
        "description": f"A Kubernetes object for the agents to apply (server-side apply); at most {MAX_MANIFEST_BYTES} bytes as JSON, "
        "and no other manifest of the work with the same apiVersion, kind, namespace and name.",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"type": "string", "minLength": 1},
            "kind": {"type": "string", "minLength": 1},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "pattern": _SEGMENT},
                    "namespace": {"type": "string", "pattern": _SEGMENT},
                    "labels": {
                        "description": f"The agent sets `{WORK_LABEL}` (the owning work's name): a manifest may not.",
                        "not": {"type": "object", "required": [WORK_LABEL]},
                    },
                },
            },
        },
    }


def _placement(*, request: bool) -> Schema:
    """Which clusters a work targets; on input, a null (YAML's empty value) is no value."""
    nullable = {"nullable": True} if request else {}
    return {
        "type": "object",
        **nullable,
        "description": "The clusters named, and those whose labels (their agents' `--label`s, and `fleetsync.io/cluster=NAME`) match "
        "the selector; neither: no cluster.",
        "additionalProperties": False,
        "properties": {
            "clusters": {"type": "array", **nullable, "items": {"type": "string", "minLength": 1}, "description": "Clusters by name."},
            "clusterSelector": {"type": "string", **nullable, "description": "A label selector, e.g. `env=prod,region in (eu,us)`."},
        },
    }


def _work_spec(*, request: bool) -> Schema:
    spec: Schema = {
        "type": "object",
        "required": ["manifests"] if request else ["placement", "manifests"],
        "properties": {
            "placement": _placement(request=request),
            "manifests": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_MANIFESTS,
                "items": _ref("schemas", "Manifest"),
                "description": f"At most {MAX_WORK_BYTES} bytes as JSON in all.",
            },
            "adopt": {
                "type": "boolean",
                **({"nullable": True} if request else {}),
                "description": "Take over objects that exist in a cluster without fleetsync's label (they are handed back, not deleted, "
                "when the work lets them go); false or absent: such a manifest is Failed and the object left alone.",
            },
        },
    }
    if request:
        spec["additionalProperties"] = False
    return spec


def _work_request(*, create: bool) -> Schema:
    """A work as POST (``create``) or PUT takes it; PUT takes the name from the URL, and a name in the body must be that one."""
    meta: Schema = {
        "type": "object",
        # PUT: a null (YAML's empty value) is no metadata
        **({"required": ["name"]} if create else {"nullable": True}),
        "additionalProperties": False,
        "properties": {
            "name": _WORK_NAME if create else {**_WORK_NAME, "description": "The name in the URL (or nothing)."},
            **{field: _IGNORED for field in ("generation", "resourceVersion", "creationTimestamp", "annotations", "uid")},
        },
    }
    return {
        "type": "object",
        "description": "A work to create or replace. An invalid one is refused (422) with every problem in the Status' `details.causes`.",
        "required": ["metadata", "spec"] if create else ["spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"type": "string", "enum": [WORK_API_VERSION]},
            "kind": {"type": "string", "enum": [WORK_KIND]},
            "metadata": meta,
            "spec": _work_spec(request=True),
            "status": _IGNORED,
        },
    }


def _work_cluster_status() -> Schema:
    return {
        "type": "object",
        "description": "A work on one cluster: `Pending` until its agent reports the work's current generation, then `Failed` if a manifest "
        "failed, `Available` if all are, else `Applied`; `Removing`: a cluster the work no longer targets, whose agent has not yet removed its objects.",
        "required": ["cluster", "state"],
        "properties": {
            "cluster": _STRING,
            "state": {"type": "string", "enum": ["Pending", "Applied", "Available", "Failed", "Removing"]},
            "observedGeneration": {"type": "integer", "minimum": 0, "description": "The generation the agent last reported."},
            "updated": {"type": "string", "format": "date-time"},
            "manifests": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["manifest", "condition", "message"],
                    "properties": {
                        "manifest": {"type": "string", "description": "`apiVersion/kind/namespace/name`."},
                        "condition": {"type": "string", "enum": ["Applied", "Available", "Failed"]},
                        "message": {"type": "string", "description": "Why it failed (the cluster's words); empty otherwise."},
                    },
                },
            },
        },
    }


def _work_status() -> Schema:
    return {
        "type": "object",
        "description": "The work across the fleet, computed on every read from the clusters' reports.",
        "required": ["targeted", "applied", "available", "failed", "pending", "clusters"],
        "properties": {
            **{count: {"type": "integer", "minimum": 0} for count in ("targeted", "applied", "available", "failed", "pending")},
            "clusters": {"type": "array", "items": _ref("schemas", "WorkClusterStatus")},
        },
    }


def _work() -> Schema:
    """A work as the hub shows it."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec", "status"],
        "properties": {
            "apiVersion": {"type": "string", "enum": [WORK_API_VERSION]},
            "kind": {"type": "string", "enum": [WORK_KIND]},
            "metadata": {
                "type": "object",
                "required": ["name", "generation", "resourceVersion", "creationTimestamp"],
                "properties": {
                    "name": _WORK_NAME,
                    "generation": {"type": "integer", "minimum": 1, "description": "Grows with every change of the spec."},
                    "resourceVersion": {"type": "string", "pattern": "^[0-9]+$"},
                    "creationTimestamp": {"type": "string", "format": "date-time"},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": _work_spec(request=False),
            "status": _ref("schemas", "WorkStatus"),
        },
    }


def _work_schemas() -> dict[str, Schema]:
    return {
        "Work": _work(),
        "WorkList": _fleetsync_list("WorkList", _ref("schemas", "Work")),
        "WorkStatus": _work_status(),
        "WorkClusterStatus": _work_cluster_status(),
        "Manifest": _manifest(),
        "WorkCreate": _work_request(create=True),
        "WorkReplace": _work_request(create=False),
    }


def _work_paths() -> dict[str, Schema]:
    """``/api/v1/works``: reads take role read, writes role admin (both: the 403 of the shared responses)."""
    tag, work = "works", _ref("schemas", "Work")

    def body(schema_name: str) -> Schema:
        schema = _ref("schemas", schema_name)
        return {"required": True, "content": {JSON: {"schema": schema}, _YAML: {"schema": schema}}}

    name = _path("name", _WORK_NAME, "The work's name.")
    return {
        "/api/v1/works": {
            "get": _operation(
                "listWorks", "Every work, with its status across the fleet.", tag, {"200": _json("The works.", _ref("schemas", "WorkList")), **_errors()}
            ),
            "post": {
                **_operation(
                    "createWork",
                    "Create a work (409 if the name is taken: replace it with PUT).",
                    tag,
                    {"201": _json("The new work.", work), **_errors(400, 409, 413, 422)},
                ),
                "requestBody": body("WorkCreate"),
            },
        },
        "/api/v1/works/{name}": {
            "parameters": [name],
            "get": _operation("readWork", "One work, with its status across the fleet.", tag, {"200": _json("The work.", work), **_errors(404, 422)}),
            "put": {
                **_operation(
                    "replaceWork",
                    "Create or replace a work (what `fleetsync works apply` does); an unchanged spec keeps its generation.",
                    tag,
                    {"200": _json("The work, replaced.", work), "201": _json("The work, created.", work), **_errors(400, 413, 422)},
                ),
                "requestBody": body("WorkReplace"),
            },
            "delete": _operation(
                "deleteWork",
                "Delete a work: its agents remove its objects.",
                tag,
                {"200": _json("The work as it was.", work), **_errors(404, 422)},
            ),
        },
    }


# ---- the service graph ---------------------------------------------------------------------------

#: A cluster's name inside a larger pattern.
_CLUSTER_NAME = CLUSTER_NAME_PATTERN.removeprefix("^").removesuffix("$")


def _service_graph_schemas() -> dict[str, Schema]:
    service: Schema = {"type": "object", "required": ["service", "namespace"], "properties": {"service": _STRING, "namespace": _STRING}}
    clusters: Schema = {"type": "array", "items": _STRING, "description": "The clusters it was seen in."}
    latency = {f"p{round(q * 100)}": {"type": "number", "nullable": True} for q in QUANTILES}
    return {
        "ServiceGraph": {
            "type": "object",
            "description": "The mesh's services and the requests between them, merged across the clusters asked for.",
            "required": ["kind", "apiVersion", "clusters", "namespace", "window", "nodes", "edges", "errors"],
            "properties": {
                "kind": {"type": "string", "enum": ["ServiceGraph"]},
                "apiVersion": {"type": "string", "enum": ["fleetsync.io/v1"]},
                "clusters": {
                    "type": "array",
                    "items": _STRING,
                    "description": "The clusters the graph covers (those asked for; none asked for: every cluster).",
                },
                "namespace": {"type": "string", "description": "The namespace asked for (empty: every namespace)."},
                "window": {"type": "number", "description": "The longest window of the edges, in seconds (0: no edges)."},
                "nodes": {"type": "array", "items": _ref("schemas", "ServiceGraphNode")},
                "edges": {"type": "array", "items": _ref("schemas", "ServiceGraphEdge")},
                "errors": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "The clusters whose metrics provider fails now, and why (their last collected edges are still shown).",
                },
            },
        },
        "ServiceGraphNode": {
            "type": "object",
            "description": "A service an edge starts or ends at.",
            "required": ["service", "namespace", "clusters", "requestRateIn", "requestRateOut"],
            "properties": {
                "service": _STRING,
                "namespace": _STRING,
                "clusters": clusters,
                "requestRateIn": {"type": "number", "description": "Requests per second it receives (over the edges shown)."},
                "requestRateOut": {"type": "number", "description": "Requests per second it sends (over the edges shown)."},
            },
        },
        "ServiceGraphEdge": {
            "type": "object",
            "description": "The requests from one service to another over a window; an edge seen in several clusters is one edge, "
            "its counts and latency histograms added, its rates and percentiles computed from the sums.",
            "required": ["source", "destination", "clusters", "window", "requests", "requestRate", "errorRate", "latencyMs", "collectedAt"],
            "properties": {
                "source": service,
                "destination": service,
                "clusters": clusters,
                "window": {"type": "number", "description": "The seconds the figures cover."},
                "requests": {"type": "number", "description": "Requests in the window."},
                "requestRate": {"type": "number", "description": "Requests per second."},
                "errorRate": {"type": "number", "description": "The share of requests that got a 5xx response (0 to 1)."},
                "latencyMs": {
                    "type": "object",
                    "description": "Latency percentiles in milliseconds, from the merged histogram (null: no requests).",
                    "required": list(latency),
                    "properties": latency,
                },
                "collectedAt": {"type": "string", "description": "When the earliest of its clusters' figures were collected (RFC 3339; empty: unknown)."},
            },
        },
    }


def _service_graph_paths() -> dict[str, Schema]:
    """``/api/v1/servicegraph``: a read (role read)."""
    clusters = {"type": "string", "pattern": rf"^\s*{_CLUSTER_NAME}\s*(,\s*{_CLUSTER_NAME}\s*)*$"}
    return {
        SERVICE_GRAPH_PATH: {
            "get": _operation(
                "readServiceGraph",
                "The mesh's service graph (services, and the requests between them), merged across clusters.",
                "fleetsync",
                {"200": _json("The service graph.", _ref("schemas", "ServiceGraph")), **_errors(400, 404)},
                [
                    {
                        **_query(
                            "cluster",
                            {"type": "array", "items": clusters},
                            "Only these clusters (repeat the parameter, or separate names with commas; none: every cluster). "
                            "An invalid name is a 400, a cluster the hub does not know a 404.",
                        ),
                        "style": "form",
                        "explode": True,
                    },
                    _query("namespace", _NAME, "Only edges from or to services of this namespace (leave it out for every namespace)."),
                ],
            )
        }
    }


# ---- settings ------------------------------------------------------------------------------------


def _settings_schemas() -> dict[str, Schema]:
    values = sorted({value for taken, _ in SETTINGS.values() for value in taken})
    value: Schema = {"type": "string", "nullable": True, "description": "The value set (null: unset, the default applies)."}
    return {
        "Setting": {
            "type": "object",
            "required": ["key", "value", "values", "description"],
            "properties": {
                "key": {"type": "string", "enum": list(SETTINGS)},
                "value": value,
                "values": {"type": "array", "items": _STRING, "description": "The values it takes."},
                "description": _STRING,
            },
        },
        "SettingList": _fleetsync_list("SettingList", _ref("schemas", "Setting")),
        "SettingUpdate": {
            "type": "object",
            "description": "A setting's new value: one of the values it takes (its `values`; anything else is a 422).",
            "required": ["value"],
            "additionalProperties": False,
            "properties": {"value": {"type": "string", "enum": values}},
        },
        "SettingValue": {
            "type": "object",
            "required": ["key", "value"],
            "properties": {"key": {"type": "string", "enum": list(SETTINGS)}, "value": value},
        },
    }


def _settings_paths() -> dict[str, Schema]:
    """``/api/v1/settings``: the list takes role read, writes role admin (both: the 403 of the shared responses)."""
    tag, changed = "settings", _ref("schemas", "SettingValue")
    key = _path("key", {"type": "string", "enum": list(SETTINGS)}, "A setting's key (any other is a 404).")
    return {
        SETTINGS_PREFIX: {
            "get": _operation(
                "listSettings",
                "Every setting the hub knows, with its value and the values it takes.",
                tag,
                {"200": _json("The settings.", _ref("schemas", "SettingList")), **_errors()},
            )
        },
        f"{SETTINGS_PREFIX}/{{key}}": {
            "parameters": [key],
            "put": {
                **_operation(
                    "replaceSetting",
                    "Set a setting (every hub replica applies it at once: a change of the deployment type sends every agent a new gate snapshot).",
                    tag,
                    {"200": _json("The setting, set.", changed), **_errors(400, 404, 422)},
                ),
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("schemas", "SettingUpdate")}}},
            },
            "delete": _operation(
                "deleteSetting",
                "Unset a setting: its default applies again.",
                tag,
                {"200": _json("The setting, unset (its value null).", changed), **_errors(404)},
            ),
        },
    }


# ---- cluster labels -------------------------------------------------------------------------------


def _cluster_label_schemas() -> dict[str, Schema]:
    labels: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "ClusterLabels": {
            "type": "object",
            "required": ["cluster", "labels"],
            "properties": {
                "cluster": _STRING,
                "labels": {**labels, "description": "Set by an admin: what placement and `clusterSelector` match."},
                "reported": {**labels, "description": "The metadata the cluster's agent reported (GET only): shown, never trusted."},
            },
        },
        "ClusterLabelsPatch": {
            "type": "object",
            "description": f"A JSON merge patch of the labels: a string sets a label, null removes it (at most {MAX_LABELS} labels a cluster).",
            "required": ["labels"],
            "additionalProperties": False,
            "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string", "nullable": True}}},
        },
    }


def _cluster_label_paths() -> dict[str, Schema]:
    """Reading takes role read, changing role admin (both: the 403 of the shared responses)."""
    answer = _json("The cluster's labels.", _ref("schemas", "ClusterLabels"))
    return {
        "/api/v1/clusters/{cluster}/labels": {
            "parameters": _params("cluster"),
            "get": _operation(
                "readClusterLabels",
                "The labels an admin set on the cluster, and the metadata its agent reported.",
                "fleetsync",
                {"200": answer, **_errors(400, 404)},
            ),
            "patch": {
                **_operation(
                    "patchClusterLabels",
                    "Set and remove labels of a cluster (it need not have connected yet); its agent gets the works they select at once.",
                    "fleetsync",
                    {"200": answer, **_errors(400, 413, 422)},
                ),
                "requestBody": {"required": True, "content": {JSON: {"schema": _ref("schemas", "ClusterLabelsPatch")}}},
            },
        }
    }


# ---- the document ----------------------------------------------------------------------------


def document(registry: TypeRegistry) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of the hub's HTTP API for the types of ``registry``."""
    paths = _fleetsync_paths()
    paths.update(_gate_paths())
    paths.update(_work_paths())
    paths.update(_service_graph_paths())
    paths.update(_settings_paths())
    paths.update(_cluster_label_paths())
    paths.update(_discovery_paths(registry, "", "fleet reads", "fleet"))
    paths.update(_discovery_paths(registry, "/clusters/{cluster}", "cluster reads", "cluster"))
    for rtype in registry:
        paths.update(_type_paths(rtype, per_cluster=True))
        paths.update(_type_paths(rtype, per_cluster=False))
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "fleetsync hub",
            "version": __version__,
            "description": "The consolidated state of many Kubernetes clusters: per cluster under `/clusters/{cluster}`, "
            "and across the fleet under `/api` and `/apis`, Kubernetes-compatible (kubectl works); plus the hub's own endpoints.",
        },
        "tags": [
            {"name": "fleetsync", "description": "The hub's own endpoints."},
            {"name": "cluster reads", "description": "One cluster's objects, as its own API server would serve them (read-only)."},
            {"name": "fleet reads", "description": "Every cluster as one API server (read-only)."},
            {"name": "feature gates", "description": "Cluster-wide feature gates (seed 004), in microcluster's REST shapes."},
            {"name": "works", "description": "Kubernetes manifests the agents apply to the clusters a placement picks, and their status per cluster."},
            {"name": "settings", "description": "The hub's runtime settings, shared by every replica (such as seed 004's deployment type)."},
        ],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer TOKEN`."}},
            "schemas": _schemas() | _gate_schemas() | _work_schemas() | _service_graph_schemas() | _settings_schemas() | _cluster_label_schemas(),
            "parameters": _parameters(),
            "responses": {str(code): _json(text, _ref("schemas", "Status"), _CHALLENGE if code == 401 else None) for code, text in _ERROR_DESCRIPTIONS.items()},
        },
    }
