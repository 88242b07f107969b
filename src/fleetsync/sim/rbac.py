"""Role-based access control as the Kubernetes API server applies it (pure code).

The simulator serves ServiceAccounts, Roles, ClusterRoles, RoleBindings and
ClusterRoleBindings, and authorizes every request made with a service account's token
against them (see :mod:`fleetsync.sim.satokens` for the tokens), so a test can run the agent
with exactly the RBAC the project ships and see what it may not do. The rules are
Kubernetes' (``plugin/pkg/auth/authorizer/rbac``):

- a request is allowed if any rule of any role bound to the user (by name, or through one
  of its groups) allows it; nothing denies;
- a ClusterRoleBinding grants its ClusterRole's rules everywhere; a RoleBinding grants its
  Role's (or ClusterRole's) rules in the binding's namespace only;
- a rule matches a verb (``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``,
  ``delete``, ``deletecollection``, or ``*``), an API group (``""`` is the core group, ``*``
  any), a resource (``pods``; a subresource as ``pods/status``; ``*`` any, ``*/status`` that
  subresource of any) and, if it lists ``resourceNames``, only requests naming one of them
  (never a ``create``, nor a ``list`` or ``watch`` unless its ``fieldSelector`` is
  ``metadata.name=NAME``);
- a denial answers 403 with the API server's own ``Status`` message.

Aggregated ClusterRoles (``aggregationRule``) and non-resource URL rules are not
evaluated: discovery (``/api``, ``/apis``, ``/version``, ``/openapi``) is readable by every
authenticated user, as Kubernetes' ``system:discovery`` grants.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fleetsync.model.status import ApiError
from fleetsync.model.types import ResourceType

RBAC_GROUP = "rbac.authorization.k8s.io"

SERVICE_ACCOUNT = ResourceType("", "v1", "ServiceAccount", "serviceaccounts", True, short_names=("sa",))
ROLE = ResourceType(RBAC_GROUP, "v1", "Role", "roles", True)
CLUSTER_ROLE = ResourceType(RBAC_GROUP, "v1", "ClusterRole", "clusterroles", False)
ROLE_BINDING = ResourceType(RBAC_GROUP, "v1", "RoleBinding", "rolebindings", True)
CLUSTER_ROLE_BINDING = ResourceType(RBAC_GROUP, "v1", "ClusterRoleBinding", "clusterrolebindings", False)
#: The kinds a simulated cluster serves for authorization (its identities and their grants).
RBAC_TYPES: tuple[ResourceType, ...] = (SERVICE_ACCOUNT, ROLE, CLUSTER_ROLE, ROLE_BINDING, CLUSTER_ROLE_BINDING)

#: What an HTTP method does to a collection or an object (GET of a collection is list or watch).
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


@dataclass(frozen=True, slots=True)
class User:
    """Who a request comes from: a user name and its groups."""

    name: str
    groups: tuple[str, ...] = ()


def service_account_user(namespace: str, name: str) -> User:
    """The user a service account's token authenticates as, with the groups Kubernetes gives it."""
    return User(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What a resource request does (the API server's ``authorizer.Attributes``)."""

    verb: str
    api_group: str
    resource: str
    subresource: str = ""
    name: str = ""
    #: "" for a cluster-scoped request (a cluster-scoped kind, or a namespaced one across namespaces).
    namespace: str = ""


def verb_of(method: str, *, named: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP request (``GET`` of a collection: ``list``, or ``watch`` with ``?watch``)."""
    method = method.upper()
    if method == "GET" or method == "HEAD":
        return "watch" if watch else "get" if named else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return method.lower()


def selected_name(field_selector: str) -> str:
    """The object a list or watch is limited to by ``fieldSelector=metadata.name=NAME`` ("" if none):
    the API server authorizes such a request as naming that object, so ``resourceNames`` can allow it."""
    key, sep, value = field_selector.replace("==", "=").partition("=")
    return value if sep and key.strip() == "metadata.name" and "," not in value and "=" not in value and not key.endswith("!") else ""


def _strings(value: Any) -> list[str]:
    """A rule's list field; anything else (malformed) is matched by nothing."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _resource_matches(rule_resources: list[str], resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for ruled in rule_resources:
        if ruled in ("*", combined):
            return True
        if subresource and ruled == f"*/{subresource}":
            return True
    return False


def rule_allows(rule: dict[str, Any], attrs: RequestAttributes) -> bool:
    """Whether one PolicyRule allows the request."""
    verbs = _strings(rule.get("verbs"))
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    groups = _strings(rule.get("apiGroups"))
    if "*" not in groups and attrs.api_group not in groups:
        return False
    if not _resource_matches(_strings(rule.get("resources")), attrs.resource, attrs.subresource):
        return False
    names = _strings(rule.get("resourceNames"))
    return not names or (bool(attrs.name) and attrs.name in names)


def _subject_is(subject: Any, user: User, binding_namespace: str) -> bool:
    subject = _dict(subject)
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name) and name == user.name
    if kind == "Group":
        return bool(name) and name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return bool(name) and bool(namespace) and user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


@dataclass(frozen=True)
class Policy:
    """A cluster's RBAC objects at one moment (decoded objects, as stored)."""

    roles: Iterable[dict[str, Any]] = ()
    cluster_roles: Iterable[dict[str, Any]] = ()
    role_bindings: Iterable[dict[str, Any]] = ()
    cluster_role_bindings: Iterable[dict[str, Any]] = ()

    def rules_for(self, user: User, namespace: str) -> list[dict[str, Any]]:
        """Every rule that applies to ``user`` for a request in ``namespace`` ("" for cluster scope)."""
        cluster_roles = {_dict(r.get("metadata")).get("name"): r for r in self.cluster_roles}
        roles = {(_dict(r.get("metadata")).get("namespace"), _dict(r.get("metadata")).get("name")): r for r in self.roles}
        granted: list[dict[str, Any]] = []
        for binding in self.cluster_role_bindings:
            ref = _dict(binding.get("roleRef"))
            if ref.get("kind") == "ClusterRole" and any(_subject_is(s, user, "") for s in _list(binding.get("subjects"))):
                granted += _rules(cluster_roles.get(ref.get("name")))
        if namespace:
            for binding in self.role_bindings:
                if _dict(binding.get("metadata")).get("namespace") != namespace:
                    continue
                if not any(_subject_is(s, user, namespace) for s in _list(binding.get("subjects"))):
                    continue
                ref = _dict(binding.get("roleRef"))
                if ref.get("kind") == "ClusterRole":
                    granted += _rules(cluster_roles.get(ref.get("name")))
                elif ref.get("kind") == "Role":
                    granted += _rules(roles.get((namespace, ref.get("name"))))
        return granted

    def allows(self, user: User, attrs: RequestAttributes) -> bool:
        return any(rule_allows(rule, attrs) for rule in self.rules_for(user, attrs.namespace))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _rules(role: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [r for r in _list((role or {}).get("rules")) if isinstance(r, dict)]


def forbidden(user: User, attrs: RequestAttributes) -> ApiError:
    """The API server's 403 for a request RBAC does not allow (``responsewriters.ForbiddenStatusError``)."""
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    reason = f'User "{user.name}" cannot {attrs.verb} resource "{resource}" in API group "{attrs.api_group}" {scope}'
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    details: dict[str, Any] = {"kind": attrs.resource}
    if attrs.api_group:
        details["group"] = attrs.api_group
    if attrs.name:
        details["name"] = attrs.name
    return ApiError(403, "Forbidden", f"{subject} is forbidden: {reason}", details=details)
