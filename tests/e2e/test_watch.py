"""Watches on the hub: ``kubectl get -w`` per cluster, a 410 for a revision the change log no
longer holds, and the events stream (API and ``fleetsync events -w``)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.harness import (
    BIN,
    Sim,
    create_token,
    http,
    hub_events,
    hub_kubectl,
    hub_stream,
    kubectl_binary,
    label_cluster,
    start_agent,
    start_hub,
    wait_converged,
    wait_until,
)

FAST = ("--types", "v1/Service,v1/Pod")


def test_kubectl_get_watch_follows_a_cluster_through_the_hub(tmp_path: Path, quiet_sim: Sim) -> None:
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, tls=True)  # kubectl sends its token over HTTPS only
    agent = start_agent(tmp_path, sim, "c1", hub.agent_url, create_token(tmp_path, db, "c1"), *FAST)
    out = (tmp_path / "kubectl-watch.out").open("w")
    kubectl: subprocess.Popen[bytes] | None = None
    try:
        wait_converged(sim, hub, "c1", timeout=60, what="c1 synced")
        kubectl = subprocess.Popen([*hub_kubectl(f"{hub.url}/clusters/c1"), "get", "pods", "-A", "-w", "-o", "name"], stdout=out, stderr=subprocess.STDOUT)
        pods = len(sim.truth("c1", "v1/Pod"))
        wait_until(lambda: len((tmp_path / "kubectl-watch.out").read_text().splitlines()) >= pods, timeout=30, what="kubectl's list")
        listed = len((tmp_path / "kubectl-watch.out").read_text().splitlines())
        sim.set_churn(20)
        # kubectl prints the list first, then a line for every change as it comes through the hub
        wait_until(lambda: len((tmp_path / "kubectl-watch.out").read_text().splitlines()) > listed + 20, timeout=30, what="kubectl -w printing changes")
        assert all(line.startswith("pod/") for line in (tmp_path / "kubectl-watch.out").read_text().splitlines()), "only pods, no errors"
        assert kubectl.poll() is None, (tmp_path / "kubectl-watch.out").read_text()[-2000:]
        # the hub stops at once with the watch open (the watch ends; kubectl would reconnect)
        started = time.monotonic()
        hub.proc.stop()
        assert hub.proc.process.returncode == 0 and time.monotonic() - started < 5, (hub.proc.process.returncode, time.monotonic() - started)
    finally:
        if kubectl is not None:
            kubectl.kill()
            kubectl.wait()
        out.close()
        agent.stop()
        hub.proc.stop()


def test_a_watch_from_a_revision_no_longer_held_gets_410_expired(tmp_path: Path, quiet_sim: Sim) -> None:
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, "--change-log-keep", "100")
    agent = start_agent(tmp_path, sim, "c1", hub.agent_url, create_token(tmp_path, db, "c1"), *FAST)
    try:
        wait_converged(sim, hub, "c1", timeout=60, what="c1 synced (more changes than the log keeps)")
        with hub_stream(f"{hub.url}/clusters/c1/api/v1/pods?watch=1&resourceVersion=1", timeout=10) as response:
            event = json.loads(response.readline())
        assert event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired", event
    finally:
        agent.stop()
        hub.proc.stop()


def test_events_stream_to_api_watchers_and_to_fleetsync_events_w(tmp_path: Path, quiet_sim: Sim) -> None:
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    follower = (tmp_path / "events-w.out").open("w")
    cli = subprocess.Popen([str(BIN / "fleetsync"), "events", "-w", "--cluster", "c2", "--hub", hub.url], stdout=follower, stderr=subprocess.STDOUT)
    agent = start_agent(tmp_path, sim, "c2", hub.agent_url, create_token(tmp_path, db, "c2"), *FAST)
    try:
        wait_until(lambda: hub_events(hub, reason="Connected", cluster="c2"), timeout=30, what="c2 connected")
        status, _ = http("POST", f"{hub.url}/api/v1/clusters/c2/resync")
        assert status == 202
        text = lambda: (tmp_path / "events-w.out").read_text()  # noqa: E731
        wait_until(lambda: "Connected" in text() and "ResyncRequested" in text(), timeout=30, what="fleetsync events -w printing new events")
        assert cli.poll() is None, text()
        # the API stream itself: from an id, filtered by reason
        first = hub_events(hub, cluster="c2")[0]["id"]
        with hub_stream(f"{hub.url}/apis/fleetsync.io/v1/fleetsyncevents?watch=1&since={first - 1}&reason=Connected&timeoutSeconds=2", timeout=10) as response:
            streamed = [json.loads(line) for line in response.read().splitlines() if line.strip()]
        assert [e["reason"] for e in streamed] == ["Connected"] and streamed[0]["cluster"] == "c2"
    finally:
        cli.kill()
        cli.wait()
        follower.close()
        agent.stop()
        hub.proc.stop()


def test_the_fleet_as_one_api_server_lists_and_watches_across_clusters(tmp_path: Path, quiet_sim: Sim) -> None:
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db, tls=True)  # kubectl sends its token over HTTPS only
    for cluster, region in (("c1", "eu"), ("c2", "us")):
        label_cluster(hub.url, cluster, region=region)  # by an admin: what clusterSelector matches
    agents = [start_agent(tmp_path, sim, c, hub.agent_url, create_token(tmp_path, db, c), *FAST) for c in ("c1", "c2")]
    try:
        wait_converged(sim, hub, "c1", "c2", timeout=60, what="c1 and c2 synced")
        c1_pods, c2_pods = len(sim.truth("c1", "v1/Pod")), len(sim.truth("c2", "v1/Pod"))
        # kubectl against the hub's root: every cluster's pods, selectable by their cluster label
        kubectl = hub_kubectl(hub.url)
        every = subprocess.run([*kubectl, "get", "pods", "-A", "-o", "name"], capture_output=True, text=True, timeout=60)
        assert every.returncode == 0, every.stderr
        assert len(every.stdout.splitlines()) == c1_pods + c2_pods
        # kubectl --chunk-size pages through the hub with limit/continue, and gets the same pods
        chunked = subprocess.run([*kubectl, "get", "pods", "-A", "-o", "name", "--chunk-size=7", "-v=6"], capture_output=True, text=True, timeout=60)
        assert chunked.returncode == 0, chunked.stderr
        assert sorted(chunked.stdout.splitlines()) == sorted(every.stdout.splitlines())
        assert chunked.stderr.count("limit=7") >= (c1_pods + c2_pods) // 7 and "continue=" in chunked.stderr, chunked.stderr[-2000:]
        only_c2 = subprocess.run([*kubectl, "get", "pods", "-A", "-l", "fleetsync.io/cluster=c2", "-o", "json"], capture_output=True, text=True, timeout=60)
        items = json.loads(only_c2.stdout)["items"]
        assert len(items) == c2_pods and {i["metadata"]["labels"]["fleetsync.io/cluster"] for i in items} == {"c2"}
        # a cluster selector on the clusters' labels, and pages that run across clusters
        status, body = http("GET", f"{hub.url}/api/v1/pods?clusterSelector=region%3Deu")
        assert status == 200 and len(body["items"]) == c1_pods
        assert {i["metadata"]["labels"]["fleetsync.io/cluster"] for i in body["items"]} == {"c1"}
        seen, token = 0, ""
        while True:
            status, page = http("GET", f"{hub.url}/api/v1/pods?limit=70" + (f"&continue={token}" if token else ""))
            seen += len(page["items"])
            token = page["metadata"].get("continue", "")
            if not token:
                break
        assert seen == c1_pods + c2_pods
        status, body = http("GET", f"{hub.url}/api/v1/namespaces/default/pods/anything")
        assert status == 400 and "names are per cluster" in body["message"], body
        status, body = http("GET", f"{hub.url}/api/v1/pods?clusterSelector=region%3D%3D%3D")
        assert status == 400 and "clusterSelector" in body["message"], body
        # a fleet-wide watch with a cluster selector sees only the selected clusters' changes
        rev = http("GET", f"{hub.url}/api/v1/pods?limit=1")[1]["metadata"]["resourceVersion"]
        sim.set_churn(20)
        url = f"{hub.url}/api/v1/pods?watch=1&resourceVersion={rev}&clusterSelector=region%3Dus&timeoutSeconds=4"
        with hub_stream(url, timeout=15) as response:
            events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
        sim.set_churn(0)
        assert events and {e["object"]["metadata"]["labels"]["fleetsync.io/cluster"] for e in events} == {"c2"}
    finally:
        for agent in agents:
            agent.stop()
        hub.proc.stop()


def test_a_selective_watch_sees_objects_enter_and_leave_its_selection_and_nothing_else(tmp_path: Path, quiet_sim: Sim) -> None:
    """As from an API server: an object relabelled into the selection is ADDED, out of it DELETED,
    changed in it MODIFIED; changes to objects outside it are not sent at all."""
    sim = quiet_sim
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    agent = start_agent(tmp_path, sim, "c3", hub.agent_url, create_token(tmp_path, db, "c3"), *FAST)
    services = f"{hub.url}/clusters/c3/api/v1/namespaces/default/services"

    def tier(name: str) -> str | None:
        status, body = http("GET", f"{services}/{name}")
        return (body["metadata"].get("labels") or {}).get("tier") if status == 200 else None

    def change(name: str, verb: str, *args: str, then: str) -> None:
        """Change a Service in the cluster; wait for the hub to have it (one change at a time)."""
        sim.kubectl("c3", "-n", "default", verb, "--overwrite", "service", name, *args)
        wait_until(
            lambda: (
                tier(name) == then and (verb != "annotate" or args[0].split("=")[0] in http("GET", f"{services}/{name}")[1]["metadata"].get("annotations", {}))
            ),
            timeout=30,
            what=f"{name}: {verb} {args} on the hub",
        )

    def read_until(response: Any, last: tuple[str, str]) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        while not events or events[-1] != last:
            event = json.loads(response.readline())
            events.append((event["type"], event["object"]["metadata"]["name"]))
        return events

    try:
        for name, label in (("sel-a", "web"), ("sel-b", "db"), ("sel-c", "db")):
            manifest = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"tier": label}}, "spec": {"ports": [{"port": 80}]}}
            created = subprocess.run(
                [kubectl_binary(), "--kubeconfig", str(sim.kubeconfig("c3")), "-n", "default", "create", "-f", "-"],
                input=json.dumps(manifest), text=True, capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
        wait_until(lambda: [tier(n) for n in ("sel-a", "sel-b", "sel-c")] == ["web", "db", "db"], timeout=60, what="the Services on the hub")
        status, listed = http("GET", f"{services}?labelSelector=tier%3Dweb")
        assert status == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["sel-a"]
        # an informer's watch: from the list's version
        url = f"{services}?watch=1&labelSelector=tier%3Dweb&timeoutSeconds=60"
        with hub_stream(f"{url}&resourceVersion={listed['metadata']['resourceVersion']}", timeout=60) as response:
            change("sel-c", "annotate", "touched=1", then="db")  # outside: nothing
            change("sel-b", "label", "tier=web", then="web")  # enters
            change("sel-b", "annotate", "note=1", then="web")  # changes inside
            change("sel-a", "label", "tier=api", then="api")  # leaves
            change("sel-c", "label", "tier=web", then="web")  # enters: the last event
            assert read_until(response, ("ADDED", "sel-c")) == [("ADDED", "sel-b"), ("MODIFIED", "sel-b"), ("DELETED", "sel-a"), ("ADDED", "sel-c")]
        # a watch from scratch: the selection as ADDED, then only what touches it
        with hub_stream(url, timeout=60) as response:
            change("sel-a", "annotate", "touched=1", then="api")  # outside: nothing
            change("sel-b", "label", "tier=db", then="db")  # leaves: the last event
            assert read_until(response, ("DELETED", "sel-b")) == [("ADDED", "sel-b"), ("ADDED", "sel-c"), ("DELETED", "sel-b")]
    finally:
        agent.stop()
        hub.proc.stop()
