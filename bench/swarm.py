"""Does one hub keep up with a 1,000-cluster fleet (issue 17)? A swarm of protocol-level agents against one hub (or several replicas).

The bench starts everything itself, on free loopback ports in a temporary directory: a hub
(``fleetsync hub --db sqlite:///TMP/hub.db``, or ``--db postgres``: a PostgreSQL server of
its own with PostgreSQL's durable defaults, as bench/ingest.py does), for ``--transport
mqtt|nats`` a Mosquitto or nats-server the hub serves through ``--broker``, and
``--procs`` worker processes that run ``--clusters`` agents between them. One agent token
per cluster is written straight into the hub's store before the hub starts (the store's
``add_token`` with ``hash_token``, what ``fleetsync token create`` does); the API token of
the watch is the benches' admin token (``benchlib.admin_token_file``). Every process is
stopped at the end, also on errors and Ctrl-C.

**Replicas** (``--replicas N``, only with ``--db postgres``): N hub processes on the same
PostgreSQL database, each with its own ``--hub-id`` (``swarm-hub-1`` ...) and gRPC and HTTP
ports (docs/scale-out.md). Over gRPC the agents are spread round-robin over them: agent k of
worker w connects to replica (w + k) mod N only (one URL, no failover list), so every
replica gets an even share of every worker's agents. Over MQTT / NATS every replica serves
through the one broker and the agents connect to the broker, as with one hub. Every hub
figure is then the replicas' combined one: the counters of ``/metrics`` are summed over
the replicas, the agent connections counted at each of them, and the hub's CPU and RSS
(also the peaks, the 0.5 s maxima and VmHWM) are given as the sum over the replicas and as
the largest of one replica ("per replica at most"). The clusters API, the fleet-wide watch
and the phase boundaries' revision go through replica 1 only: the replicas share the store
and the change feed (PostgreSQL NOTIFY), so one replica's watch sees every replica's writes.
The raw store rate is the same as with one hub.

**The agents** speak the real protocol with the real agent's own protocol code -- its
:class:`~fleetsync.agent.typesync.TypeSync` (cache, pending changes, FULL chunking below
the max message size, digests, repairs) and :class:`~fleetsync.agent.uplink.Uplink`
(plan per type on Welcome: FULL / resume / digest; window of 32 unacked messages;
retransmission; the resync queue; heartbeats at the hub's interval, 10 s) -- in place of
a Kubernetes watch. Each agent has a connection of its own (gRPC: a channel with a local
subchannel pool, so channels in one process do not share a TCP connection; MQTT / NATS:
a client connection each); it sends Hello (cluster, token, agent id, a fresh incarnation,
the capabilities and metadata the real agent sends), and handles whatever the hub says:
Acks (per FULL chunk and per bundle), ResyncRequests (answered with a correct digest of
its cache), DigestDiffs (repair DELTA), Rejects, gate and works snapshots (ignored), heartbeats.
A broken connection is reconnected with backoff and resumes as the real agent does.

**The objects** are ``--objects`` Pods per cluster shaped like real ones (bench/store_apply.py's
``pod``: labels, annotations, a ReplicaSet owner reference, uid, resourceVersion, a container
with env, probes, resources and mounts, volumes, tolerations, status with conditions and a
container status; about 3.5 KB of JSON). 97 templates (one per app) are serialized once with
sorted keys, a body the agent's codec leaves as it is; each object substitutes its own namespace, name, uid,
resourceVersion, pod IP and container id into its template, so every body is distinct
canonical JSON (checked), hashed with xxh3-64 and lz4-compressed exactly as
``codec.make_object`` would make it: the hub's digests agree with the agents'. The objects are
made in the workers before the clock starts (a real agent has its cache before it connects).

Phases and figures:

0. **raw store rate** (before the hub starts): ``--raw-objects`` of the same Pod bodies applied
   straight to a fresh store of the same engine (``open_store``, as the hub opens it;
   bench/store_apply.py's ``apply_all``, one ``apply_bundle`` transaction per
   ``--raw-bundle`` objects), an insert pass then an update pass (new bodies, new hashes).
   Every throughput figure below is also given as a ratio to these: the initial sync to the
   insert rate, the sustained phase to the update rate -- how much of what the store can do
   the whole hub delivers.
1. **initial sync**: the workers start every agent at once (at most
   ``--connect-concurrency`` handshakes per worker at a time); seconds from that start until
   every cluster's FULL is acked (the last chunk's non-partial Ack, which the hub sends after
   committing it), objects/s = clusters x objects / those seconds; also when every agent had
   its Welcome, and the per-cluster completion times (p50 / p99). Then ``/api/v1/clusters``
   must count every object.
2. **sustained**: ``--rate`` changes/s fleet-wide (default 2 per cluster per second) for
   ``--duration`` s: each change picks a random cluster and a random Pod of it and makes a
   MODIFIED body (new resourceVersion and the annotation ``bench.fleetsync.io/changed-at``
   = the wall time it was made: a new hash); the agent sends it at once (no batching
   window), so at this rate each is a single-object DELTA (the agent's window of 32 and its
   pending map conflate only when the hub falls behind). Figures: offered changes/s; *achieved* changes/s = changes whose
   Ack arrived within the window / its length; acked after a drain of up to ``--drain`` s,
   and the number still unacknowledged then; ack latency p50 / p99 / max = from handing a
   DELTA to the transport to the Ack of its seq (measured in the worker); *visibility
   latency* p50 / p99 / max through ONE fleet-wide watch (``GET /api/v1/pods?watch=1`` from
   the revision the sync ended at, with the admin token): for each ADDED/MODIFIED event,
   arrival wall time minus the ``changed-at`` annotation in its body (each (cluster, pod,
   changed-at) counted once; same machine, same clock), and how many of the sent changes
   the watch saw. A change that a later change of the same Pod replaced before it was
   applied -- in the agent's pending map ("superseded"), or in the hub's inbox, which merges
   queued DELTAs while the hub is behind -- never becomes an event of its own: then fewer
   are visible than were sent, and the hub's own count of objects applied says how many.
   The hub's and the bench's CPU are also given over exactly the window (without the drain).
   Then the bench waits (up to ``--settle-timeout`` s, reported) until the hub has acked
   every change, with the watch still open: the ack and visibility latencies cover every
   change, the slowest included.
3. **idle**: then, all agents connected and nothing but heartbeats for ``--idle`` s (and
   whatever the hub asks for itself: periodic digests, lease renewals): hub CPU as a
   fraction of one core, hub RSS (the steady state).

The agents are not free: every gRPC message costs the worker a few hundred microseconds
of CPU (grpc.aio hands each write and read between its poller thread and the event loop),
so at 2,000 changes/s the workers need a good part of a core. On a small machine they share
the cores with the hub; their CPU is reported so that the hub's figures can be read with it.

Throughout: the hub's RSS (psutil every 0.5 s: peak, and at the end of each phase; the
kernel's VmHWM), its CPU per phase (CPU-time delta / wall time), the CPU of the bench
processes (the main process with the watch, and the workers; on a small machine they share
the cores with the hub), of the broker or PostgreSQL if any, and of everything else on the
machine (its busy CPU time less all of those: a test suite running beside the bench shows
up there and explains slow figures), the load average at the start and the end, the hub's counters
(``/metrics``, read only at phase boundaries: it counts every object) and what the agents
saw (reconnects, rejects, resync requests, digests, messages resent after the agent's
15 s ack timeout, and the keys the hub's digest diffs named: those the agent had changed but
not sent yet when it made the digest are rightly stale at the hub; any other means the hub's
state had diverged).

Run (from the repository root)::

    .venv/bin/python bench/swarm.py --clusters 50 --objects 200 --duration 10 --idle 5   # quick check
    .venv/bin/python bench/swarm.py                                                      # issue 17: 1,000 x 1,000, 2,000 changes/s
    .venv/bin/python bench/swarm.py --db postgres --transport nats --clusters 200 --objects 500
    .venv/bin/python bench/swarm.py --db postgres --replicas 2 --clusters 200 --objects 500  # two hub replicas

``--json FILE`` also writes the figures as JSON; ``--keep-logs DIR`` copies the logs there.
Exit status: 0 when every phase completed, 1 when a process died or a phase timed out (the
ends of the logs are printed), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import lz4.frame
import orjson
import psutil
import xxhash

import store_apply
from benchlib import (
    DEFAULT_FLEETSYNC,
    HUB_AUTH,
    BenchError,
    Child,
    Processes,
    bench_start,
    core,
    cpu_seconds,
    free_port,
    get_json,
    mib,
    ms,
    parse_metrics,
    percentile,
    rss,
    start_broker,
    tail,
    vm_hwm,
)
from fleetsync import __version__
from fleetsync.agent.typesync import Cached, TypeSync
from fleetsync.agent.uplink import HubRejected, Outgoing, Uplink, UplinkSettings
from fleetsync.aio import cancel_and_wait
from fleetsync.backoff import Backoff
from fleetsync.hub.auth import hash_token, new_token
from fleetsync.hub.engine import object_record
from fleetsync.model import types as kube_types
from fleetsync.model.objects import CLUSTER_LABEL
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol import fleetsync_pb2_grpc as pb_grpc
from fleetsync.store import open_store
from fleetsync.testing.postgres import PostgresServer
from fleetsync.transport import grpc as grpc_transport
from fleetsync.transport.base import AgentConnection, HubAddress, TransportError, parse_hub_url
from fleetsync.transport.connect import open_agent_connection

log = logging.getLogger("swarm")

POD = kube_types.POD
#: The annotation each changed body carries: the wall time (s) the change was made.
CHANGED_AT = "bench.fleetsync.io/changed-at"
#: As the real agent (runner.PROTOCOL_VERSION) and its default capabilities (works applied).
PROTOCOL_VERSION = 1
CAPABILITIES = ("digest", "lz4", "chunk-acks", "works")
NAMESPACES = 50
TEMPLATES = 97
#: The agent's default max message size (the hub's Welcome may lower it).
MAX_MESSAGE_BYTES = 512 * 1024
_FIELD = re.compile(rb"@@([A-Z]+)@@")
_SUFFIX = "bcdfghjklmnpqrstvwxz2456789"
#: Seconds between the worker's checks of its agents' timers (heartbeats, resends, a silent hub).
TICK = 0.2


# ---- the objects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    parts: list[bytes]  # literal, field, literal, field, ..., literal
    labels: dict[str, str]
    owner: str
    rs: str


class PodFactory:
    """Real-shaped Pod bodies for (cluster, pod index, resourceVersion, changed-at), made as the agent's codec makes them."""

    def __init__(self, seed: int) -> None:
        self.templates: list[_Template] = []
        for t in range(TEMPLATES):
            rng = random.Random(seed * 7919 + t)
            body = store_apply.pod(t, "@@NS@@", rng, 0, app=f"svc-{t}")
            meta = body["metadata"]
            meta["name"], meta["uid"], meta["resourceVersion"] = "@@NAME@@", "@@UID@@", "@@RV@@"
            meta["annotations"][CHANGED_AT] = "@@CHANGED@@"
            body["status"]["podIP"] = "@@IP@@"
            body["status"]["podIPs"] = [{"ip": "@@IP@@"}]
            body["status"]["containerStatuses"][0]["containerID"] = "containerd://@@CID@@"
            owner = meta["ownerReferences"][0]
            canonical = orjson.dumps(codec.strip(body), option=orjson.OPT_SORT_KEYS)
            self.templates.append(_Template(_FIELD.split(canonical), dict(meta["labels"]), f"ReplicaSet/{owner['name']}", owner["name"]))
        sample = lz4.frame.decompress(self.make(0, 0, "1")[0].body)
        if codec.make_object(orjson.loads(sample), compress=False).body != sample:
            raise AssertionError("the Pod template does not render the body the agent's codec makes")

    def name(self, i: int) -> str:
        suffix, n = [], i
        for _ in range(5):
            n, r = divmod(n, len(_SUFFIX))
            suffix.append(_SUFFIX[r])
        return f"{self.templates[i % TEMPLATES].rs}-{''.join(suffix)}"

    def make(self, cluster: int, i: int, rv: str, changed_at: str = "0") -> tuple[pb.Object, int]:
        """Pod ``i`` of ``cluster``: the wire object (as ``codec.make_object`` makes it) and the size of its JSON."""
        template = self.templates[i % TEMPLATES]
        namespace, name = f"ns-{i % NAMESPACES}", self.name(i)
        h = xxhash.xxh3_128_intdigest(f"{cluster}/{i}".encode())
        uid = str(uuid.UUID(int=h))
        values = {
            b"NS": namespace.encode(),
            b"NAME": name.encode(),
            b"UID": uid.encode(),
            b"RV": rv.encode(),
            b"CHANGED": changed_at.encode(),
            b"IP": f"10.{(h >> 8) & 255}.{(h >> 16) & 255}.{1 + (h >> 24) % 254}".encode(),
            b"CID": f"{h:032x}{xxhash.xxh3_128_intdigest(f'{cluster}/{i}/c'.encode()):032x}".encode(),
        }
        body = b"".join(p if k % 2 == 0 else values[p] for k, p in enumerate(template.parts))
        obj = pb.Object(
            namespace=namespace,
            name=name,
            uid=uid,
            resource_version=rv,
            hash=codec.object_hash(body),
            labels=template.labels,
            owner=template.owner,
            body=lz4.frame.compress(body),
        )
        return obj, len(body)


