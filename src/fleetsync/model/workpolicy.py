"""What works may touch on a cluster: the allow-list an agent is started with.

A work is written on the hub, so whoever can write works (an admin token, or anything that
can pass for the hub) would otherwise hold the agent's full RBAC in every cluster. The
cluster's own side therefore decides what works may do there, with three agent flags:

- ``--works-allow-kinds``: kind patterns, ``GROUP/KIND`` or ``GROUP/VERSION/KIND`` (an
  apiVersion and a kind: ``apps/v1/Deployment``). The core group is ``core`` (or its
  version: ``v1/ConfigMap``). ``*`` is a wildcard within a part (``*.istio.io/*``) and
  alone means every kind. ``default`` stands for :data:`DEFAULT_KINDS`. A cluster-scoped
  kind (Namespace, ClusterRole, CustomResourceDefinition, ...) and an RBAC kind (Role,
  RoleBinding, ClusterRole, ClusterRoleBinding) are allowed only by a pattern that names
  both its group and its kind without a wildcard: ``*`` never grants them;
- ``--works-allow-namespaces``: namespace patterns (``*`` wildcards), default ``*``;
- ``--works-deny-namespaces``: namespace patterns that win over the allowed ones, default
  :data:`DEFAULT_DENY_NAMESPACES`. A Namespace object is checked by its own name.

Everything here is pure: the agent asks :meth:`WorksPolicy.kind_problem` before it touches
the cluster at all, and :meth:`WorksPolicy.object_problem` once discovery has told it
whether the kind is namespaced; a non-empty answer is the manifest's Failed message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from fleetsync.errors import FleetsyncError

#: Namespaced kinds of everyday workloads: what works may apply unless the agent is told otherwise.
DEFAULT_KINDS = (
    "core/ConfigMap",
    "core/Secret",
    "core/Service",
    "core/ServiceAccount",
    "core/PersistentVolumeClaim",
    "apps/Deployment",
    "apps/StatefulSet",
    "apps/DaemonSet",
    "batch/Job",
    "batch/CronJob",
    "autoscaling/HorizontalPodAutoscaler",
    "policy/PodDisruptionBudget",
    "networking.k8s.io/Ingress",
    "networking.k8s.io/NetworkPolicy",
)
#: The cluster's own namespaces: never touched by works unless the agent is told otherwise.
DEFAULT_DENY_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_KINDS = frozenset({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})

_CORE_VERSION = re.compile(r"^v[0-9]+((alpha|beta)[0-9]+)?$")
_GROUP = re.compile(r"^[a-z0-9*]([-a-z0-9.*]*[a-z0-9*])?$")
_VERSION = re.compile(r"^[a-z0-9*]+$")
_KIND = re.compile(r"^([A-Za-z][A-Za-z0-9]*|\*)$")
_NAMESPACE = re.compile(r"^[a-z0-9*]([-a-z0-9*]*[a-z0-9*])?$")
#: Bounds on the flags' values (they come from the command line, but are outside input all the same).
MAX_PATTERNS = 200
MAX_PATTERN_LENGTH = 253


class PolicyError(FleetsyncError, ValueError):
    """A pattern of an allow-list flag that does not parse."""


def group_version(api_version: str) -> tuple[str, str]:
    """(group, version) of an apiVersion: ``v1`` is the core group's ("")."""
    group, _, version = api_version.rpartition("/")
    return group, version


def kind_name(group: str, kind: str) -> str:
    """``GROUP/KIND`` as the flag spells it (``core/Namespace``)."""
    return f"{group or 'core'}/{kind}"


@dataclass(frozen=True)
class KindPattern:
    """One ``--works-allow-kinds`` pattern."""

    text: str
    group: str  # "" is the core group; may hold '*'
    version: str  # '*': any
    kind: str  # may be '*'

    @property
    def explicit(self) -> bool:
        """Whether it names a group and a kind without wildcards (what cluster-scoped and RBAC kinds need)."""
        return "*" not in self.group and "*" not in self.kind

    def matches(self, group: str, version: str, kind: str) -> bool:
        return fnmatchcase(group, self.group) and fnmatchcase(version, self.version) and fnmatchcase(kind, self.kind)

    @classmethod
    def parse(cls, text: str) -> KindPattern:
        if len(text) > MAX_PATTERN_LENGTH:
            raise PolicyError(f"{text[:40]!r}...: longer than {MAX_PATTERN_LENGTH} characters")
        if text == "*":
            return cls(text, "*", "*", "*")
        parts = text.split("/")
        if len(parts) == 1:
            raise PolicyError(f"{text!r}: name the group too, e.g. core/{text} (the core group) or apps/{text}")
        if len(parts) > 3:
            raise PolicyError(f"{text!r}: expected GROUP/KIND or GROUP/VERSION/KIND")
        if len(parts) == 3:
            group, version, kind = parts
        elif _CORE_VERSION.match(parts[0]):  # v1/ConfigMap: an apiVersion of the core group
            group, version, kind = "", parts[0], parts[1]
        else:
            group, version, kind = parts[0], "*", parts[1]
        if group == "core":
            group = ""
        if group and not _GROUP.match(group):
            raise PolicyError(f"{text!r}: {group!r} is not an API group (e.g. apps, networking.k8s.io, core)")
        if not _VERSION.match(version):
            raise PolicyError(f"{text!r}: {version!r} is not an API version (e.g. v1)")
        if not _KIND.match(kind):
            raise PolicyError(f"{text!r}: {kind!r} is not a kind (e.g. ConfigMap, or *)")
        return cls(text, group, version, kind)


