"""The resource types a CustomResourceDefinition object defines, as the simulator serves them (pure code).

A CRD created in a simulated cluster (``kubectl apply -f crd.yaml``) makes its served
versions appear in that cluster's discovery and API at once, as on a real cluster; deleting
it deletes its objects (watchers see DELETED) and the types go away. A CRD of a type this
project already describes (Istio's) maps to that description, so the two never differ.
"""

from __future__ import annotations

from typing import Any

from fleetsync.model import types as t
from fleetsync.model.types import PrinterColumn, ResourceType

_KNOWN = {(rt.group, rt.version, rt.plural): rt for rt in t.ALL_TYPES}
_COLUMN_TYPES = frozenset(("integer", "number", "string", "boolean", "date"))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def crd_types(crd: dict[str, Any]) -> tuple[ResourceType, ...]:
    """One type per served version of ``crd`` (none if its spec lacks a group, kind or plural)."""
    spec = _dict(crd.get("spec"))
    names = _dict(spec.get("names"))
    group, kind, plural = str(spec.get("group") or ""), str(names.get("kind") or ""), str(names.get("plural") or "")
    if not (group and kind and plural):
        return ()
    found = []
    for version in _list(spec.get("versions")):
        version = _dict(version)
        name = str(version.get("name") or "")
        if not name or version.get("served") is False:
            continue
        known = _KNOWN.get((group, name, plural))
        if known is not None:
            found.append(known)
            continue
        columns = tuple(
            PrinterColumn(str(c["name"]), str(c.get("type") if c.get("type") in _COLUMN_TYPES else "string"), str(c["jsonPath"]), int(c.get("priority") or 0))
            for c in map(_dict, _list(version.get("additionalPrinterColumns")))
            if c.get("name") and str(c.get("jsonPath", "")).startswith(".")
        )
        found.append(
            ResourceType(
                group=group,
                version=name,
                kind=kind,
                plural=plural,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(str(s) for s in _list(names.get("shortNames"))),
                categories=tuple(str(c) for c in _list(names.get("categories"))),
                singular=str(names.get("singular") or ""),
                has_status="status" in _dict(version.get("subresources")),
                custom=True,
                printer_columns=columns,
            )
        )
    return tuple(found)