# ---- phase 0: the raw store rate -------------------------------------------------------------


async def raw_store_rate(url: str, factory: PodFactory, n: int, bundle: int) -> dict[str, Any]:
    """Objects/s of the same Pod bodies applied straight to a fresh store of ``url``: inserts, then updates."""
    made = [factory.make(-1, i, str(i + 1)) for i in range(n)]
    first = [object_record("raw", store_apply.POD, store_apply.INCARNATION, o, pb.COMPRESSION_LZ4) for o, _ in made]
    second = [object_record("raw", store_apply.POD, store_apply.INCARNATION, factory.make(-1, i, str(n + i + 1), "1")[0], pb.COMPRESSION_LZ4) for i in range(n)]
    store = open_store(url)
    await store.open()
    try:
        insert_s, seq = await store_apply.apply_all(store, first, bundle, 0)
        update_s, _ = await store_apply.apply_all(store, second, bundle, seq)
    finally:
        await store.close()
    return {
        "objects": n,
        "bundle": bundle,
        "json_bytes_mean": statistics.mean(size for _, size in made),
        "lz4_bytes_mean": statistics.mean(len(o.body) for o, _ in made),
        "insert_per_s": n / insert_s,
        "update_per_s": n / update_s,
        "insert_s": insert_s,
        "update_s": update_s,
    }


# ---- the worker processes: agents ------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    index: int
    #: (cluster number, name, token, the URL its agent connects to: a hub replica's gRPC URL or the broker's) of this worker's agents.
    clusters: list[tuple[int, str, str, str]]
    objects: int
    seed: int
    connect_concurrency: int
    hello_timeout: float
    log_file: str


_WAKE = object()


