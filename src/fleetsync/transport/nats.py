"""NATS JetStream transport (nats-py): the protocol's messages through two persistent streams.

::

    stream FLEETSYNC_UP    subjects fleetsync.v1.up.{cluster}     interest: a message is gone
                                                                  once every hub replica acked it
    stream FLEETSYNC_DOWN  subjects fleetsync.v1.down.{cluster}   kept for an hour

Each hub replica reads FLEETSYNC_UP through a durable pull consumer of its own
(``fleetsync-hub-{hub id}-...``): every replica sees every agent's events and the one
holding the cluster's broker lock answers (:mod:`fleetsync.transport.broker`). A
replica gone for an hour loses its consumer (``inactive_threshold``), so it no longer
holds messages back. Each agent reads its cluster's down subject through a durable pull
consumer of its own.
Both use explicit acks and bounded redelivery (``max_deliver``). Streams and consumers
are created idempotently: the hub creates the streams and its consumer when it starts,
each agent its own consumer (agents need no right to create streams).

A JetStream ack here means "the session has taken the message", not "committed": the
protocol's own ``Ack`` is sent only after the store committed, and the agent keeps and
resends what that ack has not covered. So a message the broker loses, redelivers or
gives up on after ``max_deliver`` attempts costs a resend, never data.

This module is the agent's connection and what both sides share (subjects, streams,
headers); the hub's listener is :mod:`fleetsync.transport.nats_hub`, so an agent loads
no hub code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api

from fleetsync.transport import cloudevents, registry
from fleetsync.transport.base import AgentConnection, ConnectOptions, HubAddress, TransportError
from fleetsync.transport.broker_agent import BrokerConnection, describe

log = logging.getLogger(__name__)

UP_STREAM = "FLEETSYNC_UP"
DOWN_STREAM = "FLEETSYNC_DOWN"
#: A hub replica's consumer is deleted after this long without the replica (seconds).
HUB_CONSUMER_INACTIVE = 3600.0
#: Deliveries of one message before JetStream gives up on it (the protocol resends what matters).
MAX_DELIVER = 5
#: Seconds JetStream waits for an ack before redelivering.
ACK_WAIT = 30.0
#: Messages fetched per pull.
FETCH_BATCH = 64
_HEADER_PREFIX = "ce-"


def stop_requested() -> bool:
    """Whether this task was asked to stop. Fetch loops check it: a cancellation that arrives as
    nats-py's fetch completes can be swallowed by ``asyncio.wait_for`` (Python 3.11), and the
    loop would fetch on forever in a task that never ends (the hub or agent then hangs at exit)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def up_subject(cluster: str) -> str:
    return f"fleetsync.v1.up.{cluster}"


def down_subject(cluster: str) -> str:
    return f"fleetsync.v1.down.{cluster}"


def cluster_of(subject: str) -> str | None:
    prefix = "fleetsync.v1.up."
    rest = subject[len(prefix) :] if subject.startswith(prefix) else ""
    return rest if rest and "." not in rest else None


