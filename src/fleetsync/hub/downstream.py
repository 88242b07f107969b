"""Specs down to the agents connected to this replica: a gate or a work was written, each agent gets its new snapshot.

Any replica's write reaches every replica as a store notification (``gates``, ``works``,
``clusters`` when an admin relabels a cluster: its works' placement may differ); the core
hands it here. What a snapshot holds is the session's to compute (:mod:`fleetsync.hub.gates`,
:mod:`fleetsync.hub.works`); this module decides who gets one, reads the works once for all
of them, and never lets one ending session stop the others'.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from fleetsync.hub.connected import ConnectedSession
from fleetsync.store.contract import Store

log = logging.getLogger(__name__)


class Downstream:
    """Pushes spec snapshots to the sessions in ``sessions`` (this replica's, by cluster)."""

    def __init__(self, store: Store, sessions: Mapping[str, ConnectedSession], *, spawn: Callable[[Awaitable[None]], None]) -> None:
        self.store = store
        self.sessions = sessions
        #: Runs a push in the background, holding it until it is done (the core's keep_until_done).
        self._spawn = spawn

    def push_gates(self) -> None:
        """A gate was written (here or on another replica): every agent connected here gets the new snapshot."""

        async def push(session: ConnectedSession) -> None:
            try:
                await session.send_gates()
            except Exception as exc:  # a session that is ending; it reconciles on its next connection
                log.debug("cluster %s: gate snapshot not sent: %s", session.cluster, exc)

        for session in list(self.sessions.values()):
            self._spawn(push(session))

    def push_works(self, cluster: str | None = None) -> None:
        """A work was written (here or on another replica): every agent connected here whose part
        of the works changed gets its new snapshot (the works are read once for all of them).
        With ``cluster``: that cluster's labels changed; only its agent, if connected here."""
        if cluster is not None and cluster not in self.sessions:
            return

        async def push() -> None:
            try:
                works = await self.store.works()
            except Exception as exc:  # the store is down: agents reconcile on their next connection
                log.warning("works not pushed: %s", exc)
                return
            targets = list(self.sessions.values()) if cluster is None else [s for name, s in self.sessions.items() if name == cluster]
            for session in targets:
                try:
                    await session.send_works(works)
                except Exception as exc:  # a session that is ending; it reconciles on its next connection
                    log.debug("cluster %s: works snapshot not sent: %s", session.cluster, exc)

        self._spawn(push())
