"""Works between the hub and its agents: what each cluster must hold down, status up.

Down: on connect, and whenever any replica writes a work (the store's ``works``
notification), each session computes its cluster's works snapshot: the works whose
placement targets the cluster, each with the *inventory* of what the agent last reported
applying for it, and the works the agent still has objects of although they are gone or no
longer target the cluster (``remove``). The inventory lives on the hub (the agent's status
rows), so an agent needs no state of its own to remove what a deleted or retargeted work
left behind, even across its restarts. A session sends a snapshot only when its cluster's
part changed.

Placement matches the labels an admin set on the hub (:mod:`fleetsync.hub.clusterlabels`),
never the metadata an agent reports about itself.

Up: an agent's ``Status`` replaces the status rows of the works it names; ``removed``
forgets a work on that cluster. An agent may only report works that target its cluster or
that it holds an inventory of (:func:`status_allowed`): a token must not write status rows
for works that are none of its business.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from fleetsync.model.works import CONDITIONS, MAX_MANIFESTS, WorkSpec, name_problem
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.rules import MAX_COUNTER
from fleetsync.store.contract import WorkRecord, WorkStatusRecord

#: The store notification channel of work writes (payload: the work's name).
WORKS_CHANNEL = "works"
#: Longest status message the hub keeps per manifest (a cluster's error can be long).
MAX_STATUS_MESSAGE = 2048
#: How many refused work names one refusal event shows (the rest are counted).
SHOWN_REFUSED = 5


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
            entry = {"name": work.name, "generation": work.generation, "manifests": list(spec.manifests), "inventory": reported.pop(work.name, [])}
            if spec.adopt:
                entry["adopt"] = True
            targeted.append(entry)
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
        if manifests[0].generation > MAX_COUNTER:
            return [], f"status of work {work}: generation {manifests[0].generation} is over the largest the hub keeps"
        rows = [{"manifest": m.manifest, "condition": m.condition, "message": m.message[:MAX_STATUS_MESSAGE]} for m in manifests]
        records.append(WorkStatusRecord(work, cluster, manifests[0].generation, orjson.dumps(rows), now))
    return records, ""


def status_allowed(cluster: str, labels: Mapping[str, str], works: list[WorkRecord], held: Mapping[str, WorkStatusRecord], specs: SpecCache) -> set[str]:
    """The works ``cluster``'s agent may report status of: those whose placement targets it
    (by its admin ``labels``) and those it holds an inventory of (``held``: its status rows,
    such as a removed or retargeted work it is still taking down)."""
    return {w.name for w in works if specs.spec(w).placement.targets(cluster, labels)} | set(held)


def foreign_status_message(cluster: str, works: list[str]) -> str:
    """The one event of a Status naming works that are not the cluster's (bounded: a few names, then a count)."""
    shown = ", ".join(works[:SHOWN_REFUSED]) + (f" and {len(works) - SHOWN_REFUSED} more" if len(works) > SHOWN_REFUSED else "")
    return (
        f"status of {len(works)} work{'s' if len(works) != 1 else ''} that neither target cluster {cluster!r} (by its admin labels) "
        f"nor were applied there refused, nothing written for them: {shown}"
    )