def consumer_name(role: str, name: str) -> str:
    """A durable consumer name (no dots, slashes or wildcards), readable and unique."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"fleetsync-{role}-{re.sub(r'[^A-Za-z0-9_-]', '_', name)[:40]}-{digest}"


def headers(attributes: dict[str, str]) -> dict[str, str]:
    """NATS message headers carrying CloudEvents ``attributes`` (binary content mode, ``ce-`` prefixed)."""
    headers = {_HEADER_PREFIX + k: v for k, v in attributes.items()}
    headers["content-type"] = cloudevents.CONTENT_TYPE
    return headers


def attributes_of(msg: Msg) -> dict[str, str]:
    headers = msg.headers or {}
    return {k[len(_HEADER_PREFIX) :]: v for k, v in headers.items() if k.startswith(_HEADER_PREFIX)}


async def connect_nats(address: HubAddress, *, reconnect: bool, timeout: float, on_error: Callable[[Exception], None] | None = None) -> NatsClient:
    """A NATS connection; with ``reconnect``, nats-py retries (the first connection too) forever
    and reports each failure to ``on_error``."""
    options: dict[str, Any] = {"connect_timeout": timeout, "allow_reconnect": reconnect, "name": "fleetsync"}
    if reconnect:
        options.update(max_reconnect_attempts=-1, reconnect_time_wait=1)
    else:
        options.update(max_reconnect_attempts=0)
    if address.username:
        options.update(user=address.username, password=address.password or "")

    async def quiet(exc: Exception) -> None:  # nats-py logs every failed attempt itself otherwise
        log.debug("NATS %s: %s", address, exc)
        if on_error is not None:
            on_error(exc)

    try:
        return await nats.connect(f"nats://{address.host}:{address.port}", error_cb=quiet, **options)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise TransportError(f"cannot connect to NATS {address}: {describe(exc)}") from None


async def ensure_streams(nc: NatsClient) -> None:
    """Create (or bring up to date) the two streams; harmless if they exist."""
    js = nc.jetstream()
    configs = [
        api.StreamConfig(
            name=UP_STREAM,
            subjects=[up_subject("*")],
            retention=api.RetentionPolicy.INTEREST,
            storage=api.StorageType.FILE,
            max_age=24 * 3600,
        ),
        api.StreamConfig(
            name=DOWN_STREAM,
            subjects=[down_subject("*")],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=3600,
        ),
    ]
    for config in configs:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # it exists with another configuration (an older version's)
            try:
                await js.update_stream(config)
            except nats.js.errors.BadRequestError as exc:
                raise TransportError(
                    f"stream {config.name} exists with a configuration this fleetsync cannot change ({describe(exc)}); "
                    f"an older fleetsync made it: delete it (`nats stream rm {config.name}`) and the hub recreates it (agents resend what it held)"
                ) from None


class NatsAgentConnection(BrokerConnection):
    """One agent session through NATS JetStream."""

    def __init__(self, nc: NatsClient, address: HubAddress, cluster: str) -> None:
        super().__init__(address, cluster)
        self._nc = nc
        self._js = nc.jetstream()

    @classmethod
    async def open(cls, address: HubAddress, *, cluster_id: str, agent_id: str, connect_seconds: float = 10.0) -> NatsAgentConnection:
        # No reconnects inside nats-py: a broken connection is a broken session, and the
        # agent's own loop reconnects and resumes (the protocol makes that cheap).
        nc = await connect_nats(address, reconnect=False, timeout=connect_seconds)
        connection = cls(nc, address, cluster_id)
        try:
            subscription = await connection._js.pull_subscribe(
                down_subject(cluster_id),
                durable=consumer_name("agent", f"{cluster_id}/{agent_id}"),
                stream=DOWN_STREAM,
                config=api.ConsumerConfig(
                    ack_policy=api.AckPolicy.EXPLICIT,
                    deliver_policy=api.DeliverPolicy.NEW,
                    max_deliver=MAX_DELIVER,
                    ack_wait=ACK_WAIT,
                    inactive_threshold=24 * 3600,
                ),
            )
        except nats.js.errors.NotFoundError:
            await connection.close()
            raise TransportError(f"NATS {address} has no stream {DOWN_STREAM} yet: the hub creates it (fleetsync hub --broker {address})") from None
        except (nats.errors.Error, TimeoutError) as exc:
            await connection.close()
            raise TransportError(f"cannot set up JetStream on {address}: {describe(exc)}") from None
        connection._reader = asyncio.create_task(connection._read(subscription), name="nats-reader")
        return connection

    async def _read(self, subscription: Any) -> None:
        try:
            while not stop_requested():
                try:
                    batch = await subscription.fetch(FETCH_BATCH, timeout=2)
                except TimeoutError:  # nats-py raises its own and asyncio's: either way, nothing yet
                    continue
                for msg in batch:
                    await msg.ack()
                    self._received(attributes_of(msg), msg.data)
        except (nats.errors.Error, OSError) as exc:
            self._lost(TransportError(f"lost NATS {self._address}: {describe(exc)}"))

    async def _publish(self, payload: bytes, attributes: dict[str, str], *, timeout: float | None = None) -> None:
        try:
            await self._js.publish(up_subject(self._cluster), payload, timeout=timeout or 10, headers=headers(attributes))
        except (nats.errors.Error, TimeoutError) as exc:
            raise TransportError(f"publishing to NATS {self._address} failed: {describe(exc)}") from None

    async def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self._nc.close()


async def connect(address: HubAddress, options: ConnectOptions) -> AgentConnection:
    """The registry's connector for nats://."""
    return await NatsAgentConnection.open(address, cluster_id=options.cluster_id, agent_id=options.agent_id, connect_seconds=options.connect_seconds)


registry.register_connector(("nats",), connect)
