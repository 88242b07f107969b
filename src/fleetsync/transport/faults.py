"""A fault-injecting decorator for any agent connection: drops, duplicates, delays and reorders messages.

The protocol must not depend on its transport delivering every message exactly once
and in order (brokers redeliver, lose messages past their queues, and reorder across
reconnects). This layer makes a perfectly reliable transport misbehave on purpose,
in both directions, for a window of time, so that tests can show the protocol's
acks, retransmissions, gap detection and digests heal everything.

Enabled with ``fleetsync agent --inject-faults SPEC`` (a testing aid; see
:meth:`FaultSpec.parse`), or by wrapping a connection in :class:`FaultyConnection`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, fields
from typing import Any

from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport.base import AgentConnection, TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What to inject: probabilities per message, a delay bound, and when."""

    drop: float = 0.0  # the message is lost
    duplicate: float = 0.0  # the message is delivered twice
    reorder: float = 0.0  # the message is held back and delivered after the next one
    delay: float = 0.0  # every message is delayed by uniform(0, delay) seconds (later ones may overtake it)
    after: float = 0.0  # seconds after the agent starts
    duration: float = math.inf  # seconds the faults last
    seed: int | None = None

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """``drop=0.05,duplicate=0.05,reorder=0.1,delay=0.2,after=5,for=20,seed=1`` (all optional)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float | int] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            name, sep, raw = part.partition("=")
            name = {"for": "duration"}.get(name.strip(), name.strip())
            if not sep or name not in known:
                raise ValueError(f"fault spec {part!r}: expected NAME=VALUE with NAME one of drop, duplicate, reorder, delay, after, for, seed")
            try:
                value = int(raw) if name == "seed" else float(raw)
            except ValueError:
                raise ValueError(f"fault spec {part!r}: {raw!r} is not a number") from None
            if name in ("drop", "duplicate", "reorder") and not 0 <= value <= 1:
                raise ValueError(f"fault spec {part!r}: a probability must be between 0 and 1")
            if value < 0:
                raise ValueError(f"fault spec {part!r}: must not be negative")
            values[name] = value
        return cls(**values)  # type: ignore[arg-type]


class FaultInjector:
    """Decides each message's fate; shared by every connection of one agent (its clock starts once)."""

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self._announced = self._ended = False

    def active(self) -> bool:
        elapsed = time.monotonic() - self.started
        on = self.spec.after <= elapsed < self.spec.after + self.spec.duration
        if on and not self._announced:
            self._announced = True
            log.warning("injecting faults for %.0fs: %s", self.spec.duration, self.spec)
        elif not on and self._announced and not self._ended:
            self._ended = True
            log.warning("fault injection over: %s", self.summary())
        return on

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "nothing injected"

    def chance(self, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability


class _Direction:
    """The faults of one direction: which messages arrive, how late, in what order."""

    def __init__(self, injector: FaultInjector, name: str) -> None:
        self.injector = injector
        self.name = name
        self._held: object | None = None  # a message held back, to arrive after the next one

    def route(self, message: object) -> list[tuple[object, float]]:
        """What to deliver now, in order, as (message, delay in seconds; 0 = at once)."""
        injector, spec = self.injector, self.injector.spec
        out: list[tuple[object, float]] = []
        if not injector.active():
            out.append((message, 0.0))
        elif injector.chance(spec.drop):
            injector.counts[f"dropped {self.name}"] += 1
            return []
        elif self._held is None and injector.chance(spec.reorder):
            injector.counts[f"reordered {self.name}"] += 1
            self._held = message
            return []
        else:
            copies = 2 if injector.chance(spec.duplicate) else 1
            injector.counts[f"duplicated {self.name}"] += copies - 1
            out += [(message, injector.rng.uniform(0, spec.delay) if spec.delay else 0.0) for _ in range(copies)]
        if self._held is not None:
            out.append((self._held, 0.0))
            self._held = None
        return out


class FaultyConnection:
    """An :class:`~fleetsync.transport.base.AgentConnection` whose messages, both ways, suffer ``injector``'s faults."""

    #: It drops, duplicates and reorders on purpose.
    lossless = False

    def __init__(self, inner: AgentConnection, injector: FaultInjector) -> None:
        self.inner = inner
        self.injector = injector
        self._up = _Direction(injector, "up")
        self._down = _Direction(injector, "down")
        self._send_lock = asyncio.Lock()  # the inner connection takes one write at a time
        self._inbox: asyncio.Queue[pb.HubMessage | TransportError | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump = asyncio.create_task(self._receive_loop(), name="faulty-receive")

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- agent -> hub --------------------------------------------------------------------

    async def _deliver_later(self, message: pb.AgentMessage, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            async with self._send_lock:
                await self.inner.send(message)
        except TransportError:
            pass  # the connection ended while this one was delayed: it is lost, as on a real network

    async def send(self, message: pb.AgentMessage) -> None:
        for item, delay in self._up.route(message):
            if delay:
                self._later(self._deliver_later(item, delay))  # type: ignore[arg-type]
            else:
                async with self._send_lock:
                    await self.inner.send(item)  # type: ignore[arg-type]

    # ---- hub -> agent --------------------------------------------------------------------

    async def _put_later(self, message: pb.HubMessage, delay: float) -> None:
        await asyncio.sleep(delay)
        self._inbox.put_nowait(message)

    async def _receive_loop(self) -> None:
        try:
            while (message := await self.inner.receive()) is not None:
                for item, delay in self._down.route(message):
                    if delay:
                        self._later(self._put_later(item, delay))  # type: ignore[arg-type]
                    else:
                        self._inbox.put_nowait(item)  # type: ignore[arg-type]
            self._inbox.put_nowait(None)
        except TransportError as exc:
            self._inbox.put_nowait(exc)

    async def receive(self) -> pb.HubMessage | None:
        item = await self._inbox.get()
        if isinstance(item, TransportError):
            raise item
        return item

    async def close(self) -> None:
        self._pump.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.injector.counts:
            log.warning("faults injected so far: %s", self.injector.summary())
        await self.inner.close()
