"""The hub API's query parameters: each parsed in one place, a bad value a 400 naming it.

Pure functions of the query (a mapping of parameter to value), so that every rule is
fuzzed directly (tests/unit/test_api_fuzz.py): whatever a client sends, they return a value
or raise :class:`~fleetsync.model.status.ApiError` 400, never anything else. A value is
checked even when the request does not use it (a bad ``timeoutSeconds`` on a list is
refused too), and before a watch starts streaming, so that a bad one is a plain 400
``Status`` rather than an error in the middle of a stream.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import orjson

from fleetsync.model.selectors import LabelSelector, SelectorError
from fleetsync.model.status import ApiError


def encode_cursor(cluster: str, namespace: str, name: str) -> str:
    """The ``continue`` token of a page that ended at this object."""
    return base64.urlsafe_b64encode(orjson.dumps([cluster, namespace, name])).decode()


def decode_cursor(token: str) -> tuple[str, str, str]:
    """A ``continue`` token of :func:`encode_cursor` back as the (cluster, namespace, name) to list after; a 400 for any other."""
    try:
        cluster, namespace, name = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return str(cluster), str(namespace), str(name)
    except (binascii.Error, ValueError, TypeError):
        raise ApiError.bad_request(f"continue key is not valid: {token!r} is not a token this hub issued") from None


#: The largest count a query parameter may give (a signed 64-bit integer, as Kubernetes and the stores count).
MAX_COUNT = 2**63 - 1


def count(query: Mapping[str, str], name: str, default: int = 0) -> int:
    """A non-negative integer query parameter (ASCII digits: ``str.isdigit`` also takes ``²``, which ``int``
    refuses); ``default`` if it is not sent. Sent empty, it is refused like any other value that is not a count."""
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_COUNT:
        raise ApiError.bad_request(f"invalid {name} {raw!r}: must be a non-negative integer (at most {MAX_COUNT})")
    return int(raw)


def cluster_selector(query: Mapping[str, str]) -> LabelSelector | None:
    """A fleet-wide read's ``clusterSelector`` on the clusters' labels (agent metadata), e.g.
    ``region=eu,env!=dev``; None: every cluster."""
    raw = query.get("clusterSelector")
    if not raw:
        return None
    try:
        return LabelSelector.parse(raw)
    except SelectorError as exc:
        raise ApiError.bad_request(f"clusterSelector: {exc}") from None


def flag(query: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter as Kubernetes clients send it (``1``, ``true``; Python clients send ``True``;
    ``0``, ``false``, or no parameter: false). Anything else, even an empty value, is refused rather than guessed."""
    raw = query.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("0", "1", "false", "true"):
        raise ApiError.bad_request(f"invalid {name} {raw!r}: must be true or false (or 1 or 0)")
    return raw.lower() in ("1", "true")


def resource_version(query: Mapping[str, str]) -> str:
    """``resourceVersion``: a hub revision (ASCII digits, at most :data:`MAX_COUNT`), or "" when it
    is not sent or empty. Checked before a watch starts streaming, so a bad one is a plain 400."""
    raw = query.get("resourceVersion", "")
    if raw and not (raw.isascii() and raw.isdigit() and int(raw) <= MAX_COUNT):
        raise ApiError.bad_request(f"invalid resourceVersion {raw!r}: must be a hub revision (a non-negative integer, at most {MAX_COUNT})")
    return raw


#: What a Table row may carry of its object (``includeObject``), as the apiserver takes it.
INCLUDE_OBJECT = ("None", "Metadata", "Object")


def include_object(query: Mapping[str, str]) -> str:
    """``includeObject`` of a Table read (default Metadata)."""
    raw = query.get("includeObject", "Metadata")
    if raw not in INCLUDE_OBJECT:
        raise ApiError.bad_request(f"invalid includeObject {raw!r}: one of {', '.join(INCLUDE_OBJECT)}")
    return raw
