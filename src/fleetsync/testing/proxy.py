"""A TCP proxy that can partition the network between an agent and a hub, for tests and benchmarks.

While partitioned, the proxy stops reading in both directions: nothing is lost or
corrupted, the kernel's buffers fill and both ends' writes stall, exactly as across a
network partition. Connections then either resume when it heals or are declared dead
by their own keepalives (gRPC's pings, MQTT's and NATS's keepalives), and new
connections hang in their handshake. It works for any protocol over TCP.

It runs its own event loop in a thread, so synchronous tests and scripts can use it::

    with PartitionProxy(("127.0.0.1", hub_grpc_port)) as proxy:
        start_agent(hub=f"grpc://127.0.0.1:{proxy.port}")
        proxy.partition()
        ...
        proxy.heal()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

CHUNK = 64 * 1024


class PartitionProxy:
    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.host = host
        self.port = port
        #: Bytes forwarded agent -> hub ("up") and hub -> agent ("down").
        self.bytes = {"up": 0, "down": 0}
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="partition-proxy", daemon=True)
        self._healed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ---- control (from any thread) ----------------------------------------------------------

    def start(self) -> PartitionProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def partition(self) -> None:
        """Stop carrying bytes (connections stay open, and new ones hang)."""
        self._call(lambda: self._require_healed().clear())

    def heal(self) -> None:
        self._call(lambda: self._require_healed().set())

    @property
    def partitioned(self) -> bool:
        return self._healed is not None and not self._healed.is_set()

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> PartitionProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _call(self, fn: object) -> None:
        async def run() -> None:
            fn()  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _require_healed(self) -> asyncio.Event:
        assert self._healed is not None, "the proxy is not started"
        return self._healed

    # ---- the loop -------------------------------------------------------------------------

    async def _start(self) -> None:
        self._healed = asyncio.Event()
        self._healed.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._stopping = True
        for writer in list(self._writers):
            writer.close()
        if self._healed is not None:
            self._healed.set()  # stalled pumps and handshakes go on, find their sockets closed, and end
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _accept(self, agent_reader: asyncio.StreamReader, agent_writer: asyncio.StreamWriter) -> None:
        assert self._healed is not None
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.connections += 1
        self._writers.add(agent_writer)
        try:
            await self._healed.wait()  # a partition: the handshake hangs
            if self._stopping:
                return
            try:
                hub_reader, hub_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return  # the hub is down: the agent sees the connection close, as with a refused connect
            self._writers.add(hub_writer)
            try:
                await asyncio.gather(self._pump(agent_reader, hub_writer, "up"), self._pump(hub_reader, agent_writer, "down"))
            finally:
                self._writers.discard(hub_writer)
                hub_writer.close()
        finally:
            self._writers.discard(agent_writer)
            agent_writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        assert self._healed is not None
        try:
            while True:
                await self._healed.wait()  # while partitioned: no reading, so the sender's buffers fill
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._healed.wait()
                writer.write(data)
                await writer.drain()
                self.bytes[direction] += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()
