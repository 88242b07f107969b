"""What a feature gate key is (seed 004): ``feature.NAME``, nested as ``feature.storage.ceph``."""

from __future__ import annotations

import re

#: Dot-separated lowercase DNS labels under ``feature``.
GATE_KEY = re.compile(r"^feature(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+$")
MAX_KEY_LENGTH = 253


def gate_key_problem(key: str) -> str:
    """Why ``key`` is not a gate key ("" if it is one)."""
    if len(key) > MAX_KEY_LENGTH or not GATE_KEY.fullmatch(key):
        return (
            f"invalid gate key {key!r}: gates are in the feature.* namespace, e.g. feature.multi-region or feature.storage.ceph "
            f"(lowercase letters, digits and '-' between dots, at most {MAX_KEY_LENGTH} characters)"
        )
    return ""
