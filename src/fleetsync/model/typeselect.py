"""Which of the types a cluster serves the agent syncs: ``--types`` and ``--exclude-types`` (pure code).

``--types all`` is every type the cluster's discovery lists that can be listed and watched;
``--types`` may also name types (``pods``, ``deployments.apps``, ``example.com/v1/Widget``).
``--exclude-types`` takes resource names (``events``, ``deployments.apps``), wire names,
group wildcards: ``*.istio.io`` (every group ending so), ``events.k8s.io/*`` (one whole
group; ``core/*`` for the core group), and resource-name wildcards: ``*bindings`` (every
resource whose plural matches, in any group), ``virtual*.networking.istio.io`` (in that
group). Secrets are never chosen by ``all`` or a wildcard:
only when ``--types`` names them, as their content is the cluster's credentials.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from fleetsync.model.types import SECRET, ResourceType, TypeRegistry, UnknownResourceType


def is_secret(rtype: ResourceType) -> bool:
    return rtype.group == SECRET.group and rtype.kind == SECRET.kind


def _pattern_problem(pattern: str) -> str:
    if not pattern or any(c.isspace() for c in pattern) or len(pattern) > 253:
        return f"{pattern!r} is not a type name or wildcard"
    if "*" not in pattern or _group_suffix(pattern) or _whole_group(pattern):
        return ""
    name, dot, group = pattern.partition(".")
    if "*" in group or "/" in pattern or (dot and not group) or (name.strip("*") == "" and not group):
        return f"{pattern!r}: a wildcard is *.GROUP-SUFFIX, GROUP/* or NAME-PATTERN[.GROUP] (e.g. *bindings, virtual*.networking.istio.io)"
    return ""


def _group_suffix(pattern: str) -> bool:
    """``*.istio.io``: every group ending so."""
    return pattern.startswith("*.") and "*" not in pattern[1:]


def _whole_group(pattern: str) -> bool:
    """``events.k8s.io/*``: one group."""
    return pattern.endswith("/*") and "*" not in pattern[:-2]


@dataclass(frozen=True, slots=True)
class TypeSelection:
    """``--types`` (``all`` or names) and ``--exclude-types`` (names and wildcards)."""

    all: bool
    names: tuple[str, ...]
    exclude: tuple[str, ...] = ()

    @classmethod
    def parse(cls, types: str, exclude: str = "") -> TypeSelection:
        """Parse the flags; ValueError naming the bad entry."""
        names = tuple(n.strip() for n in types.split(",") if n.strip())
        if not names:
            raise ValueError("--types: no type named (give names, or all)")
        excluded = tuple(n.strip() for n in exclude.split(",") if n.strip())
        for pattern in excluded:
            if problem := _pattern_problem(pattern):
                raise ValueError(f"--exclude-types: {problem}")
        if "all" in names and len(names) > 1:
            raise ValueError("--types: all is every type the cluster serves; name types without it, or narrow it with --exclude-types")
        return cls(all=names == ("all",), names=() if names == ("all",) else names, exclude=excluded)

    def excludes(self, rtype: ResourceType) -> bool:
        """Whether an --exclude-types entry matches ``rtype``."""
        group = rtype.group or "core"
        for pattern in self.exclude:
            if _group_suffix(pattern):
                if rtype.group == pattern[2:] or rtype.group.endswith(pattern[1:]):
                    return True
            elif _whole_group(pattern):
                if pattern[:-2] == group:
                    return True
            elif "*" in pattern:
                name, _, in_group = pattern.partition(".")
                if (not in_group or in_group == (rtype.group or "core")) and fnmatchcase(rtype.plural, name.lower()):
                    return True
            elif _names(rtype, pattern):
                return True
        return False

    def choose(self, served: Iterable[ResourceType]) -> list[ResourceType]:
        """The types to sync among those the cluster ``served`` (``--types all``), or the named ones
        resolved against them (UnknownResourceType if one is not served), minus the excluded."""
        served = list(served)
        if self.all:
            return [t for t in served if not is_secret(t) and not self.excludes(t)]
        registry = TypeRegistry(served)
        chosen: list[ResourceType] = []
        for name in self.names:
            rtype = registry.resolve(name)
            if rtype not in chosen and not self.excludes(rtype):
                chosen.append(rtype)
        return chosen


def _names(rtype: ResourceType, name: str) -> bool:
    """Whether ``name`` (``events``, ``deployments.apps``, ``v1/Event``) names ``rtype``."""
    if name == rtype.gvk:
        return True
    base, _, group = name.partition(".")
    if group and group != rtype.group:
        return False
    if not group and rtype.group and "." in name:
        return False
    lowered = base.lower()
    return lowered in (rtype.plural, rtype.singular, rtype.kind.lower()) or lowered in rtype.short_names


__all__ = ["TypeSelection", "UnknownResourceType", "is_secret"]
