"""What the agent needs of any transport, and hub URL parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from fleetsync.protocol import fleetsync_pb2 as pb

SCHEMES = ("grpc", "mqtt", "mqtts", "nats")


class TransportError(ConnectionError):
    """The connection to the hub failed or broke; the agent reconnects with backoff."""


@dataclass(frozen=True, slots=True)
class HubAddress:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_hub_url(url: str) -> HubAddress:
    """``grpc://host:port`` (also mqtt://, mqtts://, nats://) -> HubAddress; a clear ValueError otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in SCHEMES:
        raise ValueError(f"hub URL {url!r}: scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"hub URL {url!r}: the port is not a number") from None
    if not parts.hostname or port is None:
        raise ValueError(f"hub URL {url!r}: expected {parts.scheme}://HOST:PORT")
    return HubAddress(parts.scheme, parts.hostname, port)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (all interfaces) for the hub's listeners."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {text!r}: expected HOST:PORT or :PORT")
    return host or "0.0.0.0", int(port)


class AgentConnection(Protocol):
    """One agent's connection to a hub: ordered messages both ways."""

    async def send(self, message: pb.AgentMessage) -> None: ...

    async def receive(self) -> pb.HubMessage | None:
        """The next message from the hub; None when the hub closed the connection."""

    async def close(self) -> None: ...
