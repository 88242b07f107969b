"""The refresh scheduler (Replicante's cluster refresh, seed 003), run by every hub replica.

1. Every ``tick`` seconds the scheduler claims the clusters whose ``next_refresh_at`` has
   passed and moves it to ``now + interval``, in one statement that several replicas
   can run at once (``FOR UPDATE SKIP LOCKED`` on PostgreSQL): each due cluster goes to
   one replica. Push clusters are claimed only by the replica their agent is connected
   to (it is the one that can talk to it).
2. Workers take the claimed clusters. A worker first takes the cluster's lock (a row
   with an expiry, so a crashed replica's lock lapses); a refresh attempted while
   another one of the same cluster runs -- on any replica: a slow refresh outliving its
   interval, or one asked for on demand -- is discarded and counted
   (``fleetsync_refreshes_total{result="discarded"}``).
3. A pull cluster's refresh is a fetch of its agent's ``GET /v1/state`` (an agent run with ``--serve-state``); each
   type's state is written as a FULL in one chunk, the way a pushed FULL is: built by
   :func:`~fleetsync.hub.engine.bundle_write` (the same records, the same refusal of a
   body that is not a JSON object), committed by the hub's
   :class:`~fleetsync.hub.writer.BatchWriter` with every other cluster's bundles, and
   planned by :mod:`fleetsync.store.plan`, which alone decides which objects changed (only
   those take a revision) and deletes those the state no longer holds. Events are
   emitted from the difference between the cluster view before and after (never the
   engine's per-FULL ones): ``ClusterNew``, ``ClusterChanged`` (metadata),
   ``AgentUp`` / ``AgentDown`` (fetch succeeds again / fails), ``NodeUp`` / ``NodeDown``
   (a Node's Ready condition). Node events come from the nodes' own reports, as in
   Replicante: a node is not called down because something else thinks it is.

Push clusters are not refreshed here: their anti-entropy (partial and full digest syncs)
has one schedule, run by their session (:mod:`fleetsync.hub.antientropy`). A push row a
hub of an earlier version left in the table is removed when claimed.

The scheduler needs only a few parts of the hub (:class:`RefreshHost`), so it does not
import :mod:`fleetsync.hub.core`, which runs it.

A fetch is bounded in time (``--pull-timeout``) and bytes (``--pull-max-bytes``: an
answer that says it is larger, or turns out larger while it is read, is abandoned at the
bound), and its objects' lz4 bodies must declare sizes within ``--max-object-bytes``;
each failure is a ``RefreshFailed`` event naming the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import aiohttp
from google.protobuf.message import DecodeError

from fleetsync.aio import cancel_and_wait
from fleetsync.errors import FleetsyncError
from fleetsync.hub import events
from fleetsync.hub.clusterlabels import announce_if_relabelled, changed_keys
from fleetsync.hub.engine import BundleRefused, bundle_write
from fleetsync.hub.events import EventLog
from fleetsync.hub.metrics import HubMetrics
from fleetsync.hub.settings import HubSettings
from fleetsync.hub.types import HubTypes
from fleetsync.hub.writer import BatchWriter
from fleetsync.model.nodes import node_changes, node_ready
from fleetsync.model.types import TypeRegistry, UnknownResourceType
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol import typeinfo
from fleetsync.protocol.bodies import UnreadableBody, stored_object
from fleetsync.protocol.codec import declared_size_problem
from fleetsync.protocol.rules import BundleHeader
from fleetsync.store.contract import ClusterRecord, RefreshTarget, Store, StoreUnavailable

log = logging.getLogger(__name__)

NODE = "v1/Node"


class RefreshFailed(FleetsyncError):
    """A pull refresh could not fetch or use the agent's state."""


class RefreshHost(Protocol):
    """What the scheduler uses of the hub replica that runs it (:class:`~fleetsync.hub.core.HubCore`)."""

    store: Store
    #: The replica's group commit: a refresh's writes are committed with every session's bundles.
    writer: BatchWriter
    settings: HubSettings
    metrics: HubMetrics
    events: EventLog
    types: HubTypes
    clock: Callable[[], float]

    @property
    def registry(self) -> TypeRegistry: ...


