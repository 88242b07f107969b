"""The hub's bounds on what its agents' side of the wire may cost it, in one place.

Every number here is a ``fleetsync hub`` flag (see ``docs/protocol.md``, "Limits"): a
peer, authenticated or not, cannot make the hub hold more memory, connections, events
or time than these allow, whatever it sends. They live together so that one field of
:class:`~fleetsync.hub.core.HubSettings` carries them to the transports, the session,
the inbox and the refresh scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    #: A connection (a gRPC stream) that has not sent its Hello after this many seconds is closed.
    hello_timeout: float = 10.0
    #: gRPC streams that have not said Hello yet, at most, on this replica: beyond it, new
    #: streams are refused at once (RESOURCE_EXHAUSTED). A connection without a stream is
    #: closed after the Hello timeout (gRPC's idle-connection limit).
    max_pending_hellos: int = 256
    #: gRPC: concurrent streams one HTTP/2 connection may open (an agent uses one).
    max_streams_per_connection: int = 8
    #: gRPC keepalive: ping a silent peer after this many seconds, and drop it if the ping is
    #: not answered within ``keepalive_timeout`` (a partition, a machine gone without a RST).
    keepalive_time: float = 20.0
    keepalive_timeout: float = 10.0
    #: Hellos refused for a bad token, per peer address (IP): ``auth_failure_burst`` at once,
    #: then ``auth_failures_per_minute``; beyond it the answer waits ``auth_failure_delay``
    #: seconds and nothing is recorded (only counted on /metrics).
    auth_failures_per_minute: float = 6.0
    auth_failure_burst: int = 5
    auth_failure_delay: float = 1.0
    #: Peer addresses whose rate is remembered (the least recently seen are forgotten first
    #: and start again with a full burst): what the per-peer rate may cost in memory.
    auth_failure_peers: int = 10_000
    #: ``Rejected`` events for refused Hellos, fleet-wide, at most this many per
    #: ``rejected_events_window`` seconds; the rest are summarised in one event per window.
    rejected_events: int = 20
    rejected_events_window: float = 600.0
    #: An event's message (and type) is cut to this many bytes.
    max_event_bytes: int = 2048
    #: An object body may not declare in its lz4 frame, nor decompress to, more than this: a
    #: bundle carrying a larger one is refused (Kubernetes itself stores at most ~1.5 MiB).
    max_object_bytes: int = 4 * MIB
    #: A digest chunk's packed entries may not decompress to more than this many times the
    #: hub's max message size.
    max_digest_ratio: int = 16
    #: One digest (all its chunks) may carry at most this many entries and chunks, and must be
    #: complete this many seconds after its first chunk; else it is refused (Reject PROTOCOL).
    max_digest_entries: int = 2_000_000
    max_digest_chunks: int = 10_000
    digest_timeout: float = 600.0
    #: MQTT/NATS: messages (and bytes) received from one agent session and not yet handled;
    #: beyond either the session is ended (the agent reconnects) rather than the hub's memory
    #: grown. The broker does not wait for the hub: it delivers as fast as agents publish.
    broker_session_queue: int = 1024
    broker_session_bytes: int = 64 * MIB
    #: A pull refresh's ``GET /v1/state``: at most this many bytes, within this many seconds.
    pull_max_bytes: int = 256 * MIB
    pull_timeout: float = 30.0
    #: Resource types one cluster's agent may report (its Hello's or a Types message's
    #: TypeInfo); the ones beyond are refused, each with a Reject naming it.
    max_reported_types: int = 1000
