"""Cluster labels an admin sets on the hub: what a label may be, and the kubectl-like arguments
that change them (``k=v`` sets, ``k-`` removes), checked the same way by the CLI and the API."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from fleetsync.model.objects import CLUSTER_LABEL

#: Most labels one cluster may carry (an admin's input is bounded too: every replica caches them).
MAX_LABELS = 64
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def key_problem(key: str) -> str:
    """Why ``key`` is not a Kubernetes label key ("" if it is); ``fleetsync.io/cluster`` is the hub's own."""
    if key == CLUSTER_LABEL:
        return f"label {CLUSTER_LABEL} is every cluster's own name: it cannot be set"
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
        return f"label key {key[:300]!r}: its prefix must be a DNS subdomain of at most 253 characters"
    if not _NAME.fullmatch(name):
        return f"label key {key[:300]!r}: its name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return ""


def value_problem(key: str, value: str) -> str:
    """Why ``value`` is not a Kubernetes label value ("" if it is; empty is one)."""
    if value and not _NAME.fullmatch(value):
        return f"label {key}: value {value[:100]!r} must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return ""


def change_problem(add: Mapping[str, str], remove: Sequence[str]) -> str:
    """What is wrong with a label change ("" if nothing)."""
    if not add and not remove:
        return "no label change: give KEY=VALUE to set a label, KEY- to remove one"
    if len(add) + len(remove) > MAX_LABELS:
        return f"{len(add) + len(remove)} label changes in one request; a cluster has at most {MAX_LABELS} labels"
    for key in [*add, *remove]:
        if problem := key_problem(key):
            return problem
    for key, value in add.items():
        if problem := value_problem(key, value):
            return problem
    return ""


def parse_args(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``["env=prod", "tier-"]`` -> ({"env": "prod"}, ["tier"]), as ``kubectl label`` takes them; ValueError if malformed."""
    add: dict[str, str] = {}
    remove: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep:
            add[key] = value
        elif arg.endswith("-") and len(arg) > 1:
            remove.append(arg[:-1])
        else:
            raise ValueError(f"{arg!r}: expected KEY=VALUE (set) or KEY- (remove)")
    if both := sorted(set(add) & set(remove)):
        raise ValueError(f"label {both[0]} both set and removed")
    if problem := change_problem(add, remove):
        raise ValueError(problem)
    return add, remove
