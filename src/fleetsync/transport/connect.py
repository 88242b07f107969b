"""Opening a transport by URL scheme: the agent's connection, the hub's broker listeners.

Each transport is imported when used: it brings its own client library along.
"""

from __future__ import annotations

from typing import Protocol

from fleetsync.hub.core import HubCore
from fleetsync.transport.base import AgentConnection, ClientTls, HubAddress, TransportError


class BrokerServer(Protocol):
    """Serves agents through a broker: started and stopped with the hub."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def open_agent_connection(
    address: HubAddress, *, cluster_id: str, agent_id: str, max_message_bytes: int, connect_seconds: float = 10.0, tls: ClientTls | None = None
) -> AgentConnection:
    """A new session's connection to the hub at ``address`` (raises TransportError). ``tls``:
    what to trust (and present) on grpcs:// and mqtts://."""
    if address.scheme in ("grpc", "grpcs"):
        from fleetsync.transport.grpc import GrpcAgentConnection

        return await GrpcAgentConnection.open(address, max_message_bytes=max_message_bytes, connect_seconds=connect_seconds, tls=tls)
    if address.scheme in ("mqtt", "mqtts"):
        from fleetsync.transport.mqtt import MqttAgentConnection

        return await MqttAgentConnection.open(address, cluster_id=cluster_id, agent_id=agent_id, connect_seconds=connect_seconds, tls=tls)
    if address.scheme == "nats":
        from fleetsync.transport.nats import NatsAgentConnection

        return await NatsAgentConnection.open(address, cluster_id=cluster_id, agent_id=agent_id, connect_seconds=connect_seconds)
    raise TransportError(f"no transport for {address.scheme}://")


def broker_server(core: HubCore, address: HubAddress) -> BrokerServer:
    """The hub's listener on the broker at ``address`` (mqtt://, mqtts:// or nats://)."""
    if address.scheme in ("mqtt", "mqtts"):
        from fleetsync.transport.mqtt import MqttHubServer

        return MqttHubServer(core, address)
    if address.scheme == "nats":
        from fleetsync.transport.nats import NatsHubServer

        return NatsHubServer(core, address)
    raise ValueError(f"--broker {address}: a broker URL is mqtt://, mqtts:// or nats://")