class SwarmAgent:
    """One cluster's agent: the real agent's TypeSync and Uplink over a connection of its own, fed by the worker's churn."""

    def __init__(self, worker: Worker, number: int, name: str, token: str, hub_url: str) -> None:
        self.worker = worker
        self.number = number
        self.name = name
        self.token = token
        self.address: HubAddress = parse_hub_url(hub_url)
        self.agent_id = f"swarm/{name}"
        self.incarnation = uuid.uuid4().hex[:16]
        self.sync = TypeSync(POD, self.incarnation, max_message_bytes=MAX_MESSAGE_BYTES)
        self.rv = 0
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.woken = False
        #: When the uplink has something to do even if nothing arrives (heartbeat, resend): the worker's ticker wakes it then.
        self.deadline = float("inf")
        #: (seq, monotonic time handed to the transport, objects, made in the churn phase) of DELTAs not acked yet.
        self.sent: deque[tuple[int, float, int, bool]] = deque()
        self.welcomed_at: float | None = None  # wall time of the first Welcome
        self.synced_at: float | None = None  # wall time the first FULL was acked
        self.stats: Counter[str] = Counter()
        self.task: asyncio.Task[None] | None = None
        #: Keys with changes not sent yet when the last digest was made: a diff rightly lists them as stale.
        self.digest_pending: set[str] = set()

    def populate(self, objects: int) -> int:
        """The cluster's initial LIST, into the cache; returns the JSON bytes made."""
        listing = self.sync.listing()
        json_bytes = 0
        for i in range(objects):
            obj, size = self.worker.factory.make(self.number, i, str(i + 1))
            listing.objects[codec.key_of(obj.namespace, obj.name)] = Cached(obj.hash, obj.SerializeToString())
            json_bytes += size
        self.sync.finish_list(listing)
        self.rv = objects
        return json_bytes

    def change(self, i: int) -> None:
        """Pod ``i`` was MODIFIED (a watch event, as the agent's TypeSync.on_event would take it)."""
        self.rv += 1
        obj, _ = self.worker.factory.make(self.number, i, str(self.rv), f"{time.time():.6f}")
        key = codec.key_of(obj.namespace, obj.name)
        if key in self.sync.pending:
            self.stats["superseded"] += 1  # the earlier change of this Pod was not sent yet: this one replaces it
        cached = Cached(obj.hash, obj.SerializeToString())
        self.sync.cache[key] = cached
        self.sync._changed(key, cached)  # what on_event does once it has the wire object
        self.stats["changes_made"] += 1
        self.wake()

    def wake(self) -> None:
        if not self.woken:
            self.woken = True
            self.inbox.put_nowait(_WAKE)

    def outstanding(self) -> int:
        """Churn changes not acked yet: sent and unacked, or still pending."""
        return sum(n for _, _, n, churn in self.sent if churn) + len(self.sync.pending)

    # ---- the connection ------------------------------------------------------------------

    def _hello(self) -> pb.Hello:
        stream = self.sync.stream
        return pb.Hello(
            cluster_id=self.name,
            agent_id=self.agent_id,
            incarnation=self.incarnation,
            token=self.token,
            metadata={"agent_version": __version__},
            capabilities=CAPABILITIES,
            resumable=[pb.StreamPosition(type=POD.gvk, incarnation=stream.incarnation, seq=min(stream.held, default=stream.seq))],
            protocol_version=PROTOCOL_VERSION,
        )

    async def _open(self) -> AgentConnection:
        address = self.address
        if address.scheme != "grpc":
            return await open_agent_connection(address, cluster_id=self.name, agent_id=self.agent_id, max_message_bytes=2 * MAX_MESSAGE_BYTES)
        # As GrpcAgentConnection.open, but with a subchannel pool of the channel's own: gRPC shares
        # one TCP connection among a process's channels to the same target otherwise, and every
        # real agent has a connection of its own.
        options = [*grpc_transport.grpc_options(2 * MAX_MESSAGE_BYTES), ("grpc.use_local_subchannel_pool", 1)]
        channel = grpc.aio.insecure_channel(f"{address.host}:{address.port}", options=options)
        try:
            async with asyncio.timeout(10):
                await channel.channel_ready()
        except TimeoutError:
            await channel.close()
            raise TransportError(f"hub {address} did not answer within 10s") from None
        stub = pb_grpc.FleetSyncStub(channel)  # type: ignore[no-untyped-call]
        return grpc_transport.GrpcAgentConnection(channel, stub.Connect())

    async def run(self) -> None:
        backoff = Backoff(initial=0.2, maximum=10)
        while True:
            connection: AgentConnection | None = None
            try:
                async with self.worker.handshakes:
                    connection = await self._open()
                    welcome = await self._welcome(connection)
                self.stats["welcomed"] += 1
                backoff.reset()
                await self._session(connection, welcome)
            except HubRejected as exc:
                self.stats[f"rejected_{exc.reason}"] += 1
                log.warning("%s: rejected (%s): %s", self.name, exc.reason, exc.reject.message)
                await asyncio.sleep(max(exc.reject.retry_after_ms / 1000, backoff.next_delay()))
            except TransportError as exc:
                self.stats["disconnected" if connection is not None else "connect_failed"] += 1
                log.warning("%s: %s", self.name, exc)
                await backoff.sleep()
            except Exception:
                self.stats["session_failed"] += 1
                log.exception("%s: session failed", self.name)
                await backoff.sleep()
            finally:
                if connection is not None:
                    await connection.close()

    async def _welcome(self, connection: AgentConnection) -> pb.Welcome:
        """Hello -> Welcome (HubRejected on a Reject, TransportError on anything else)."""
        await connection.send(pb.AgentMessage(hello=self._hello()))
        self.stats["hello"] += 1
        try:
            async with asyncio.timeout(self.worker.config.hello_timeout):
                first = await connection.receive()
        except TimeoutError:
            self.stats["hello_timeout"] += 1
            raise TransportError(f"no answer to Hello within {self.worker.config.hello_timeout:.0f}s") from None
        if first is None:
            raise TransportError("the hub closed the connection before answering Hello")
        kind = first.WhichOneof("message")
        if kind == "reject":
            raise HubRejected(first.reject)
        if kind != "welcome":
            raise TransportError(f"expected Welcome, got {kind}")
        if self.welcomed_at is None:
            self.welcomed_at = time.time()
        return first.welcome

    async def _read(self, connection: AgentConnection) -> None:
        try:
            while True:
                message = await connection.receive()
                if message is None:
                    self.inbox.put_nowait(TransportError("the hub closed the connection"))
                    return
                self.inbox.put_nowait(message)
        except TransportError as exc:
            self.inbox.put_nowait(exc)

    async def _session(self, connection: AgentConnection, welcome: pb.Welcome) -> None:
        uplink = Uplink({POD.gvk: self.sync}, welcome, settings=UplinkSettings(), now=time.monotonic(), lossless=connection.lossless)
        while not self.inbox.empty():  # what is left from an earlier connection
            self.inbox.get_nowait()
        self.woken = False
        reader = asyncio.create_task(self._read(connection), name=f"read-{self.name}")
        try:
            while True:
                for out in uplink.poll(time.monotonic()):
                    self._sending(out)
                    await connection.send(out.message)
                self.deadline = uplink.next_deadline(time.monotonic())
                item = await self.inbox.get()
                while item is not None:
                    if isinstance(item, Exception):
                        raise item
                    if item is _WAKE:
                        self.woken = False
                    else:
                        self._received(item)
                        uplink.receive(item, time.monotonic())
                        stream = self.sync.stream
                        if self.synced_at is None and stream.established and stream.full is None and not stream.in_flight():
                            self.synced_at = time.time()  # the FULL (or, after a reconnect, a digest's repair) is acked
                    item = self.inbox.get_nowait() if not self.inbox.empty() else None
        finally:
            self.deadline = float("inf")
            await cancel_and_wait([reader])

    def _sending(self, out: Outgoing) -> None:
        self.stats[f"sent_{out.kind}"] += 1
        if out.kind == "delta":
            bundle = out.message.bundle
            n = len(bundle.upserts) + len(bundle.deletes)
            self.sent.append((bundle.seq, time.monotonic(), n, self.worker.churn_started))
            self.stats["delta_objects"] += n
        elif out.kind == "repair":
            self.stats["repair_objects"] += len(out.message.bundle.upserts) + len(out.message.bundle.deletes)
        elif out.kind == "digest" and out.message.digest.chunk == 0:
            self.digest_pending = set(self.sync.pending)

    def _received(self, message: pb.HubMessage) -> None:
        kind = message.WhichOneof("message") or ""
        self.stats[f"received_{kind}"] += 1
        if kind == "ack":
            ack = message.ack
            if ack.partial or ack.incarnation != self.incarnation:
                return
            now = time.monotonic()
            while self.sent and self.sent[0][0] <= ack.seq:
                _, sent_at, n, churn = self.sent.popleft()
                if churn:
                    self.worker.acked(now - sent_at, n, now)
        elif kind == "digest_diff":
            diff = message.digest_diff
            keys = [*diff.missing, *diff.stale, *diff.extra]
            pending = sum(1 for k in keys if k in self.digest_pending)
            self.stats["diff_keys_pending"] += pending  # changes the agent had not sent when it made the digest
            self.stats["diff_keys_diverged"] += len(keys) - pending  # the hub held something else: a divergence
            if diff.send_full:
                self.stats["diff_send_full"] += 1
        elif kind == "resync":
            self.stats[f"resync_{message.resync.reason.split(':')[0] or 'unspecified'}"] += 1
        elif kind == "reject" and message.reject.type:
            self.stats["type_refused"] += 1


