"""A hub replica's settings, in one place: every flag of ``fleetsync hub`` that shapes a session lands here.

A module of its own (pure data, no I/O) so that the parts that read settings -- sessions,
the refresh scheduler, the anti-entropy schedule, the transports' hub side -- need not
import :class:`~fleetsync.hub.core.HubCore`, which holds them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetsync.hub.limits import ProtocolLimits
from fleetsync.model.types import HUB_TYPES, TypeRegistry, UnknownResourceType


@dataclass(frozen=True)
class DigestSchedule:
    """Seconds between periodic digests, per type, with a default (0: never)."""

    default: float = 300.0
    per_type: dict[str, float] = field(default_factory=dict)

    def interval(self, type_: str) -> float:
        return self.per_type.get(type_, self.default)

    @classmethod
    def parse(cls, text: str, *, registry: TypeRegistry | None = None) -> DigestSchedule:
        """``300`` or ``300,v1/Pod=60,networking.istio.io/v1/VirtualService=0`` (types as the agent's --types)."""
        registry = registry or TypeRegistry(HUB_TYPES)
        default, per_type = cls.default, {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, sep, raw = part.rpartition("=")
            try:
                seconds = float(raw)
            except ValueError:
                raise ValueError(f"digest interval {part!r}: {raw!r} is not a number of seconds") from None
            if seconds < 0:
                raise ValueError(f"digest interval {part!r}: must not be negative")
            if not sep:
                default = seconds
                continue
            try:
                per_type[registry.resolve(name).gvk] = seconds
            except UnknownResourceType as exc:
                raise ValueError(f"digest interval {part!r}: {exc}") from None
        return cls(default, per_type)


@dataclass
class HubSettings:
    hub_id: str = "hub-1"
    #: Agents send a heartbeat after this many seconds without any other message.
    heartbeat_interval: float = 10.0
    #: A cluster with no message for this long becomes inactive.
    inactivity_timeout: float = 30.0
    #: A connected agent's lease is renewed every third of this.
    lease_ttl: float = 30.0
    #: After a disconnect, the lease is held this long for the same agent_id only.
    grace_period: float = 15.0
    #: No agent message may be larger (agents are told in Welcome and chunk below it).
    max_message_bytes: int = 512 * 1024
    #: Agents fill their messages to this size (told in Welcome): what each agent the hub holds
    #: back has in flight to it follows the size of its chunks (docs/performance.md).
    chunk_bytes: int = 128 * 1024
    #: Anti-entropy, partial syncs: a digest of each type this often (``hub/antientropy.py``).
    digest_schedule: DigestSchedule = field(default_factory=DigestSchedule)
    #: Ask each cluster for a digest of every type on its first connection after this hub starts.
    resync_on_startup: bool = True
    #: Seed 004's deployment type, sent to agents with the gates: local (gates sync both ways) or
    #: maas (agents' changes go up, the hub's are not written down); "": unset (agents take local).
    deployment_type: str = ""
    #: Bytes received and not yet applied, per cluster, before the hub stops reading (backpressure).
    inbox_bytes: int = 64 * 1024 * 1024
    #: The same for every cluster together: what the hub holds of received bundles is bounded by
    #: this, not by the fleet's size (the agents wait, through the transports' flow control).
    inbox_budget: int = 64 * 1024 * 1024
    #: gRPC: bytes each agent's stream may have in flight to the hub (its HTTP/2 window).
    stream_window: int = 64 * 1024
    #: Group commit: at most this many bundles, and this many bytes of objects, in one transaction.
    batch_bundles: int = 1000
    batch_bytes: int = 16 * 1024 * 1024
    #: Under load, the writer waits this long for more bundles before it commits (seconds).
    batch_linger: float = 0.002
    #: While the store cannot be written, a cluster's engine retries this long before its
    #: session ends (the agent reconnects and resends what was not acknowledged).
    store_retry: float = 30.0
    #: Anti-entropy, full syncs: each push cluster is asked for a digest of every type this
    #: often (it counts as every type's partial sync); 0: never.
    push_refresh_interval: float = 600.0
    #: Refreshes this replica runs at once.
    refresh_workers: int = 4
    #: The bearer token sent to pull clusters' agents (their --serve-state-token-file); "": none.
    pull_token: str = field(default="", repr=False)
    #: What a peer may cost the hub: Hello timeout, unauthenticated attempts, events, decompression, queues, pull fetches.
    limits: ProtocolLimits = field(default_factory=ProtocolLimits)

    @property
    def takeover_after(self) -> float:
        """Seconds a connected agent must be silent before another process with its agent id may
        take its cluster over: 1.5 heartbeat intervals (a live agent sends at least one per interval)."""
        return 1.5 * self.heartbeat_interval
