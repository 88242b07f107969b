"""Kubernetes discovery documents (``/api``, ``/apis``, ``/api/v1``, ...) for a set of types.

Served by the simulator and (later) by the hub, so kubectl and client libraries can
find resources by name, short name and category.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleetsync.model.types import ResourceType

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_READ_VERBS = ["get", "list", "watch"]


def api_versions(server: str = "") -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    }


def api_group(name: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list(groups: dict[str, list[str]]) -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group(n, vs) for n, vs in groups.items()]}


def api_resource_list(group: str, version: str, types: Iterable[ResourceType], *, read_only: bool = False) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rt in types:
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": _READ_VERBS if read_only else _VERBS,
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        if rt.has_status and not read_only:
            resources.append(
                {"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced, "kind": rt.kind, "verbs": ["get", "patch", "update"]}
            )
        if rt.scalable and not read_only:
            resources.append(
                {
                    "name": f"{rt.plural}/scale",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def version_info(git_version: str) -> dict[str, Any]:
    return {
        "major": "1",
        "minor": "36",
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-11-01T00:00:00Z",
        "goVersion": "go1.23",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def gv_path(group: str, version: str) -> str:
    """``api/v1`` or ``apis/apps/v1``: how OpenAPI v3 names a group/version."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_root(group_versions: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The OpenAPI v3 index kubectl reads to learn, per type, which PATCH parameters the server takes."""
    return {"paths": {gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{gv_path(g, v)}"} for g, v in group_versions}}


_PATCH_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation", "force")


def openapi_v3_group_version(group: str, version: str, types: Iterable[ResourceType]) -> dict[str, Any]:
    """A minimal OpenAPI v3 document: the object paths and their PATCH operations.

    kubectl (k8s.io/cli-runtime ``queryParamVerifierV3``) looks for a PATCH operation
    tagged with the type's ``x-kubernetes-group-version-kind`` that declares
    ``fieldValidation``; without it ``kubectl apply`` refuses to validate. Schemas are
    left open (objects are stored as given).
    """
    paths: dict[str, Any] = {}
    for rt in types:
        scope = "/namespaces/{namespace}" if rt.namespaced else ""
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        paths[f"{prefix}{scope}/{rt.plural}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{rt.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": rt.kind},
                "parameters": [{"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}} for p in _PATCH_PARAMETERS],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.36.0"}, "paths": paths, "components": {"schemas": {}}}
