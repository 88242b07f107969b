from __future__ import annotations

import pytest

from fleetsync.model.selectors import FieldSelector, LabelSelector, SelectorError

LABELS = {"app": "web", "tier": "frontend", "replicas": "3"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app!=web", False),
        ("app=db", False),
        ("app in (web, db)", True),
        ("app notin (web)", False),
        ("missing notin (x)", True),
        ("tier", True),
        ("!tier", False),
        ("!missing", True),
        ("app=web,tier in (frontend,backend)", True),
        ("app=web,tier=backend", False),
        ("replicas>2", True),
        ("replicas<3", False),
        ("example.com/owner!=team-a", True),
    ],
)
def test_label_selector_matches_like_kubernetes(selector: str, matches: bool) -> None:
    assert LabelSelector.parse(selector).matches(LABELS) is matches


@pytest.mark.parametrize("selector", ["app in (web", "=web", "app in ()", "Bad Key=x", "app=x y", "replicas>abc", "a,,b"])
def test_malformed_label_selectors_are_rejected_with_a_message(selector: str) -> None:
    with pytest.raises(SelectorError, match="unable to parse requirement"):
        LabelSelector.parse(selector)


def test_field_selector_matches_and_rejects_unknown_fields() -> None:
    allowed = {"metadata.name", "metadata.namespace", "status.phase"}
    fields = {"metadata.name": "p1", "metadata.namespace": "default", "status.phase": "Running"}
    assert FieldSelector.parse("status.phase=Running,metadata.namespace!=kube-system", allowed=allowed).matches(fields)
    assert not FieldSelector.parse("metadata.name==p2", allowed=allowed).matches(fields)
    with pytest.raises(SelectorError, match=r'field label not supported: "spec\.nodeName"'):
        FieldSelector.parse("spec.nodeName=n1", allowed=allowed)
    with pytest.raises(SelectorError, match="invalid field selector term"):
        FieldSelector.parse("status.phase", allowed=allowed)


def test_equalities_are_what_a_store_can_filter_by() -> None:
    selector = LabelSelector.parse("app=web,tier==front,env in (prod),zone in (a,b),!legacy,version!=2,team")
    assert selector.equalities() == {"app": "web", "tier": "front", "env": "prod"}
    assert LabelSelector.parse("").equalities() == {}
