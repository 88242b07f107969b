"""One agent's session: authentication, the cluster lease, then messages into the engine.

Transport-independent: a transport adapter feeds :meth:`Session.handle` the agent's
messages in order and delivers what ``send`` is given. The first message must be a
``Hello``; a token only lets an agent write the cluster it was issued for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fleetsync.hub.auth import hash_token
from fleetsync.hub.engine import ClusterEngine
from fleetsync.hub.metrics import HubMetrics
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import Position
from fleetsync.store.contract import ClusterRecord, Store

log = logging.getLogger(__name__)

Send = Callable[[pb.HubMessage], Awaitable[None]]


class SessionClosed(Exception):
    """The session ended (rejected or protocol error); the transport closes the connection."""


@dataclass
class HubSettings:
    hub_id: str = "hub-1"
    heartbeat_interval: float = 10.0
    lease_ttl: float = 30.0
    grace_period: float = 15.0
    max_message_bytes: int = 4 * 1024 * 1024


@dataclass
class HubCore:
    """What every session shares: the store, settings and metrics."""

    store: Store
    settings: HubSettings = field(default_factory=HubSettings)
    metrics: HubMetrics = field(default_factory=HubMetrics)
    clock: Callable[[], float] = time.time

    def session(self, send: Send, *, peer: str = "") -> Session:
        return Session(self, send, peer=peer)


class Session:
    def __init__(self, core: HubCore, send: Send, *, peer: str = "") -> None:
        self.core = core
        self.send = send
        self.peer = peer
        self.hello: pb.Hello | None = None
        self.engine: ClusterEngine | None = None
        self._renewal: asyncio.Task[None] | None = None

    @property
    def cluster(self) -> str:
        return self.hello.cluster_id if self.hello else ""

    async def reject(self, reason: int, message: str, retry_after: float = 0.0) -> None:
        log.info("rejecting agent %s for cluster %r: %s", self.peer, self.cluster, message)
        self.core.metrics.rejected.labels(pb.RejectReason.Name(reason)).inc()  # type: ignore[arg-type]
        await self.send(pb.HubMessage(reject=pb.Reject(reason=reason, message=message, retry_after_ms=int(retry_after * 1000))))  # type: ignore[arg-type]
        raise SessionClosed(message)

    async def handle(self, message: pb.AgentMessage) -> None:
        kind = message.WhichOneof("message")
        if self.engine is None:
            if kind != "hello":
                await self.reject(pb.PROTOCOL, f"the first message must be Hello, got {kind}")
            await self._start(message.hello)
            return
        store, now = self.core.store, self.core.clock()
        if kind == "bundle":
            answer = await self.engine.apply(message.bundle)
            if answer is not None:
                if answer.WhichOneof("message") == "resync":
                    self.core.metrics.resyncs_requested.inc()
                await self.send(answer)
        elif kind == "digest":
            await self.send(await self.engine.answer_digest(message.digest))
        elif kind == "heartbeat":
            pass
        elif kind == "hello":
            await self.reject(pb.PROTOCOL, "Hello sent twice on one connection")
        else:
            log.debug("cluster %s: %s not handled yet", self.cluster, kind)
        await store.touch_cluster(self.cluster, now=now)

    async def _start(self, hello: pb.Hello) -> None:
        self.hello = hello
        core, store, now = self.core, self.core.store, self.core.clock()
        if not hello.cluster_id or not hello.agent_id or not hello.incarnation:
            await self.reject(pb.PROTOCOL, "Hello needs cluster_id, agent_id and incarnation")
        found = await store.find_token(hash_token(hello.token)) if hello.token else None
        if found is None:
            await self.reject(
                pb.UNAUTHENTICATED, f"invalid token for cluster {hello.cluster_id!r}: create one with `fleetsync token create {hello.cluster_id}`"
            )
        name, role = found  # type: ignore[misc]
        if role != "agent" or name != hello.cluster_id:
            await self.reject(pb.PERMISSION_DENIED, f"this token is for {role} {name!r}; it cannot write cluster {hello.cluster_id!r}")
        result = await store.acquire_lease(
            hello.cluster_id, holder=hello.agent_id, incarnation=hello.incarnation, hub_id=core.settings.hub_id, now=now, ttl=core.settings.lease_ttl
        )
        if not result.granted:
            lease = result.lease
            if lease.connected:
                await self.reject(
                    pb.ALREADY_CONNECTED,
                    f"cluster {hello.cluster_id!r} is already connected: agent {lease.holder!r} (incarnation {lease.incarnation}) on hub {lease.hub_id!r} holds it",
                )
            remaining = max(0.0, lease.expires_at - now)
            await self.reject(
                pb.GRACE_PERIOD,
                f"cluster {hello.cluster_id!r} is held for agent {lease.holder!r} for {remaining:.1f}s more (grace period after its disconnect)",
                remaining,
            )
        streams = await store.streams(hello.cluster_id)
        positions = {s.type: Position(s.incarnation, s.seq) for s in streams}
        self.engine = ClusterEngine(store, hello.cluster_id, positions, clock=core.clock)
        self.engine.on_applied = core.metrics.applied
        self.engine.on_lag = core.metrics.sync_lag.labels(hello.cluster_id).set
        await store.upsert_cluster(
            ClusterRecord(
                name=hello.cluster_id,
                agent_id=hello.agent_id,
                incarnation=hello.incarnation,
                status="active",
                metadata=dict(hello.metadata),
                connected_at=now,
                last_seen=now,
                hub_id=core.settings.hub_id,
            )
        )
        core.metrics.connected_agents.inc()
        self._renewal = asyncio.create_task(self._renew_lease(), name=f"lease-{hello.cluster_id}")
        log.info("cluster %s connected: agent %s incarnation %s from %s", hello.cluster_id, hello.agent_id, hello.incarnation, self.peer)
        await self.send(
            pb.HubMessage(
                welcome=pb.Welcome(
                    hub_id=core.settings.hub_id,
                    applied=[pb.StreamPosition(type=t, incarnation=p.incarnation, seq=p.seq) for t, p in positions.items()],
                    heartbeat_interval_ms=int(core.settings.heartbeat_interval * 1000),
                    max_message_bytes=core.settings.max_message_bytes,
                )
            )
        )

    async def _renew_lease(self) -> None:
        settings = self.core.settings
        assert self.hello is not None
        while True:
            await asyncio.sleep(settings.lease_ttl / 3)
            result = await self.core.store.acquire_lease(
                self.cluster,
                holder=self.hello.agent_id,
                incarnation=self.hello.incarnation,
                hub_id=settings.hub_id,
                now=self.core.clock(),
                ttl=settings.lease_ttl,
            )
            if not result.granted:
                log.warning("cluster %s: lease lost to %s", self.cluster, result.lease.holder)

    async def close(self) -> None:
        """The connection is gone: keep the lease for the grace period, mark the cluster inactive."""
        if self._renewal:
            self._renewal.cancel()
        if self.engine is None or self.hello is None:
            return
        now = self.core.clock()
        self.core.metrics.connected_agents.dec()
        await self.core.store.release_lease(
            self.cluster, holder=self.hello.agent_id, incarnation=self.hello.incarnation, now=now, grace=self.core.settings.grace_period
        )
        await self.core.store.set_cluster_status(self.cluster, status="inactive", now=now)
        log.info("cluster %s disconnected (agent %s)", self.cluster, self.hello.agent_id)
        self.engine = None
