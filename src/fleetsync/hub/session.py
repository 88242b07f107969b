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
from collections.abc import Awaitable, Callable, Sequence

import orjson

from fleetsync import logs
from fleetsync.errors import FleetsyncError
from fleetsync.hub import events, gates, guard, works
from fleetsync.hub.antientropy import AntiEntropySchedule, ClusterSyncer, reconcile
from fleetsync.hub.auth import hash_token
from fleetsync.hub.clusterlabels import announce_if_relabelled, changed_keys
from fleetsync.hub.core import HubCore
from fleetsync.hub.engine import ClusterEngine
from fleetsync.model.types import UnknownResourceType
from fleetsync.model.works import FAILED
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol import typeinfo
from fleetsync.protocol.codec import CodecError
from fleetsync.protocol.hubsession import (
    Admit,
    AnswerHeartbeat,
    Apply,
    Decision,
    EndSession,
    HubSession,
    Ignore,
    RefuseStatus,
    RefuseType,
    TakeLocalChange,
    TakeStatus,
    TakeTypes,
    lease_refusal,
    pull_cluster_refusal,
    screen_types,
    token_refusal,
)
from fleetsync.store.contract import ClusterRecord, GateConflict, Lease, LeaseLost, StoreUnavailable, StreamRecord, TokenRecord, WorkRecord

log = logging.getLogger(__name__)

Send = Callable[[pb.HubMessage], Awaitable[None]]
End = Callable[[], Awaitable[None]]


