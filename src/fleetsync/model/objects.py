"""Small pure helpers over Kubernetes objects as JSON dicts."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fleetsync.model.types import ResourceType

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

#: The annotation the hub's reads add to every object: the cluster's own ``resourceVersion``
#: of it (their ``metadata.resourceVersion`` is the hub revision, which watches resume from).
CLUSTER_VERSION_ANNOTATION = "fleetsync.io/cluster-resource-version"
#: The label the hub's reads add to every object (and the label fleet-wide selectors and
#: work placements match clusters by): the name of the object's cluster.
CLUSTER_LABEL = "fleetsync.io/cluster"


def rfc3339(ts: float) -> str:
    """Kubernetes timestamps: second precision, UTC, ``Z`` suffix."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def dig(obj: Any, dotted: str) -> Any:
    """``dig(pod, "status.phase")`` -> value or None."""
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def object_key(namespace: str, name: str) -> str:
    """An object's key within its type, everywhere in fleetsync (the agent's listings and
    digests, bundles' deletes, the hub's inbox, store and reads): ``namespace/name``
    (``/name`` if cluster-scoped). Names hold no ``/``, so :func:`split_key` undoes it."""
    return f"{namespace}/{name}"


def split_key(key: str) -> tuple[str, str]:
    """``namespace/name`` -> (namespace, name); a key without ``/`` is a cluster-scoped name."""
    namespace, sep, name = key.partition("/")
    return (namespace, name) if sep else ("", key)


def selectable_fields(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, str]:
    """The field-selector values of an object, rendered as strings as the apiserver does."""
    meta = obj.get("metadata") or {}
    fields = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", "")}
    for path in rtype.selectable_fields:
        value = dig(obj, path)
        if isinstance(value, bool):
            fields[path] = "true" if value else "false"
        else:
            fields[path] = "" if value is None else str(value)
    return fields


def name_problem(rtype: ResourceType, name: str) -> str | None:
    """Why ``name`` is not a valid object name for ``rtype`` (None if valid)."""
    if len(name) > 253:
        return "must be no more than 253 characters"
    pattern = _DNS_LABEL if rtype.plural == "namespaces" else _DNS_SUBDOMAIN
    if not pattern.match(name):
        return (
            f"a lowercase RFC 1123 {'label' if pattern is _DNS_LABEL else 'subdomain'} must consist of lower case "
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    return None


def human_duration(seconds: float) -> str:
    """Age as kubectl shows it (k8s.io/apimachinery/pkg/util/duration.HumanDuration)."""
    s = int(seconds)
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rem = s % 60
        return f"{minutes}m{rem}s" if rem else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rem = minutes % 60
        return f"{hours}h{rem}m" if rem else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rem = hours % 24
        return f"{days}d{rem}h" if rem else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rem_days = divmod(days, 365)
    if years < 8:
        return f"{years}y{rem_days}d" if rem_days else f"{years}y"
    return f"{years}y"
