"""MQTT 5 transport (aiomqtt): the protocol's messages as QoS 1 publishes through a broker.

Topics, per cluster::

    fleetsync/v1/clusters/{cluster}/up     agent -> hub   (the hub subscribes to .../+/up)
    fleetsync/v1/clusters/{cluster}/down   hub -> agent

Both sides connect with clean start off and a session expiry, so the broker keeps
their subscriptions and queues QoS 1 messages while they are briefly away. Every
publish carries the CloudEvents attributes as MQTT 5 user properties
(:mod:`fleetsync.transport.cloudevents`) and the protobuf message as its payload.

Nothing here relies on the broker delivering everything, once, in order: Mosquitto
drops QoS 1 messages silently past ``max_queued_messages``, and redelivers after a
reconnect. The protocol's sequence numbers, acks-after-commit, retransmission and
digests absorb all of that; the agent keeps its in-flight window small so that a
healthy broker does not drop anything in the first place.

This module is the agent's connection and what both sides share (topics, client, user
properties); the hub's listener is :mod:`fleetsync.transport.mqtt_hub`, so an agent
loads no hub code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetsync.transport import cloudevents, registry
from fleetsync.transport.base import AgentConnection, ClientTls, ConnectOptions, HubAddress, TransportError
from fleetsync.transport.broker_agent import BrokerConnection, describe

log = logging.getLogger(__name__)

PREFIX = "fleetsync/v1/clusters"
UP_ALL = f"{PREFIX}/+/up"
#: Seconds the broker keeps a client's session (subscriptions, queued messages) after it leaves.
SESSION_EXPIRY = 3600
_TOPIC = re.compile(rf"^{re.escape(PREFIX)}/([^/]+)/up$")


def up_topic(cluster: str) -> str:
    return f"{PREFIX}/{cluster}/up"


def down_topic(cluster: str) -> str:
    return f"{PREFIX}/{cluster}/down"


def cluster_of(topic: str) -> str | None:
    """The cluster whose up topic this is (None for any other topic)."""
    match = _TOPIC.match(topic)
    return match.group(1) if match else None


def client_id(role: str, name: str) -> str:
    """A stable MQTT client id (the broker keys persistent sessions by it), readable and unique."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"fleetsync-{role}-{re.sub(r'[^A-Za-z0-9_-]', '_', name)[:40]}-{digest}"


def properties(attributes: dict[str, str]) -> Properties:
    """MQTT 5 publish properties carrying CloudEvents ``attributes`` (binary content mode)."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = cloudevents.CONTENT_TYPE
    properties.UserProperty = list(attributes.items())
    return properties


def attributes_of(message: aiomqtt.Message) -> dict[str, str]:
    user = getattr(message.properties, "UserProperty", None) if message.properties is not None else None
    return dict(user) if user else {}


def _tls_context(address: HubAddress, tls: ClientTls | None) -> ssl.SSLContext | None:
    """mqtts://: verify the broker against ``tls.ca`` (default: the system's CAs; SSL_CERT_FILE works too)."""
    if address.scheme != "mqtts":
        return None
    return ssl.create_default_context(cadata=tls.ca.decode()) if tls and tls.ca else ssl.create_default_context()


def broker_client(address: HubAddress, identifier: str, *, timeout: float, tls: ClientTls | None = None) -> aiomqtt.Client:
    connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect.SessionExpiryInterval = SESSION_EXPIRY
    return aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=connect,
        timeout=timeout,
        keepalive=15,
        tls_context=_tls_context(address, tls),
    )


class MqttAgentConnection(BrokerConnection):
    """One agent session through an MQTT broker."""

    def __init__(self, client: aiomqtt.Client, address: HubAddress, cluster: str) -> None:
        super().__init__(address, cluster)
        self._client = client

    @classmethod
    async def open(
        cls, address: HubAddress, *, cluster_id: str, agent_id: str, connect_seconds: float = 10.0, tls: ClientTls | None = None
    ) -> MqttAgentConnection:
        client = broker_client(address, client_id("agent", f"{cluster_id}/{agent_id}"), timeout=connect_seconds, tls=tls)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise TransportError(f"cannot connect to the MQTT broker {address}: {describe(exc)}") from None
        connection = cls(client, address, cluster_id)
        try:
            await client.subscribe(down_topic(cluster_id), qos=1)
        except aiomqtt.MqttError as exc:
            await connection.close()
            raise TransportError(f"cannot subscribe to {down_topic(cluster_id)} on {address}: {describe(exc)}") from None
        connection._reader = asyncio.create_task(connection._read(), name="mqtt-reader")
        return connection

    async def _read(self) -> None:
        try:
            async for message in self._client.messages:
                self._received(attributes_of(message), bytes(message.payload))  # type: ignore[arg-type]
            self._lost(TransportError(f"the MQTT broker {self._address} closed the connection"))
        except aiomqtt.MqttError as exc:
            self._lost(TransportError(f"lost the MQTT broker {self._address}: {describe(exc)}"))

    async def _publish(self, payload: bytes, attributes: dict[str, str], *, timeout: float | None = None) -> None:
        try:
            await self._client.publish(up_topic(self._cluster), payload, qos=1, properties=properties(attributes), timeout=timeout)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"publishing to the MQTT broker {self._address} failed: {describe(exc)}") from None

    async def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.__aexit__(None, None, None)


async def connect(address: HubAddress, options: ConnectOptions) -> AgentConnection:
    """The registry's connector for mqtt://, mqtts://."""
    return await MqttAgentConnection.open(
        address, cluster_id=options.cluster_id, agent_id=options.agent_id, connect_seconds=options.connect_seconds, tls=options.tls
    )


registry.register_connector(("mqtt", "mqtts"), connect)
