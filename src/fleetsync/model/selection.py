"""Which stored objects a read selects: one coding of label and field selectors for list and watch alike.

A list and a watch of the same type with the same selectors must agree on every object,
or a client's informer (list, then watch) drifts from what a fresh list shows. So both
ask an :class:`ObjectSelection`, in three steps ordered by cost:

1. :meth:`ObjectSelection.store_filter`: what the store can filter by in its query (the
   selector's equalities; fleet-wide, the one cluster ``fleetsync.io/cluster=C`` leaves);
2. :meth:`ObjectSelection.admits_labels`: the whole label selector on the stored labels
   (fleet-wide reads show every object with its cluster's label, so it matches too);
   no body is decoded;
3. :meth:`ObjectSelection.admits_rendering`: the field selector, on the object as the read
   renders it (parsed only when there is a field selector).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson

from fleetsync.model.objects import CLUSTER_LABEL, selectable_fields
from fleetsync.model.selectors import FieldSelector, LabelSelector
from fleetsync.model.types import ResourceType


class Labelled(Protocol):
    """A stored object as far as selection reads it (:class:`~fleetsync.store.contract.ObjectRecord`)."""

    @property
    def cluster(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...


def cluster_labels(record: Labelled) -> dict[str, str]:
    """The object's labels as a fleet-wide read shows them (with its cluster's)."""
    return {**record.labels, CLUSTER_LABEL: record.cluster}


@dataclass(frozen=True, slots=True)
class ObjectSelection:
    """A read's label and field selectors over one type; ``fleet``: across clusters."""

    rtype: ResourceType
    labels: LabelSelector = LabelSelector()
    fields: FieldSelector = FieldSelector()
    fleet: bool = False

    @property
    def empty(self) -> bool:
        """It selects every object (a watch then need not track what it selects)."""
        return self.labels.empty and self.fields.empty

    def store_filter(self) -> tuple[dict[str, str], str | None]:
        """The label equalities the store can filter by, and for a fleet-wide read the one
        cluster ``fleetsync.io/cluster=C`` leaves (or None)."""
        equal = self.labels.equalities()
        return equal, equal.pop(CLUSTER_LABEL, None) if self.fleet else None

    def admits_labels(self, record: Labelled) -> bool:
        """The label selector, on the stored labels."""
        return self.labels.matches(cluster_labels(record) if self.fleet else record.labels)

    def admits_rendering(self, encoded: bytes) -> bool:
        """The field selector, on the object as rendered for the read."""
        return self.fields.empty or self.fields.matches(selectable_fields(self.rtype, orjson.loads(encoded)))
