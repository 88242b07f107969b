"""One agent per cluster, across replicas: renewing the leases of the sessions on this replica.

A session takes its cluster's lease in the store when its Hello is accepted (holder,
incarnation, replica, epoch, expiry; :mod:`fleetsync.hub.session`); this module keeps the
leases of every session connected here alive, all in one transaction, and ends a session
whose lease was taken by a newer one (a higher epoch), so a superseded session never
writes again (the store fences its writes by epoch too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from fleetsync.hub.connected import ConnectedSession
from fleetsync.hub.settings import HubSettings
from fleetsync.store.contract import Store

log = logging.getLogger(__name__)


class LeaseRenewer:
    """Renews the leases of ``sessions`` (this replica's, by cluster) every third of ``settings.lease_ttl``."""

    def __init__(
        self,
        store: Store,
        sessions: Mapping[str, ConnectedSession],
        *,
        settings: HubSettings,
        clock: Callable[[], float],
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.settings = settings
        self._clock = clock
        #: Runs a session's end in the background (the core's keep_until_done).
        self._spawn = spawn

    async def run(self) -> None:
        """Every third of ``lease_ttl``, renew the leases of every agent connected to this replica in
        one store transaction (a transaction per agent cost a thousand agents 100 commits a second);
        a session whose lease another session holds now (a new epoch) ends. A store that cannot be
        written is tried again next time: a lease lasts three periods."""
        settings = self.settings
        while True:
            await asyncio.sleep(settings.lease_ttl / 3)
            sessions = {s.cluster: s for s in list(self.sessions.values()) if s.hello is not None and s.engine is not None and not s.superseded}
            held = [(cluster, s.epoch) for cluster, s in sessions.items()]
            try:
                lost = await self.store.renew_leases(held, hub_id=settings.hub_id, now=self._clock(), ttl=settings.lease_ttl)
            except Exception as exc:
                log.warning("the leases of %d clusters could not be renewed (%s); trying again", len(held), exc)
                continue
            for cluster in lost:
                session = sessions[cluster]
                log.warning("cluster %s: lease (epoch %d) lost to another session; ending the session", cluster, session.epoch)
                if session.end is not None:
                    self._spawn(session.end())
