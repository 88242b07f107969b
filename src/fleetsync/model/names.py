"""Names that end up in URLs, MQTT topics and NATS subjects, checked once where they enter."""

from __future__ import annotations

import re

#: What a cluster name may be (see :func:`check_cluster_name`), as a regular expression.
CLUSTER_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$"
_CLUSTER = re.compile(CLUSTER_NAME_PATTERN)


def check_cluster_name(name: str) -> str:
    """``name`` if it can name a cluster; a ValueError saying why not otherwise.

    Letters, digits, ``-`` and ``_``, starting and ending with a letter or digit, at most
    63 characters: a Kubernetes-like name that is also a valid MQTT topic level and NATS
    subject token (no ``/``, ``.``, ``+``, ``#``, ``*``, ``>`` or spaces).
    """
    if not _CLUSTER.fullmatch(name):
        raise ValueError(f"cluster name {name!r} is not valid: use letters, digits, '-' and '_' (at most 63, starting and ending with a letter or digit)")
    return name
