"""CloudEvents (binary content mode) attributes for protocol messages on a broker.

On MQTT they travel as MQTT 5 user properties, on NATS as ``ce-`` message headers, and
the payload is the protobuf message itself, so another tool on the broker can route and
read the traffic without knowing fleetsync. The CloudEvents SDK binds events to HTTP
and Kafka only; for MQTT and NATS the binding is this handful of attributes.

Besides the standard attributes every event carries two extensions: ``fssession``, the
agent connection it belongs to (a broker has no connections of its own, so this is
what tells one of an agent's sessions from the next), and for bundles and digests
``fsversion``, the stream position ``INCARNATION.SEQ``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from fleetsync.protocol import fleetsync_pb2 as pb

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/protobuf"
TYPE_PREFIX = "io.fleetsync.v1."
#: Sent (with an empty payload) by an agent that closes its connection, so the hub ends
#: the session at once instead of waiting for the inactivity timeout.
GOODBYE = TYPE_PREFIX + "goodbye"

SESSION = "fssession"
VERSION = "fsversion"


def event_type(kind: str) -> str:
    """``bundle`` -> ``io.fleetsync.v1.bundle`` (the name of the message's oneof field)."""
    return TYPE_PREFIX + kind


def _attributes(kind: str, source: str, session: str) -> dict[str, str]:
    return {
        "specversion": SPEC_VERSION,
        "id": uuid.uuid4().hex,
        "source": source,
        "type": event_type(kind),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        SESSION: session,
    }


def agent_attributes(message: pb.AgentMessage | None, *, cluster: str, session: str) -> dict[str, str]:
    """Attributes of a message from ``cluster``'s agent (None: the goodbye event)."""
    if message is None:
        return _attributes("goodbye", cluster, session)
    kind = message.WhichOneof("message") or "empty"
    attributes = _attributes(kind, cluster, session)
    if kind == "bundle":
        attributes["subject"] = message.bundle.type
        attributes[VERSION] = f"{message.bundle.incarnation}.{message.bundle.seq}"
    elif kind == "digest":
        attributes["subject"] = message.digest.type
        attributes[VERSION] = f"{message.digest.incarnation}.{message.digest.seq}"
    return attributes


def hub_attributes(message: pb.HubMessage, *, hub_id: str, session: str) -> dict[str, str]:
    """Attributes of a message from hub replica ``hub_id`` to one agent session."""
    kind = message.WhichOneof("message") or "empty"
    attributes = _attributes(kind, f"hub/{hub_id}", session)
    if kind == "ack":
        attributes["subject"] = message.ack.type
        attributes[VERSION] = f"{message.ack.incarnation}.{message.ack.seq}"
    elif kind in ("resync", "digest_diff"):
        attributes["subject"] = getattr(message, kind).type
    return attributes


@dataclass(frozen=True, slots=True)
class Received:
    """What a broker transport needs of an incoming event's attributes."""

    type: str
    session: str

    @property
    def goodbye(self) -> bool:
        return self.type == GOODBYE


def parse(attributes: dict[str, str]) -> Received:
    """The event's type and session; ValueError naming what is missing or wrong."""
    if attributes.get("specversion") != SPEC_VERSION:
        raise ValueError(f"not a CloudEvent of spec version {SPEC_VERSION} (specversion={attributes.get('specversion')!r})")
    type_ = attributes.get("type", "")
    if not type_.startswith(TYPE_PREFIX):
        raise ValueError(f"event type {type_!r} is not a fleetsync event ({TYPE_PREFIX}*)")
    session = attributes.get(SESSION, "")
    if not session:
        raise ValueError(f"event has no {SESSION} attribute (the agent session it belongs to)")
    return Received(type_, session)
