"""MQTT transport, the hub's side: serves agents through an MQTT broker (topics and envelope: :mod:`fleetsync.transport.mqtt`)."""

from __future__ import annotations

import asyncio
import logging

import aiomqtt

from fleetsync.aio import cancel_and_wait
from fleetsync.backoff import Backoff
from fleetsync.hub.core import HubCore
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport import cloudevents, registry
from fleetsync.transport.base import HubAddress, TransportError
from fleetsync.transport.broker import BrokerSessions
from fleetsync.transport.broker_agent import describe
from fleetsync.transport.mqtt import UP_ALL, attributes_of, broker_client, client_id, cluster_of, down_topic, properties

log = logging.getLogger(__name__)


class MqttHubServer:
    """Serves the protocol to agents through an MQTT broker, reconnecting to it forever."""

    def __init__(self, core: HubCore, address: HubAddress) -> None:
        self.core = core
        self.address = address
        self.sessions = BrokerSessions(core, self._publish, transport="mqtt")
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sessions.start()
        self.core.starting[str(self.address)] = "connecting to the MQTT broker"
        self._task = asyncio.create_task(self._serve_forever(), name="mqtt-hub")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
        await self.sessions.stop()

    async def _serve_forever(self) -> None:
        backoff = Backoff(initial=0.2, maximum=5)
        identifier = client_id("hub", self.core.settings.hub_id)
        while True:
            try:
                async with broker_client(self.address, identifier, timeout=10) as client:
                    await client.subscribe(UP_ALL, qos=1)
                    self._client = client
                    self.connected.set()
                    self.core.starting.pop(str(self.address), None)
                    backoff.reset()
                    log.info("serving agents through the MQTT broker %s", self.address)
                    async for message in client.messages:
                        cluster = cluster_of(message.topic.value)
                        if cluster is None:
                            continue
                        await self.sessions.deliver(cluster, attributes_of(message), bytes(message.payload))  # type: ignore[arg-type]
                problem = "the broker ended the connection"
            except aiomqtt.MqttError as exc:
                problem = describe(exc)
            finally:
                self._client = None
                self.connected.clear()
            delay = backoff.next_delay()
            if str(self.address) in self.core.starting:
                self.core.starting[str(self.address)] = f"cannot reach the MQTT broker: {problem}"
            log.warning("MQTT broker %s: %s; reconnecting in %.1fs", self.address, problem, delay)
            await asyncio.sleep(delay)

    async def _publish(self, cluster: str, session: str, message: pb.HubMessage) -> None:
        client = self._client
        if client is None:
            raise TransportError(f"not connected to the MQTT broker {self.address}")
        attributes = cloudevents.hub_attributes(message, hub_id=self.core.settings.hub_id, session=session)
        await client.publish(down_topic(cluster), codec.encode(message), qos=1, properties=properties(attributes))


registry.register_listener(("mqtt", "mqtts"), MqttHubServer)