class Worker:
    """One worker process: its share of the agents, their churn, and the answers to the main process."""

    def __init__(self, conn: Connection, config: WorkerConfig) -> None:
        self.conn = conn
        self.config = config
        self.factory = PodFactory(config.seed)
        self.agents: list[SwarmAgent] = []
        self.handshakes = asyncio.Semaphore(config.connect_concurrency)
        #: Set when the sustained phase starts: every DELTA from then on carries its changes.
        self.churn_started = False
        self.latencies: list[float] = []
        self.acked_changes = 0
        self.acked_in_window = 0
        self.window_end = float("inf")
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def send(self, *message: Any) -> None:
        self.conn.send(message)

    def acked(self, latency: float, objects: int, now: float) -> None:
        self.latencies.append(latency)
        self.acked_changes += objects
        if now <= self.window_end:
            self.acked_in_window += objects

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = ("stop",)
            loop.call_soon_threadsafe(self.commands.put_nowait, message)
            if message[0] == "stop":
                return

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_commands, args=(loop,), name="commands", daemon=True).start()
        started = time.perf_counter()
        json_bytes = 0
        for number, name, token, hub_url in self.config.clusters:
            agent = SwarmAgent(self, number, name, token, hub_url)
            json_bytes += agent.populate(self.config.objects)
            self.agents.append(agent)
            await asyncio.sleep(0)
        lz4_bytes = sum(len(pb.Object.FromString(o.wire).body) for a in self.agents[:5] for o in a.sync.cache.values())
        self.send(
            "prepared",
            {
                "seconds": time.perf_counter() - started,
                "objects": len(self.agents) * self.config.objects,
                "json_bytes": json_bytes,
                "lz4_bytes_sample_mean": lz4_bytes / max(1, sum(len(a.sync.cache) for a in self.agents[:5])),
            },
        )
        churn: asyncio.Task[None] | None = None
        progress: asyncio.Task[None] | None = None
        ticker: asyncio.Task[None] | None = None
        settle: asyncio.Task[None] | None = None
        while True:
            command = await self.commands.get()
            if command[0] == "sync":
                for agent in self.agents:
                    agent.task = asyncio.create_task(agent.run(), name=f"agent-{agent.name}")
                progress = asyncio.create_task(self._progress(), name="progress")
                ticker = asyncio.create_task(self._tick(), name="ticker")
            elif command[0] == "churn":
                churn = asyncio.create_task(self._churn(*command[1:]), name="churn")
            elif command[0] == "settle":
                settle = asyncio.create_task(self._settle(command[1]), name="settle")
            elif command[0] == "stop":
                await cancel_and_wait([t for t in (churn, progress, ticker, settle) if t is not None])
                await cancel_and_wait([a.task for a in self.agents if a.task is not None], again_after=5)
                self.send("stopped", self._stats())
                return

    def _stats(self) -> dict[str, Any]:
        total: Counter[str] = Counter()
        for agent in self.agents:
            total.update(agent.stats)
        return {
            "counters": dict(total),
            "connected": sum(1 for a in self.agents if a.task is not None and not a.task.done()),
            "synced": sum(1 for a in self.agents if a.synced_at is not None),
        }

    async def _tick(self) -> None:
        """Wake the agents whose uplink timers are due (one timer for all, rather than a timeout per wait)."""
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for agent in self.agents:
                if agent.deadline <= now:
                    agent.wake()

    async def _progress(self) -> None:
        """Progress of the initial sync every second, then when every agent's FULL is acked."""
        while True:
            synced = [a.synced_at for a in self.agents if a.synced_at is not None]
            welcomed = [a.welcomed_at for a in self.agents if a.welcomed_at is not None]
            if len(synced) == len(self.agents):
                self.send("synced", {"synced_at": synced, "welcomed_at": welcomed})
                return
            self.send("progress", {"synced": len(synced), "welcomed": len(welcomed)})
            await asyncio.sleep(1.0)

    async def _until_acked(self, timeout: float) -> float:
        """Wait (up to ``timeout`` s) until no agent has a change unacked; the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not any(a.outstanding() for a in self.agents):
                break
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def _settle(self, timeout: float) -> None:
        """Wait until every change is acked; then the ack latencies of every DELTA of the sustained phase."""
        seconds = await self._until_acked(timeout)
        self.send("settled", {"seconds": seconds, "unacked": sum(a.outstanding() for a in self.agents), "latencies": self.latencies})

    async def _churn(self, rate: float, duration: float, drain: float) -> None:
        rng = random.Random(self.config.seed * 1_000_003 + self.config.index)
        objects = self.config.objects
        self.latencies, self.acked_changes, self.acked_in_window = [], 0, 0
        before = Counter[str]()
        for agent in self.agents:
            before.update(agent.stats)
        self.churn_started = True
        started_wall, started = time.time(), time.monotonic()
        self.window_end = started + duration
        made = 0
        lag_max = 0.0
        while (elapsed := time.monotonic() - started) < duration:
            target = int(rate * elapsed)
            lag_max = max(lag_max, (target - made) / rate if rate else 0.0)
            while made < target:
                rng.choice(self.agents).change(rng.randrange(objects))
                made += 1
            await asyncio.sleep(0.005)
        ended = time.monotonic()
        drained = await self._until_acked(drain)
        after = Counter[str]()
        for agent in self.agents:
            after.update(agent.stats)
        after.subtract(before)
        self.send(
            "churned",
            {
                "started_wall": started_wall,
                "seconds": ended - started,
                "made": made,
                "generator_lag_max": lag_max,
                "acked": self.acked_changes,
                "acked_in_window": self.acked_in_window,
                "acks_by_drain": len(self.latencies),
                "unacked": sum(a.outstanding() for a in self.agents),
                "pending_max": max((len(a.sync.pending) for a in self.agents), default=0),
                "drained_s": drained,
                "counters": {k: v for k, v in after.items() if v},
            },
        )


def worker_main(conn: Connection, config: WorkerConfig) -> None:
    """A worker process (multiprocessing, spawn): run its agents until told to stop."""
    with contextlib.suppress(Exception):  # SIGTERM when the bench dies (Linux), so no agent is left behind
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it stops the workers in order
    logging.basicConfig(filename=config.log_file, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(Worker(conn, config).run())
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
        raise


# ---- the main process ----------------------------------------------------------------------


class WorkerHandle:
    """A worker process and the thread that passes its messages to the main process's event loop."""

    def __init__(self, ctx: Any, config: WorkerConfig, events: asyncio.Queue[tuple[int, tuple[Any, ...]]], loop: asyncio.AbstractEventLoop) -> None:
        self.index = config.index
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, config), name=f"swarm-worker-{config.index}", daemon=True)
        self.process.start()
        child.close()
        self.conn: Connection = parent
        self.ps = psutil.Process(self.process.pid)
        self.log = Path(config.log_file)
        self._thread = threading.Thread(target=self._pump, args=(events, loop), name=f"worker-{config.index}", daemon=True)
        self._thread.start()

    def _pump(self, events: asyncio.Queue[tuple[int, tuple[Any, ...]]], loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = ("exited",)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(events.put_nowait, (self.index, message))
            if message[0] in ("exited", "stopped", "error"):
                return

    def send(self, *message: Any) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(message)

    def stop(self, grace: float) -> None:
        """Ask it to stop (if it has not yet), then terminate, then kill."""
        if self.process.is_alive():
            self.send("stop")
            self.process.join(grace)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class Workers:
    """The worker processes, and waiting for their answers."""

    def __init__(self, handles: list[WorkerHandle], events: asyncio.Queue[tuple[int, tuple[Any, ...]]], procs: Processes) -> None:
        self.handles = handles
        self.events = events
        self.procs = procs
        self.progress: dict[int, dict[str, Any]] = {}

    def send(self, *message: Any) -> None:
        for handle in self.handles:
            handle.send(*message)

    async def expect(self, kind: str, timeout: float, *, what: str, on_progress: Callable[[], None] | None = None) -> dict[int, Any]:
        """Every worker's ``kind`` message; BenchError if a worker fails or exits, the hub dies, or after ``timeout`` s."""
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < len(self.handles):
            self.procs.check_alive("hub", "broker")
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
            try:
                async with asyncio.timeout(min(1.0, max(0.01, deadline - time.monotonic()))):
                    index, message = await self.events.get()
            except TimeoutError:
                continue
            finally:
                if on_progress:
                    on_progress()
            if message[0] == "error":
                raise BenchError(f"worker {index} failed:\n{message[1]}")
            if message[0] == "exited":
                raise BenchError(f"worker {index} exited (status {self.handles[index].process.exitcode}); its log: {self.handles[index].log}")
            if message[0] == "progress":
                self.progress[index] = message[1]
            elif message[0] == kind:
                answers[index] = message[1]
        return answers


@dataclass(frozen=True)
class Sample:
    monotonic: float
    wall: float
    phase: str
    #: RSS of each hub replica.
    hub_rss: list[int]
    #: Cumulative CPU seconds of each group ("hub": every replica's together, "machine": every core's busy time).
    cpu: dict[str, float]
    #: Cumulative CPU seconds of each hub replica.
    hub_cpu: list[float]


class Sampler(threading.Thread):
    """Every ``interval`` s: the RSS and CPU seconds of every hub replica and the cumulative CPU seconds of each group of processes.

    The hub's figures are those of every replica together (their sum), and of the largest single
    replica (``*_replica_max``); with one hub both are the same.
    """

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]], hubs: list[psutil.Process], interval: float = 0.5) -> None:
        super().__init__(name="sampler", daemon=True)
        self.groups = groups
        self.hubs = hubs
        self.interval = interval
        self.phase = "setup"
        self.samples: list[Sample] = []
        self._halt = threading.Event()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every group, and of the whole machine ("machine": every core's busy time)."""
        out = {name: sum(cpu_seconds(ps) for ps in members()) for name, members in self.groups.items()}
        times = psutil.cpu_times()
        out["machine"] = sum(times) - times.idle - getattr(times, "iowait", 0.0) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        return out

    def hub_cpu(self) -> list[float]:
        """CPU seconds so far of each hub replica."""
        return [cpu_seconds(ps) for ps in self.hubs]

    def hub_rss(self) -> list[int]:
        """RSS now of each hub replica."""
        return [rss(ps) for ps in self.hubs]

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.samples.append(Sample(time.monotonic(), time.time(), self.phase, self.hub_rss(), self.cpu(), self.hub_cpu()))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def rss_peak(self, phase: str | None = None) -> int:
        """The highest RSS of every replica together."""
        return max((sum(s.hub_rss) for s in self.samples if phase is None or s.phase == phase), default=0)

    def rss_peak_replica(self, phase: str | None = None) -> int:
        """The highest RSS of any one replica."""
        return max((max(s.hub_rss) for s in self.samples if phase is None or s.phase == phase), default=0)

    def rss_mean(self, phase: str) -> float:
        """The mean RSS of every replica together."""
        values = [sum(s.hub_rss) for s in self.samples if s.phase == phase]
        return statistics.mean(values) if values else float("nan")

    def rss_mean_replica(self, phase: str) -> float:
        """The mean RSS of the replica whose mean is highest."""
        values = [s.hub_rss for s in self.samples if s.phase == phase]
        return max(statistics.mean(column) for column in zip(*values, strict=True)) if values else float("nan")

    def hub_cpu_max(self, phase: str) -> tuple[float, float]:
        """The hub's highest CPU (fraction of a core) between two consecutive samples of ``phase``: every replica's together, and any one replica's."""
        total = single = 0.0
        for a, b in zip(self.samples, self.samples[1:], strict=False):
            if b.phase == phase and b.monotonic > a.monotonic:
                wall = b.monotonic - a.monotonic
                total = max(total, (b.cpu["hub"] - a.cpu["hub"]) / wall)
                single = max(single, *((y - x) / wall for x, y in zip(a.hub_cpu, b.hub_cpu, strict=True)))
        return total, single

    def cpu_over(self, start_wall: float, end_wall: float) -> dict[str, float]:
        """Mean CPU (fraction of a core) of every group between the first and last samples within these wall times,
        and of the busiest hub replica ("hub_replica_max")."""
        inside = [s for s in self.samples if start_wall <= s.wall <= end_wall]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        wall = b.monotonic - a.monotonic
        cpu = {g: max(0.0, b.cpu[g] - a.cpu[g]) / wall for g in b.cpu}
        cpu["others"] = max(0.0, cpu["machine"] - sum(v for g, v in cpu.items() if g != "machine"))
        cpu["hub_replica_max"] = max(max(0.0, y - x) / wall for x, y in zip(a.hub_cpu, b.hub_cpu, strict=True))
        return cpu


class Phase:
    """Wall time and CPU of every group over one phase."""

    def __init__(self, sampler: Sampler, name: str) -> None:
        self.sampler = sampler
        self.name = name
        sampler.phase = name
        self.started = time.monotonic()
        self.cpu0 = sampler.cpu()
        self.hub_cpu0 = sampler.hub_cpu()
        self.figures: dict[str, Any] = {}

    def end(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        cpu1, hub_cpu1 = self.sampler.cpu(), self.sampler.hub_cpu()
        cpu = {g: max(0.0, cpu1[g] - self.cpu0[g]) / wall for g in cpu1}
        cpu["others"] = max(0.0, cpu["machine"] - sum(v for g, v in cpu.items() if g != "machine"))
        replica_cpu = [max(0.0, y - x) / wall for x, y in zip(self.hub_cpu0, hub_cpu1, strict=True)]
        rss_end = self.sampler.hub_rss()
        cpu_max, cpu_max_replica = self.sampler.hub_cpu_max(self.name)
        self.figures = {
            "wall_s": wall,
            "cpu": cpu,
            "hub_cpu_replicas": replica_cpu,
            "hub_cpu_replica_max": max(replica_cpu),
            "hub_rss_end": sum(rss_end),
            "hub_rss_end_replica_max": max(rss_end),
            "hub_rss_peak": self.sampler.rss_peak(self.name),
            "hub_rss_peak_replica_max": self.sampler.rss_peak_replica(self.name),
            "hub_cpu_max": cpu_max,
            "hub_cpu_max_replica_max": cpu_max_replica,
        }
        return self.figures


@dataclass
class WatchLog:
    """What the one fleet-wide watch saw of the sustained phase's changes."""

    latencies: list[float] = field(default_factory=list)
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    events: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)


async def watch_fleet(session: aiohttp.ClientSession, hub: str, rv: str, watch: WatchLog) -> None:
    """Follow ``/api/v1/pods?watch=1`` from ``rv`` (resuming after a break from the last revision seen)."""
    while True:
        url = f"{hub}/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=3600&resourceVersion={rv}"
        try:
            async with session.get(url, headers=HUB_AUTH, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)) as resp:
                if resp.status != 200:
                    watch.errors.append(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                    return
                watch.opened.set()
                async for line in resp.content:
                    now = time.time()
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    kind = event.get("type", "")
                    watch.events[kind] += 1
                    obj = event.get("object") or {}
                    meta = obj.get("metadata") or {}
                    if kind == "ERROR":
                        watch.errors.append(f"ERROR event: {obj.get('message', '')}")
                        return
                    rv = meta.get("resourceVersion", rv)
                    if kind in ("ADDED", "MODIFIED"):
                        changed = (meta.get("annotations") or {}).get(CHANGED_AT, "0")
                        if changed != "0":
                            key = ((meta.get("labels") or {}).get(CLUSTER_LABEL, ""), f"{meta.get('namespace')}/{meta.get('name')}", changed)
                            if key not in watch.seen:
                                watch.seen.add(key)
                                watch.latencies.append(now - float(changed))
            watch.errors.append("the hub ended the watch")
        except (aiohttp.ClientError, ValueError) as exc:
            watch.errors.append(f"watch broke: {exc!r}")
            await asyncio.sleep(0.5)
        watch.reconnects += 1


def established(ps: psutil.Process, port: int) -> int:
    """TCP connections of ``ps`` established on its local ``port`` (the agents' own connections)."""
    try:
        return sum(1 for c in ps.net_connections(kind="tcp") if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)
    except psutil.Error:
        return -1


async def hub_metrics(session: aiohttp.ClientSession, hubs: list[str]) -> list[dict[str, float]]:
    """Every replica's ``/metrics`` (read at once)."""

    async def one(hub: str) -> dict[str, float]:
        async with session.get(f"{hub}/metrics", headers=HUB_AUTH, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            return parse_metrics(await resp.text())

    return list(await asyncio.gather(*(one(hub) for hub in hubs)))


def summed(per_replica: list[dict[str, float]]) -> dict[str, float]:
    """The replicas' metrics added up (counters and gauges alike: each replica counts its own share)."""
    total: Counter[str] = Counter()
    for m in per_replica:
        total.update(m)
    return dict(total)


def metric_delta(m0: dict[str, float], m1: dict[str, float], name: str) -> float:
    return m1.get(name, 0.0) - m0.get(name, 0.0)


def apply_figures(r0: list[dict[str, float]], r1: list[dict[str, float]], wall: float) -> dict[str, Any]:
    """The hub's own counters over a phase, every replica's together: objects and bundles applied, commit batches (if the hub
    has group commit); and the objects each replica applied."""
    m0, m1 = summed(r0), summed(r1)
    bundles = metric_delta(m0, m1, "fleetsync_bundles_applied_total")
    batches = metric_delta(m0, m1, "fleetsync_batch_seconds_count")
    apply_count = metric_delta(m0, m1, "fleetsync_apply_seconds_count")
    return {
        "objects_applied": metric_delta(m0, m1, "fleetsync_objects_applied_total"),
        "bundles_applied": bundles,
        "bundles_per_s": bundles / wall if wall else float("nan"),
        "apply_ms_mean": 1000 * metric_delta(m0, m1, "fleetsync_apply_seconds_sum") / apply_count if apply_count else None,
        "commit_batches": batches or None,
        "bundles_per_batch": metric_delta(m0, m1, "fleetsync_batch_bundles_sum") / batches if batches else None,
        "batch_ms_mean": 1000 * metric_delta(m0, m1, "fleetsync_batch_seconds_sum") / batches if batches else None,
        "conflated": metric_delta(m0, m1, "fleetsync_bundles_conflated_total"),
        "resync_requests": metric_delta(m0, m1, "fleetsync_resync_requests_total"),
        "store_errors": metric_delta(m0, m1, "fleetsync_store_errors_total"),
        "objects_applied_per_replica": [metric_delta(a, b, "fleetsync_objects_applied_total") for a, b in zip(r0, r1, strict=True)],
    }


def remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    """Run the phases, filling ``fig`` as they complete (so a failed run still reports its early figures)."""
    loop = asyncio.get_running_loop()
    factory = PodFactory(args.seed)
    db = args.db_url or f"sqlite:///{tmp / 'hub.db'}"
    fig["db"] = "postgresql" if args.db_url else "sqlite"
    fig["replicas"] = args.replicas

    # -- 0. the raw store rate, in this process, before anything else runs -------------------
    raw_url = args.raw_db_url or f"sqlite:///{tmp / 'raw.db'}"
    print(f"raw store rate: {args.raw_objects:,} Pods in bundles of {args.raw_bundle} into a fresh {fig['db']} store ...", flush=True)
    fig["raw"] = raw = await raw_store_rate(raw_url, factory, args.raw_objects, args.raw_bundle)
    print(
        f"  insert {raw['insert_per_s']:,.0f} objects/s, update {raw['update_per_s']:,.0f} objects/s "
        f"(bodies {raw['json_bytes_mean']:,.0f} B JSON, {raw['lz4_bytes_mean']:,.0f} B lz4)",
        flush=True,
    )
    if not args.db_url:
        remove_sqlite(tmp / "raw.db")

    # -- tokens, straight into the hub's store -----------------------------------------------
    clusters = [(n, f"c{n:04d}") for n in range(1, args.clusters + 1)]
    tokens = {name: new_token() for _, name in clusters}
    started = time.monotonic()
    store = open_store(db)
    await store.open()
    try:
        for name, token in tokens.items():
            await store.add_token(name=name, role="agent", token_hash=hash_token(token))
    finally:
        await store.close()
    fig["tokens_s"] = time.monotonic() - started
    print(f"{len(tokens):,} agent tokens written to the store in {fig['tokens_s']:.1f} s", flush=True)

    # -- broker and hub replicas -------------------------------------------------------------
    ports = [(free_port(), free_port()) for _ in range(args.replicas)]
    hub_urls = [f"http://127.0.0.1:{http_port}" for _, http_port in ports]
    hub_url = hub_urls[0]  # the clusters API and the fleet-wide watch: the replicas share the store and the change feed
    agent_urls = [f"grpc://127.0.0.1:{grpc_port}" for grpc_port, _ in ports]
    via: list[str] = []
    if args.transport != "grpc":
        broker_url = await start_broker(args.transport, procs, tmp)
        broker_port = int(broker_url.rsplit(":", 1)[1])
        agent_urls, via = [broker_url], ["--broker", broker_url]
    hubs: list[Child] = []
    for r, (grpc_port, http_port) in enumerate(ports, 1):
        replica = ["--hub-id", f"swarm-hub-{r}"] if args.replicas > 1 else []
        hubs.append(procs.spawn_hub(db, grpc_port, http_port, *replica, *via, *args.hub_arg, name=f"hub-{r}" if args.replicas > 1 else "hub"))
    fig["hubs"] = [{"name": h.name, "http": url, "grpc": grpc} for h, url, (grpc, _) in zip(hubs, hub_urls, ports, strict=True)]
    if args.transport == "grpc":  # (process, port) where the agents' connections end
        connection_ends = [(h.ps, grpc_port) for h, (grpc_port, _) in zip(hubs, ports, strict=True)]
    else:
        connection_ends = [(procs.of("broker")[0].ps, broker_port)]

    def agent_connections() -> list[int]:
        return [established(ps, port) for ps, port in connection_ends]

    pg_ps: list[psutil.Process] = []
    if args.pg_pid:
        with contextlib.suppress(psutil.Error):
            pg_ps = [psutil.Process(args.pg_pid)]

    def postgres_group() -> list[psutil.Process]:
        out = []
        for ps in pg_ps:
            with contextlib.suppress(psutil.Error):
                out += [ps, *ps.children(recursive=True)]
        return out

    handles: list[WorkerHandle] = []
    groups: dict[str, Callable[[], list[psutil.Process]]] = {
        "hub": lambda: [h.ps for h in hubs],
        "bench_main": lambda: [psutil.Process()],
        "bench_workers": lambda: [h.ps for h in handles],
        "broker": lambda: [c.ps for c in procs.of("broker")],
        "postgres": postgres_group,
    }
    sampler = Sampler(groups, [h.ps for h in hubs])
    sampler.start()
    fig["_sampler"] = sampler

    async with aiohttp.ClientSession(read_bufsize=1 << 22) as session:
        deadline = time.monotonic() + 60
        for url in hub_urls:
            while True:
                procs.check_alive("hub", "broker")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise BenchError(f"the hub at {url} was not ready within 60 s")
                await asyncio.sleep(0.1)
        ready = sampler.hub_rss()
        fig["hub_rss_ready"], fig["hub_rss_ready_replica_max"] = sum(ready), max(ready)

        # -- the workers make their agents' objects ---------------------------------------------
        events: asyncio.Queue[tuple[int, tuple[Any, ...]]] = asyncio.Queue()
        ctx = multiprocessing.get_context("spawn")  # not fork: gRPC does not survive it
        for w in range(args.procs):  # agent k of worker w: replica (w + k) mod N
            mine = [(n, name, tokens[name], agent_urls[(w + k) % len(agent_urls)]) for k, (n, name) in enumerate(clusters[w :: args.procs])]
            config = WorkerConfig(w, mine, args.objects, args.seed, args.connect_concurrency, args.hello_timeout, str(tmp / f"worker-{w}.log"))
            handles.append(WorkerHandle(ctx, config, events, loop))
        fig["_workers"] = workers = Workers(handles, events, procs)
        print(f"{args.procs} workers making {args.clusters:,} x {args.objects:,} Pods ...", flush=True)
        prepared = await workers.expect("prepared", args.prepare_timeout, what="the workers to make their objects")
        total_objects = args.clusters * args.objects
        fig["prepare"] = {
            "seconds": max(p["seconds"] for p in prepared.values()),
            "json_bytes_mean": sum(p["json_bytes"] for p in prepared.values()) / max(1, total_objects),
            "lz4_bytes_mean": statistics.mean(p["lz4_bytes_sample_mean"] for p in prepared.values()),
        }
        print(
            f"  made in {fig['prepare']['seconds']:.1f} s: {fig['prepare']['json_bytes_mean']:,.0f} B JSON, "
            f"{fig['prepare']['lz4_bytes_mean']:,.0f} B lz4 per Pod",
            flush=True,
        )

        # -- 1. initial sync -----------------------------------------------------------------
        m0 = await hub_metrics(session, hub_urls)
        phase = Phase(sampler, "sync")
        t0 = time.time()
        workers.send("sync")
        last_print = time.monotonic()

        def sync_progress() -> None:
            nonlocal last_print
            if time.monotonic() - last_print >= 5:
                last_print = time.monotonic()
                synced = sum(p.get("synced", 0) for p in workers.progress.values())
                welcomed = sum(p.get("welcomed", 0) for p in workers.progress.values())
                print(
                    f"  {time.time() - t0:5.0f} s: {welcomed:,} welcomed, {synced:,} of {args.clusters:,} FULLs acked; hub RSS {mib(sum(sampler.hub_rss()))}",
                    flush=True,
                )

        print(
            f"initial sync: {args.clusters:,} agents connecting, each with a FULL of {args.objects:,} Pods (timeout {args.sync_timeout:.0f} s) ...", flush=True
        )
        try:
            synced = await workers.expect("synced", args.sync_timeout, what="every agent's FULL to be acked", on_progress=sync_progress)
        except BenchError:
            fig["sync"] = {"failed": True, "progress": dict(workers.progress), **phase.end()}
            raise
        times = sorted(t - t0 for s in synced.values() for t in s["synced_at"])
        welcomes = sorted(t - t0 for s in synced.values() for t in s["welcomed_at"])
        sync_s = times[-1]
        phase.end()
        m1 = await hub_metrics(session, hub_urls)
        fig["sync"] = sync = {
            "seconds": sync_s,
            "objects": total_objects,
            "objects_per_s": total_objects / sync_s,
            "ratio_to_raw_insert": total_objects / sync_s / raw["insert_per_s"],
            "all_welcomed_s": welcomes[-1],
            "welcome_p50_s": percentile(welcomes, 0.5),
            "cluster_done_p50_s": percentile(times, 0.5),
            "cluster_done_p99_s": percentile(times, 0.99),
            "cluster_done_first_s": times[0],
            "hub": apply_figures(m0, m1, sync_s),
            **phase.figures,
        }
        sync["agent_connections_per_replica"] = agent_connections()
        sync["agent_connections"] = sum(sync["agent_connections_per_replica"])
        items = (await get_json(session, f"{hub_url}/api/v1/clusters", headers=HUB_AUTH, timeout=300))["items"]
        held = {c["name"]: c["objects"].get(POD.gvk, 0) for c in items}
        short = {name: held.get(name, 0) for _, name in clusters if held.get(name, 0) != args.objects}
        sync["hub_objects"] = sum(held.values())
        print(
            f"  synced in {sync_s:.1f} s: {sync['objects_per_s']:,.0f} objects/s ({sync['ratio_to_raw_insert']:.3f} x raw insert); "
            f"all welcomed after {welcomes[-1]:.1f} s; {sync['agent_connections']} agent connections; hub RSS peak {mib(sync['hub_rss_peak'])}",
            flush=True,
        )
        if short:
            raise BenchError(f"after the sync the hub does not hold {args.objects} Pods for {len(short)} clusters: {dict(list(short.items())[:10])}")

        # -- 2. sustained changes ------------------------------------------------------------
        first = await get_json(session, f"{hub_url}/api/v1/pods?limit=1", headers=HUB_AUTH, timeout=120)
        watch = WatchLog()
        watcher = asyncio.create_task(watch_fleet(session, hub_url, first["metadata"]["resourceVersion"], watch), name="watch")
        try:
            async with asyncio.timeout(30):
                await watch.opened.wait()
        except TimeoutError:
            raise BenchError(f"the fleet-wide watch did not open within 30 s: {watch.errors}") from None
        rate = args.rate if args.rate is not None else 2.0 * args.clusters
        print(f"sustained: {rate:,.0f} changes/s for {args.duration:.0f} s (then a drain of up to {args.drain:.0f} s) ...", flush=True)
        m0 = await hub_metrics(session, hub_urls)
        phase = Phase(sampler, "churn")
        for handle in handles:
            handle.send("churn", rate * len(clusters[handle.index :: args.procs]) / len(clusters), args.duration, args.drain)
        churned = await workers.expect("churned", args.duration + args.drain + 120, what="the sustained phase")
        made = sum(c["made"] for c in churned.values())
        expected = made - sum(c["counters"].get("superseded", 0) for c in churned.values())
        unacked = sum(c["unacked"] for c in churned.values())
        if unacked:
            print(
                f"  {unacked:,} changes unacked after the drain; waiting up to {args.settle_timeout:.0f} s until the hub has acked every change ...", flush=True
            )
        workers.send("settle", args.settle_timeout)
        settled = await workers.expect("settled", args.settle_timeout + 60, what="the agents to have nothing unacked")
        wait_until = time.monotonic() + args.visibility_wait
        while time.monotonic() < wait_until:
            if len(watch.seen) >= expected or watcher.done():
                break
            await asyncio.sleep(0.1)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        phase.end()
        m1 = await hub_metrics(session, hub_urls)
        window = statistics.mean(c["seconds"] for c in churned.values())
        latencies = [x for c in settled.values() for x in c["latencies"]]
        acked_in_window = sum(c["acked_in_window"] for c in churned.values())
        counters: Counter[str] = Counter()
        for c in churned.values():
            counters.update(c["counters"])
        fig["churn"] = churn = {
            "rate": rate,
            "seconds": window,
            "made": made,
            "offered_per_s": made / window,
            "generator_lag_max_s": max(c["generator_lag_max"] for c in churned.values()),
            "deltas_sent": counters.get("sent_delta", 0),
            "changes_in_deltas": counters.get("delta_objects", 0),
            "superseded": counters.get("superseded", 0),
            "expected_visible": expected,
            "achieved_per_s": acked_in_window / window,
            "ratio_to_raw_update": acked_in_window / window / raw["update_per_s"],
            "acked_in_window": acked_in_window,
            "acked_after_drain": sum(c["acked"] for c in churned.values()),
            "unacked_after_drain": unacked,
            "settled_after_s": max(x["seconds"] for x in settled.values()),
            "unacked_after_settle": sum(x["unacked"] for x in settled.values()),
            "drain_s": max(c["drained_s"] for c in churned.values()),
            "pending_max": max(c["pending_max"] for c in churned.values()),
            "ack_p50_s": percentile(latencies, 0.5),
            "ack_p99_s": percentile(latencies, 0.99),
            "ack_max_s": max(latencies, default=float("nan")),
            "acks": len(latencies),
            "acks_by_drain": sum(c["acks_by_drain"] for c in churned.values()),
            "visible": len(watch.seen),
            "visible_p50_s": percentile(watch.latencies, 0.5),
            "visible_p99_s": percentile(watch.latencies, 0.99),
            "visible_max_s": max(watch.latencies, default=float("nan")),
            "watch_events": dict(watch.events),
            "watch_errors": watch.errors[:10],
            "watch_reconnects": watch.reconnects,
            "agent_counters": dict(counters),
            "hub": apply_figures(m0, m1, phase.figures["wall_s"]),
            "window_cpu": sampler.cpu_over(min(c["started_wall"] for c in churned.values()), max(c["started_wall"] + c["seconds"] for c in churned.values())),
            **phase.figures,
        }
        print(
            f"  achieved {churn['achieved_per_s']:,.0f} changes/s of {churn['offered_per_s']:,.0f} offered ({churn['ratio_to_raw_update']:.3f} x raw update); "
            f"ack p50 {ms(churn['ack_p50_s'])} p99 {ms(churn['ack_p99_s'])}; visible p50 {ms(churn['visible_p50_s'])} p99 {ms(churn['visible_p99_s'])}; "
            f"{churn['unacked_after_drain']} unacked after the drain",
            flush=True,
        )

        # -- 3. idle -------------------------------------------------------------------------
        m0 = await hub_metrics(session, hub_urls)
        print(f"idle: {args.idle:.0f} s of heartbeats only ...", flush=True)
        phase = Phase(sampler, "idle")
        end = time.monotonic() + args.idle
        while time.monotonic() < end:
            procs.check_alive("hub", "broker")
            await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
        phase.end()
        m1 = await hub_metrics(session, hub_urls)
        fig["idle"] = idle = {
            **phase.figures,
            "hub_rss_mean": sampler.rss_mean("idle"),
            "hub_rss_mean_replica_max": sampler.rss_mean_replica("idle"),
            "hub": apply_figures(m0, m1, phase.figures["wall_s"]),
        }
        idle["agent_connections_per_replica"] = agent_connections()
        idle["agent_connections"] = sum(idle["agent_connections_per_replica"])
        print(f"  hub CPU {core(idle['cpu']['hub'])}, RSS {mib(idle['hub_rss_mean'])}", flush=True)

        # -- the end -------------------------------------------------------------------------
        fig["loadavg_end"] = os.getloadavg()
        hwm = [vm_hwm(h.pid) for h in hubs]
        fig["hub_vmhwm"] = None if None in hwm else sum(x or 0 for x in hwm)
        fig["hub_vmhwm_replica_max"] = None if None in hwm else max(x or 0 for x in hwm)
        fig["hub_rss_peak"] = sampler.rss_peak()
        fig["hub_rss_peak_replica_max"] = sampler.rss_peak_replica()
        final = summed(await hub_metrics(session, hub_urls))
        fig["hub_counters"] = {
            k: v
            for k, v in final.items()
            if not k.endswith("_created")
            and k.startswith(
                (
                    "fleetsync_resync",
                    "fleetsync_digests",
                    "fleetsync_agents_rejected",
                    "fleetsync_messages_refused",
                    "fleetsync_connected",
                    "fleetsync_inactive",
                    "fleetsync_store_errors",
                    "fleetsync_bundles_conflated",
                    "fleetsync_inbox_budget",
                )
            )
        }
        workers.send("stop")
        stopped = await workers.expect("stopped", 120, what="the workers to stop")
        totals: Counter[str] = Counter()
        for s in stopped.values():
            totals.update(s["counters"])
        fig["agents"] = dict(totals)


# ---- the report ----------------------------------------------------------------------------


def report(fig: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((f"-- {title}", ""))

    def row(name: str, value: str) -> None:
        rows.append((name, value))

    cfg, m = fig["config"], fig["machine"]
    replicas = int(fig.get("replicas", cfg.get("replicas", 1)))

    def each(text: str) -> str:
        """``text`` (a figure of the busiest single replica) as a suffix, with several replicas only."""
        return f"  (per replica at most {text})" if replicas > 1 else ""

    def connections(p: dict[str, Any]) -> str:
        per = p.get("agent_connections_per_replica", [])
        return f"{p['agent_connections']}" + (f"  (per replica {' / '.join(str(n) for n in per)})" if replicas > 1 and len(per) > 1 else "")

    load_end = f", at the end {fig['loadavg_end'][0]:.2f}" if "loadavg_end" in fig else ""
    row(
        "machine",
        f"{m['nproc']} cores ({m['cpu_model']}), {m['memory'] / 2**30:.0f} GiB, Python {m['python']}, load at start {m['loadavg_start'][0]:.2f}{load_end}",
    )
    row(
        "setup",
        f"{cfg['clusters']:,} clusters x {cfg['objects']:,} Pods, {cfg['procs']} worker processes, {cfg['transport']}, {hubs_on(replicas, fig.get('db', cfg['db']))}",
    )
    if raw := fig.get("raw"):
        section("0. raw store rate (same Pods, straight to a fresh store, this process)")
        row("insert", f"{raw['insert_per_s']:,.0f} objects/s ({raw['objects']:,} in bundles of {raw['bundle']})")
        row("update", f"{raw['update_per_s']:,.0f} objects/s")
        row("Pod body", f"{raw['json_bytes_mean']:,.0f} B JSON, {raw['lz4_bytes_mean']:,.0f} B lz4")
    if p := fig.get("prepare"):
        row("objects made (workers, before the clock)", f"{p['seconds']:.1f} s")
    if "tokens_s" in fig:
        row("agent tokens written", f"{fig['tokens_s']:.1f} s")
    if (s := fig.get("sync")) and not s.get("failed"):
        section("1. initial sync")
        row("every FULL acked after", f"{s['seconds']:.1f} s  ({s['objects']:,} objects)")
        row("objects/s", f"{s['objects_per_s']:,.0f}  = {s['ratio_to_raw_insert']:.3f} x raw insert")
        row("every agent welcomed after", f"{s['all_welcomed_s']:.1f} s (p50 {s['welcome_p50_s']:.1f} s)")
        row("cluster done: first / p50 / p99", f"{s['cluster_done_first_s']:.1f} / {s['cluster_done_p50_s']:.1f} / {s['cluster_done_p99_s']:.1f} s")
        row("agent connections (established)", connections(s))
        row("hub objects (clusters API)", f"{s['hub_objects']:,}")
        _resources(row, s, each)
        _hub_apply(row, s["hub"], replicas)
    elif s:
        section("1. initial sync: FAILED")
        row("progress", str(s.get("progress")))
    if c := fig.get("churn"):
        section("2. sustained changes")
        row("offered", f"{c['offered_per_s']:,.0f} changes/s ({c['made']:,} in {c['seconds']:.1f} s; generator lag max {c['generator_lag_max_s']:.2f} s)")
        row("achieved (acked within the window)", f"{c['achieved_per_s']:,.0f} changes/s  = {c['ratio_to_raw_update']:.3f} x raw update")
        row(
            "sent",
            f"{c['changes_in_deltas']:,} changes in {c['deltas_sent']:,} DELTAs; {c['superseded']:,} superseded before sending; pending max per cluster {c['pending_max']}",
        )
        row("acked after the drain", f"{c['acked_after_drain']:,} (drain {c['drain_s']:.1f} s); unacked: {c['unacked_after_drain']:,}")
        if "settled_after_s" in c:
            row("every change acked after", f"{c['settled_after_s']:.1f} s more (unacked then: {c['unacked_after_settle']:,})")
        row(
            "ack latency p50 / p99 / max",
            f"{ms(c['ack_p50_s'])} / {ms(c['ack_p99_s'])} / {ms(c['ack_max_s'])}  ({c['acks']:,} DELTAs; {c['acks_by_drain']:,} of them acked by the end of the drain)",
        )
        row(
            "visible in the watch",
            f"{c['visible']:,} of {c['expected_visible']:,} changes sent; the hub applied {c['hub']['objects_applied']:,.0f} "
            "(a change merged with a later one of the same Pod in the hub's inbox has no event of its own)",
        )
        row("visibility latency p50 / p99 / max", f"{ms(c['visible_p50_s'])} / {ms(c['visible_p99_s'])} / {ms(c['visible_max_s'])}")
        if c["watch_errors"]:
            row("watch errors", "; ".join(c["watch_errors"]))
        if w := c.get("window_cpu"):
            row(
                "CPU within the window: hub / bench / others",
                f"{core(w['hub'])} / {core(w['bench_main'] + w['bench_workers'])} (main + workers) / {core(w['others'])}"
                + each(f"{core(w.get('hub_replica_max', w['hub']))} hub"),
            )
        _resources(row, c, each)
        _hub_apply(row, c["hub"], replicas)
    if i := fig.get("idle"):
        section("3. idle (heartbeats only)")
        row(
            "hub CPU",
            f"{core(i['cpu']['hub'])} over {i['wall_s']:.0f} s (max {core(i['hub_cpu_max'])} in 0.5 s)"
            + each(f"{core(i.get('hub_cpu_replica_max', 0.0))}, max {core(i.get('hub_cpu_max_replica_max', 0.0))} in 0.5 s"),
        )
        row("hub RSS mean (steady)", mib(i["hub_rss_mean"]) + each(mib(i.get("hub_rss_mean_replica_max"))))
        row("bench CPU (main / workers)", f"{core(i['cpu']['bench_main'])} / {core(i['cpu']['bench_workers'])}")
        row("other processes' CPU (not the bench's)", core(i["cpu"].get("others", 0.0)))
        row("agent connections (established)", connections(i))
        row("hub: bundles / resyncs asked", f"{i['hub']['bundles_applied']:,.0f} / {i['hub']['resync_requests']:,.0f}")
    if "hub_rss_peak" in fig:
        section("hub memory" + (f" (every one of the {replicas} replicas together)" if replicas > 1 else ""))
        row(
            "RSS peak (sampled) / VmHWM",
            f"{mib(fig['hub_rss_peak'])} / {mib(fig.get('hub_vmhwm'))}"
            + each(f"{mib(fig.get('hub_rss_peak_replica_max'))} / {mib(fig.get('hub_vmhwm_replica_max'))}"),
        )
        row("RSS when ready (no agents)", mib(fig.get("hub_rss_ready")) + each(mib(fig.get("hub_rss_ready_replica_max"))))
    if a := fig.get("agents"):
        section("what the agents saw")
        keys = ("welcomed", "disconnected", "connect_failed", "hello_timeout", "session_failed", "sent_heartbeat", "received_heartbeat")
        row("connections", ", ".join(f"{k} {a.get(k, 0):,}" for k in keys))
        others = {
            k: v
            for k, v in a.items()
            if k.startswith(("rejected_", "resync_", "diff_send_full", "sent_digest", "sent_repair", "sent_resume", "type_refused", "repair_objects"))
        }
        row("resyncs, digests, repairs, rejects", ", ".join(f"{k} {v:,}" for k, v in sorted(others.items())) or "none")
        row(
            "keys in digest diffs: pending / diverged",
            f"{a.get('diff_keys_pending', 0):,} (changes not sent yet when the digest was made) / {a.get('diff_keys_diverged', 0):,} (the hub held something else)",
        )
        row("FULL chunks sent; messages resent (unacked 15 s)", f"{a.get('sent_full', 0):,}; {a.get('sent_resend', 0):,}")
        row("spec updates received (gates, works)", f"{a.get('received_spec_update', 0):,}")
    if hc := fig.get("hub_counters"):
        row("hub counters at the end", ", ".join(f"{k.removeprefix('fleetsync_')} {v:,.0f}" for k, v in sorted(hc.items())))
    width = max((len(name) for name, value in rows if value), default=20) + 2
    lines = ["", "=" * 110, "fleetsync swarm: summary", "=" * 110]
    lines += [name if not value else f"{name.ljust(width)}{value}" for name, value in rows]
    lines.append("=" * 110)
    return "\n".join(lines)


def _resources(row: Callable[[str, str], None], p: dict[str, Any], each: Callable[[str], str]) -> None:
    cpu = p["cpu"]
    row(
        "hub CPU mean / max",
        f"{core(cpu['hub'])} / {core(p['hub_cpu_max'])}" + each(f"{core(p.get('hub_cpu_replica_max', 0.0))} / {core(p.get('hub_cpu_max_replica_max', 0.0))}"),
    )
    row(
        "hub RSS peak / at the end",
        f"{mib(p['hub_rss_peak'])} / {mib(p['hub_rss_end'])}" + each(f"{mib(p.get('hub_rss_peak_replica_max'))} / {mib(p.get('hub_rss_end_replica_max'))}"),
    )
    row("bench CPU (main / workers)", f"{core(cpu['bench_main'])} / {core(cpu['bench_workers'])}")
    if cpu.get("broker") or cpu.get("postgres"):
        row("broker / postgres CPU", f"{core(cpu.get('broker', 0.0))} / {core(cpu.get('postgres', 0.0))}")
    row("other processes' CPU (not the bench's)", core(cpu.get("others", 0.0)))


def _hub_apply(row: Callable[[str, str], None], h: dict[str, Any], replicas: int) -> None:
    text = f"{h['objects_applied']:,.0f} objects in {h['bundles_applied']:,.0f} bundles ({h['bundles_per_s']:,.0f}/s)"
    if replicas > 1 and (per := h.get("objects_applied_per_replica")):
        text += f" (per replica {' / '.join(f'{n:,.0f}' for n in per)})"
    if h["apply_ms_mean"] is not None:
        text += f", {h['apply_ms_mean']:.1f} ms/bundle"
    if h["commit_batches"]:
        text += f"; {h['commit_batches']:,.0f} commits of {h['bundles_per_batch']:.1f} bundles, {h['batch_ms_mean']:.1f} ms each"
    text += f"; conflated {h['conflated']:,.0f}, resyncs asked {h['resync_requests']:,.0f}"
    if h["store_errors"]:
        text += f", store errors {h['store_errors']:,.0f}"
    row("hub applied", text)


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clusters", type=int, default=1000, help="agents, one cluster each")
    p.add_argument("--objects", type=int, default=1000, help="Pods per cluster")
    p.add_argument("--procs", type=int, default=2, help="worker processes the agents are spread over")
    p.add_argument(
        "--transport", choices=("grpc", "mqtt", "nats"), default="grpc", help="how the agents reach the hub (mqtt/nats: a broker of the bench's own)"
    )
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite", help="the hub's store: SQLite, or a PostgreSQL server the bench starts")
    p.add_argument("--replicas", type=int, default=1, help="hub replicas on the one database (more than 1 only with --db postgres)")
    p.add_argument("--rate", type=float, default=None, help="changes/s fleet-wide in the sustained phase (default: 2 per cluster)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of sustained changes")
    p.add_argument("--drain", type=float, default=10.0, help="seconds allowed after the sustained phase for the last acks")
    p.add_argument("--visibility-wait", type=float, default=10.0, help="seconds allowed after the drain for the watch to show the last changes")
    p.add_argument("--idle", type=float, default=20.0, help="seconds of the idle phase (heartbeats only)")
    p.add_argument("--settle-timeout", type=float, default=300.0, help="seconds allowed before the idle phase for the hub to ack every change")
    p.add_argument("--raw-objects", type=int, default=20_000, help="Pods of the raw store rate measurement")
    p.add_argument("--raw-bundle", type=int, default=1000, help="Pods per transaction of the raw store rate measurement")
    p.add_argument("--connect-concurrency", type=int, default=100, help="handshakes (connect, Hello, Welcome) at a time per worker")
    p.add_argument("--hello-timeout", type=float, default=30.0, help="seconds an agent waits for Welcome (the real agent's)")
    p.add_argument("--prepare-timeout", type=float, default=900.0, help="seconds allowed for the workers to make their objects")
    p.add_argument("--sync-timeout", type=float, default=900.0, help="seconds allowed for the initial sync")
    p.add_argument("--hub-arg", action="append", default=[], help="extra argument for fleetsync hub (repeatable, e.g. --hub-arg=--digest-interval=0)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stop-grace", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL when stopping the processes")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync executable")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--keep-logs", type=Path, help="copy the processes' logs to this directory")
    args = p.parse_args(argv)
    if args.clusters < 1 or args.objects < 1 or args.procs < 1 or args.duration <= 0 or args.idle < 0 or args.raw_objects < 1:
        p.error("need --clusters >= 1, --objects >= 1, --procs >= 1, --duration > 0, --idle >= 0, --raw-objects >= 1")
    if args.replicas < 1:
        p.error("need --replicas >= 1")
    if args.replicas > 1 and args.db != "postgres":
        p.error(f"--replicas {args.replicas} needs --db postgres: hub replicas share one PostgreSQL database (docs/scale-out.md); SQLite serves one hub")
    args.procs = min(args.procs, args.clusters)
    return args


def hubs_on(replicas: int, db: str) -> str:
    return f"{replicas} hub replicas on {db}" if replicas > 1 else f"1 hub on {db}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = bench_start("swarm", args)
    if started is None:
        return 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # a socket per agent: the hub (a child) inherits this
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fig: dict[str, Any] = started
    m = fig["machine"]
    print(f"machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory'] / 2**30:.0f} GiB, Python {m['python']}, fleetsync {m['fleetsync']}", flush=True)
    status = 0
    with tempfile.TemporaryDirectory(prefix="fleetsync-swarm-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(args.fleetsync, tmp)
        print(f"swarm: {args.clusters:,} clusters x {args.objects:,} Pods over {args.transport}, {hubs_on(args.replicas, args.db)}; work dir {tmp}", flush=True)
        database = contextlib.ExitStack()  # outlives the processes: the hub stops before its store
        try:
            args.db_url = args.raw_db_url = ""
            args.pg_pid = 0
            if args.db == "postgres":  # a server of the bench's own, with PostgreSQL's durable defaults
                pg = database.enter_context(PostgresServer(settings={}, max_connections=300))
                args.db_url = pg.create_database("fleetsync")
                args.raw_db_url = pg.create_database("raw")
                args.pg_pid = pg.process.pid if pg.process else 0
                print(f"hub store: PostgreSQL on port {pg.port} (fsync on)", flush=True)
            asyncio.run(bench(args, procs, tmp, fig))
        except BenchError as exc:
            status = 1
            print(f"\nswarm: FAILED: {exc}", file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
            print("\nswarm: interrupted; stopping the processes", file=sys.stderr)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            workers: Workers | None = fig.pop("_workers", None)
            for handle in workers.handles if workers else []:
                handle.stop(args.stop_grace)
            procs.stop_all(args.stop_grace)
            database.close()
            sampler: Sampler | None = fig.pop("_sampler", None)
            if sampler is not None:
                sampler.stop()
            fig["stops"] = {c.name: c.stopped for c in procs.children}
            logs = [c.log for c in procs.children] + ([h.log for h in workers.handles] if workers else [])
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for path in logs:
                    with contextlib.suppress(OSError):
                        shutil.copy(path, args.keep_logs / path.name)
            if status == 1:
                for path in logs:
                    print(f"--- {path.name} (last 30 lines) ---\n{tail(path)}", file=sys.stderr)
    print(report(fig), flush=True)
    if args.json:
        args.json.write_text(orjson.dumps(fig, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
    return status


if __name__ == "__main__":
    sys.exit(main())
