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


def test_named_types_resolve_against_what_the_cluster_serves() -> None:
    assert TypeSelection.parse("wd,secrets,pods").choose(SERVED) == [WIDGET, SECRET, t.POD], "a Secret named is synced"
    with pytest.raises(UnknownResourceType):
        TypeSelection.parse("gadgets").choose(SERVED)


@pytest.mark.parametrize(
    ("types", "exclude", "problem"), [("", "", "no type named"), ("all,pods", "", "all is every type"), ("all", "*istio*", "a wildcard is")]
)
def test_bad_flags_are_refused_naming_the_problem(types: str, exclude: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        TypeSelection.parse(types, exclude)
