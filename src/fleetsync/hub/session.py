"""One agent's session: authentication, the cluster lease, checks on every message, then the engine.

Transport-independent: a transport adapter creates a :class:`Session` per connection,
feeds :meth:`Session.handle` the agent's messages in order, delivers what ``send`` is
given, and calls :meth:`Session.close` when the connection ends. The first message
must be a ``Hello``. The cluster a session writes is the one its token was issued
for, never one a message names: a token cannot write another cluster's state.

Every message is checked before it reaches the engine: too large (a protocol
error: the session ends), a type the hub does not know or the token may not write
(that type is refused with ``Reject{type}``, the session goes on), a malformed bundle
or digest (refused likewise). Nothing refused is applied, and nothing else is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import orjson

from fleetsync.hub import events, gates, works
from fleetsync.hub.auth import hash_token
from fleetsync.hub.clusterlabels import announce_if_relabelled
from fleetsync.hub.core import HubCore
from fleetsync.hub.engine import PERIODIC, ClusterEngine
from fleetsync.model.types import UnknownResourceType
from fleetsync.model.works import FAILED
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.codec import CodecError
from fleetsync.store.contract import ClusterRecord, StoreUnavailable, TokenRecord, WorkRecord

log = logging.getLogger(__name__)

Send = Callable[[pb.HubMessage], Awaitable[None]]
End = Callable[[], Awaitable[None]]


class SessionClosed(Exception):
    """The session ended (rejected or protocol error); the transport closes the connection."""


def malformed(bundle: pb.Bundle) -> str:
    """What is wrong with a bundle's structure ("" if nothing)."""
    if bundle.kind not in (pb.FULL, pb.DELTA, pb.BUNDLE_KIND_UNSPECIFIED):
        return f"unknown bundle kind {bundle.kind}"
    if bundle.kind == pb.BUNDLE_KIND_UNSPECIFIED:
        return "" if not (bundle.upserts or bundle.deletes) else "an error report carries no objects"
    if not bundle.incarnation or bundle.seq < 1 or bundle.base_seq >= bundle.seq:
        return f"needs an incarnation and base_seq < seq (got incarnation {bundle.incarnation!r}, seq {bundle.seq}, base_seq {bundle.base_seq})"
    if bundle.compression not in (pb.COMPRESSION_NONE, pb.COMPRESSION_LZ4):
        return f"unknown compression {bundle.compression}"
    for i, obj in enumerate(bundle.upserts):
        if not obj.name:
            return f"object #{i} has no name"
    for key in bundle.deletes:
        if "/" not in key:
            return f"delete key {key!r} is not namespace/name"
    return ""


