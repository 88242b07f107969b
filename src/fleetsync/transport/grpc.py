"""gRPC transport, the agent's side: its end of one bidirectional ``Connect`` stream (grpc.aio).

The hub's side (the server, and what it bounds for peers that never authenticate) is
:mod:`fleetsync.transport.grpc_hub`; this module imports nothing from the hub, so an
agent loads no hub code.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol import fleetsync_pb2_grpc as pb_grpc
from fleetsync.transport import registry
from fleetsync.transport.base import AgentConnection, ClientTls, ConnectOptions, HubAddress, TransportError


def grpc_options(max_message_bytes: int, *, keepalive_time: float = 20.0, keepalive_timeout: float = 10.0) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # A peer that stops answering (a partition, a machine gone without a RST) is found by
        # HTTP/2 pings. Current gRPC core closes the transport on the *ping* timeout, not the
        # keepalive timeout (https://github.com/grpc/grpc/pull/39239), so both are set.
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.http2.ping_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class GrpcAgentConnection:
    """The agent's end of a ``Connect`` stream."""

    #: One HTTP/2 stream: in order, and nothing lost while it is up (it breaks instead).
    lossless = True

    def __init__(self, channel: grpc.aio.Channel, call: grpc.aio.StreamStreamCall) -> None:  # type: ignore[type-arg]
        self._channel = channel
        self._call = call

    @classmethod
    async def open(
        cls,
        address: HubAddress,
        *,
        max_message_bytes: int = 8 * 1024 * 1024,
        connect_seconds: float = 10.0,
        tls: ClientTls | None = None,
        keepalive_time: float = 20.0,
        keepalive_timeout: float = 10.0,
    ) -> GrpcAgentConnection:
        target, options = f"{address.host}:{address.port}", grpc_options(max_message_bytes, keepalive_time=keepalive_time, keepalive_timeout=keepalive_timeout)
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


async def connect(address: HubAddress, options: ConnectOptions) -> AgentConnection:
    """The registry's connector for grpc:// and grpcs://."""
    return await GrpcAgentConnection.open(
        address,
        max_message_bytes=options.max_message_bytes,
        connect_seconds=options.connect_seconds,
        tls=options.tls,
        keepalive_time=options.keepalive_time,
        keepalive_timeout=options.keepalive_timeout,
    )


registry.register_connector(("grpc", "grpcs"), connect)
