"""Bounds on the hub's HTTP connections: a header timeout, an idle timeout, a connection cap.

aiohttp alone keeps a connection that never finishes its request head for its keep-alive
timeout (an hour by default), and takes any number of them: a few hundred clients sending a
header byte now and then ("slowloris") hold as many sockets and file descriptors for as
long as they like. Here every connection goes through a :class:`_GuardedConnection`, a thin
protocol in front of aiohttp's own, which

- closes it with ``408`` if its first request head (up to the blank line that ends the
  headers) is not complete within ``header_timeout`` seconds of connecting (over TLS, the
  handshake has as long again before that, asyncio's ``ssl_handshake_timeout``);
- refuses it with ``503`` (and closes it) when ``max_connections`` are open already, before
  aiohttp sees a byte of it, so a flood costs the hub one small write per connection.

Later requests on a kept-alive connection are bounded by aiohttp's keep-alive timer, which
``idle_timeout`` sets: a connection with no request in progress (idle, or stuck in the
head of its next request) is closed that long after its last response. A request being
served, such as a watch streaming for half an hour, is never cut by either timer. Request
bodies are bounded by ``max_body_bytes`` (aiohttp's ``client_max_size``; a 413 beyond it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: What a refused connection is told (plain HTTP/1.1: nothing of it has been parsed).
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
_SLOW = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
_HEAD_END = b"\r\n\r\n"


def _plain(template: bytes, text: str) -> bytes:
    body = text.encode() + b"\n"
    return template % (len(body), body)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The hub's HTTP bounds (flags of ``fleetsync hub``, see docs/api.md)."""

    #: Seconds a new connection has to send its first complete request head.
    header_timeout: float = 10.0
    #: Seconds a kept-alive connection may stay idle (or stuck in a later request's head).
    idle_timeout: float = 90.0
    #: Connections open at once, watches included; more are answered 503 and closed.
    max_connections: int = 1000
    #: Largest request body (bytes); a larger one is answered 413.
    max_body_bytes: int = 1024 * 1024


class ConnectionGuard:
    """Counts the open connections of one server and wraps each in a :class:`_GuardedConnection`."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0  # connections refused for the cap
        self.timed_out = 0  # connections closed for a slow head

    def protocol(self, inner: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
        return _GuardedConnection(self, inner())


class ConnectionMetrics(Collector):
    """A guard's counts as Prometheus metrics, read when scraped (nothing to update per connection)."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("fleetsync_http_connections", "HTTP connections open on the API (watches included)", value=self.guard.open)
        closed = CounterMetricFamily("fleetsync_http_connections_cut", "HTTP connections the API refused or closed for its limits", labels=["reason"])
        closed.add_metric(["max-connections"], self.guard.refused)
        closed.add_metric(["header-timeout"], self.guard.timed_out)
        yield closed


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the cap and the first head's deadline."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.counted = False
        self.head_done = False
        self.tail = b""  # the last bytes received, for a head end split across reads
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a TCP server's transport (uvloop's does not subclass asyncio.Transport, but is one)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        limits = self.guard.limits
        if self.guard.open >= limits.max_connections:
            self.guard.refused += 1
            if self.guard.refused in (1, 10, 100) or self.guard.refused % 1000 == 0:  # a flood logs a few lines, not one per connection
                log.warning("HTTP: %d connections open, the most --http-max-connections allows; refused %d so far", self.guard.open, self.guard.refused)
            transport.write(
                _plain(_BUSY, f"the hub has {limits.max_connections} HTTP connections open, the most it takes (--http-max-connections); retry later")
            )
            transport.close()
            return
        self.guard.open += 1
        self.counted = True
        self.deadline = asyncio.get_running_loop().call_later(limits.header_timeout, self._head_overdue)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.counted:
            return
        if not self.head_done:
            window = self.tail + data
            if _HEAD_END in window:
                self.head_done = True
                self._cancel_deadline()
            else:
                self.tail = window[-(len(_HEAD_END) - 1) :]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.counted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.counted:
            return
        self.counted = False
        self.guard.open -= 1
        self._cancel_deadline()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.counted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.counted:
            self.inner.resume_writing()

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _head_overdue(self) -> None:
        self.deadline = None
        if self.head_done or self.transport is None or self.transport.is_closing():
            return
        self.guard.timed_out += 1
        timeout = self.guard.limits.header_timeout
        self.transport.write(_plain(_SLOW, f"no complete request head within {timeout:g}s of connecting (--http-header-timeout)"))
        self.transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site (as ``web.TCPSite``) whose connections go through a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard, ssl_context: object = None, backlog: int = 128) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)  # type: ignore[arg-type]
        self.host = host
        self.port = port
        self.guard = guard

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self.host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        # over TLS, the handshake precedes the head (and connection_made): it gets the same deadline
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self.guard.protocol(server),
            self.host,
            self.port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self.guard.limits.header_timeout if self._ssl_context else None,
        )
        if self.port == 0 and self._server.sockets:
            self.port = int(self._server.sockets[0].getsockname()[1])
