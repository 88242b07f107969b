"""What the agent needs of any transport, hub URL parsing, and the table of transports by URL scheme."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from fleetsync.errors import FleetsyncError
from fleetsync.extras import scheme_problem
from fleetsync.protocol import fleetsync_pb2 as pb


@dataclass(frozen=True, slots=True)
class TransportModules:
    """Where one URL scheme's transport lives: the module with the agent's connector, and the
    module with the hub's listener (None: the hub serves it with its own flag, as ``--grpc``).

    They are separate modules so that the agent side never imports the hub. Each registers
    what it offers with :mod:`fleetsync.transport.registry` when imported.
    """

    agent: str
    hub: str | None = None


#: The one table of transports (httpx's mounts): adding one is a new module and a row here.
TRANSPORTS: dict[str, TransportModules] = {
    "grpc": TransportModules("fleetsync.transport.grpc"),
    "grpcs": TransportModules("fleetsync.transport.grpc"),
    "mqtt": TransportModules("fleetsync.transport.mqtt", hub="fleetsync.transport.mqtt_hub"),
    "mqtts": TransportModules("fleetsync.transport.mqtt", hub="fleetsync.transport.mqtt_hub"),
    "nats": TransportModules("fleetsync.transport.nats", hub="fleetsync.transport.nats_hub"),
}
SCHEMES = tuple(TRANSPORTS)
#: The schemes a hub can serve through a broker (``--broker``).
BROKER_SCHEMES = tuple(scheme for scheme, modules in TRANSPORTS.items() if modules.hub is not None)


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A TLS listener's certificate and key (PEM), and the CA whose client certificates it
    requires (mutual TLS; empty: no client certificate asked for)."""

    cert: bytes
    key: bytes = field(repr=False)
    client_ca: bytes = b""
    #: The files they were read from (the ssl module loads a certificate chain from files only).
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def from_files(cls, cert: str, key: str, client_ca: str = "") -> ServerTls:
        """Read the PEM files; a ValueError naming the file that cannot be read or is not PEM."""
        return cls(_pem(cert, "--tls-cert"), _pem(key, "--tls-key"), _pem(client_ca, "--tls-client-ca") if client_ca else b"", cert, key)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What an agent trusts (a CA bundle; empty: the system's) and presents (a client
    certificate and key, for a hub that requires them)."""

    ca: bytes = b""
    cert: bytes = b""
    key: bytes = field(default=b"", repr=False)

    @classmethod
    def from_files(cls, ca: str = "", cert: str = "", key: str = "") -> ClientTls:
        if bool(cert) != bool(key):
            raise ValueError("--tls-cert and --tls-key go together (the client certificate and its key)")
        return cls(_pem(ca, "--tls-ca") if ca else b"", _pem(cert, "--tls-cert") if cert else b"", _pem(key, "--tls-key") if key else b"")


def _pem(path: str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """What every agent connector is given besides the address. ``tls``: what to trust (and
    present) on grpcs:// and mqtts://; the keepalive applies to gRPC (the brokers' clients keep
    their connections alive themselves)."""

    cluster_id: str
    agent_id: str
    max_message_bytes: int
    connect_seconds: float = 10.0
    tls: ClientTls | None = None
    keepalive_time: float = 20.0
    keepalive_timeout: float = 10.0


class TransportError(FleetsyncError, ConnectionError):
    """The connection to the hub failed or broke; the agent reconnects with backoff."""


@dataclass(frozen=True, slots=True)
class HubAddress:
    """Where to reach a hub: directly (grpc) or through a broker (mqtt, mqtts, nats)."""

    scheme: str
    host: str
    port: int
    #: Broker credentials, from the URL's ``USER:PASSWORD@`` part.
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # never shows the password (it ends up in logs)
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"

    @property
    def broker(self) -> bool:
        return self.scheme not in ("grpc", "grpcs")


def parse_hub_url(url: str, *, schemes: tuple[str, ...] = SCHEMES) -> HubAddress:
    """``grpc://host:port`` (``grpcs://`` over TLS; also ``mqtt://[user:password@]host:port``, mqtts://, nats://) -> HubAddress;
    a clear ValueError otherwise."""
    parts = urlsplit(url.strip())
    shown = _without_password(url.strip())
    if parts.scheme not in schemes:
        raise ValueError(f"URL {shown!r}: scheme must be one of {', '.join(s + '://' for s in schemes)}")
    if problem := scheme_problem(parts.scheme):  # its client library is an extra: say so now, not on every reconnect
        raise ValueError(f"URL {shown!r}: {problem}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"URL {shown!r}: the port is not a number") from None
    if not parts.hostname or port is None:
        raise ValueError(f"URL {shown!r}: expected {parts.scheme}://HOST:PORT")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"URL {shown!r}: expected {parts.scheme}://HOST:PORT with no path or query")
    if parts.username and parts.scheme in ("grpc", "grpcs"):
        raise ValueError(f"URL {shown!r}: {parts.scheme}:// takes no user name (agents authenticate with their token)")
    return HubAddress(
        parts.scheme, parts.hostname, port, unquote(parts.username) if parts.username else None, unquote(parts.password) if parts.password else None
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (all interfaces) for the hub's listeners."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {text!r}: expected HOST:PORT or :PORT")
    return host or "0.0.0.0", int(port)


class AgentConnection(Protocol):
    """One agent's connection to a hub: ordered messages both ways."""

    #: Every message sent while the connection is up reaches the other side, in order (a gRPC
    #: stream: one HTTP/2 stream over TCP). What stays unacknowledged then is the hub being
    #: behind, never a loss, and resending it on the same connection only queues a second copy
    #: behind the first (agent/uplink.py). False where a broker may drop or redeliver.
    lossless: bool

    async def send(self, message: pb.AgentMessage) -> None: ...

    async def receive(self) -> pb.HubMessage | None:
        """The next message from the hub; None when the hub closed the connection."""

    async def close(self) -> None: ...
