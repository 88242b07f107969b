"""gRPC transport: one bidirectional ``Connect`` stream per agent (grpc.aio)."""

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
from fleetsync.protocol import fleetsync_pb2_grpc as pb_grpc
from fleetsync.transport.base import ClientTls, HubAddress, ServerTls, TransportError

log = logging.getLogger(__name__)

_END = object()


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # A peer that stops answering (a partition, a machine gone without a RST) is found by
        # HTTP/2 pings. Current gRPC core closes the transport on the *ping* timeout, not the
        # keepalive timeout (https://github.com/grpc/grpc/pull/39239), so both are set.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


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

    async def connect(self, request_iterator: AsyncIterator[pb.AgentMessage | _Undecodable], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.HubMessage]:  # type: ignore[type-arg]
        outbox: asyncio.Queue[object] = asyncio.Queue()

        async def end() -> None:
            await outbox.put(_END)

        session = Session(self.core, outbox.put, peer=context.peer(), end=end, certified_cluster=_certified_cluster(context))

        async def pump() -> None:
            try:
                async for message in request_iterator:
                    if isinstance(message, _Undecodable):
                        await session.reject(pb.PROTOCOL, message.error)
                    else:
                        await session.handle(message)
            except SessionClosed:
                pass
            except Exception:
                log.exception("session with %s (cluster %r) failed", context.peer(), session.cluster)
            finally:
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
        # thousand agents have in flight to it is bounded by a thousand windows.
        window = core.settings.stream_window
        self.server = grpc.aio.server(
            options=[
                *_options(core.settings.max_message_bytes * 2),
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


class GrpcAgentConnection:
    """The agent's end of a ``Connect`` stream."""

    def __init__(self, channel: grpc.aio.Channel, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        self._channel = channel
        self._call = call

    @classmethod
    async def open(
        cls, address: HubAddress, *, max_message_bytes: int = 8 * 1024 * 1024, connect_seconds: float = 10.0, tls: ClientTls | None = None
    ) -> GrpcAgentConnection:
        target, options = f"{address.host}:{address.port}", _options(max_message_bytes)
        if address.scheme == "grpcs":
            tls = tls or ClientTls()
            credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca or None, private_key=tls.key or None, certificate_chain=tls.cert or None)
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        try:
            async with asyncio.timeout(connect_seconds):
                await channel.channel_ready()
        except TimeoutError:
            await channel.close()
            hint = " (or refused the TLS handshake: check --tls-ca, and --tls-cert/--tls-key if the hub requires client certificates)" if tls else ""
            raise TransportError(f"hub {address} did not answer within {connect_seconds:.0f}s{hint}") from None
        stub = pb_grpc.FleetSyncStub(channel)  # type: ignore[no-untyped-call]
        return cls(channel, stub.Connect())

    async def send(self, message: pb.AgentMessage) -> None:
        try:
            await self._call.write(message)
        except grpc.aio.AioRpcError as exc:
            raise TransportError(f"sending to the hub failed: {exc.code().name} {exc.details()}") from None
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            # grpc.aio raises InvalidStateError("RPC already finished") when the call ended under us
            # (e.g. closed by the ping timeout while we were writing)
            raise TransportError(f"sending to the hub failed: the connection has ended ({exc})") from None

    async def receive(self) -> pb.HubMessage | None:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise TransportError(f"the hub connection broke: {exc.code().name} {exc.details()}") from None
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            raise TransportError(f"the hub connection has ended ({exc})") from None
        if message is grpc.aio.EOF:
            return None
        return message  # type: ignore[no-any-return]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._call.done_writing()
        self._call.cancel()
        await self._channel.close()