class SessionClosed(FleetsyncError):
    """The session ended (rejected or protocol error); the transport closes the connection."""


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
        #: The epoch of this session's lease (0 until granted): its writes and renewals are fenced by it.
        self.epoch = 0
        #: The protocol's state and rules for this session (no I/O): what to do with each message.
        self.protocol = HubSession(max_message_bytes=core.settings.max_message_bytes, knows=self._knows)
        self._worker: asyncio.Task[None] | None = None
        #: When this cluster is reconciled by digest (partial and full syncs, one schedule).
        self.syncer = ClusterSyncer(connected_at=core.clock())
        #: The newest local change (its changed_at_ms) of this agent the store has: snapshots say so.
        self.applied_local_ms = 0
        #: The works snapshot last sent (a push that would repeat it is skipped).
        self._works_sent = b""
        #: Whether a gate change of this agent was refused for want of a grant (one event per session).
        self._gates_refused = False
        #: Whether the cluster has applied the fleet's gates before (None: not read yet); until then it joins.
        self._joined: bool | None = None
        #: Whether the Welcome went out. The session is among the hub's sessions (so that a
        #: replacement, a lease renewal or a close finds it) a few awaits before that, and a gate
        #: or work written meanwhile fans out to it: those snapshots wait, since the agent takes
        #: nothing but Welcome or Reject first, and the full snapshots sent right after the
        #: Welcome carry what they would have.
        self._welcomed = False
        #: A bundle or digest chunk was queued: the next message waits for the inbox's room.
        self._room_due = False

    async def room(self) -> None:
        """Wait, once a bundle or digest chunk was queued, until the hub may read this agent's
        next message (the inbox budget has room for it: backpressure). A transport calls it
        after :meth:`handle`, having dropped the message it read.

        Not inside :meth:`handle`: a session waiting for room there kept the message it had
        just queued alive through the wait, and a FULL chunk decoded is ~650 KiB of protobuf
        runtime memory (its bodies copied into the message's arena) that the applied objects
        no longer need. At a fleet's initial sync nine in ten sessions wait here at once.

        While it waits, the agent hears a heartbeat every heartbeat interval: its own
        heartbeats are not read meanwhile, and an agent that hears nothing for four intervals
        counts the hub as gone and reconnects, which ends this session, fences its bundles in
        flight and starts its sync over (seen with 1,000 agents on PostgreSQL, where a
        session waited over 40 s for its turn)."""
        if not self._room_due or self.engine is None:
            return
        self._room_due = False
        if self.engine.inbox.try_room():
            return
        waiting = asyncio.ensure_future(self.engine.inbox.room())  # one wait: its place in the queue is kept
        try:
            while not (await asyncio.wait({waiting}, timeout=self.core.settings.heartbeat_interval))[0]:
                await self._heartbeat()
        finally:
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        waiting.result()

    async def _heartbeat(self) -> None:
        await self.send(pb.HubMessage(heartbeat=pb.Heartbeat(sent_at_ms=int(self.core.clock() * 1000))))

    @property
    def cluster(self) -> str:
        return self.hello.cluster_id if self.hello else ""

    async def reject(self, reason: int, message: str, retry_after: float = 0.0, *, event: bool = True) -> None:
        """Refuse or end the session (raises SessionClosed).

        A refused Hello of a peer not authenticated yet (a bad token, a malformed Hello) costs
        the hub little whatever the peer's rate: past its per-peer rate the answer waits and
        nothing is recorded, and only so many such refusals per window become events or log
        lines (:class:`~fleetsync.hub.guard.HelloGuard`)."""
        name = pb.RejectReason.Name(reason)  # type: ignore[arg-type]
        self.core.metrics.rejected.labels(name).inc()
        quiet = False
        if self.engine is None and reason in (pb.UNAUTHENTICATED, pb.PROTOCOL):
            verdict = self.core.guard.refused(self.peer)
            if verdict == guard.THROTTLE:
                delay = self.core.settings.limits.auth_failure_delay
                self.core.metrics.hello_throttled.inc()
                retry_after = max(retry_after, delay)
                await asyncio.sleep(delay)
            if verdict != guard.RECORD:
                event, quiet = False, True
        if event and self.cluster:
            await self.core.events.record(self.cluster, events.REJECTED, f"{name}: {message} (from {self.peer or 'unknown peer'})")
        elif quiet:
            log.debug("rejecting agent %s for cluster %r: %s", self.peer, self.cluster, message)
        else:
            log.warning("rejecting agent %s for cluster %r: %s", self.peer, self.cluster, message)
        self.protocol.close()
        await self.send(pb.HubMessage(reject=pb.Reject(reason=reason, message=message, retry_after_ms=int(retry_after * 1000))))  # type: ignore[arg-type]
        raise SessionClosed(message)

    # ---- messages ------------------------------------------------------------------------

    async def handle(self, message: pb.AgentMessage) -> None:
        """One message of the agent: the protocol's decision (:class:`HubSession`), carried out."""
        # log lines about this message name its cluster and the agent run (the engine's task, started from here, too)
        with logs.bound(cluster=self.cluster, session=self.hello.incarnation if self.hello else None):
            was_open = self.protocol.open
            decision = self.protocol.receive(message)
            if decision is None:
                return
            if was_open and not isinstance(decision, EndSession):
                await self._seen()
            await self._carry_out(decision)

    async def _carry_out(self, decision: Decision) -> None:
        match decision:
            case EndSession():
                if decision.counted:
                    self.core.metrics.refused.labels(decision.counted).inc()
                await self.reject(decision.reason, decision.message, decision.retry_after, event=decision.event)
            case Admit():
                await self._start(decision.hello)
            case Apply():
                await self._apply(decision)
            case RefuseType():
                await self._refuse_type(decision)
            case Ignore():
                self.core.metrics.refused.labels("unknown_kind").inc()
                if decision.first:
                    log.warning("cluster %s: %s (logged once per session)", self.cluster, decision.note)
            case AnswerHeartbeat():
                await self._heartbeat()
            case TakeLocalChange():
                await self._local_change(decision.change)
            case TakeStatus():
                await self._status(decision.status)
            case RefuseStatus():
                self.core.metrics.refused.labels("malformed").inc()
                await self.core.events.record(self.cluster, events.WORK_STATUS_REFUSED, decision.message)
            case TakeTypes():
                await self._refuse_types(await self._report_types(decision.types))

    async def _seen(self) -> None:
        """A message of a connected agent: the cluster is alive (and active again if it was not)."""
        await self.core.store.touch_cluster(self.cluster, now=self.core.clock())
        if not self.active:
            await self._reactivate()

    async def _local_change(self, change: pb.LocalChange) -> None:
        """The agent's local config changed a gate (its hook): write it, as any API write, and let
        every replica's sessions send the new snapshot (this one's included: it confirms the change).

        Refused, with nothing written, unless the agent's token has the ``gates`` grant (a gate
        reaches every cluster; one event per session, the agent is told in the snapshot it gets
        instead). Dropped if someone else wrote the gate after the revision the change was based
        on (a stale resend). Either way the agent gets the current snapshot, which counts the
        change as reflected, so it stops resending it and takes the fleet's value. In every case
        the change is recorded first as the cluster's own value (``fleetsync gates where``)."""
        problem = gates.local_change_problem(change)
        if problem:
            self.core.metrics.refused.labels("malformed").inc()
            await self.core.events.record(self.cluster, events.GATE_REFUSED, problem)
            return
        assert self.token is not None
        await gates.record_local_value(  # the cluster's own value, taken into the fleet's gates or not
            self.core.store, self.cluster, change, default_deployment_type=self.core.settings.deployment_type, now=self.core.clock()
        )
        if refusal := gates.grant_problem(self.cluster, self.token.grants):
            self.core.metrics.refused.labels("permission_denied").inc()
            if not self._gates_refused:
                self._gates_refused = True
                await self.core.events.record(self.cluster, events.GATE_REFUSED, f"local change of {change.key}: {refusal}")
            self.applied_local_ms = max(self.applied_local_ms, change.changed_at_ms)
            await self.send_gates(refused=refusal)
            return
        try:
            written = await gates.apply_local_change(self.core.store, self.cluster, change, now=self.core.clock())
        except GateConflict as exc:
            self.core.metrics.refused.labels("stale").inc()
            log.info(
                "cluster %s: local change of %s based on gate revision %d dropped: %s since; the agent takes it",
                self.cluster,
                change.key,
                change.base_revision,
                exc,
            )
            self.applied_local_ms = max(self.applied_local_ms, change.changed_at_ms)
            await self.send_gates()
            return
        self.applied_local_ms = max(self.applied_local_ms, change.changed_at_ms)
        if written is not None:
            await self.core.store.notify(gates.GATES_CHANNEL, str(written.revision))
        else:  # an unset of what is not set: nothing changed, but the agent learns its change is in
            await self.send_gates()

    async def send_gates(self, *, refused: str = "") -> None:
        """A full gate snapshot to this session's agent (saying ``join`` until its cluster has
        applied the fleet's gates once: a new cluster takes the fleet's gates, seed 004)."""
        if not self._welcomed:
            return
        store = self.core.store
        kind = gates.deployment_type(await store.hub_settings(), self.core.settings.deployment_type)  # read on every change (seed 004)
        if self._joined is None:
            self._joined = self.cluster in await store.gates_applied()
        snapshot = gates.snapshot(
            await store.gates(since=0), applied_local_ms=self.applied_local_ms, deployment_type=kind, join=not self._joined, refused=refused
        )
        await self.send(pb.HubMessage(spec_update=snapshot))

    async def _status(self, status: pb.Status) -> None:
        """The agent reports what it applied (or removed) for works on its cluster, and which gate
        snapshot its local config reflects.

        An agent writes status rows only for works that target its cluster (by the labels an
        admin set) or that it holds an inventory of (what it applied for a work that is gone or
        retargeted, and reports removed): anything else in the message is refused, with one
        event for the whole message, naming a few of the works, and the rest is written."""
        if status.gates_revision:
            await self.core.store.set_gates_applied(self.cluster, status.gates_revision, now=self.core.clock())
            self._joined = True
        records, problem = works.status_records(self.cluster, status, now=self.core.clock())
        if problem:
            self.core.metrics.refused.labels("malformed").inc()
            await self.core.events.record(self.cluster, events.WORK_STATUS_REFUSED, problem)
            return
        named = {r.work for r in records} | set(status.removed)
        if not named:
            return
        store = self.core.store
        held = {s.work: s for s in await store.work_statuses(cluster=self.cluster)}
        allowed = works.status_allowed(self.cluster, await self.core.cluster_labels.of(self.cluster), await store.works(), held, self.core.specs)
        if foreign := sorted(named - allowed):
            self.core.metrics.refused.labels("permission_denied").inc()
            await self.core.events.record(self.cluster, events.WORK_STATUS_REFUSED, works.foreign_status_message(self.cluster, foreign))
        for record in records:
            if record.work not in allowed:
                continue
            before = {m["manifest"]: m for s in ([held[record.work]] if record.work in held else []) for m in orjson.loads(s.manifests)}
            for m in orjson.loads(record.manifests):
                if m["condition"] == FAILED and before.get(m["manifest"], {}).get("message") != m["message"]:
                    await self.core.events.record(self.cluster, events.WORK_FAILED, f"work {record.work}: {m['manifest']}: {m['message']}")
            await store.set_work_status(record)
        for name in status.removed:
            if name not in held:
                continue  # nothing of it here: nothing to forget (refused above if it was not ours either)
            await store.delete_work_status(name, self.cluster)
            self._works_sent = b""  # its inventory changed: the next push is not a repeat

    async def send_works(self, all_works: list[WorkRecord] | None = None) -> None:
        """This cluster's works snapshot to its agent, unless it is what the agent has already
        (or the agent does not apply works: it did not say ``works`` in its Hello)."""
        assert self.hello is not None
        if "works" not in self.hello.capabilities or not self._welcomed:
            return
        store = self.core.store
        doc = works.cluster_works(
            self.cluster,
            await self.core.cluster_labels.of(self.cluster),  # an admin's labels: never what the agent claims in its Hello
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

    async def _apply(self, decision: Apply) -> None:
        assert self.engine is not None
        try:
            self.engine.put(decision.message)
            self._room_due = True
        except CodecError as exc:
            await self._refuse_type(self.protocol.refuse_type(decision.type, pb.PROTOCOL, str(exc)))

    async def _refuse_type(self, refusal: RefuseType) -> None:
        """Refuse one type: the agent stops sending it, the rest of the session goes on."""
        self.core.metrics.refused.labels(pb.RejectReason.Name(refusal.reason).lower()).inc()  # type: ignore[arg-type]
        if refusal.first:
            await self.core.events.record(self.cluster, events.TYPE_REFUSED, refusal.message, type=refusal.type)
        await self.send(pb.HubMessage(reject=pb.Reject(reason=refusal.reason, message=refusal.message, type=refusal.type)))  # type: ignore[arg-type]

    async def _report_types(self, infos: Sequence[pb.TypeInfo]) -> list[tuple[str, str]]:
        """Take the agent's set of types (its Hello's, or a Types message): the valid ones, up to
        ``--max-reported-types``, replace what the hub had of this cluster. The others are returned
        as (type, why), for the caller to refuse by name as a bundle of them would be (after the
        Welcome, for a Hello's: an agent reads its first answer as the session's)."""
        accepted, refused = screen_types(infos, limit=self.core.settings.limits.max_reported_types)
        await self.core.types.report(self.cluster, [typeinfo.from_pb(info) for info in accepted], now=self.core.clock())
        return refused

    async def _refuse_types(self, refused: list[tuple[str, str]]) -> None:
        for type_, text in refused:
            await self._refuse_type(self.protocol.refuse_type(type_, pb.PROTOCOL, text))

    def _knows(self, type_: str) -> bool:
        try:
            self.core.registry.by_gvk(type_)
        except UnknownResourceType:
            return False
        return True

    # ---- the session's life ------------------------------------------------------------------

    async def _start(self, hello: pb.Hello) -> None:
        """A well-formed Hello: admit the agent (token, lease), open its cluster's engine,
        welcome it, then send what it reconciles with at once."""
        self.hello = hello
        logs.bind(cluster=hello.cluster_id, session=hello.incarnation)
        token = await self._authenticate(hello)
        lease = await self._take_lease(hello)
        self.protocol.admitted(token_types=token.types)
        before, streams = await self._open(hello, lease)
        refused_types = await self._report_types(hello.types) if hello.types else []  # an agent older than TypeInfo reports none
        await self._welcome(streams)
        await self.core.events.record(
            hello.cluster_id, events.CONNECTED, f"agent {hello.agent_id} (incarnation {hello.incarnation}) from {self.peer or 'unknown peer'}"
        )
        await self._refuse_types(refused_types)  # after the Welcome: each refusal is of one type, the session goes on
        await self.send_gates()  # the agent reconciles its local config with the hub's gates at once
        await self.send_works()  # and applies (or removes) the works that concern its cluster
        self.start_engine()
        await self._first_checks(before)
        self._room_due = True  # the agent's first bundle is read when the inbox budget lets it (see room)

    async def _authenticate(self, hello: pb.Hello) -> TokenRecord:
        """The agent's token, if it may write the Hello's cluster (else the session ends)."""
        token = await self.core.store.find_token(hash_token(hello.token)) if hello.token else None
        if refusal := token_refusal(hello, token, certified_cluster=self.certified_cluster):
            await self.reject(*refusal)
        assert token is not None
        self.token = token
        return token

    async def _take_lease(self, hello: pb.Hello) -> Lease:
        """The cluster's lease for this agent (else the session ends, saying who holds it and until when)."""
        core, now = self.core, self.core.clock()
        silent_after = core.settings.takeover_after
        result = await core.store.acquire_lease(
            hello.cluster_id,
            holder=hello.agent_id,
            incarnation=hello.incarnation,
            hub_id=core.settings.hub_id,
            now=now,
            ttl=core.settings.lease_ttl,
            silent_before=now - silent_after,
        )
        if not result.granted:
            refusal = lease_refusal(hello, result.lease, now=now, silent_after=silent_after)
            event = self._first_refusal_of(hello.incarnation) if refusal.once_per_newcomer else True
            await self.reject(refusal.reason, refusal.message, refusal.retry_after, event=event)
        if any(t.mode == "pull" for t in await core.store.refresh_targets(hello.cluster_id)):
            await self.reject(*pull_cluster_refusal(hello.cluster_id))
        return result.lease

    async def _open(self, hello: pb.Hello, lease: Lease) -> tuple[ClusterRecord | None, list[StreamRecord]]:
        """The cluster's engine, record and place among the hub's sessions; returns the cluster's
        record from before (None: new) and its streams' applied positions."""
        core, store, now = self.core, self.core.store, self.core.clock()
        previous = core.sessions.get(hello.cluster_id)
        if previous is not None:
            await previous.supersede()  # the same agent again (a half-open connection's successor)
        before = await store.cluster(hello.cluster_id)
        streams = await store.streams(hello.cluster_id)
        self.engine = self._engine(hello.cluster_id, streams, lease.epoch)
        self.epoch = lease.epoch
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
        if before is not None and (changed := changed_keys(before.metadata, hello.metadata)):  # seed 003's cluster view, for push clusters too
            await core.events.record(hello.cluster_id, events.CLUSTER_CHANGED, "metadata changed: " + ", ".join(changed))
        core.sessions[hello.cluster_id] = self
        core.metrics.connected_agents.inc()
        await core.types.current()  # what the store holds (another replica's reports, or from before a restart)
        return before, streams

    def _engine(self, cluster: str, streams: list[StreamRecord], epoch: int) -> ClusterEngine:
        core = self.core
        return ClusterEngine(
            core.store,
            cluster,
            streams,
            send=self.send,
            events=core.events,
            metrics=core.metrics,
            max_message_bytes=core.settings.max_message_bytes,
            writer=core.writer,
            store_retry=core.settings.store_retry,
            inbox_bytes=core.settings.inbox_bytes,
            inbox_budget=core.inbox_budget,
            limits=core.settings.limits,
            clock=core.clock,
            epoch=epoch,
        )

    async def _welcome(self, streams: list[StreamRecord]) -> None:
        settings = self.core.settings
        await self.send(
            pb.HubMessage(
                welcome=pb.Welcome(
                    hub_id=settings.hub_id,
                    applied=[pb.StreamPosition(type=s.type, incarnation=s.incarnation, seq=s.seq) for s in streams if s.incarnation],
                    heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
                    max_message_bytes=settings.max_message_bytes,
                    chunk_bytes=min(settings.chunk_bytes, settings.max_message_bytes),
                )
            )
        )
        self._welcomed = True

    async def _first_checks(self, before: ClusterRecord | None) -> None:
        """A cluster back from inactive, or connecting first since the hub started, is checked by digest."""
        assert self.engine is not None
        first = self.core.first_connection_since_start(self.cluster)
        if before is not None and before.status == "inactive":
            await self._reactivate(since=before.last_seen)
        elif first and self.core.settings.resync_on_startup and self.engine.streams:
            await self.engine.request_resync([], "hub startup", all_types=True)

    def _first_refusal_of(self, incarnation: str) -> bool:
        """Whether this incarnation is refused the cluster for the first time (an event then; a
        retry of the same newcomer is only logged)."""
        refused = self.core.refused_incarnations
        first = refused.get(self.cluster) != incarnation
        refused[self.cluster] = incarnation
        return first

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
            if isinstance(exc, LeaseLost):
                message = f"this session of cluster {self.cluster!r} lost its lease (epoch {engine.epoch}) to another session; reconnect"
                log.warning("cluster %s: %s; ending the session", self.cluster, exc)
            elif isinstance(exc, StoreUnavailable):
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
        """Periodic anti-entropy: whatever this cluster's one syncer (:mod:`fleetsync.hub.antientropy`) says is due."""
        if self.engine is None or self.superseded:
            return
        schedule = AntiEntropySchedule.from_settings(self.core.settings)
        if plan := self.syncer.due(now, schedule, self.engine.streams, fleet_size=len(self.core.sessions)):
            await reconcile(plan, cluster=self.cluster, engine=self.engine, events_log=self.core.events, metrics=self.core.metrics)

    async def _stop_tasks(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None

    async def supersede(self) -> None:
        """A newer session of the same agent took over the cluster on this hub: stop, hand nothing back."""
        self.superseded = True
        self.protocol.close()
        await self._stop_tasks()
        if self.engine is not None:
            self.engine.inbox.discard()
        self.core.metrics.connected_agents.dec()
        log.info("cluster %s: session from %s superseded by a new connection of the same agent", self.cluster, self.peer)
        if self.end is not None:
            await self.end()

    async def revoke(self, message: str) -> None:
        """The cluster was deleted: tell its agent why (UNAUTHENTICATED: its token is gone), end the
        connection and close the session. A bundle still in flight is fenced out by the store
        (the cluster's lease went with it)."""
        with contextlib.suppress(Exception):  # a connection that is ending anyway
            await self.send(pb.HubMessage(reject=pb.Reject(reason=pb.UNAUTHENTICATED, message=message)))
        log.warning("cluster %s: session from %s ended: %s", self.cluster, self.peer, message)
        await self.close()
        if self.end is not None:
            with contextlib.suppress(Exception):
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
        self.protocol.close()
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
