"""An agent checks a works snapshot before it acts on it: one that does not hold valid works
(whatever sent it) is ignored, and the works it holds stay as they are."""

from __future__ import annotations

from typing import Any

import orjson
from kubernetes_asyncio import client

from fleetsync.agent.metrics import AgentMetrics
from fleetsync.agent.works import WorkApplier
from fleetsync.protocol import fleetsync_pb2 as pb


def update(doc: Any, *, chunk: int = 0, last: bool = True) -> pb.SpecUpdate:
    return pb.SpecUpdate(works_json=doc if isinstance(doc, bytes) else orjson.dumps(doc), full=True, chunk=chunk, last=last)


def cm(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}


async def test_a_snapshot_that_is_not_valid_is_ignored_and_the_works_held_stay() -> None:
    api = client.ApiClient(client.Configuration())
    applier = WorkApplier(api, metrics=AgentMetrics("c1"), on_report=lambda: None)
    good = {"works": [{"name": "web", "generation": 2, "manifests": [cm("web")], "inventory": ["v1/ConfigMap/default/old"], "adopt": True}], "remove": []}
    applier.snapshot(update(good))
    assert applier._desired is not None and applier._desired["web"].adopt and applier._desired["web"].inventory == ["v1/ConfigMap/default/old"]
    for bad in (
        b"not json",
        [1, 2],
        {"works": [{"name": "web"}]},
        {"works": [{"name": "Web!", "generation": 1, "manifests": [cm("a")]}]},
        {"works": [{"name": "web", "generation": 3, "manifests": [{"kind": "ConfigMap"}]}]},
        {"works": [{"name": "web", "generation": 3, "manifests": [cm("a")], "inventory": ["no-slashes"]}]},
        {"works": [], "remove": [{"name": "gone", "inventory": ["v1/ConfigMap"]}]},
        {"works": "everything"},
    ):
        applier.snapshot(update(bad))
        assert applier._desired is not None and list(applier._desired) == ["web"] and applier._desired["web"].generation == 2, bad
    # a chunked snapshot whose first chunk did not parse is void as a whole
    applier.snapshot(update(b"{", chunk=0, last=False))
    applier.snapshot(update({"works": []}, chunk=1, last=True))
    assert applier._desired is not None and list(applier._desired) == ["web"]
    await api.close()
