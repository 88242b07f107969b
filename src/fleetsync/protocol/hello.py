"""What a Hello's identity fields may be, checked before any of them reaches a log line,
an event or the store (pure code).

A Hello is the one message the hub reads from a peer it does not know yet, so its
fields are chosen by whoever connects: unchecked, a cluster id of half a megabyte went
into every ``Rejected`` event and log line. The rules stay compatible with what
``fleetsync token create`` and ``fleetsync agent`` already accept:

- ``cluster_id``: a cluster name (:func:`~fleetsync.model.names.check_cluster_name`);
- ``agent_id``: at most 253 printable characters without spaces (the agent's default is
  ``HOSTNAME/CLUSTER``; ``--agent-id`` may be any such identity);
- ``incarnation``: at most 64 letters, digits, ``-`` or ``_`` (agents use 16 hex digits);
- ``token``: at most 1024 characters (tokens are 47).
"""

from __future__ import annotations

import re

from fleetsync.model.names import CLUSTER_NAME_PATTERN
from fleetsync.protocol import fleetsync_pb2 as pb

MAX_AGENT_ID = 253
MAX_INCARNATION = 64
MAX_TOKEN = 1024
_CLUSTER = re.compile(CLUSTER_NAME_PATTERN)
_AGENT_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:/@+=-]{{0,{MAX_AGENT_ID - 1}}}")
_INCARNATION = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_INCARNATION}}}")


def _shown(value: str) -> str:
    """A peer-chosen value as it may appear in a refusal: its start only."""
    return repr(value[:40] + "…") if len(value) > 40 else repr(value)


def agent_id_problem(agent_id: str) -> str:
    """What is wrong with an agent id ("" if nothing)."""
    if not _AGENT_ID.fullmatch(agent_id):
        return f"agent_id {_shown(agent_id)} is not valid: at most {MAX_AGENT_ID} letters, digits and . _ : / @ + = -, starting with a letter or digit"
    return ""


def hello_problem(hello: pb.Hello) -> str:
    """What is wrong with a Hello's identity ("" if nothing); the answer quotes no more than
    the first 40 characters of anything the peer sent."""
    if not hello.cluster_id or not hello.agent_id or not hello.incarnation:
        return "Hello needs cluster_id, agent_id and incarnation"
    if not _CLUSTER.fullmatch(hello.cluster_id):
        return f"cluster_id {_shown(hello.cluster_id)} is not a valid cluster name: letters, digits, '-' and '_' (at most 63, starting and ending with a letter or digit)"
    if problem := agent_id_problem(hello.agent_id):
        return problem
    if not _INCARNATION.fullmatch(hello.incarnation):
        return f"incarnation {_shown(hello.incarnation)} is not valid: 1 to {MAX_INCARNATION} letters, digits, '-' or '_'"
    if len(hello.token) > MAX_TOKEN:
        return f"the token is {len(hello.token)} characters long; tokens have at most {MAX_TOKEN}"
    return ""
