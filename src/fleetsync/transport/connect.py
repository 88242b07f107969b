"""Opening a transport by URL scheme: the agent's connection, the hub's broker listeners.

Both look the scheme up in :mod:`fleetsync.transport.registry`; each transport is
imported when used, bringing its own client library along.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetsync.transport.base import AgentConnection, ClientTls, ConnectOptions, HubAddress
from fleetsync.transport.registry import HubListener, connector_for, listener_for

if TYPE_CHECKING:
    from fleetsync.hub.core import HubCore

#: The name callers knew before the registry (a broker listener is started and stopped with the hub).
BrokerServer = HubListener


async def open_agent_connection(
    address: HubAddress,
    *,
    cluster_id: str,
    agent_id: str,
    max_message_bytes: int,
    connect_seconds: float = 10.0,
    tls: ClientTls | None = None,
    keepalive_time: float = 20.0,
    keepalive_timeout: float = 10.0,
) -> AgentConnection:
    """A new session's connection to the hub at ``address`` (raises TransportError). ``tls``:
    what to trust (and present) on grpcs:// and mqtts://; the keepalive applies to gRPC (the
    brokers' clients keep their connections alive themselves)."""
    options = ConnectOptions(
        cluster_id=cluster_id,
        agent_id=agent_id,
        max_message_bytes=max_message_bytes,
        connect_seconds=connect_seconds,
        tls=tls,
        keepalive_time=keepalive_time,
        keepalive_timeout=keepalive_timeout,
    )
    return await connector_for(address.scheme)(address, options)


def broker_server(core: HubCore, address: HubAddress) -> HubListener:
    """The hub's listener on the broker at ``address`` (mqtt://, mqtts:// or nats://)."""
    try:
        return listener_for(address.scheme)(core, address)
    except ValueError as exc:
        raise ValueError(f"--broker {address}: {exc}") from None
