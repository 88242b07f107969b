"""The agent's end of a session through a broker: what its MQTT and NATS connections share.

A broker carries events, not connections, so the connection makes up a session id, puts
it on every event it publishes (with the rest of the CloudEvents attributes), keeps
only the hub's answers that carry it back, and says goodbye when it closes. Subclasses
supply how to publish and how to disconnect, and feed what they receive to
:meth:`BrokerConnection._received`.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod

from fleetsync.aio import cancel_and_wait
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport import cloudevents
from fleetsync.transport.base import HubAddress, TransportError

#: Seconds a goodbye may take before the connection closes without it.
GOODBYE_SECONDS = 2.0


def describe(exc: BaseException) -> str:
    """An exception for a log line; the client libraries' often have no message, so name the type too."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BrokerConnection(ABC):
    """One agent session through a broker (an :class:`~fleetsync.transport.base.AgentConnection`)."""

    #: A broker may drop or redeliver (QoS 1, JetStream redelivery): resends heal what it loses.
    lossless = False

    def __init__(self, address: HubAddress, cluster: str) -> None:
        self._address = address
        self._cluster = cluster
        self._session = uuid.uuid4().hex
        self._inbox: asyncio.Queue[pb.HubMessage | Exception] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @property
    def session(self) -> str:
        """This connection's session id (the ``fssession`` attribute of its events)."""
        return self._session

    # ---- what a broker transport supplies ----------------------------------------------------

    @abstractmethod
    async def _publish(self, payload: bytes, attributes: dict[str, str], *, timeout: float | None = None) -> None:
        """Publish one event on this cluster's up topic/subject; TransportError if that fails."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """Leave the broker (never raises)."""

    # ---- shared -------------------------------------------------------------------------------

    def _received(self, attributes: dict[str, str], payload: bytes) -> None:
        """An event from this cluster's down topic/subject."""
        if attributes.get(cloudevents.SESSION) != self._session:
            return  # an answer to an earlier session of this agent (or another agent's)
        try:
            self._inbox.put_nowait(codec.decode_hub_message(payload))
        except codec.CodecError as exc:
            self._inbox.put_nowait(TransportError(f"the hub sent an undecodable message: {exc}"))

    def _lost(self, error: TransportError) -> None:
        """The connection broke: the next :meth:`receive` raises ``error``."""
        self._inbox.put_nowait(error)

    async def send(self, message: pb.AgentMessage) -> None:
        await self._publish(codec.encode(message), cloudevents.agent_attributes(message, cluster=self._cluster, session=self._session))

    async def receive(self) -> pb.HubMessage | None:
        item = await self._inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def close(self) -> None:
        try:
            if self._reader is not None:  # say goodbye, so the hub ends the session now rather than at its inactivity timeout
                attributes = cloudevents.agent_attributes(None, cluster=self._cluster, session=self._session)
                try:
                    await self._publish(b"", attributes, timeout=GOODBYE_SECONDS)
                except TransportError:
                    pass
        finally:  # also when a shutdown interrupts the goodbye
            if self._reader is not None:
                await cancel_and_wait([self._reader])
            await self._disconnect()
