"""--types and --exclude-types: which of the types a cluster serves the agent syncs."""

from __future__ import annotations

import pytest

from fleetsync.model import types as t
from fleetsync.model.types import ResourceType, UnknownResourceType
from fleetsync.model.typeselect import TypeSelection

SECRET = ResourceType("", "v1", "Secret", "secrets", True)
WIDGET = ResourceType("example.com", "v1", "Widget", "widgets", True, short_names=("wd",))
EVENTS_K8S = ResourceType("events.k8s.io", "v1", "Event", "events", True)
SERVED = (*t.ALL_TYPES, SECRET, WIDGET, EVENTS_K8S)


def test_all_is_every_served_type_but_secrets_minus_the_excluded() -> None:
    chosen = TypeSelection.parse("all", "*.istio.io, events.k8s.io/*").choose(SERVED)
    assert SECRET not in chosen, "Secrets only when named"
    assert WIDGET in chosen and t.EVENT in chosen and t.POD in chosen
    assert not any(rt.group.endswith("istio.io") for rt in chosen)
    assert EVENTS_K8S not in chosen
    assert t.POD not in TypeSelection.parse("all", "core/*").choose(SERVED)
    assert t.DEPLOYMENT not in TypeSelection.parse("all", "deployments.apps").choose(SERVED)


def test_resource_name_wildcards_exclude_by_plural_in_any_group_or_in_the_one_named() -> None:
    anywhere = TypeSelection.parse("all", "*services").choose(SERVED)
    assert t.SERVICE not in anywhere and t.VIRTUAL_SERVICE not in anywhere, "every group's plurals that match"
    assert t.POD in anywhere and WIDGET in anywhere
    in_group = TypeSelection.parse("all", "virtual*.networking.istio.io,WID*.example.com").choose(SERVED)
    assert t.VIRTUAL_SERVICE not in in_group and WIDGET not in in_group
    assert t.SERVICE in in_group, "a name wildcard with a group leaves other groups alone"
    assert WIDGET in TypeSelection.parse("all", "wid*.other.example.com").choose(SERVED)
    core = TypeSelection.parse("all", "service*.core").choose(SERVED)
    assert t.SERVICE not in core and t.SERVICE_ENTRY in core, "the core group by its name, as in core/*"


def test_named_types_resolve_against_what_the_cluster_serves() -> None:
    assert TypeSelection.parse("wd,secrets,pods").choose(SERVED) == [WIDGET, SECRET, t.POD], "a Secret named is synced"
    with pytest.raises(UnknownResourceType):
        TypeSelection.parse("gadgets").choose(SERVED)


@pytest.mark.parametrize(
    ("types", "exclude", "problem"),
    [
        ("", "", "no type named"),
        ("all,pods", "", "all is every type"),
        ("all", "virtual*.*.istio.io", "a wildcard is"),
        ("all", "*", "a wildcard is"),
        ("all", "pod*.", "a wildcard is"),
    ],
)
def test_bad_flags_are_refused_naming_the_problem(types: str, exclude: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TypeSelection.parse(types, exclude)
