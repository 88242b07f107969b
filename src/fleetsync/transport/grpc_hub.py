"""gRPC transport, the hub's side: serves one bidirectional ``Connect`` stream per agent (grpc.aio).

What a peer that never authenticates may hold is bounded (``--hello-timeout``,
``--max-pending-hellos``, ``--grpc-max-streams-per-connection``): a stream whose Hello
has not arrived within the Hello timeout is answered ``Reject{PROTOCOL}`` and closed; a
new stream while that many others wait for their Hello is refused at once
(RESOURCE_EXHAUSTED); one HTTP/2 connection may open only a few streams; and a TCP
connection that does not finish its handshake, or holds no stream, is closed after the
Hello timeout too (gRPC's handshake timeout and idle-connection limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from fleetsync.hub.core import HubCore
from fleetsync.hub.session import Session, SessionClosed
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport.base import ServerTls
from fleetsync.transport.grpc import grpc_options

log = logging.getLogger(__name__)

_END = object()


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """A request that is not a valid AgentMessage: handed to the session, which ends it with a clear reason."""

    error: str


def _decode(data: bytes) -> pb.AgentMessage | _Undecodable:
    try:
        return codec.decode_agent_message(data)
    except codec.CodecError as exc:
        return _Undecodable(str(exc))


def _certified_cluster(context: grpc.aio.ServicerContext) -> str | None:  # type: ignore[type-arg]
    """The common name of the peer's verified client certificate (mutual TLS), else None."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else None


class _Servicer:
    def __init__(self, core: HubCore) -> None:
        self.core = core
        #: Streams open on this replica whose first message (the Hello) has not arrived yet.
        self.pending = 0

    async def connect(self, request_iterator: AsyncIterator[pb.AgentMessage | _Undecodable], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.HubMessage]:  # type: ignore[type-arg]
        """One agent's stream. Its messages are read with ``context.read()``, never through
        ``request_iterator`` (see ``pump``)."""
        limits = self.core.settings.limits
        if self.pending >= limits.max_pending_hellos:
            self.core.metrics.rejected.labels("RESOURCE_EXHAUSTED").inc()
            log.debug("refusing a stream from %s: %d streams wait for their Hello", context.peer(), self.pending)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.pending} connections to this hub have not said Hello yet (its limit, --max-pending-hellos); try again later",
            )
        outbox: asyncio.Queue[object] = asyncio.Queue()

        async def end() -> None:
            await outbox.put(_END)

        session = Session(self.core, outbox.put, peer=context.peer(), end=end, certified_cluster=_certified_cluster(context))

        async def handle(message: pb.AgentMessage | _Undecodable) -> None:
            if isinstance(message, _Undecodable):
                await session.reject(pb.PROTOCOL, message.error)
            else:
                await session.handle(message)

        async def hello() -> pb.AgentMessage | _Undecodable | None:
            """The first message, which must come within the Hello timeout; None: the stream is over."""
            try:
                async with asyncio.timeout(limits.hello_timeout):
                    first = await context.read()
                    return None if first is grpc.aio.EOF else first
            except TimeoutError:
                self.core.metrics.rejected.labels("PROTOCOL").inc()
                log.debug("closing the stream from %s: no Hello within %gs", context.peer(), limits.hello_timeout)
                reject = pb.Reject(reason=pb.PROTOCOL, message=f"no Hello within {limits.hello_timeout:g}s of connecting (the hub's --hello-timeout)")
                await outbox.put(pb.HubMessage(reject=reject))
                return None

        async def pump() -> None:
            # Counted until its first message arrives, not until that is answered: a Hello's
            # answer may wait for the inbox budget (a fleet reconnecting at once), and those
            # waiting agents must not fill the pending count.
            waiting = True
            self.pending += 1
            try:
                message = await hello()
                self.pending, waiting = self.pending - 1, False
                # context.read(), not the request iterator: grpc's iterator (an async generator)
                # holds the last message it gave until the next one arrives, and a FULL chunk
                # (~650 KiB decoded) per waiting or idle agent would stay alive after it was
                # applied. Nor is a message held while its session waits for room.
                while message is not None and message is not grpc.aio.EOF:
                    await handle(message)
                    del message
                    await session.room()
                    message = await context.read()
            except SessionClosed:
                pass
            except Exception:
                log.exception("session with %s (cluster %r) failed", context.peer(), session.cluster)
            finally:
                if waiting:
                    self.pending -= 1
                await outbox.put(_END)

        reader = asyncio.create_task(pump())
        try:
            while (item := await outbox.get()) is not _END:
                yield item  # type: ignore[misc]
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await session.close()


class GrpcHubServer:
    """Serves the protocol over gRPC for a :class:`HubCore`."""

    def __init__(self, core: HubCore, host: str, port: int, *, tls: ServerTls | None = None) -> None:
        self.core = core
        # gRPC itself refuses messages over twice the protocol's limit; the session refuses
        # anything over the limit with a message that says so.
        # No SO_REUSEPORT (gRPC's default): a second hub on a taken port must fail to start, not
        # silently share the port and split the agents between two hubs.
        #
        # Each stream's receive window is fixed at --stream-window (no BDP probing, which grows
        # windows to megabytes): when the hub pushes back (its inbox budget is full), what a
        # thousand agents have in flight to it is bounded by a thousand windows. Not quite: while
        # a read is pending, chttp2 also lets in the rest of the message being read, so what an
        # agent held back costs the hub follows the size of its messages too; hence the agents'
        # chunks of --chunk-bytes (Welcome.chunk_bytes; docs/performance.md).
        window, limits = core.settings.stream_window, core.settings.limits
        self.server = grpc.aio.server(
            options=[
                *grpc_options(core.settings.max_message_bytes * 2, keepalive_time=limits.keepalive_time, keepalive_timeout=limits.keepalive_timeout),
                ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
                ("grpc.server_handshake_timeout_ms", int(limits.hello_timeout * 1000)),
                ("grpc.max_connection_idle_ms", int(limits.hello_timeout * 1000)),
                ("grpc.so_reuseport", 0),
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", window),
                # Agents ping every 20 s (keepalive). An agent the hub holds back (its inbox budget
                # is full) gets no data for a while, and gRPC's default server policy counts such
                # pings as abuse and closes the connection (GOAWAY "too_many_pings"): allow them.
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
            ]
        )
        handler = grpc.stream_stream_rpc_method_handler(
            _Servicer(core).connect, request_deserializer=_decode, response_serializer=pb.HubMessage.SerializeToString
        )
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("fleetsync.v1.FleetSync", {"Connect": handler}),))
        if tls is None:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        else:
            credentials = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca or None, require_client_auth=bool(tls.client_ca))
            self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float = 2.0) -> None:
        await self.server.stop(grace)
