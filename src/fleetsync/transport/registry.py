"""Transports by URL scheme: each transport module registers its agent connector and hub listener here.

The table of which module serves which scheme is :data:`fleetsync.transport.base.TRANSPORTS`;
a lookup imports that module (so a transport's client library is loaded only when used),
and the module registers what it offers as it is imported. Like httpx's transport mounts:
nothing else in fleetsync branches on a scheme, so a Kafka transport is one new module
and one row in that table.

This module is on the agent's side: it imports nothing from the hub (the listener's
``HubCore`` is named for the type checker only).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from fleetsync.transport.base import TRANSPORTS, AgentConnection, ConnectOptions, HubAddress, TransportError

if TYPE_CHECKING:
    from fleetsync.hub.core import HubCore


class HubListener(Protocol):
    """Serves agents through a broker: started and stopped with the hub."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


Connector = Callable[[HubAddress, ConnectOptions], Awaitable[AgentConnection]]
ListenerFactory = Callable[["HubCore", HubAddress], HubListener]

_connectors: dict[str, Connector] = {}
_listeners: dict[str, ListenerFactory] = {}


def register_connector(schemes: tuple[str, ...], connector: Connector) -> None:
    """Called by a transport's agent-side module: how an agent opens a session over ``schemes``."""
    for scheme in schemes:
        _connectors[scheme] = connector


def register_listener(schemes: tuple[str, ...], factory: ListenerFactory) -> None:
    """Called by a transport's hub-side module: how a hub serves agents through the broker at a ``schemes`` URL."""
    for scheme in schemes:
        _listeners[scheme] = factory


def connector_for(scheme: str) -> Connector:
    """The agent connector for ``scheme`` (importing its module); TransportError if there is none."""
    modules = TRANSPORTS.get(scheme)
    if modules is None:
        raise TransportError(f"no transport for {scheme}://")
    importlib.import_module(modules.agent)
    try:
        return _connectors[scheme]
    except KeyError:
        raise TransportError(f"{modules.agent} registered no connector for {scheme}://") from None


def listener_for(scheme: str) -> ListenerFactory:
    """The hub's listener factory for a broker URL's ``scheme`` (importing its module); ValueError if it serves none."""
    modules = TRANSPORTS.get(scheme)
    if modules is None or modules.hub is None:
        brokers = ", ".join(f"{s}://" for s, m in TRANSPORTS.items() if m.hub is not None)
        raise ValueError(f"a broker URL is one of {brokers}, not {scheme}://")
    importlib.import_module(modules.hub)
    try:
        return _listeners[scheme]
    except KeyError:
        raise ValueError(f"{modules.hub} registered no listener for {scheme}://") from None
