"""The rules of a read token's scope (``model/scope.py``): which clusters, namespaces and types it admits, and which scopes are refused."""

from __future__ import annotations

import pytest

from fleetsync.model.scope import MAX_NAMES, MAX_SELECTOR, Scope, compiled, scope_problem, split_names
from fleetsync.store.contract import ReadScope


def test_named_clusters_or_those_the_selector_matches_are_in_scope() -> None:
    scope = Scope(ReadScope(clusters=("c1",), cluster_selector="env=prod"))
    labels = {"c1": {}, "c2": {"env": "prod"}, "c3": {"env": "dev"}, "c4": {}}
    assert scope.clusters(labels) == {"c1", "c2"}
    assert scope.admits_cluster("c1", {}) and scope.admits_cluster("c2", {"env": "prod"}) and not scope.admits_cluster("c3", {"env": "dev"})
    assert scope.admits_cluster("c4", {"env": "prod"})  # labelled later: in scope from then on
    assert Scope(ReadScope(clusters=("c9",))).clusters(labels) == {"c9"}  # a named cluster not connected yet
    assert Scope(ReadScope(namespaces=("a",))).clusters(labels) is None  # no cluster limit: no condition on clusters


def test_namespaces_exclude_cluster_scoped_types_and_types_are_exact() -> None:
    scope = Scope(ReadScope(namespaces=("team-a",), types=("v1/Pod", "v1/Node")))
    assert scope.admits_namespace("team-a") and not scope.admits_namespace("team-b") and not scope.admits_namespace("")
    assert scope.admits_type("v1/Pod", namespaced=True)
    assert not scope.admits_type("v1/Node", namespaced=False)  # under a namespace limit
    assert not scope.admits_type("v1/Service", namespaced=True)
    assert Scope(ReadScope(types=("v1/Node",))).admits_type("v1/Node", namespaced=False)
    assert Scope(ReadScope(clusters=("c1",))).admits_namespace("anything")


def test_the_scope_in_words_names_every_limit() -> None:
    scope = Scope(ReadScope(clusters=("c2", "c1"), cluster_selector="env=prod", namespaces=("a",), types=("v1/Pod",)))
    assert scope.describe() == "clusters c1,c2 or labelled env=prod; namespaces a; types v1/Pod"
    assert compiled(ReadScope(clusters=("c1",))) is compiled(ReadScope(clusters=("c1",)))


@pytest.mark.parametrize(
    ("scope", "problem"),
    [
        (ReadScope(clusters=("bad name",)), "--clusters"),
        (ReadScope(namespaces=("Team_A",)), "--namespaces: 'Team_A' is not a namespace name"),
        (ReadScope(cluster_selector="env in ("), "--cluster-selector"),
        (ReadScope(cluster_selector="x" * (MAX_SELECTOR + 1)), f"at most {MAX_SELECTOR}"),
        (ReadScope(namespaces=tuple(f"n{i}" for i in range(MAX_NAMES + 1))), f"at most {MAX_NAMES}"),
    ],
)
def test_bad_scopes_are_refused_naming_the_flag(scope: ReadScope, problem: str) -> None:
    assert problem in scope_problem(scope)


def test_good_scopes_pass_and_flag_values_are_split() -> None:
    assert scope_problem(ReadScope(clusters=("c1",), cluster_selector="env=prod,tier in (web)", namespaces=("team-a",))) == ""
    assert split_names(" b, a,,b ") == ("a", "b")
