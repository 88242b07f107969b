"""What an agent may report of a type, and how a CRD's printer columns read its objects."""

from __future__ import annotations

from fleetsync.model import printercolumns
from fleetsync.model.tables import table
from fleetsync.model.types import POD, PrinterColumn, ResourceType
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol import typeinfo

WIDGET = ResourceType("example.com", "v1", "Widget", "widgets", True, short_names=("wd",), printer_columns=(PrinterColumn("Size", "integer", ".spec.size"),))


def test_a_type_round_trips_through_the_wire_and_the_store() -> None:
    reported = typeinfo.from_pb(typeinfo.to_pb(WIDGET))
    assert (reported.gvk, reported.plural, reported.short_names, reported.printer_columns) == (WIDGET.gvk, "widgets", ("wd",), WIDGET.printer_columns)
    assert typeinfo.from_json(typeinfo.to_json(reported)) == reported
    assert typeinfo.from_json('{"group": 1}') is None, "a stored row that is not a type is left out, not raised"


def test_reported_types_are_checked_field_by_field() -> None:
    good = typeinfo.to_pb(WIDGET)
    assert typeinfo.type_info_problem(good) == ""
    cases = {
        "group": ("group 'Bad_Group' is not a DNS subdomain", {"group": "Bad_Group"}),
        "reserved": ("group 'metrics.fleetsync.io' is the hub's own", {"group": "metrics.fleetsync.io"}),
        "version": ("version 'one' is not a Kubernetes API version", {"version": "one"}),
        "plural": ("plural 'x' * 100", {"plural": "x" * 100}),
        "short": ("short names: 'No!' is not a DNS label", {"short_names": ["No!"]}),
    }
    for what, (expected, change) in cases.items():
        info = pb.TypeInfo()
        info.CopyFrom(good)
        for field, value in change.items():
            if isinstance(value, list):
                getattr(info, field).extend(value)
            else:
                setattr(info, field, value)
        problem = typeinfo.type_info_problem(info)
        assert problem.startswith(expected.split(" '")[0]) and len(problem) < 200, (what, problem)
    too_many = pb.TypeInfo()
    too_many.CopyFrom(good)
    too_many.printer_columns.extend(pb.PrinterColumn(name=f"c{i}", type="string", json_path=".spec") for i in range(typeinfo.MAX_COLUMNS))
    assert "printer columns; at most" in typeinfo.type_info_problem(too_many)


def test_the_fixed_types_win_and_the_first_cluster_by_name_decides_a_disagreement() -> None:
    other_pod = ResourceType("", "v1", "Pod", "pods", False, reported=True)
    small = ResourceType("example.com", "v1", "Widget", "widgets", True, short_names=("small",), reported=True)
    registry = typeinfo.merge({"c2": [small], "c1": [WIDGET, other_pod]})
    assert registry.by_gvk("v1/Pod") == POD
    assert registry.by_gvk(WIDGET.gvk) == WIDGET
    assert registry.resolve("widgets.example.com") == WIDGET


def test_printer_columns_follow_the_jsonpaths_crds_use() -> None:
    obj = {
        "metadata": {"name": "w", "creationTimestamp": "2020-01-01T00:00:00Z"},
        "spec": {"size": 3, "tags": ["a", "b"]},
        "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]},
    }
    columns = (
        PrinterColumn("Size", "integer", ".spec.size"),
        PrinterColumn("Tag", "string", ".spec.tags[1]"),
        PrinterColumn("Ready", "string", '.status.conditions[?(@.type=="Ready")].status'),
        PrinterColumn("Age", "date", ".metadata.creationTimestamp"),
        PrinterColumn("Missing", "string", ".spec.absent"),
        PrinterColumn("Unsupported", "string", ".spec..size"),
    )
    cells = printercolumns.row(columns, obj)
    assert cells[:3] == [3, "b", "True"] and cells[3].endswith(("y", "d")) and cells[4:] == [None, None], cells
    served = table("Widget", [obj], printer_columns=columns)
    assert [c["name"] for c in served["columnDefinitions"]] == ["Name", "Size", "Tag", "Ready", "Age", "Missing", "Unsupported"]
    assert served["rows"][0]["cells"][:4] == ["w", 3, "b", "True"]
