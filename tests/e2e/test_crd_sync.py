"""A CRD nobody here knew, created with kubectl in a running cluster, reaches the hub: its
objects are listed by kubectl on the hub (per cluster and fleet-wide, with the CRD's printer
columns) and watched; deleting the CRD removes them from the hub (watchers see DELETED).
The agent runs ``--types all`` and finds the CRD without a restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from fleetsync.client import Informer
from tests.harness import (
    API_TOKEN,
    PKI,
    Hub,
    Sim,
    check,
    create_token,
    fleetsync,
    http,
    hub_kubectl,
    hub_stream,
    run_sim,
    start_agent,
    start_hub,
    wait_converged,
    wait_until,
)

CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList, shortNames: [wd], categories: [toys]}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Colour, type: string, jsonPath: .spec.colour}
"""


def _widget(name: str, size: int) -> str:
    return f"""\
apiVersion: example.com/v1
kind: Widget
metadata: {{name: {name}, namespace: default}}
spec: {{size: {size}, colour: blue}}
"""


def _apply(sim: Sim, tmp: Path, text: str) -> None:
    manifest = tmp / f"manifest-{time.monotonic_ns()}.yaml"
    manifest.write_text(text)
    sim.kubectl("c1", "apply", "-f", str(manifest))


def _event(stream: Any) -> tuple[str, str]:
    """The next (type, object name) of a watch stream (one JSON event a line), bookmarks skipped."""
    for line in stream:
        event = json.loads(line)
        if event["type"] != "BOOKMARK":
            return event["type"], event["object"]["metadata"]["name"]
    raise AssertionError("the watch ended")


async def _informed(hub_url: str, path: str) -> set[str]:
    """The names an informer of ``path`` holds once it has synced."""
    informer = Informer(hub_url, path, token=API_TOKEN, ssl_context=PKI.context)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
        return {obj["metadata"]["name"] for obj in informer.cache.values()}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _hub_get(hub_url: str, *args: str) -> str:
    result = subprocess.run([*hub_kubectl(hub_url), "get", *args], capture_output=True, text=True, timeout=30)
    return result.stdout if result.returncode == 0 else ""


def test_a_crd_created_in_a_running_cluster_is_synced_listed_watched_and_removed_with_it(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "1", "--pods", "10", "--no-istio") as sim:
        db = f"sqlite:///{tmp_path / 'hub.db'}"
        hub = start_hub(tmp_path, db, tls=True)
        token = create_token(tmp_path, db, "c1")
        agent = start_agent(tmp_path, sim, "c1", hub.agent_url, token, "--types", "all", "--exclude-types", "events.k8s.io/*", "--discovery-interval", "0.5")
        try:
            wait_until(lambda: check(sim, hub, "c1").returncode == 0, timeout=60, what="the cluster's types to converge")
            created = time.monotonic()
            _apply(sim, tmp_path, CRD)
            _apply(sim, tmp_path, _widget("small", 1) + "---\n" + _widget("big", 9))
            cluster = f"{hub.url}/clusters/c1"
            wait_until(lambda: "big" in _hub_get(cluster, "widgets", "-n", "default"), timeout=30, what="the widgets on the hub")
            listable = time.monotonic() - created
            print(f"CRD created -> its objects listable on the hub: {listable:.2f}s")
            table = _hub_get(cluster, "widgets", "-n", "default").splitlines()
            assert table[0].split() == ["NAME", "SIZE", "COLOUR"], table
            assert sorted(line.split() for line in table[1:]) == [["big", "9", "blue"], ["small", "1", "blue"]], table
            fleet = _hub_get(hub.url, "wd", "-A")
            assert "big" in fleet and "small" in fleet, fleet
            assert sorted(_hub_get(cluster, "toys", "-A", "-o", "name").split()) == ["widget.example.com/big", "widget.example.com/small"]
            assert check(sim, hub, "c1", types="example.com/v1/Widget").returncode == 0
            by_cli = fleetsync("get", "widgets", "-A", "--hub", hub.url)  # a type the CLI was not built with: from the hub's discovery
            assert by_cli.returncode == 0, by_cli.stderr
            assert sorted(line.split()[2] for line in by_cli.stdout.splitlines()[1:]) == ["big", "small"], by_cli.stdout

            # the Python informer mirrors a type nobody here knew, as it mirrors Pods
            assert asyncio.run(_informed(hub.url, "/apis/example.com/v1/widgets")) == {"big", "small"}
            status, listed = http("GET", f"{hub.url}/apis/example.com/v1/widgets")  # fleet-wide, as an informer lists
            assert status == 200 and sorted(i["metadata"]["name"] for i in listed["items"]) == ["big", "small"], listed
            watch_url = f"{hub.url}/apis/example.com/v1/widgets?watch=1&resourceVersion={listed['metadata']['resourceVersion']}"
            with hub_stream(watch_url, timeout=30) as watch:
                _apply(sim, tmp_path, _widget("big", 10))
                assert _event(watch) == ("MODIFIED", "big")
                sim.kubectl("c1", "delete", "crd", "widgets.example.com")
                assert sorted([_event(watch), _event(watch)]) == [("DELETED", "big"), ("DELETED", "small")]
            assert _hub_get(cluster, "widgets", "-A", "-o", "name").split() == [], "deleting the CRD removed its objects from the hub"
            # and the agent stops syncing the type: the hub no longer serves it (no other cluster reported it)
            wait_until(lambda: http("GET", f"{hub.url}/apis/example.com/v1")[0] == 404, timeout=30, what="the type to leave the hub's discovery")
            assert agent.process.poll() is None, "the agent kept running"
        finally:
            agent.stop()
            hub.proc.stop()