def _split(text: str, flag: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) > MAX_PATTERNS:
        raise PolicyError(f"{flag}: {len(parts)} patterns; at most {MAX_PATTERNS}")
    return parts


def parse_kinds(text: str) -> tuple[KindPattern, ...]:
    """The patterns of ``--works-allow-kinds`` (``default`` expanded)."""
    patterns: list[KindPattern] = []
    for part in _split(text, "--works-allow-kinds"):
        for item in DEFAULT_KINDS if part == "default" else (part,):
            patterns.append(KindPattern.parse(item))
    return tuple(dict.fromkeys(patterns))


def parse_namespaces(text: str, flag: str) -> tuple[str, ...]:
    """Namespace patterns of ``flag`` (``*`` wildcards)."""
    found: list[str] = []
    for part in _split(text, flag):
        if len(part) > 63 or not _NAMESPACE.match(part):
            raise PolicyError(f"{flag}: {part[:70]!r} is not a namespace pattern (lower-case letters, digits, '-' and '*', at most 63)")
        found.append(part)
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class WorksPolicy:
    """The agent's allow-list of what works may apply (and so delete) on its cluster."""

    kinds: tuple[KindPattern, ...] = field(default_factory=lambda: parse_kinds("default"))
    namespaces: tuple[str, ...] = ("*",)
    deny_namespaces: tuple[str, ...] = DEFAULT_DENY_NAMESPACES

    @classmethod
    def parse(cls, kinds: str = "default", namespaces: str = "*", deny_namespaces: str = ",".join(DEFAULT_DENY_NAMESPACES)) -> WorksPolicy:
        return cls(parse_kinds(kinds), parse_namespaces(namespaces, "--works-allow-namespaces"), parse_namespaces(deny_namespaces, "--works-deny-namespaces"))

    def kind_problem(self, api_version: str, kind: str, *, namespaced: bool | None = None) -> str:
        """Why works may not use this kind ("" if they may); ``namespaced`` None: not known yet
        (the cluster's discovery says), so only what the name alone tells is checked."""
        group, version = group_version(api_version)
        matching = [p for p in self.kinds if p.matches(group, version, kind)]
        named = kind_name(group, kind)
        if not matching:
            return f"denied by the agent's allow-list: kind {named} matches no --works-allow-kinds pattern"
        sensitive = "an RBAC kind" if group == RBAC_GROUP and kind in RBAC_KINDS else "cluster-scoped" if namespaced is False else ""
        if sensitive and not any(p.explicit for p in matching):
            return f"denied by the agent's allow-list: {named} is {sensitive}, allowed only when --works-allow-kinds names it ({named}), not by a wildcard"
        return ""

    def namespace_problem(self, namespace: str) -> str:
        """Why works may not touch ``namespace`` ("" if they may)."""
        if any(fnmatchcase(namespace, p) for p in self.deny_namespaces):
            return f"denied by the agent's allow-list: namespace {namespace!r} is in --works-deny-namespaces"
        if not any(fnmatchcase(namespace, p) for p in self.namespaces):
            return f"denied by the agent's allow-list: namespace {namespace!r} matches no --works-allow-namespaces pattern"
        return ""

    def object_problem(self, api_version: str, kind: str, namespace: str, name: str, *, namespaced: bool) -> str:
        """Why works may not apply or delete this object ("" if they may): its kind, its
        namespace (a namespaced kind's; a Namespace's own name)."""
        if problem := self.kind_problem(api_version, kind, namespaced=namespaced):
            return problem
        if namespaced:
            return self.namespace_problem(namespace)
        if api_version == "v1" and kind == "Namespace":
            return self.namespace_problem(name)
        return ""