class RefreshScheduler:
    def __init__(
        self, core: RefreshHost, *, tick: float = 1.0, workers: int = 4, fetch_timeout: float | None = None, max_bytes: int | None = None, token: str = ""
    ) -> None:
        self.core = core
        limits = core.settings.limits
        #: The most bytes a fetch reads, and the most seconds it takes.
        self.max_bytes = max_bytes or limits.pull_max_bytes
        fetch_timeout = fetch_timeout or limits.pull_timeout
        #: Sent to pull clusters' agents as ``Authorization: Bearer`` ("": nothing sent).
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.tick = tick
        self.workers = workers
        self.fetch_timeout = fetch_timeout
        #: A lock outlives a refresh that hangs no longer than this; then another replica may try.
        self.lock_ttl = max(60.0, 4 * fetch_timeout)
        self._queue: asyncio.Queue[RefreshTarget] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._failing: set[str] = set()  # pull clusters whose last refresh here failed

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.fetch_timeout))
        self._tasks = [asyncio.create_task(self._schedule(), name="refresh-scheduler")]
        self._tasks += [asyncio.create_task(self._work(), name=f"refresh-worker-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ---- scheduling --------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            try:
                room = 2 * self.workers - self._queue.qsize()  # claim no more than the workers will soon take
                if room > 0:
                    for target in await self.core.store.claim_due_refreshes(hub_id=self.core.settings.hub_id, now=self.core.clock(), limit=room):
                        if target.mode == "pull":
                            self._queue.put_nowait(target)
                        else:  # left by an earlier hub: push clusters' anti-entropy is their session's
                            await self.core.store.remove_refresh(target.cluster)
            except Exception as exc:  # a store hiccup must not end scheduling for good
                log.warning("refresh scheduler: claiming due clusters failed: %s; retrying in %.0fs", exc, self.tick)
            await asyncio.sleep(self.tick)

    async def _work(self) -> None:
        while True:
            target = await self._queue.get()
            try:
                await self.refresh(target)
            except Exception:
                log.exception("refresh of cluster %s failed unexpectedly", target.cluster)

    async def refresh(self, target: RefreshTarget, *, why: str = "scheduled") -> bool:
        """Refresh ``target`` now under its lock; False if another refresh of it was running (discarded)."""
        core = self.core
        lock, holder = f"refresh/{target.cluster}", f"{core.settings.hub_id}/{uuid.uuid4().hex[:8]}"
        if not await core.store.try_lock(lock, holder=holder, now=core.clock(), ttl=self.lock_ttl):
            core.metrics.refreshes.labels(target.mode, "discarded").inc()
            log.info("cluster %s: %s refresh discarded: another refresh of it is running", target.cluster, why)
            return False
        started = time.monotonic()
        # the interval runs from here, not from the claim: a claim that waited in the queue
        # must not be followed by the next one sooner than an interval after it ran
        await core.store.postpone_refresh(target.cluster, until=core.clock() + target.interval)
        result = "ok"
        try:
            result = await self._pull(target, started)
        except Exception:
            result = "failed"
            raise
        finally:
            core.metrics.refreshes.labels(target.mode, result).inc()
            core.metrics.refresh_seconds.labels(target.mode).observe(time.monotonic() - started)
            with contextlib.suppress(Exception):  # if this fails the lock lapses at its expiry
                await core.store.unlock(lock, holder=holder)
        return True

    # ---- pull --------------------------------------------------------------------------

    async def _pull(self, target: RefreshTarget, started: float) -> str:
        """Fetch and apply a pull cluster's state; ``started`` is the refresh's ``time.monotonic()`` start."""
        core, store, cluster = self.core, self.core.store, target.cluster
        before = await store.cluster(cluster)
        try:
            state = await self._fetch(target)
        except RefreshFailed as exc:
            if cluster not in self._failing:  # an event per outage, not per attempt; the log has every one
                self._failing.add(cluster)
                await core.events.record(cluster, events.REFRESH_FAILED, str(exc))
            else:
                log.warning("cluster %s: refresh failed again: %s", cluster, exc)
            if before is not None and before.status == "active":
                await store.set_cluster_status(cluster, status="inactive", now=core.clock())
                await core.events.record(cluster, events.AGENT_DOWN, f"agent at {target.url} did not answer: its last state is kept and flagged stale")
            return "failed"
        self._failing.discard(cluster)
        agent, now = state.agent, core.clock()
        nodes_before = await self._ready_nodes(cluster) if any(b.type == NODE for b in state.bundles) else {}
        same_agent = before is not None and before.incarnation == agent.incarnation and before.status == "active"
        await store.upsert_cluster(
            ClusterRecord(
                name=cluster,
                agent_id=agent.agent_id,
                incarnation=agent.incarnation,
                status="active",
                metadata=dict(agent.metadata),
                connected_at=before.connected_at if same_agent and before is not None else now,
                last_seen=now,
                hub_id=core.settings.hub_id,
            )
        )
        await announce_if_relabelled(store, before, agent.metadata, cluster)  # before its objects: a watch meets a known cluster
        written = 0
        for bundle in state.bundles:
            written += await self._apply(cluster, agent.incarnation, bundle, now)
        await self._view_events(target, before, state, nodes_before, now)
        took = time.monotonic() - started
        await core.events.record(
            cluster, events.REFRESHED, f"pulled {sum(len(b.upserts) for b in state.bundles)} objects from {target.url} in {took:.3f} s; {written} changed"
        )
        return "ok"

    async def _fetch(self, target: RefreshTarget) -> pb.State:
        assert self._http is not None, "the scheduler is not started"
        try:
            async with self._http.get(target.url, headers=self._headers) as response:
                if response.status == 401:
                    how = "the token sent was refused" if self._headers else "it wants a token: give the hub --pull-token-file"
                    raise RefreshFailed(f"GET {target.url}: HTTP 401: {how}")
                if response.status != 200:
                    raise RefreshFailed(f"GET {target.url}: HTTP {response.status} {(await response.content.read(200)).decode(errors='replace')}")
                data = await self._read_bounded(target, response)
        except TimeoutError:
            raise RefreshFailed(f"GET {target.url}: no complete answer within {self.fetch_timeout:g}s (the hub's --pull-timeout)") from None
        except aiohttp.ClientError as exc:
            raise RefreshFailed(f"GET {target.url}: {exc or type(exc).__name__}") from None
        try:
            state = pb.State.FromString(data)
        except DecodeError:
            raise RefreshFailed(f"GET {target.url}: the answer is not a fleetsync State ({len(data)} bytes); is it an agent run with --serve-state?") from None
        if state.agent.cluster_id != target.cluster:
            raise RefreshFailed(f"{target.url} serves cluster {state.agent.cluster_id!r}, not {target.cluster!r}: nothing applied")
        if state.agent.types:  # the types it serves (CRDs), as a pushing agent's Hello reports them; invalid ones are left out
            valid = [typeinfo.from_pb(info) for info in state.agent.types if not typeinfo.type_info_problem(info)]
            await self.core.types.report(target.cluster, valid[: self.core.settings.limits.max_reported_types], now=self.core.clock())
        for bundle in state.bundles:
            try:
                self.core.registry.resolve(bundle.type)
            except UnknownResourceType:
                raise RefreshFailed(f"{target.url} sent type {bundle.type!r}, which this hub does not know: nothing applied") from None
            if bundle.kind != pb.FULL:
                raise RefreshFailed(f"{target.url} sent a {pb.BundleKind.Name(bundle.kind)} bundle of {bundle.type}; a state holds FULL bundles only")
            if bundle.compression == pb.COMPRESSION_LZ4:
                for obj in bundle.upserts:
                    if problem := declared_size_problem(obj.body, self.core.settings.limits.max_object_bytes):
                        raise RefreshFailed(f"{target.url} sent {bundle.type} {obj.namespace}/{obj.name}: {problem}: nothing applied")
        return state

    async def _read_bounded(self, target: RefreshTarget, response: aiohttp.ClientResponse) -> bytes:
        """The answer's body, read up to ``max_bytes`` (a RefreshFailed beyond: nothing more is read)."""
        limit = self.max_bytes

        def too_large(size: str) -> RefreshFailed:
            return RefreshFailed(f"GET {target.url}: the answer is {size} bytes, over the hub's limit of {limit} (--pull-max-bytes); nothing applied")

        if response.content_length is not None and response.content_length > limit:
            raise too_large(str(response.content_length))
        data = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            data += chunk
            if len(data) > limit:
                raise too_large(f"more than {len(data)}")
        return bytes(data)

    async def _apply(self, cluster: str, incarnation: str, bundle: pb.Bundle, now: float) -> int:
        """Write one type's pulled state as a FULL in one chunk, through the path of a pushed FULL
        (see the module docstring); returns how many objects changed, as the store's plan counted
        them. A write the store refuses (the state, not the store, at fault) refuses the type
        alone: its last state is kept. :class:`StoreUnavailable` ends the refresh (failed; the
        next one, an interval later, tries again), as any store error before it does."""
        core, type_ = self.core, bundle.type
        if bundle.error and not bundle.upserts:  # the type failed to list: keep its last state
            await core.store.set_stream_error(cluster, type_, bundle.error, now=now)
            return 0
        try:
            # checking every body of a large state is CPU work (~0.05 s per thousand objects): in a
            # thread, so that the hub's loop keeps serving its sessions meanwhile
            write = await asyncio.to_thread(
                bundle_write,
                cluster,
                type_,
                BundleHeader(incarnation, bundle.seq, 0, full=True),  # a whole FULL: its first chunk and its last
                list(bundle.upserts),
                (),
                bundle.compression,
                full_end=True,
                moves=True,
                now=now,
                max_object_bytes=core.settings.limits.max_object_bytes,
                name=f"pulled state of {type_}",
            )
        except BundleRefused as exc:  # as the engine refuses such a bundle from a push agent
            await core.events.record(cluster, events.TYPE_REFUSED, str(exc), type=type_)
            return 0
        try:
            changed = await core.writer.apply_counted(write, size=sum(len(o.body) for o in bundle.upserts))
        except StoreUnavailable:
            raise
        except Exception as exc:  # the writer failed this write alone: the rest of its batch committed
            await core.events.record(cluster, events.TYPE_REFUSED, f"the hub could not store the pulled state of {type_}: {exc}", type=type_)
            return 0
        await core.store.set_stream_error(cluster, type_, bundle.error, now=now)
        return changed

    # ---- the cluster view and its events -------------------------------------------------

    async def _ready_nodes(self, cluster: str) -> dict[str, bool]:
        """Node name -> Ready, as the nodes last reported it."""
        ready: dict[str, bool] = {}
        for record in await self.core.store.list_objects(NODE, cluster=cluster):
            try:
                ready[record.name] = node_ready(stored_object(record.body, record.compression))
            except UnreadableBody:
                continue
        return ready

    async def _view_events(self, target: RefreshTarget, before: ClusterRecord | None, state: pb.State, nodes_before: dict[str, bool], now: float) -> None:
        cluster, record = target.cluster, self.core.events.record
        agent = state.agent
        if before is None or before.status == "never":  # its nodes are not news yet
            await record(cluster, events.CLUSTER_NEW, f"first state pulled from {target.url} (agent {agent.agent_id})")
        else:
            if changed := changed_keys(before.metadata, agent.metadata):
                await record(cluster, events.CLUSTER_CHANGED, "metadata changed: " + ", ".join(changed))
            if before.status != "active" or before.incarnation != agent.incarnation:
                why = "restarted" if before.incarnation != agent.incarnation else "answers again"
                await record(cluster, events.AGENT_UP, f"agent {agent.agent_id} {why} (incarnation {agent.incarnation})")
        new = before is None or before.status == "never"
        if not new and any(b.type == NODE and not (b.error and not b.upserts) for b in state.bundles):
            nodes_after = await self._ready_nodes(cluster)
            for name, up in node_changes(nodes_before, nodes_after):
                await record(cluster, events.NODE_UP if up else events.NODE_DOWN, f"node {name} reports {'Ready' if up else 'not Ready'}", type=NODE)