def test_statefulsets_daemonsets_jobs_ingresses_claims_and_core_events_sync_under_churn(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "2", "--pods", "30", "--churn", "20") as sim:
        db = f"sqlite:///{tmp_path / 'hub.db'}"
        hub = start_hub(tmp_path, db, tls=True)
        agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, db, c), "--types", "all") for c in ("c1", "c2")]
        try:
            wait_until(lambda: sim.churn_operations() > 200, timeout=60, what="churn to change the clusters")
            sim.set_churn(0)
            wait_converged(sim, hub, types="all", timeout=90, what="every type the clusters serve to converge")
            report = check(sim, hub, types="all").stdout
            for kind in ("apps/v1/StatefulSet", "apps/v1/DaemonSet", "batch/v1/Job", "networking.k8s.io/v1/Ingress", "v1/PersistentVolumeClaim", "v1/Event"):
                assert kind in report, (kind, report)
            events = json_get(hub, "/clusters/c1/api/v1/events")["items"]
            assert events and all(e["kind"] == "Event" and e["involvedObject"]["kind"] == "Pod" for e in events), events[:2]
            assert {e["type"] for e in events} == {"Normal", "Warning"}
            sts = _hub_get(hub.url, "statefulsets", "-A", "-o", "name")  # fleet-wide, both clusters
            assert sts.split().count("statefulset.apps/db") == 2 * 3, sts
        finally:
            for agent in agents:
                agent.stop()
            hub.proc.stop()


def json_get(hub: Hub, path: str) -> Any:
    status, body = http("GET", f"{hub.url}{path}")
    assert status == 200, body
    return body


def test_secrets_are_synced_only_when_named_and_their_data_only_with_the_flag(tmp_path: Path) -> None:
    with run_sim(tmp_path, "--clusters", "3", "--pods", "2", "--no-istio") as sim:
        manifest = tmp_path / "secret.yaml"
        manifest.write_text("apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: default\ndata:\n  password: aHVudGVyMg==\n")
        for cluster in ("c1", "c2", "c3"):
            sim.kubectl(cluster, "apply", "-f", str(manifest))
        db = f"sqlite:///{tmp_path / 'hub.db'}"
        hub = start_hub(tmp_path, db, tls=True)
        flags = {"c1": ("--types", "all"), "c2": ("--types", "pods,secrets"), "c3": ("--types", "pods,secrets", "--sync-secret-data")}
        agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, db, c), *flags[c]) for c in flags]
        try:
            wait_converged(sim, hub, "c1", types="v1/Pod", timeout=60, what="c1 to sync its pods")
            synced = wait_until(lambda: _secret(hub, "c2") and _secret(hub, "c3"), timeout=60, what="the named Secrets on the hub")
            assert synced
            assert "data" not in _secret(hub, "c2"), "a Secret named is synced without its values"
            assert _secret(hub, "c3")["data"] == {"password": "aHVudGVyMg=="}, "with --sync-secret-data, with them"
            assert http("GET", f"{hub.url}/clusters/c1/api/v1/namespaces/default/secrets/db")[0] == 404, "all is every type but Secrets"
        finally:
            for agent in agents:
                agent.stop()
            hub.proc.stop()


def _secret(hub: Hub, cluster: str) -> dict[str, Any]:
    """The hub's copy of ``cluster``'s Secret default/db ({} if it has none)."""
    status, body = http("GET", f"{hub.url}/clusters/{cluster}/api/v1/namespaces/default/secrets/db")
    return body if status == 200 and isinstance(body, dict) else {}
