"""Resource types as agents report them: checked, converted, and merged into one registry (pure code).

An agent reports the discovery data of every type it syncs (``TypeInfo`` in its Hello and
in a ``Types`` message when a CRD comes or goes), so the hub serves types it was not built
with. What an agent reports is outside input: every field is checked against the same
rules the Kubernetes API server applies to a CRD's names (DNS labels and subdomains) and
bounded in count and length, and a type that is not acceptable is refused on its own
with a reason naming the problem, never the whole report.

The hub's fixed types (:data:`~fleetsync.model.types.HUB_TYPES`) always win: a report of
``v1/Pod`` changes nothing about how pods are served, and the ``*.fleetsync.io`` groups
are the hub's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from fleetsync.model.types import HUB_TYPES, PrinterColumn, ResourceType, TypeRegistry
from fleetsync.protocol import fleetsync_pb2 as pb

#: A DNS label (plural, singular, short names, categories, kind lowered).
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: A DNS subdomain (an API group), at most 253 characters.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_VERSION = re.compile(r"v[0-9]+((alpha|beta)[0-9]+)?")
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")
_COLUMN_TYPES = frozenset(("integer", "number", "string", "boolean", "date"))
MAX_NAMES = 16  # short names, categories
MAX_COLUMNS = 16  # printer columns
MAX_TEXT = 256  # a column's name, JSONPath, description
RESERVED_GROUP = "fleetsync.io"


def _shown(value: str) -> str:
    return repr(value[:40] + "…") if len(value) > 40 else repr(value)


def gvk_of(info: pb.TypeInfo) -> str:
    """The wire name of a reported type (``example.com/v1/Widget``), as bundles of it carry."""
    return f"{info.group}/{info.version}/{info.kind}" if info.group else f"{info.version}/{info.kind}"


def type_info_problem(info: pb.TypeInfo) -> str:
    """What is wrong with a reported type ("" if nothing); quotes at most 40 characters of any field."""
    if info.group and (len(info.group) > 253 or not _SUBDOMAIN.fullmatch(info.group)):
        return f"group {_shown(info.group)} is not a DNS subdomain"
    if info.group == RESERVED_GROUP or info.group.endswith("." + RESERVED_GROUP):
        return f"group {_shown(info.group)} is the hub's own"
    if not _VERSION.fullmatch(info.version):
        return f"version {_shown(info.version)} is not a Kubernetes API version (v1, v1beta2, ...)"
    if not _KIND.fullmatch(info.kind):
        return f"kind {_shown(info.kind)} is not a kind (a letter, then letters and digits, at most 63)"
    for what, value in (("plural", info.plural), ("singular", info.singular or info.kind.lower())):
        if not _LABEL.fullmatch(value):
            return f"{what} {_shown(value)} is not a DNS label (lowercase letters, digits and '-', at most 63)"
    for what, values in (("short names", info.short_names), ("categories", info.categories)):
        if len(values) > MAX_NAMES:
            return f"{len(values)} {what}; at most {MAX_NAMES}"
        if bad := next((v for v in values if not _LABEL.fullmatch(v)), None):
            return f"{what}: {_shown(bad)} is not a DNS label"
    if len(info.printer_columns) > MAX_COLUMNS:
        return f"{len(info.printer_columns)} printer columns; at most {MAX_COLUMNS}"
    for column in info.printer_columns:
        if not column.name or any(len(v) > MAX_TEXT for v in (column.name, column.json_path, column.description, column.format)):
            return f"printer column {_shown(column.name)}: name needed, and name, jsonPath, description and format of at most {MAX_TEXT} characters"
        if column.type not in _COLUMN_TYPES:
            return f"printer column {_shown(column.name)}: type {_shown(column.type)} is not one of {', '.join(sorted(_COLUMN_TYPES))}"
        if not column.json_path.startswith("."):
            return f"printer column {_shown(column.name)}: jsonPath {_shown(column.json_path)} must start with '.'"
    return ""


def from_pb(info: pb.TypeInfo) -> ResourceType:
    """The type ``info`` describes (check it with :func:`type_info_problem` first)."""
    return ResourceType(
        group=info.group,
        version=info.version,
        kind=info.kind,
        plural=info.plural,
        namespaced=info.namespaced,
        short_names=tuple(info.short_names),
        categories=tuple(info.categories),
        singular=info.singular,
        printer_columns=tuple(
            PrinterColumn(c.name, c.type, c.json_path, priority=c.priority, description=c.description, format=c.format) for c in info.printer_columns
        ),
        reported=True,
    )


def to_pb(rtype: ResourceType) -> pb.TypeInfo:
    """What an agent reports of ``rtype``."""
    return pb.TypeInfo(
        group=rtype.group,
        version=rtype.version,
        kind=rtype.kind,
        plural=rtype.plural,
        singular=rtype.singular,
        short_names=rtype.short_names,
        namespaced=rtype.namespaced,
        categories=rtype.categories,
        printer_columns=[
            pb.PrinterColumn(name=c.name, type=c.type, json_path=c.json_path, priority=c.priority, description=c.description, format=c.format)
            for c in rtype.printer_columns
        ],
    )


def to_json(rtype: ResourceType) -> str:
    """How the store keeps a reported type (the TypeInfo's fields, in JSON)."""
    doc: dict[str, Any] = {
        "group": rtype.group,
        "version": rtype.version,
        "kind": rtype.kind,
        "plural": rtype.plural,
        "singular": rtype.singular,
        "namespaced": rtype.namespaced,
        "shortNames": list(rtype.short_names),
        "categories": list(rtype.categories),
        "printerColumns": [
            {"name": c.name, "type": c.type, "jsonPath": c.json_path, "priority": c.priority, "description": c.description, "format": c.format}
            for c in rtype.printer_columns
        ],
    }
    return orjson.dumps(doc).decode()


def from_json(text: str) -> ResourceType | None:
    """A stored type (None: it is not a valid one, e.g. written by a different version)."""
    try:
        doc = orjson.loads(text)
        info = pb.TypeInfo(
            group=doc["group"],
            version=doc["version"],
            kind=doc["kind"],
            plural=doc["plural"],
            singular=doc.get("singular", ""),
            namespaced=bool(doc.get("namespaced")),
            short_names=doc.get("shortNames", []),
            categories=doc.get("categories", []),
            printer_columns=[
                pb.PrinterColumn(
                    name=c["name"],
                    type=c["type"],
                    json_path=c["jsonPath"],
                    priority=c.get("priority", 0),
                    description=c.get("description", ""),
                    format=c.get("format", ""),
                )
                for c in doc.get("printerColumns", [])
            ],
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return None if type_info_problem(info) else from_pb(info)


def merge(reported: Mapping[str, Iterable[ResourceType]], fixed: Iterable[ResourceType] = HUB_TYPES) -> TypeRegistry:
    """The hub's registry: the fixed types, then every type any cluster reported.

    A type is known if any cluster reported it. Clusters may disagree on a type's details
    (two versions of one CRD): the first cluster by name wins, so every replica serves the
    same answer. A reported type whose path or wire name another type holds is left out.
    """
    types = list(fixed)
    paths = {(t.group, t.version, t.plural) for t in types}
    gvks = {t.gvk for t in types}
    for cluster in sorted(reported):
        for rtype in reported[cluster]:
            path = (rtype.group, rtype.version, rtype.plural)
            if path in paths or rtype.gvk in gvks:
                continue
            paths.add(path)
            gvks.add(rtype.gvk)
            types.append(rtype)
    return TypeRegistry(types)
