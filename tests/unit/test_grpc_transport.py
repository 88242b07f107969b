"""The gRPC transport turns every way a connection can end into TransportError (the agent reconnects on it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsync.hub.core import HubCore
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.sqlite import SQLiteStore
from fleetsync.transport.base import HubAddress, TransportError
from fleetsync.transport.grpc import GrpcAgentConnection
from fleetsync.transport.grpc_hub import GrpcHubServer


async def test_using_a_connection_the_hub_has_ended_raises_transport_error(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hub.db")
    await store.open()
    server = GrpcHubServer(HubCore(store), "127.0.0.1", 0)
    await server.start()
    try:
        connection = await GrpcAgentConnection.open(HubAddress("grpc", "127.0.0.1", server.port))
        await connection.send(pb.AgentMessage(heartbeat=pb.Heartbeat()))  # not a Hello: rejected, and the call ends
        answer = await connection.receive()
        assert answer is not None and answer.reject.reason == pb.PROTOCOL
        assert await connection.receive() is None
        with pytest.raises(TransportError):
            for _ in range(3):
                await connection.send(pb.AgentMessage(heartbeat=pb.Heartbeat()))
        await connection.close()
    finally:
        await server.stop(0)
        await store.close()


async def test_a_hub_that_is_not_there_is_a_transport_error() -> None:
    from tests.harness import free_port

    with pytest.raises(TransportError, match="did not answer"):
        await GrpcAgentConnection.open(HubAddress("grpc", "127.0.0.1", free_port()), connect_seconds=0.5)
