"""The agent's gate sync (``agent/gatesync.py``) on a real file target: what revision its local
changes are based on, across a lost connection, and the join decision of its first snapshot."""

from __future__ import annotations

import json
from pathlib import Path

from fleetsync.agent.gatesync import GateSync
from fleetsync.agent.localconfig import FileTarget
from fleetsync.protocol import fleetsync_pb2 as pb


def snapshot(revision: int, gates: dict[str, bool | None], *, applied_local_ms: int = 0, join: bool = False) -> pb.SpecUpdate:
    """A hub snapshot of ``gates`` (None: deleted, as the hub lists a gate unset since)."""
    doc = {
        "gates": [{"gate-key": k, "enabled": bool(v), "revision": revision, "deleted": v is None} for k, v in gates.items()],
        "applied_local_ms": applied_local_ms,
        **({"join": True} if join else {}),
    }
    return pb.SpecUpdate(revision=revision, gates_json=json.dumps(doc).encode(), full=True)


def write(path: Path, gates: dict[str, bool]) -> None:
    path.write_text(json.dumps(gates))


async def test_a_change_resent_after_a_lost_connection_keeps_the_revision_it_was_based_on(tmp_path: Path) -> None:
    path = tmp_path / "gates.json"
    sync = GateSync(FileTarget(path))
    assert not await sync.scan(), "nothing is scanned before the first snapshot: it decides whether the cluster joins"
    await sync.apply_snapshot(snapshot(3, {"feature.x": False}))
    write(path, {"feature.x": True})
    assert await sync.scan(now_ms=1_000)
    [sent] = sync.outgoing()
    assert (sent.key, sent.value, sent.base_revision) == ("feature.x", "true", 3)
    sync.disconnected()  # the confirming snapshot never came
    [again] = sync.outgoing()
    assert again.base_revision == 3 and again.changed_at_ms == 1_000, "the resend is the same change, based on the same revision"
    # the hub dropped it (an admin wrote feature.x=false at 5): its snapshot counts the change as reflected
    written = await sync.apply_snapshot(snapshot(5, {"feature.x": False}, applied_local_ms=1_000))
    assert written == {"feature.x": False} and json.loads(path.read_text()) == {"feature.x": False}
    assert not sync.pending and not sync.outgoing()
    write(path, {"feature.x": True})
    assert await sync.scan(now_ms=2_000)
    assert [c.base_revision for c in sync.outgoing()] == [5], "a new change is based on what the agent has now"


async def test_a_new_cluster_joins_and_a_bootstrap_pushes_its_gates(tmp_path: Path) -> None:
    joining = tmp_path / "new.json"
    write(joining, {"feature.x": False, "feature.own": True})
    sync = GateSync(FileTarget(joining))
    assert await sync.apply_snapshot(snapshot(4, {"feature.x": True}, join=True)) == {"feature.x": True}
    assert not sync.pending, "a joining cluster pushes nothing of its own"
    assert json.loads(joining.read_text()) == {"feature.x": True, "feature.own": True}

    booting = tmp_path / "bootstrap.json"
    write(booting, {"feature.x": False, "feature.own": True})
    boot = GateSync(FileTarget(booting), bootstrap=True)
    assert await boot.apply_snapshot(snapshot(4, {"feature.x": True}, join=True)) == {}
    assert {c.key: (c.value, c.base_revision) for c in boot.outgoing()} == {"feature.x": ("false", 4), "feature.own": ("true", 4)}
