"""Works between the hub and its agents: what each cluster must hold down, status up.

Down: on connect, and whenever any replica writes a work (the store's ``works``
notification), each session computes its cluster's works snapshot: the works whose
placement targets the cluster, each with the *inventory* of what the agent last reported
applying for it, and the works the agent still has objects of although they are gone or no
longer target the cluster (``remove``). The inventory lives on the hub (the agent's status
rows), so an agent needs no state of its own to remove what a deleted or retargeted work
left behind, even across its restarts. A session sends a snapshot only when its cluster's
part changed.

Up: an agent's ``Status`` replaces the status rows of the works it names; ``removed``
forgets a work on that cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from fleetsync.model.works import CONDITIONS, MAX_MANIFESTS, WorkSpec, name_problem
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.store.contract import WorkRecord, WorkStatusRecord

#: The store notification channel of work writes (payload: the work's name).
WORKS_CHANNEL = "works"
#: Longest status message the hub keeps per manifest (a cluster's error can be long).
MAX_STATUS_MESSAGE = 2048


class SpecCache:
    """Parsed work specs by (name, generation): a spec is parsed once per hub replica, not
    once per session and push."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, int], WorkSpec] = {}

    def spec(self, work: WorkRecord) -> WorkSpec:
        key = (work.name, work.generation)
        if (found := self._specs.get(key)) is None:
            found = self._specs[key] = WorkSpec.from_json(work.spec)
            for old in [k for k in self._specs if k[0] == work.name and k[1] < work.generation]:
                del self._specs[old]
        return found


def inventory(status: WorkStatusRecord) -> list[str]:
    """The manifests an agent reported for a work on its cluster (what it may have applied)."""
    return [m["manifest"] for m in orjson.loads(status.manifests)]


def cluster_works(cluster: str, labels: Mapping[str, str], works: list[WorkRecord], statuses: list[WorkStatusRecord], specs: SpecCache) -> dict[str, Any]:
    """The works document of one cluster: ``{"works": [...], "remove": [...]}`` (see the module doc)."""
    reported = {s.work: inventory(s) for s in statuses if s.cluster == cluster}
    targeted: list[dict[str, Any]] = []
    for work in works:
        spec = specs.spec(work)
        if spec.placement.targets(cluster, labels):
            targeted.append({"name": work.name, "generation": work.generation, "manifests": list(spec.manifests), "inventory": reported.pop(work.name, [])})
    remove = [{"name": name, "inventory": ids} for name, ids in sorted(reported.items())]
    return {"works": targeted, "remove": remove}


def snapshot_messages(doc: dict[str, Any], *, max_bytes: int) -> list[pb.SpecUpdate]:
    """A cluster's works document as SpecUpdates of at most about ``max_bytes`` each (a work is
    never split: the API bounds a work well below one message)."""
    chunks: list[dict[str, list[Any]]] = [{"works": [], "remove": []}]
    size = 0
    for part in ("works", "remove"):
        for entry in doc[part]:
            entry_size = len(orjson.dumps(entry))
            if size and size + entry_size > max_bytes:
                chunks.append({"works": [], "remove": []})
                size = 0
            chunks[-1][part].append(entry)
            size += entry_size
    revision = max((w["generation"] for w in doc["works"]), default=0)
    return [pb.SpecUpdate(revision=revision, works_json=orjson.dumps(chunk), full=True, chunk=i, last=i == len(chunks) - 1) for i, chunk in enumerate(chunks)]


def status_records(cluster: str, status: pb.Status, *, now: float) -> tuple[list[WorkStatusRecord], str]:
    """The status rows an agent's Status message writes, and what is wrong with it ("" if nothing)."""
    by_work: dict[str, list[pb.ManifestStatus]] = {}
    for m in status.manifests:
        by_work.setdefault(m.work, []).append(m)
    records: list[WorkStatusRecord] = []
    for work, manifests in by_work.items():
        if problem := name_problem(work):
            return [], f"status: {problem}"
        if len(manifests) > MAX_MANIFESTS:
            return [], f"status of work {work}: {len(manifests)} manifests, more than a work may hold ({MAX_MANIFESTS})"
        if bad := next((m.condition for m in manifests if m.condition not in CONDITIONS), None):
            return [], f"status of work {work}: unknown condition {bad!r} (expected one of {', '.join(CONDITIONS)})"
        if len({m.generation for m in manifests}) > 1:
            return [], f"status of work {work}: manifests of several generations in one status"
        rows = [{"manifest": m.manifest, "condition": m.condition, "message": m.message[:MAX_STATUS_MESSAGE]} for m in manifests]
        records.append(WorkStatusRecord(work, cluster, manifests[0].generation, orjson.dumps(rows), now))
    return records, ""
