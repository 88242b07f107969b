"""The OpenAPI 3.0 document of the hub's HTTP API (``GET /openapi.json``).

It is built from the :class:`~fleetsync.model.types.TypeRegistry` the hub serves, so the
Kubernetes-style paths it lists are exactly the types the hub knows:

- the fleetsync endpoints: ``/healthz``, ``/livez``, ``/readyz``, ``/metrics``, ``/api/v1/clusters``,
  ``POST /api/v1/clusters/{cluster}/resync`` and ``/api/v1/events``;
- ``/1.0/feature-gates`` (seed 004's shapes: microcluster's envelope and error);
- per cluster, under ``/clusters/{cluster}``: discovery, and for every type its
  collection across namespaces, its namespaced collection and a get by name;
- fleet-wide (every cluster as one API server): discovery, and for every type its
  collection across namespaces and its namespaced collection (names are per cluster, so
  there is no get by name there: it answers 400 and is not listed).

Schemas are deliberately loose where the hub passes objects through (objects are the
agents' own), and exact where the hub builds the answer itself (the ``Status`` of every
error, the fleetsync resources). A watch (``watch=true``) answers ``application/json`` too,
but as a stream of JSON objects, one per line (``WatchEvent``s; the events of ``/api/v1/events``),
which a single JSON schema cannot describe; the operations' descriptions say so.

Everything but ``/healthz``, ``/livez``, ``/readyz`` and this document takes a bearer token
(``Authorization: Bearer TOKEN``; see :mod:`fleetsync.api.auth`).
"""

from __future__ import annotations

from typing import Any

from fleetsync import __version__
from fleetsync.hub.events import REASONS
from fleetsync.model.gates import GATE_KEY, MAX_KEY_LENGTH
from fleetsync.model.names import CLUSTER_NAME_PATTERN
from fleetsync.model.types import ResourceType, TypeRegistry

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
            "details": {"type": "object"},
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
        "required": ["name", "status", "stale", "connected", "objects", "types", "errors"],
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
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "objects": counts,
            "types": {"type": "array", "items": {"type": "string"}},
            "errors": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }


def _event() -> Schema:
    return {
        "type": "object",
        "required": ["id", "time", "cluster", "reason", "message"],
        "properties": {
            "id": {"type": "integer"},
            "time": {"type": "number"},
            "cluster": {"type": "string"},
            "reason": {"type": "string", "enum": list(REASONS)},
            "type": _STRING,
            "message": _STRING,
            "hub": _STRING,
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
        "Event": _event(),
        "EventList": _fleetsync_list("EventList", _ref("schemas", "Event")),
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
            "resourceVersion", _STRING, "For a watch: the hub revision to follow from (`0` or empty: the current state first, as ADDED events)."
        ),
        "watch": _query("watch", _BOOLEAN, "Stream changes (one WatchEvent per line) instead of listing."),
        "allowWatchBookmarks": _query("allowWatchBookmarks", _BOOLEAN, "A watch also gets BOOKMARK events while idle."),
        "timeoutSeconds": _query("timeoutSeconds", _COUNT, "A watch ends after this many seconds (0: the default, 1800)."),
        "clusterSelector": _query("clusterSelector", _STRING, "Only clusters whose labels (their agents' `--label`s) match, e.g. `region=eu`."),
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
    400: "Bad request: a parameter is not valid (the message says which and why).",
    401: "No valid bearer token (the message says what is wrong with it).",
    403: "The token's role does not allow this (an agent token reads nothing; a read token only reads).",
    404: "Not found: an unknown cluster, path or object.",
    409: "Conflict: the request cannot be carried out now (the message says why).",
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
        "/api/v1/events": {
            "get": _operation(
                "listEvents",
                "Cluster events, oldest first; with `watch=true`, a stream of new ones (one Event per line) from every replica.",
                "fleetsync",
                {"200": _json("Events (or, with `watch=true`, a stream of Event objects, one per line).", _ref("schemas", "EventList")), **_errors(400)},
                [
                    _query("cluster", _STRING, "Only this cluster's events (empty: any)."),
                    _query("reason", {"type": "string", "enum": list(REASONS)}, "Only events of this reason."),
                    _query("since", _COUNT, "Only events after this id."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100}, "At most this many events."),
                    *_params("watch", "timeoutSeconds"),
                ],
            )
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
    }


def _gate_schemas() -> dict[str, Schema]:
    key = {"type": "string", "pattern": GATE_KEY.pattern, "maxLength": MAX_KEY_LENGTH}
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
        "GateError": {
            "type": "object",
            "required": ["type", "error_code", "error"],
            "properties": {"type": {"type": "string", "enum": ["error"]}, "error_code": {"type": "integer"}, "error": {"type": "string", "minLength": 1}},
        },
    }


# ---- the document ----------------------------------------------------------------------------


def document(registry: TypeRegistry) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of the hub's HTTP API for the types of ``registry``."""
    paths = _fleetsync_paths()
    paths.update(_gate_paths())
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
        ],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer TOKEN`."}},
            "schemas": _schemas() | _gate_schemas(),
            "parameters": _parameters(),
            "responses": {str(code): _json(text, _ref("schemas", "Status"), _CHALLENGE if code == 401 else None) for code, text in _ERROR_DESCRIPTIONS.items()},
        },
    }
