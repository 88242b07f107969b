"""The agent's allow-list of what works may touch (``--works-allow-kinds``, ``--works-allow-namespaces``,
``--works-deny-namespaces``): pure rules, so every case is checked here without a cluster."""

from __future__ import annotations

import pytest

from fleetsync.model.workpolicy import DEFAULT_KINDS, KindPattern, PolicyError, WorksPolicy


def test_the_default_allows_everyday_namespaced_kinds_outside_the_clusters_own_namespaces() -> None:
    policy = WorksPolicy()
    assert len(policy.kinds) == len(DEFAULT_KINDS)
    for api_version, kind in (("v1", "ConfigMap"), ("v1", "Secret"), ("apps/v1", "Deployment"), ("batch/v1", "CronJob"), ("networking.k8s.io/v1", "Ingress")):
        assert policy.object_problem(api_version, kind, "shop", "x", namespaced=True) == "", kind
    assert "matches no --works-allow-kinds pattern" in policy.kind_problem("v1", "Pod")
    assert "matches no --works-allow-kinds pattern" in policy.kind_problem("v1", "Namespace")
    assert "matches no --works-allow-kinds pattern" in policy.kind_problem("rbac.authorization.k8s.io/v1", "RoleBinding")
    for namespace in ("kube-system", "kube-public", "kube-node-lease"):
        assert "--works-deny-namespaces" in policy.object_problem("v1", "ConfigMap", namespace, "x", namespaced=True)


def test_wildcards_never_grant_cluster_scoped_or_rbac_kinds_naming_them_does() -> None:
    everything = WorksPolicy.parse("*")
    assert everything.object_problem("v1", "Pod", "default", "p", namespaced=True) == ""
    assert everything.kind_problem("v1", "Namespace") == "", "not known to be cluster-scoped before discovery says so"
    assert "core/Namespace is cluster-scoped" in everything.kind_problem("v1", "Namespace", namespaced=False)
    assert "an RBAC kind" in everything.kind_problem("rbac.authorization.k8s.io/v1", "Role"), "RBAC is known by name: refused before discovery"
    assert "an RBAC kind" in WorksPolicy.parse("rbac.authorization.k8s.io/*").kind_problem("rbac.authorization.k8s.io/v1", "ClusterRoleBinding")

    named = WorksPolicy.parse("default,core/Namespace,rbac.authorization.k8s.io/v1/RoleBinding", "team-*", "")
    assert named.object_problem("v1", "Namespace", "", "team-a", namespaced=False) == ""
    assert "namespace 'prod' matches no --works-allow-namespaces pattern" in named.object_problem("v1", "Namespace", "", "prod", namespaced=False)
    assert named.object_problem("rbac.authorization.k8s.io/v1", "RoleBinding", "team-a", "rb", namespaced=True) == ""
    assert named.kind_problem("rbac.authorization.k8s.io/v1beta1", "RoleBinding") != "", "the version named is the version allowed"
    assert named.object_problem("v1", "ConfigMap", "kube-system", "x", namespaced=True) != "", "kube-system is not team-*"


def test_patterns_read_as_group_kind_or_api_version_kind_and_bad_ones_are_refused_with_the_reason() -> None:
    assert KindPattern.parse("v1/ConfigMap") == KindPattern("v1/ConfigMap", "", "v1", "ConfigMap")
    assert KindPattern.parse("core/ConfigMap") == KindPattern("core/ConfigMap", "", "*", "ConfigMap")
    assert KindPattern.parse("apps/Deployment") == KindPattern("apps/Deployment", "apps", "*", "Deployment")
    assert KindPattern.parse("apps/v1/Deployment").matches("apps", "v1", "Deployment")
    assert KindPattern.parse("*.istio.io/*").matches("networking.istio.io", "v1", "VirtualService")
    assert not KindPattern.parse("*.istio.io/*").matches("", "v1", "ConfigMap")
    deny = WorksPolicy.parse("default", "*", "kube-*,istio-system")
    assert deny.namespace_problem("kube-anything") != "" and deny.namespace_problem("istio-system") != "" and deny.namespace_problem("shop") == ""
    for bad, reason in (
        ("ConfigMap", "name the group too"),
        ("a/b/c/d", "expected GROUP/KIND"),
        ("Apps/Deployment", "not an API group"),
        ("apps/v1/deploy-ment", "not a kind"),
        ("apps/V1/Deployment", "not an API version"),
        ("x" * 300, "longer than"),
    ):
        with pytest.raises(PolicyError, match=reason):
            WorksPolicy.parse(bad)
    with pytest.raises(PolicyError, match="not a namespace pattern"):
        WorksPolicy.parse("default", "Team_A")
    with pytest.raises(PolicyError, match="at most"):
        WorksPolicy.parse(",".join(f"g{i}/K" for i in range(201)))
