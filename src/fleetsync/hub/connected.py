"""A live session as the rest of a hub replica sees it: a narrow Protocol.

The core, the lease renewer and the downstream pushes hold the sessions connected to this
replica and call a few of their methods. Naming those here, rather than importing
:mod:`fleetsync.hub.session` (which imports the core), keeps the import graph acyclic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from fleetsync.hub.engine import ClusterEngine
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.contract import WorkRecord


class ConnectedSession(Protocol):
    """What the replica's timers, leases and downstream pushes need of a live session
    (:class:`~fleetsync.hub.session.Session`)."""

    engine: ClusterEngine | None
    active: bool
    superseded: bool
    epoch: int
    end: Callable[[], Awaitable[None]] | None

    @property
    def cluster(self) -> str: ...

    @property
    def hello(self) -> pb.Hello | None: ...

    def behind(self) -> bool: ...

    async def tick(self, now: float) -> None: ...

    async def supersede(self) -> None: ...

    async def revoke(self, message: str) -> None: ...

    async def send_gates(self, *, refused: str = "") -> None: ...

    async def send_works(self, all_works: list[WorkRecord] | None = None) -> None: ...
