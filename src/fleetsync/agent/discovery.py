"""What the cluster serves: every resource type its discovery lists that can be listed and
watched, with the printer columns its CRDs declare.

Read at start for ``--types`` (``all``, or names resolved against what is served) and again
every ``--discovery-interval`` seconds with ``--types all``, so a CRD created while the
agent runs starts syncing without a restart. A resource served in several versions of its
group is synced in one (the preferred version if it has it, as kubectl does): the same
objects under two versions would be synced twice.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from fleetsync.agent.kube import get_json
from fleetsync.model.types import ALL_TYPES, CRD, PrinterColumn, ResourceType

log = logging.getLogger(__name__)

_KNOWN = {(t.group, t.version, t.plural): t for t in ALL_TYPES}
_COLUMN_TYPES = frozenset(("integer", "number", "string", "boolean", "date"))


def _types_of(group: str, version: str, document: Any, columns: dict[tuple[str, str, str], tuple[PrinterColumn, ...]]) -> list[ResourceType]:
    found = []
    for resource in document.get("resources") or []:
        name = str(resource.get("name", ""))
        verbs = set(resource.get("verbs") or [])
        if not name or "/" in name or not {"list", "watch"} <= verbs:
            continue  # a subresource (pods/log), or a type that cannot be synced (tokenreviews)
        known = _KNOWN.get((group, version, name))
        if known is not None:  # the fixed description (field selectors, status, scale) is richer
            found.append(known)
            continue
        found.append(
            ResourceType(
                group=group,
                version=version,
                kind=str(resource.get("kind", "")),
                plural=name,
                namespaced=bool(resource.get("namespaced")),
                short_names=tuple(resource.get("shortNames") or ()),
                categories=tuple(resource.get("categories") or ()),
                singular=str(resource.get("singularName") or ""),
                printer_columns=columns.get((group, version, name), ()),
            )
        )
    return found


def printer_columns(crds: Any) -> dict[tuple[str, str, str], tuple[PrinterColumn, ...]]:
    """(group, version, plural) -> the printer columns each served version of each CRD declares."""
    found: dict[tuple[str, str, str], tuple[PrinterColumn, ...]] = {}
    for crd in crds.get("items") or []:
        spec = crd.get("spec") or {}
        plural = (spec.get("names") or {}).get("plural", "")
        for version in spec.get("versions") or []:
            columns = tuple(
                PrinterColumn(
                    name=str(c.get("name", "")),
                    type=str(c.get("type", "string")) if c.get("type") in _COLUMN_TYPES else "string",
                    json_path=str(c.get("jsonPath", "")),
                    priority=int(c.get("priority") or 0),
                    description=str(c.get("description") or ""),
                    format=str(c.get("format") or ""),
                )
                for c in version.get("additionalPrinterColumns") or []
                if c.get("name") and str(c.get("jsonPath", "")).startswith(".")
            )
            if columns:
                found[(spec.get("group", ""), version.get("name", ""), plural)] = columns
    return found


class Discovery:
    """Reads what the cluster serves, again and again (``--discovery-interval``). The discovery
    documents are small; the CRDs, read for their printer columns, are not (each carries its
    whole schema: megabytes in a cluster with many operators), so they are read only when a
    custom type appears that the last read did not see, not on every look."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self._columns: dict[tuple[str, str, str], tuple[PrinterColumn, ...]] = {}
        #: The custom (group, version, plural) served at the last look.
        self._custom: set[tuple[str, str, str]] = set()

    async def served_types(self) -> list[ResourceType]:
        """Every list+watch-able type the cluster serves (ApiException if its discovery cannot be read)."""
        documents = await self._documents()
        custom = {
            (group, version, str(r.get("name", "")))
            for group, version, document in documents
            for r in document.get("resources") or []
            if (group, version, r.get("name")) not in _KNOWN
        }
        if custom - self._custom:
            try:
                self._columns = printer_columns(await get_json(self.api, CRD.collection_path()))
            except ApiException as exc:  # no CRDs served (or not readable): custom types get the default columns
                log.debug("CRDs not read for their printer columns: %s", exc)
                self._columns = {}
        self._custom = custom
        types: list[ResourceType] = []
        taken: set[tuple[str, str]] = set()  # (group, plural) found in a more preferred version
        for group, version, document in documents:
            for rtype in _types_of(group, version, document, self._columns):
                if (group, rtype.plural) not in taken:
                    taken.add((group, rtype.plural))
                    types.append(rtype)
        return types

    async def _documents(self) -> list[tuple[str, str, Any]]:
        """(group, version, APIResourceList) of the core group and of every version of every group,
        each group's preferred version first, then the rest in the server's order."""
        documents: list[tuple[str, str, Any]] = [("", "v1", await get_json(self.api, "/api/v1"))]
        for group in (await get_json(self.api, "/apis")).get("groups") or []:
            preferred = (group.get("preferredVersion") or {}).get("version")
            versions = [v.get("version") for v in group.get("versions") or [] if v.get("version")]
            for version in sorted(versions, key=lambda v: v != preferred):
                try:
                    documents.append((str(group["name"]), version, await get_json(self.api, f"/apis/{group['name']}/{version}")))
                except ApiException as exc:  # an aggregated API that is down: the rest is still synced
                    log.warning("discovery of %s/%s failed: %s", group.get("name"), version, exc)
        return documents
