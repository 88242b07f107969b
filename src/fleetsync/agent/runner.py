"""The agent's main loop: watch every type, connect to a hub (forever), and keep each stream in sync.

On every connection: Hello -> Welcome (the hub's applied position per type) -> per
type, once its first LIST is done, resume / digest / FULL as the protocol rules
decide -> deltas every ``flush_interval`` -> heartbeats. A broken connection is
retried with backoff and jitter, across the hub URLs in turn, and never given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fleetsync import __version__
from fleetsync.agent.kube import TypeWatcher, api_client
from fleetsync.agent.typesync import TypeSync
from fleetsync.backoff import Backoff
from fleetsync.model.types import ResourceType
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import Plan, Position
from fleetsync.transport.base import AgentConnection, HubAddress, TransportError
from fleetsync.transport.grpc import GrpcAgentConnection

log = logging.getLogger(__name__)


class Rejected(Exception):
    def __init__(self, reject: pb.Reject) -> None:
        super().__init__(reject.message)
        self.reject = reject


@dataclass
class AgentConfig:
    cluster_id: str
    hubs: list[HubAddress]
    token: str
    types: list[ResourceType]
    kubeconfig: str | None = None
    agent_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)
    exclude_namespaces: set[str] = field(default_factory=set)
    flush_interval: float = 0.05
    max_bundle_bytes: int = 1024 * 1024
    heartbeat_interval: float = 10.0


async def open_connection(address: HubAddress) -> AgentConnection:
    if address.scheme == "grpc":
        return await GrpcAgentConnection.open(address)
    raise TransportError(f"{address.scheme}:// is not supported yet; use grpc://")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.agent_id = config.agent_id or f"{socket.gethostname()}/{config.cluster_id}"
        self.incarnation = uuid.uuid4().hex[:16]
        self.syncs = {
            rt.gvk: TypeSync(rt, self.incarnation, max_bundle_bytes=config.max_bundle_bytes, namespaces=config.namespaces, exclude=config.exclude_namespaces)
            for rt in config.types
        }
        self._changed = asyncio.Event()
        self._welcome: dict[str, Position] | None = None
        self.connected = asyncio.Event()

    # ---- cluster side ----------------------------------------------------------------------

    async def _on_list(self, rtype: ResourceType, items: list[dict[str, Any]]) -> None:
        self.syncs[rtype.gvk].on_list(items)
        self._changed.set()

    async def _on_event(self, rtype: ResourceType, kind: str, obj: dict[str, Any]) -> None:
        self.syncs[rtype.gvk].on_event(kind, obj)
        self._changed.set()

    async def _on_error(self, rtype: ResourceType, error: str) -> None:
        self.syncs[rtype.gvk].error = error
        self._changed.set()

    # ---- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        api = await api_client(self.config.kubeconfig)
        watchers = [
            asyncio.create_task(TypeWatcher(api, rt, on_list=self._on_list, on_event=self._on_event, on_error=self._on_error).run(), name=f"watch-{rt.gvk}")
            for rt in self.config.types
        ]
        try:
            await self._connect_forever()
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await api.close()

    async def _connect_forever(self) -> None:
        backoff = Backoff(initial=0.2, maximum=30)
        attempt = 0
        while True:
            address = self.config.hubs[attempt % len(self.config.hubs)]
            attempt += 1
            try:
                connection = await open_connection(address)
            except TransportError as exc:
                delay = backoff.next_delay()
                log.warning("cannot reach hub %s: %s; retrying in %.1fs", address, exc, delay)
                await asyncio.sleep(delay)
                continue
            try:
                await self._session(connection, address, backoff)
            except Rejected as exc:
                reason = pb.RejectReason.Name(exc.reject.reason)  # type: ignore[arg-type]
                delay = max(exc.reject.retry_after_ms / 1000, backoff.next_delay())
                log.error("hub %s rejected cluster %s (%s): %s; retrying in %.1fs", address, self.config.cluster_id, reason, exc.reject.message, delay)
                await asyncio.sleep(delay)
            except TransportError as exc:
                delay = backoff.next_delay()
                log.warning("connection to hub %s lost: %s; reconnecting in %.1fs", address, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                await connection.close()

    async def _session(self, connection: AgentConnection, address: HubAddress, backoff: Backoff) -> None:
        hello = pb.Hello(
            cluster_id=self.config.cluster_id,
            agent_id=self.agent_id,
            incarnation=self.incarnation,
            token=self.config.token,
            metadata={"agent_version": __version__, **self.config.metadata},
            capabilities=["digest", "lz4"],
            resumable=[
                pb.StreamPosition(type=t, incarnation=s.stream.incarnation, seq=min(s.stream.held, default=s.stream.seq)) for t, s in self.syncs.items()
            ],
            protocol_version=1,
        )
        await connection.send(pb.AgentMessage(hello=hello))
        first = await connection.receive()
        if first is None:
            raise TransportError("the hub closed the connection before answering Hello")
        if first.WhichOneof("message") == "reject":
            raise Rejected(first.reject)
        if first.WhichOneof("message") != "welcome":
            raise TransportError(f"expected Welcome, got {first.WhichOneof('message')}")
        welcome = first.welcome
        self._welcome = {p.type: Position(p.incarnation, p.seq) for p in welcome.applied}
        for sync in self.syncs.values():
            sync.planned = False
            sync.error_reported = ""
        heartbeat = welcome.heartbeat_interval_ms / 1000 or self.config.heartbeat_interval
        log.info("connected to hub %s (%s) as agent %s, incarnation %s", address, welcome.hub_id, self.agent_id, self.incarnation)
        backoff.reset()
        self.connected.set()
        sender = asyncio.create_task(self._send_loop(connection, heartbeat))
        try:
            while True:
                receive = asyncio.ensure_future(connection.receive())
                done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:
                    receive.cancel()
                    sender.result()  # raises the sender's TransportError
                    return
                message = receive.result()
                if message is None:
                    raise TransportError("the hub closed the connection")
                await self._on_hub_message(connection, message)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, TransportError):
                await sender

    async def _on_hub_message(self, connection: AgentConnection, message: pb.HubMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "ack":
            sync = self.syncs.get(message.ack.type)
            if sync:
                sync.stream.on_ack(message.ack.incarnation, message.ack.seq)
                self._changed.set()
        elif kind == "resync":
            targets = [self.syncs[message.resync.type]] if message.resync.type in self.syncs else list(self.syncs.values())
            for sync in targets:
                if sync.listed and sync.stream.awaiting_digest is None:
                    log.info("hub asks to resync %s (%s): sending a digest", sync.type, message.resync.reason)
                    await connection.send(pb.AgentMessage(digest=sync.digest()))
        elif kind == "digest_diff":
            sync = self.syncs.get(message.digest_diff.type)
            if sync:
                for bundle in sync.repair(message.digest_diff):
                    await connection.send(pb.AgentMessage(bundle=bundle))
        elif kind == "reject":
            raise Rejected(message.reject)

    async def _send_loop(self, connection: AgentConnection, heartbeat: float) -> None:
        next_heartbeat = time.monotonic() + heartbeat
        while True:
            for sync in self.syncs.values():
                if sync.listed and not sync.planned:
                    await self._plan(connection, sync)
                if sync.error and (report := sync.error_report()):
                    await connection.send(pb.AgentMessage(bundle=report))
                for bundle in sync.deltas():
                    await connection.send(pb.AgentMessage(bundle=bundle))
            if time.monotonic() >= next_heartbeat:
                await connection.send(pb.AgentMessage(heartbeat=pb.Heartbeat(sent_at_ms=int(time.time() * 1000))))
                next_heartbeat = time.monotonic() + heartbeat
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(1.0, max(0.0, next_heartbeat - time.monotonic())))
            await asyncio.sleep(self.config.flush_interval)  # the batching window

    async def _plan(self, connection: AgentConnection, sync: TypeSync) -> None:
        sync.planned = True
        plan, resend = sync.stream.plan((self._welcome or {}).get(sync.type))
        if plan is Plan.RESUME:
            log.debug("%s: resuming with %d held bundles", sync.type, len(resend))
            for _, _, bundle in resend:
                await connection.send(pb.AgentMessage(bundle=bundle))  # type: ignore[arg-type]
        elif plan is Plan.DIGEST:
            await connection.send(pb.AgentMessage(digest=sync.digest()))
        else:
            for bundle in sync.full():
                await connection.send(pb.AgentMessage(bundle=bundle))
