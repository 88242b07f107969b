"""NATS JetStream transport, the hub's side: serves agents through the streams (their layout: :mod:`fleetsync.transport.nats`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import api

from fleetsync.aio import cancel_and_wait
from fleetsync.hub.core import HubCore
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport import cloudevents, registry
from fleetsync.transport.base import HubAddress, TransportError
from fleetsync.transport.broker import BrokerSessions
from fleetsync.transport.broker_agent import describe
from fleetsync.transport.nats import (
    ACK_WAIT,
    FETCH_BATCH,
    HUB_CONSUMER_INACTIVE,
    MAX_DELIVER,
    UP_STREAM,
    attributes_of,
    cluster_of,
    connect_nats,
    consumer_name,
    down_subject,
    ensure_streams,
    headers,
    stop_requested,
    up_subject,
)

log = logging.getLogger(__name__)


class NatsHubServer:
    """Serves the protocol to agents through NATS JetStream (nats-py reconnects by itself)."""

    def __init__(self, core: HubCore, address: HubAddress) -> None:
        self.core = core
        self.address = address
        self.sessions = BrokerSessions(core, self._publish, transport="nats")
        self.connected = asyncio.Event()
        self._nc: NatsClient | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sessions.start()
        self.core.starting[str(self.address)] = "creating the JetStream streams and consumer"
        self._task = asyncio.create_task(self._serve_forever(), name="nats-hub")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        await self.sessions.stop()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _subscribe(self) -> Any:
        while True:
            try:
                if self._nc is None:
                    self._nc = await connect_nats(self.address, reconnect=True, timeout=10, on_error=self._starting_failed)
                await ensure_streams(self._nc)
                return await self._nc.jetstream().pull_subscribe(
                    up_subject("*"),
                    durable=consumer_name("hub", self.core.settings.hub_id),
                    stream=UP_STREAM,
                    config=api.ConsumerConfig(
                        ack_policy=api.AckPolicy.EXPLICIT,
                        max_deliver=MAX_DELIVER,
                        ack_wait=ACK_WAIT,
                        max_ack_pending=20_000,
                        inactive_threshold=HUB_CONSUMER_INACTIVE,
                    ),
                )
            except (TransportError, nats.errors.Error, TimeoutError) as exc:
                self.core.starting[str(self.address)] = f"cannot set up JetStream: {describe(exc)}"
                log.warning("NATS %s: %s; retrying in 1s", self.address, describe(exc))
                await asyncio.sleep(1)

    def _starting_failed(self, exc: Exception) -> None:
        if str(self.address) in self.core.starting:
            self.core.starting[str(self.address)] = f"cannot connect to NATS: {describe(exc)}"

    async def _serve_forever(self) -> None:
        subscription = await self._subscribe()
        self.connected.set()
        self.core.starting.pop(str(self.address), None)
        log.info("serving agents through NATS JetStream %s", self.address)
        while not stop_requested():
            try:
                batch = await subscription.fetch(FETCH_BATCH, timeout=1)
            except TimeoutError:  # nats-py raises its own and asyncio's: either way, nothing yet
                continue
            except (nats.errors.Error, OSError) as exc:  # the server is away; nats-py is reconnecting
                log.warning("NATS %s: %s; fetching again in 1s", self.address, describe(exc))
                await asyncio.sleep(1)
                continue
            for msg in batch:
                cluster = cluster_of(msg.subject)
                if cluster is None:
                    await msg.ack()
                    continue
                await self.sessions.deliver(cluster, attributes_of(msg), msg.data, done=msg.ack)

    async def _publish(self, cluster: str, session: str, message: pb.HubMessage) -> None:
        if self._nc is None:
            raise TransportError(f"not connected to NATS {self.address}")
        attributes = cloudevents.hub_attributes(message, hub_id=self.core.settings.hub_id, session=session)
        await self._nc.jetstream().publish(down_subject(cluster), codec.encode(message), timeout=10, headers=headers(attributes))


registry.register_listener(("nats",), NatsHubServer)
