"""One object selection for list and watch: what the store filters, the labels, the fields."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from fleetsync.model.selection import ObjectSelection
from fleetsync.model.selectors import FieldSelector, LabelSelector
from fleetsync.model.types import POD


@dataclass(frozen=True)
class Stored:
    cluster: str
    labels: dict[str, str] = field(default_factory=dict)


def _selection(labels: str = "", fields: str = "", *, fleet: bool = False) -> ObjectSelection:
    return ObjectSelection(POD, LabelSelector.parse(labels), FieldSelector.parse(fields, allowed=POD.field_selector_keys), fleet=fleet)


def test_the_store_filters_by_equalities_and_fleet_wide_by_the_cluster_label() -> None:
    assert _selection("app=web,tier!=db").store_filter() == ({"app": "web"}, None)
    assert _selection("app=web,fleetsync.io/cluster=c2", fleet=True).store_filter() == ({"app": "web"}, "c2")
    # in one cluster's read the cluster label is an ordinary label: the store filters by it
    assert _selection("fleetsync.io/cluster=c2").store_filter() == ({"fleetsync.io/cluster": "c2"}, None)


def test_fleet_wide_reads_match_the_cluster_label_too() -> None:
    web_in_c1 = Stored("c1", {"app": "web"})
    assert _selection("fleetsync.io/cluster in (c1,c3),app", fleet=True).admits_labels(web_in_c1)
    assert not _selection("fleetsync.io/cluster=c2", fleet=True).admits_labels(web_in_c1)
    assert not _selection("fleetsync.io/cluster=c1").admits_labels(web_in_c1)  # one cluster's read: its objects carry no such label


def test_fields_are_matched_on_the_rendering() -> None:
    running = orjson.dumps({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}})
    assert _selection(fields="status.phase=Running,metadata.namespace=ns").admits_rendering(running)
    assert not _selection(fields="status.phase!=Running").admits_rendering(running)
    assert _selection().admits_rendering(b"not even parsed without a field selector")
    assert _selection().empty and not _selection("app").empty and not _selection(fields="metadata.name=p").empty
