"""Feature gates on the agent (seed 004, its hook and watcher done right), without I/O of its own.

Three views of every gate: the local config file (what the cluster uses), the hub's
snapshot, and ``synced``, the last state both agreed on (kept beside the file, so it
survives restarts). Then:

- **hook** (local -> hub): :meth:`GateSync.scan` diffs the file against ``synced``; each
  difference is a local change to send (sets and unsets alike), kept until a snapshot
  says the hub has it (``applied_local_ms``), and sent again after a reconnect otherwise;
- **watcher** (hub -> local): :meth:`GateSync.apply_snapshot` writes to the file every gate
  whose hub value differs from the file's, unset ones removed, except gates with a local
  change in flight (the hub will have them next); ``synced`` moves along, so the file
  change it makes is not seen as a local change: the echo is suppressed by construction,
  not by timing;
- **join phase**: an agent started with ``join`` pushes nothing until its first snapshot
  is applied (a joining cluster takes the fleet's gates, it does not impose its own);
- **deployment type**, read from every snapshot (the hub's ``--deployment-type``; ``local``
  when unset): ``local`` syncs both ways, ``maas`` sends local changes up and never
  writes the hub's down.

The last write wins by hub revision: concurrent writes converge everywhere to the value
of the write the hub applied last.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from fleetsync.agent.localconfig import LocalConfig
from fleetsync.protocol import fleetsync_pb2 as pb

log = logging.getLogger(__name__)

MODES = ("local", "maas")


@dataclass
class Pending:
    """A local change the hub may not have yet."""

    value: bool | None  # None: unset
    changed_at_ms: int
    sent: bool = False


class GateSync:
    def __init__(self, config: LocalConfig, *, join: bool = False) -> None:
        self.config = config
        self.mode = "local"  # until a snapshot says otherwise
        self.joining = join
        self.state_path = config.path.with_name(config.path.name + ".synced")
        self.synced: dict[str, bool] = self._load_synced()
        self.pending: dict[str, Pending] = {}

    def _load_synced(self) -> dict[str, bool]:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}

    def _save_synced(self) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.synced, sort_keys=True))
        tmp.replace(self.state_path)

    # ---- hook: local -> hub ----------------------------------------------------------------

    def scan(self, now_ms: int | None = None) -> bool:
        """Read the local config; record its changes since ``synced`` as pending. True if any."""
        local = self.config.gates()
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        changed = False
        for key in sorted(local.keys() | self.synced.keys()):
            value = local.get(key)
            if value == self.synced.get(key):
                continue
            if self.joining:  # the fleet's gates win: the first snapshot overwrites this
                continue
            self.pending[key] = Pending(value, now_ms)
            if value is None:
                self.synced.pop(key, None)
            else:
                self.synced[key] = value
            changed = True
        if changed:
            self._save_synced()
        return changed

    def outgoing(self) -> list[pb.LocalChange]:
        """Local changes not sent on this connection yet (marked sent)."""
        out = []
        for key, change in sorted(self.pending.items()):
            if change.sent:
                continue
            change.sent = True
            value = "" if change.value is None else ("true" if change.value else "false")
            out.append(pb.LocalChange(key=key, unset=change.value is None, value=value, changed_at_ms=change.changed_at_ms))
        return out

    def disconnected(self) -> None:
        """What was sent and not confirmed goes again on the next connection."""
        for change in self.pending.values():
            change.sent = False

    # ---- watcher: hub -> local ------------------------------------------------------------

    def apply_snapshot(self, update: pb.SpecUpdate) -> dict[str, bool | None]:
        """Reconcile the local config with a hub snapshot; returns what was written locally."""
        doc: dict[str, Any] = json.loads(update.gates_json or b"{}")
        applied_ms = int(doc.get("applied_local_ms", 0))
        for key in [k for k, p in self.pending.items() if p.sent and p.changed_at_ms <= applied_ms]:
            del self.pending[key]  # the hub has it (or a later write of the key)
        mode = str(doc.get("deployment-type") or "local")
        if mode not in MODES:
            log.warning("the hub's deployment type %r is not one of %s: taken as local", mode, ", ".join(MODES))
            mode = "local"
        if mode != self.mode:
            log.info("deployment type %s: %s", mode, "gates sync both ways" if mode == "local" else "local gate changes go up, the hub's are not written here")
            self.mode = mode
        hub = {g["gate-key"]: (None if g.get("deleted") else bool(g["enabled"])) for g in doc.get("gates", [])}
        written: dict[str, bool | None] = {}
        if self.mode == "local":
            local = self.config.gates()
            for key, value in hub.items():
                if key in self.pending:
                    continue  # the hub will have this agent's change next: keep it
                if local.get(key) != value:
                    written[key] = value
                if value is None:
                    self.synced.pop(key, None)
                else:
                    self.synced[key] = value
            if written:
                self.config.update(written)
                log.info("gates from the hub (revision %d): %s", update.revision, ", ".join(f"{k}={_shown(v)}" for k, v in sorted(written.items())))
        if self.joining:  # what the file held before joining is taken as agreed: only later changes go up
            self.synced = self.config.gates()
            self.joining = False
            log.info("join phase over: local gate changes now go to the hub")
        self._save_synced()
        return written


def _shown(value: bool | None) -> str:
    return "unset" if value is None else str(value).lower()
