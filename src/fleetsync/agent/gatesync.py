"""Feature gates on the agent (seed 004, its hook and watcher done right), without I/O of its own.

Three views of every gate: the local config target (what the cluster uses: a file or a
ConfigMap, see :mod:`fleetsync.agent.localconfig`), the hub's snapshot, and ``synced``, the
last state both agreed on (kept by the target beside the config, so it survives restarts).
Then:

- **hook** (local -> hub): :meth:`GateSync.scan` diffs the target against ``synced``; each
  difference is a local change to send (sets and unsets alike), kept until a snapshot
  says the hub has it (``applied_local_ms``), and sent again after a reconnect otherwise.
  Each carries the hub revision it was based on (``base_revision``: the snapshot applied
  when it was made), so that a resend of a change the hub already took cannot undo a later
  write of someone else (the hub drops it, and its snapshot brings the later value);
- **watcher** (hub -> local): :meth:`GateSync.apply_snapshot` writes to the target every gate
  whose hub value differs from the target's, unset ones removed, except gates with a local
  change in flight (the hub will have them next); ``synced`` moves along (in the same
  write, where the target can), so the change it makes is not seen as a local change: the
  echo is suppressed by construction, not by timing. A local change not scanned yet when a
  snapshot comes is recorded first, not overwritten;
- **join phase** (seed 004): a cluster new to the fleet (the hub's first snapshot says
  ``join``: it never applied the fleet's gates) in a ``local`` deployment, or an agent
  started with ``join``, pushes
  nothing until that snapshot is applied, and the fleet's gates overwrite its local ones (a
  joining cluster takes the fleet's gates, it does not impose its own); what it holds that
  the fleet has not set stays, as agreed. An agent started as the ``bootstrap`` never
  joins: it is where the fleet's gates come from, and pushes its local gates up. Nothing is
  scanned before the first snapshot of a run: whether a local difference is a change to
  push depends on it;
- **deployment type**, read from every snapshot (the hub's ``--deployment-type``; ``local``
  when unset): ``local`` syncs both ways, ``maas`` sends local changes up and never
  writes the hub's down.

The last write wins by hub revision: concurrent writes converge everywhere to the value
of the write the hub applied last. Calls are made one at a time (the agent's gates task);
:meth:`GateSync.outgoing` and :meth:`GateSync.disconnected` may come in between.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetsync.agent.localconfig import LocalConfigTarget
from fleetsync.protocol import fleetsync_pb2 as pb

if TYPE_CHECKING:
    from fleetsync.agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

MODES = ("local", "maas")


@dataclass
class Pending:
    """A local change the hub may not have yet."""

    value: bool | None  # None: unset
    changed_at_ms: int
    #: The hub revision the local value was synced at when it changed (see the module doc).
    base_revision: int = 0
    sent: bool = False


class GateSync:
    def __init__(self, config: LocalConfigTarget, *, join: bool = False, bootstrap: bool = False, metrics: AgentMetrics | None = None) -> None:
        if join and bootstrap:
            raise ValueError("an agent either joins the fleet or bootstraps it, not both")
        self.config = config
        #: Where the gate sync's latency and errors are counted (seed 004's metrics), if anywhere.
        self.metrics = metrics
        self.mode = "local"  # until a snapshot says otherwise
        self.joining = join
        self.bootstrap = bootstrap
        #: Whether a hub snapshot has been applied in this run (until then nothing is scanned).
        self.started = False
        self._refused_told = ""
        #: The agreed state; None until read from the target (the first scan or snapshot does).
        self._synced: dict[str, bool] | None = None
        self.pending: dict[str, Pending] = {}
        #: The revision of the last hub snapshot reconciled with the target, and the one last told the hub.
        self.applied_revision = 0
        self._revision_told = 0

    @property
    def synced(self) -> dict[str, bool]:
        return self._synced or {}

    async def _load(self) -> dict[str, bool]:
        """The agreed state, read from the target the first time (an error leaves it unread, to try again)."""
        if self._synced is None:
            self._synced = await self.config.agreed()
        return self._synced

    def _record(self, local: dict[str, bool], synced: dict[str, bool], now_ms: int, base_revision: int) -> dict[str, Pending]:
        """The differences of ``local`` from ``synced``, as local changes to send based on
        ``base_revision`` (``synced`` moves along)."""
        if self.joining:  # the fleet's gates win: the first snapshot overwrites these
            return {}
        changes: dict[str, Pending] = {}
        for key in sorted(local.keys() | synced.keys()):
            value = local.get(key)
            if value == synced.get(key):
                continue
            changes[key] = Pending(value, now_ms, base_revision)
            if value is None:
                synced.pop(key, None)
            else:
                synced[key] = value
        return changes

    # ---- hook: local -> hub ----------------------------------------------------------------

    async def scan(self, now_ms: int | None = None) -> bool:
        """Read the local config; record its changes since ``synced`` as pending, then store the
        agreed state (the changes are sent even if that store fails). True if any. Before the
        first snapshot of the run, nothing: that snapshot decides (join or not) and records them."""
        if not self.started:
            return False
        synced = await self._load()
        changes = self._record(await self.config.gates(), synced, now_ms if now_ms is not None else int(time.time() * 1000), self.applied_revision)
        if not changes:
            return False
        self.pending.update(changes)
        await self.config.write({}, agreed=synced)
        return True

    def has_outgoing(self) -> bool:
        """Whether a local change, or news of the applied revision, waits to be sent on this connection."""
        return self.applied_revision != self._revision_told or any(not change.sent for change in self.pending.values())

    def outgoing(self) -> list[pb.LocalChange]:
        """Local changes not sent on this connection yet (marked sent)."""
        out = []
        for key, change in sorted(self.pending.items()):
            if change.sent:
                continue
            change.sent = True
            value = "" if change.value is None else ("true" if change.value else "false")
            out.append(pb.LocalChange(key=key, unset=change.value is None, value=value, changed_at_ms=change.changed_at_ms, base_revision=change.base_revision))
        return out

    def disconnected(self) -> None:
        """What was sent and not confirmed goes again on the next connection."""
        for change in self.pending.values():
            change.sent = False
        self._revision_told = 0

    def revision_news(self) -> int:
        """The snapshot revision the target now reflects, if the hub has not been told it yet (else 0)."""
        if self.applied_revision == self._revision_told:
            return 0
        self._revision_told = self.applied_revision
        return self.applied_revision

    # ---- watcher: hub -> local ------------------------------------------------------------

    async def apply_snapshot(self, update: pb.SpecUpdate, now_ms: int | None = None) -> dict[str, bool | None]:
        """Reconcile the local config with a hub snapshot; returns what was written locally."""
        doc: dict[str, Any] = json.loads(update.gates_json or b"{}")
        first = not self.started
        refused = str(doc.get("refused") or "")
        if refused and refused != self._refused_told:
            log.warning("the hub refused this cluster's gate change: %s", refused)
            if self.metrics:
                self.metrics.gate_sync_errors.labels("refused").inc()
        self._refused_told = refused or self._refused_told
        applied_ms = int(doc.get("applied_local_ms", 0))
        for key in [k for k, p in self.pending.items() if p.sent and p.changed_at_ms <= applied_ms]:
            confirmed = self.pending.pop(key)  # the hub has it (or a later write of the key)
            if self.metrics:
                self.metrics.gate_sync_seconds.labels("up").observe(max(0, _now_ms(now_ms) - confirmed.changed_at_ms) / 1000)
        mode = str(doc.get("deployment-type") or "local")
        if mode not in MODES:
            log.warning("the hub's deployment type %r is not one of %s: taken as local", mode, ", ".join(MODES))
            mode = "local"
        if mode != self.mode:
            log.info("deployment type %s: %s", mode, "gates sync both ways" if mode == "local" else "local gate changes go up, the hub's are not written here")
            self.mode = mode
        if first and doc.get("join") and mode == "local" and not self.bootstrap and not self.joining:
            # (seed 004: join nodes do not push in local deployments; in maas each cluster's own changes go up)
            log.info("this cluster is new to the fleet: joining (the fleet's gates overwrite the local ones; start with --bootstrap to push them instead)")
            self.joining = True
        hub = {g["gate-key"]: (None if g.get("deleted") else bool(g["enabled"])) for g in doc.get("gates", [])}
        # Worked out on a copy, kept once written: a failed write leaves nothing half-agreed
        # (the target's old values would otherwise look like local changes).
        synced = dict(await self._load())
        recorded: dict[str, Pending] = {}
        written: dict[str, bool | None] = {}
        if self.mode == "local" or self.joining or first:
            local = await self.config.gates()
            # a local change the hook has not seen yet is a local change, not something to overwrite
            # (it is newer than what this snapshot brings: it is based on it)
            recorded = self._record(local, synced, now_ms if now_ms is not None else int(time.time() * 1000), update.revision)
            if self.mode == "local":
                for key, value in hub.items():
                    if key in self.pending or key in recorded:
                        continue  # the hub will have this agent's change next: keep it
                    if local.get(key) != value:
                        written[key] = value
                    if value is None:
                        synced.pop(key, None)
                    else:
                        synced[key] = value
            if self.joining:  # what the config held before joining is taken as agreed: only later changes go up
                synced = {k: v for k, v in {**local, **written}.items() if v is not None}
        await self.config.write(written, agreed=synced)
        self._synced = synced
        self.pending.update(recorded)
        self.applied_revision = max(self.applied_revision, update.revision)
        if written:
            log.info("gates from the hub (revision %d): %s", update.revision, ", ".join(f"{k}={_shown(v)}" for k, v in sorted(written.items())))
            if self.metrics and not first:  # (the first snapshot of a run brings what changed while the agent was not running)
                taken_ms = {g["gate-key"]: int(g.get("updated-at-ms") or 0) for g in doc.get("gates", [])}
                for key in written:
                    if taken_ms.get(key):  # (a hub older than updated-at-ms does not say)
                        self.metrics.gate_sync_seconds.labels("down").observe(max(0, _now_ms(now_ms) - taken_ms[key]) / 1000)
        self.started = True
        if self.joining:
            self.joining = False
            log.info("join phase over: local gate changes now go to the hub")
        return written


def _now_ms(given: int | None) -> int:
    return given if given is not None else int(time.time() * 1000)


def _shown(value: bool | None) -> str:
    return "unset" if value is None else str(value).lower()