class Session:
    def __init__(self, core: HubCore, send: Send, *, peer: str = "", end: End | None = None, certified_cluster: str | None = None) -> None:
        self.core = core
        self.send = send
        self.end = end
        self.peer = peer
        #: With mutual TLS: the cluster the agent's client certificate names (its common name);
        #: the session may write that cluster only, whatever its token says.
        self.certified_cluster = certified_cluster
        self.hello: pb.Hello | None = None
        self.token: TokenRecord | None = None
        self.engine: ClusterEngine | None = None
        #: False once the cluster went inactive (no message for the timeout); the next message reactivates it.
        self.active = True
        self.superseded = False
        self._worker: asyncio.Task[None] | None = None
        self._refused: set[str] = set()
        self._next_digest: dict[str, float] = {}
        #: The newest local change (its changed_at_ms) of this agent the store has: snapshots say so.
        self.applied_local_ms = 0
        #: The works snapshot last sent (a push that would repeat it is skipped).
        self._works_sent = b""

    @property
    def cluster(self) -> str:
        return self.hello.cluster_id if self.hello else ""

    async def reject(self, reason: int, message: str, retry_after: float = 0.0, *, event: bool = True) -> None:
        """Refuse or end the session (raises SessionClosed)."""
        name = pb.RejectReason.Name(reason)  # type: ignore[arg-type]
        self.core.metrics.rejected.labels(name).inc()
        if event and self.cluster:
            await self.core.events.record(self.cluster, events.REJECTED, f"{name}: {message} (from {self.peer or 'unknown peer'})")
        else:
            log.warning("rejecting agent %s for cluster %r: %s", self.peer, self.cluster, message)
        await self.send(pb.HubMessage(reject=pb.Reject(reason=reason, message=message, retry_after_ms=int(retry_after * 1000))))  # type: ignore[arg-type]
        raise SessionClosed(message)

    # ---- messages ------------------------------------------------------------------------

    async def handle(self, message: pb.AgentMessage) -> None:
        kind = message.WhichOneof("message")
        size = message.ByteSize()
        limit = self.core.settings.max_message_bytes
        if size > limit:
            self.core.metrics.refused.labels("oversized").inc()
            await self.reject(pb.PROTOCOL, f"{kind} message of {size} bytes exceeds the hub's max message size of {limit} bytes")
        if self.engine is None:
            if kind != "hello":
                await self.reject(pb.PROTOCOL, f"the first message must be Hello, got {kind}", event=False)
            await self._start(message.hello)
            return
        now = self.core.clock()
        await self.core.store.touch_cluster(self.cluster, now=now)
        if not self.active:
            await self._reactivate()
        if kind in ("bundle", "digest"):
            carried = getattr(message, kind).incarnation
            assert self.hello is not None
            if carried and carried != self.hello.incarnation:
                # An agent speaks for its own incarnation only: anything else is a stale message of
                # an earlier run (or a bug), and applying it would roll the stream back.
                await self.reject(pb.PROTOCOL, f"{kind} of incarnation {carried} on a session of incarnation {self.hello.incarnation}")
        if kind == "bundle":
            await self._submit(message.bundle.type, message.bundle, malformed(message.bundle))
        elif kind == "digest":
            await self._submit(message.digest.type, message.digest, "")
        elif kind == "heartbeat":
            await self.send(pb.HubMessage(heartbeat=pb.Heartbeat(sent_at_ms=int(now * 1000))))
        elif kind == "hello":
            await self.reject(pb.PROTOCOL, "Hello sent twice on one connection")
        elif kind == "local_change":
            await self._local_change(message.local_change)
        elif kind == "status":
            await self._status(message.status)

    async def _local_change(self, change: pb.LocalChange) -> None:
        """The agent's local config changed a gate (its hook): write it, as any API write, and let
        every replica's sessions send the new snapshot (this one's included: it confirms the change)."""
        problem = gates.local_change_problem(change)
        if problem:
            self.core.metrics.refused.labels("malformed").inc()
            await self.core.events.record(self.cluster, events.GATE_REFUSED, problem)
            return
        written = await gates.apply_local_change(self.core.store, self.cluster, change, now=self.core.clock())
        self.applied_local_ms = max(self.applied_local_ms, change.changed_at_ms)
        if written is not None:
            await self.core.store.notify(gates.GATES_CHANNEL, str(written.revision))
        else:  # an unset of what is not set: nothing changed, but the agent learns its change is in
            await self.send_gates()

    async def send_gates(self) -> None:
        """A full gate snapshot to this session's agent."""
        store = self.core.store
        kind = gates.deployment_type(await store.hub_settings(), self.core.settings.deployment_type)  # read on every change (seed 004)
        snapshot = gates.snapshot(await store.gates(since=0), applied_local_ms=self.applied_local_ms, deployment_type=kind)
        await self.send(pb.HubMessage(spec_update=snapshot))

    async def _status(self, status: pb.Status) -> None:
        """The agent reports what it applied (or removed) for works on its cluster, and which gate
        snapshot its local config reflects."""
        if status.gates_revision:
            await self.core.store.set_gates_applied(self.cluster, status.gates_revision, now=self.core.clock())
        records, problem = works.status_records(self.cluster, status, now=self.core.clock())
        if problem:
            self.core.metrics.refused.labels("malformed").inc()
            await self.core.events.record(self.cluster, events.WORK_STATUS_REFUSED, problem)
            return
        for record in records:
            before = {m["manifest"]: m for s in await self.core.store.work_statuses(work=record.work, cluster=self.cluster) for m in orjson.loads(s.manifests)}
            for m in orjson.loads(record.manifests):
                if m["condition"] == FAILED and before.get(m["manifest"], {}).get("message") != m["message"]:
                    await self.core.events.record(self.cluster, events.WORK_FAILED, f"work {record.work}: {m['manifest']}: {m['message']}")
            await self.core.store.set_work_status(record)
        for name in status.removed:
            await self.core.store.delete_work_status(name, self.cluster)
            self._works_sent = b""  # its inventory changed: the next push is not a repeat

    async def send_works(self, all_works: list[WorkRecord] | None = None) -> None:
        """This cluster's works snapshot to its agent, unless it is what the agent has already
        (or the agent does not apply works: it did not say ``works`` in its Hello)."""
        assert self.hello is not None
        if "works" not in self.hello.capabilities:
            return
        store = self.core.store
        doc = works.cluster_works(
            self.cluster,
            self.hello.metadata,
            await store.works() if all_works is None else all_works,
            await store.work_statuses(cluster=self.cluster),
            self.core.specs,
        )
        encoded = orjson.dumps(doc)
        if encoded == self._works_sent:
            return
        self._works_sent = encoded
        for update in works.snapshot_messages(doc, max_bytes=self.core.settings.max_message_bytes):
            await self.send(pb.HubMessage(spec_update=update))

    async def _submit(self, type_: str, message: pb.Bundle | pb.Digest, problem: str) -> None:
        assert self.engine is not None
        refusal = self._refusal(type_)
        if refusal is None and problem:
            refusal = (pb.PROTOCOL, f"malformed {type(message).__name__} of {type_}: {problem}")
        if refusal is None:
            try:
                await self.engine.submit(message)
                return
            except CodecError as exc:
                refusal = (pb.PROTOCOL, str(exc))
        reason, text = refusal
        self.core.metrics.refused.labels(pb.RejectReason.Name(reason).lower()).inc()  # type: ignore[arg-type]
        if type_ not in self._refused:
            self._refused.add(type_)
            await self.core.events.record(self.cluster, events.TYPE_REFUSED, text, type=type_)
        await self.send(pb.HubMessage(reject=pb.Reject(reason=reason, message=text, type=type_)))  # type: ignore[arg-type]

    def _refusal(self, type_: str) -> tuple[int, str] | None:
        """Why the hub will not take ``type_`` from this agent (None: it will)."""
        try:
            self.core.registry.by_gvk(type_)
        except UnknownResourceType:
            return pb.PROTOCOL, f"type {type_!r} is not a resource type this hub knows (group/version/Kind, e.g. v1/Pod)"
        assert self.token is not None
        if self.token.types and type_ not in self.token.types:
            return pb.PERMISSION_DENIED, f"the token of cluster {self.cluster!r} may write only {', '.join(self.token.types)}; not {type_}"
        return None

    # ---- the session's life ------------------------------------------------------------------

    async def _start(self, hello: pb.Hello) -> None:
        self.hello = hello
        core, store, now = self.core, self.core.store, self.core.clock()
        if not hello.cluster_id or not hello.agent_id or not hello.incarnation:
            await self.reject(pb.PROTOCOL, "Hello needs cluster_id, agent_id and incarnation", event=False)
        token = await store.find_token(hash_token(hello.token)) if hello.token else None
        if token is None:
            await self.reject(
                pb.UNAUTHENTICATED, f"invalid token for cluster {hello.cluster_id!r}: create one with `fleetsync token create {hello.cluster_id}`"
            )
        assert token is not None
        if token.role != "agent" or token.name != hello.cluster_id:
            await self.reject(pb.PERMISSION_DENIED, f"this token is for {token.role} {token.name!r}; it cannot write cluster {hello.cluster_id!r}")
        if self.certified_cluster is not None and self.certified_cluster != hello.cluster_id:
            await self.reject(
                pb.PERMISSION_DENIED,
                f"the agent's client certificate is for cluster {self.certified_cluster!r} (its common name); it cannot write cluster {hello.cluster_id!r}",
            )
        self.token = token
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
        if any(t.mode == "pull" for t in await store.refresh_targets(hello.cluster_id)):
            await self.reject(
                pb.PERMISSION_DENIED,
                f"cluster {hello.cluster_id!r} is a pull cluster (the hub fetches its state); `fleetsync pull remove {hello.cluster_id}` before an agent pushes it",
            )
        previous = core.sessions.get(hello.cluster_id)
        if previous is not None:
            await previous.supersede()  # the same agent again (a half-open connection's successor)
        before = await store.cluster(hello.cluster_id)
        streams = await store.streams(hello.cluster_id)
        self.engine = ClusterEngine(
            store,
            hello.cluster_id,
            streams,
            send=self.send,
            events=core.events,
            metrics=core.metrics,
            max_message_bytes=core.settings.max_message_bytes,
            writer=core.writer,
            store_retry=core.settings.store_retry,
            inbox_bytes=core.settings.inbox_bytes,
            inbox_budget=core.inbox_budget,
            clock=core.clock,
        )
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
        await announce_if_relabelled(store, before, hello.metadata, hello.cluster_id)
        core.sessions[hello.cluster_id] = self
        if (interval := core.settings.push_refresh_interval) > 0:
            await store.set_refresh(hello.cluster_id, mode="push", interval=interval, next_refresh_at=now + interval)
        core.metrics.connected_agents.inc()
        await self.send(
            pb.HubMessage(
                welcome=pb.Welcome(
                    hub_id=core.settings.hub_id,
                    applied=[pb.StreamPosition(type=s.type, incarnation=s.incarnation, seq=s.seq) for s in streams if s.incarnation],
                    heartbeat_interval_ms=int(core.settings.heartbeat_interval * 1000),
                    max_message_bytes=core.settings.max_message_bytes,
                )
            )
        )
        await core.events.record(
            hello.cluster_id, events.CONNECTED, f"agent {hello.agent_id} (incarnation {hello.incarnation}) from {self.peer or 'unknown peer'}"
        )
        await self.send_gates()  # the agent reconciles its local config with the hub's gates at once
        await self.send_works()  # and applies (or removes) the works that concern its cluster
        self.start_engine()
        first = core.first_connection_since_start(hello.cluster_id)
        if before is not None and before.status == "inactive":
            await self._reactivate(since=before.last_seen)
        elif first and core.settings.resync_on_startup and self.engine.streams:
            await self.engine.request_resync([], "hub startup", all_types=True)
        await self.engine.inbox.room()  # the agent's first bundle is read when the inbox budget lets it

    def start_engine(self) -> None:
        """Apply what arrives in the background (a test may drive ``engine.step()`` itself instead)."""
        assert self.engine is not None
        self._worker = asyncio.create_task(self._run_engine(self.engine), name=f"engine-{self.cluster}")

    async def _run_engine(self, engine: ClusterEngine) -> None:
        """Run the engine; if the store stays unavailable, end the session so that the agent
        reconnects (to this replica or another) and resends what was not acknowledged, rather
        than go on answering heartbeats for a cluster that no longer syncs."""
        try:
            await engine.run()
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                message = f"the hub cannot write cluster {self.cluster!r} to its store: {exc}; reconnect later"
                log.error("cluster %s: %s; ending the session", self.cluster, exc)
            else:
                message = f"the hub failed applying cluster {self.cluster!r}: {exc!r}; reconnect later"
                log.exception("cluster %s: the engine failed; ending the session", self.cluster)
            self.core.metrics.rejected.labels("UNAVAILABLE").inc()
            with contextlib.suppress(Exception):
                await self.send(pb.HubMessage(reject=pb.Reject(reason=pb.UNAVAILABLE, message=message, retry_after_ms=1000)))
            if self.end is not None:
                await self.end()

    async def _reactivate(self, since: float | None = None) -> None:
        """The cluster was inactive and speaks again: it is active, and its state is checked by digest."""
        assert self.engine is not None
        self.active = True
        now = self.core.clock()
        await self.core.store.set_cluster_status(self.cluster, status="active", now=now)
        gone = f" after {now - since:.0f}s" if since else ""
        await self.core.events.record(self.cluster, events.ACTIVE, f"messages again{gone}; resyncing every type by digest")
        await self.engine.request_resync([], "reactivated", all_types=True)

    def behind(self) -> bool:
        """This hub has not finished with what the agent sent (it is queued, being applied, or
        the transport waits for room): the agent is alive even if no new message was read."""
        engine = self.engine
        return engine is not None and not engine.idle()

    async def tick(self, now: float) -> None:
        """Periodic anti-entropy: ask for a digest of each type whose interval has passed."""
        if self.engine is None or self.superseded:
            return
        schedule = self.core.settings.digest_schedule
        due = []
        for type_ in self.engine.streams:
            interval = schedule.interval(type_)
            if interval <= 0:
                continue
            at = self._next_digest.setdefault(type_, now + interval * random.uniform(0.5, 1.0))  # jitter spreads a fleet's digests
            if now >= at:
                due.append(type_)
                self._next_digest[type_] = now + interval
        if due:
            await self.engine.request_resync(due, PERIODIC)

    async def _stop_tasks(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None

    async def supersede(self) -> None:
        """A newer session of the same agent took over the cluster on this hub: stop, hand nothing back."""
        self.superseded = True
        await self._stop_tasks()
        if self.engine is not None:
            self.engine.inbox.discard()
        self.core.metrics.connected_agents.dec()
        log.info("cluster %s: session from %s superseded by a new connection of the same agent", self.cluster, self.peer)
        if self.end is not None:
            await self.end()

    async def close(self) -> None:
        """The connection is gone: keep the lease for the grace period (for the same agent only).

        The cleanup runs to the end even if the caller is cancelled meanwhile: gRPC cancels
        the handler of a peer that vanished, possibly while it is already closing, and a
        half-closed session would stay in the hub's sessions, whose leases it renews.
        """
        closing = asyncio.ensure_future(self._close())
        self.core.keep_until_done(closing)
        await asyncio.shield(closing)

    async def _close(self) -> None:
        await self._stop_tasks()
        if self.engine is None or self.hello is None or self.superseded:
            return
        self.engine.inbox.discard()
        self.engine = None
        if self.core.sessions.get(self.cluster) is self:
            del self.core.sessions[self.cluster]
        self.core.metrics.connected_agents.dec()
        now = self.core.clock()
        grace = self.core.settings.grace_period
        try:
            await self.core.store.release_lease(self.cluster, holder=self.hello.agent_id, incarnation=self.hello.incarnation, now=now, grace=grace)
            await self.core.events.record(
                self.cluster, events.DISCONNECTED, f"agent {self.hello.agent_id} disconnected; its lease is held for it for {grace:.0f}s"
            )
        except Exception as exc:  # the store is away (e.g. stopping before the hub): the lease lapses by itself
            log.warning(
                "cluster %s: agent %s disconnected, but its lease could not be handed back (%s); it expires by itself", self.cluster, self.hello.agent_id, exc
            )
