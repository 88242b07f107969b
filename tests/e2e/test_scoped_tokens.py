"""Read tokens scoped to clusters (by name and admin-label selector), namespaces and types, end
to end: lists, gets, watches, the events list and stream, and the clusters list show only what
the token may see; anything named outside its scope is 403; a cluster labelled later enters it.
(The dashboard with a scoped token is driven in Chromium in ``test_dashboard.py``.)"""

from __future__ import annotations

import json
import queue
import threading
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness import Hub, Sim, fleetsync, http, label_cluster, start_agent, start_hub, wait_converged, wait_until

TYPES = "v1/Service,v1/Pod"
IN_SCOPE_NAMESPACES = ("ns-0", "ns-1")


def scoped_token(db: str, name: str, *flags: str) -> str:
    created = fleetsync("token", "create", name, "--role", "read", "--db", db, *flags)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def truth_keys(sim: Sim, cluster: str, gvk: str, namespaces: tuple[str, ...]) -> set[tuple[str, str, str]]:
    return {(cluster, o["metadata"]["namespace"], o["metadata"]["name"]) for o in sim.truth(cluster, gvk) if o["metadata"]["namespace"] in namespaces}


def listed_keys(body: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(o["metadata"]["labels"]["fleetsync.io/cluster"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in body["items"]}


class Stream:
    """A hub stream (a watch, the events stream) read line by line in a thread, with a scoped token."""

    def __init__(self, url: str, token: str) -> None:
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.response = urllib.request.urlopen(urllib.request.Request(url, headers=as_(token)), timeout=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.response:
                self.lines.put(json.loads(line))
        finally:
            self.lines.put(None)

    def until(self, predicate: Any, *, timeout: float = 30) -> list[dict[str, Any]]:
        """Every line up to and including the first that ``predicate`` accepts."""
        seen = []
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"the stream ended before the awaited line; it sent {seen}"
            seen.append(line)
            if predicate(line):
                return seen

    def rest(self) -> list[dict[str, Any]]:
        """Every line to the end of the stream."""
        out = []
        while (line := self.lines.get(timeout=30)) is not None:
            out.append(line)
        return out

    def close(self) -> None:
        self.response.close()


def service(sim: Sim, cluster: str, namespace: str, name: str, tmp: Path) -> None:
    manifest = tmp / f"{cluster}-{namespace}-{name}.yaml"
    manifest.write_text(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}\n"
    )
    sim.kubectl(cluster, "apply", "--server-side", "-f", str(manifest))


def test_a_scoped_token_reads_only_its_clusters_namespaces_and_types(tmp_path: Path, quiet_sim: Sim) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    agents = [start_agent(tmp_path, quiet_sim, c, hub.agent_url, _agent_token(tmp_path, db, c), "--types", TYPES) for c in ("c1", "c2", "c3")]
    token = scoped_token(
        db, "team", "--clusters", "c1", "--cluster-selector", "env=prod", "--namespaces", ",".join(IN_SCOPE_NAMESPACES), "--types", "pods,services"
    )
    made: list[tuple[str, str, str]] = []
    try:
        wait_converged(quiet_sim, hub, types=TYPES, timeout=90, what="c1, c2, c3 synced")
        _check_refusals(hub, token)

        # lists: fleet-wide and per cluster, only c1's pods of ns-0 and ns-1
        status, body = http("GET", f"{hub.url}/api/v1/pods", headers=as_(token))
        assert status == 200 and listed_keys(body) == truth_keys(quiet_sim, "c1", "v1/Pod", IN_SCOPE_NAMESPACES), body.get("items", body)[:3]
        paged: set[tuple[str, str, str]] = set()
        cont = ""
        while True:  # paging walks the same scoped query
            status, page = http("GET", f"{hub.url}/api/v1/pods?limit=7{'&continue=' + cont if cont else ''}", headers=as_(token))
            assert status == 200 and len(page["items"]) <= 7, page
            paged |= listed_keys(page)
            if not (cont := page["metadata"].get("continue", "")):
                break
        assert paged == truth_keys(quiet_sim, "c1", "v1/Pod", IN_SCOPE_NAMESPACES)
        status, body = http("GET", f"{hub.url}/clusters/c1/api/v1/pods", headers=as_(token))
        assert status == 200 and {o["metadata"]["namespace"] for o in body["items"]} == set(IN_SCOPE_NAMESPACES), body
        status, body = http("GET", f"{hub.url}/clusters/c1/api/v1/namespaces/ns-1/services", headers=as_(token))
        assert status == 200 and len(body["items"]) == len(truth_keys(quiet_sim, "c1", "v1/Service", ("ns-1",))) > 0, body

        # a get of a named object in scope; the same name in a cluster outside it is 403
        name = sorted(truth_keys(quiet_sim, "c1", "v1/Pod", ("ns-0",)))[0][2]
        status, body = http("GET", f"{hub.url}/clusters/c1/api/v1/namespaces/ns-0/pods/{name}", headers=as_(token))
        assert status == 200 and body["metadata"]["name"] == name, body
        assert http("GET", f"{hub.url}/clusters/c1/api/v1/namespaces/ns-0/pods/no-such-pod", headers=as_(token))[0] == 404  # in scope: absent
        other = sorted(truth_keys(quiet_sim, "c3", "v1/Pod", ("ns-0",)))[0][2]
        status, body = http("GET", f"{hub.url}/clusters/c3/api/v1/namespaces/ns-0/pods/{other}", headers=as_(token))
        assert status == 403 and "outside its scope" in body["message"], body

        # the clusters list, the events list and the events stream: c1 only
        status, body = http("GET", f"{hub.url}/api/v1/clusters", headers=as_(token))
        assert status == 200 and [c["name"] for c in body["items"]] == ["c1"], body
        status, body = http("GET", f"{hub.url}/apis/fleetsync.io/v1/clusters", headers=as_(token))  # the Cluster resource too
        assert status == 200 and [c["metadata"]["name"] for c in body["items"]] == ["c1"], body
        assert http("GET", f"{hub.url}/apis/fleetsync.io/v1/clusters/c1", headers=as_(token))[0] == 200
        status, body = http("GET", f"{hub.url}/apis/fleetsync.io/v1/fleetsyncevents?limit=10000", headers=as_(token))
        assert status == 200 and body["items"] and {e["cluster"] for e in body["items"]} == {"c1"}, body
        assert {e["cluster"] for e in http("GET", f"{hub.url}/apis/fleetsync.io/v1/fleetsyncevents?limit=10000")[1]["items"]} >= {
            "c1",
            "c2",
            "c3",
        }  # the admin's
        streamed = Stream(f"{hub.url}/apis/fleetsync.io/v1/fleetsyncevents?watch=1&since=0&timeoutSeconds=2", token).rest()
        assert streamed and {e["cluster"] for e in streamed} == {"c1"}, streamed

        # a fleet-wide watch: changes outside the scope never arrive
        rv = http("GET", f"{hub.url}/api/v1/services", headers=as_(token))[1]["metadata"]["resourceVersion"]
        watch = Stream(f"{hub.url}/api/v1/services?watch=1&resourceVersion={rv}&timeoutSeconds=120", token)
        for key in (("c1", "ns-2", "scoped-out-ns"), ("c3", "ns-0", "scoped-out-cluster"), ("c1", "ns-0", "scoped-in")):
            service(quiet_sim, *key, tmp_path)
            made.append(key)
            wait_until(lambda key=key: http("GET", f"{hub.url}/clusters/{key[0]}/api/v1/namespaces/{key[1]}/services/{key[2]}")[0] == 200, timeout=30)
        events = watch.until(lambda e: e["object"]["metadata"]["name"] == "scoped-in")
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "scoped-in")], events

        # c2 labelled env=prod enters the scope: the watch ends with 410 (list again), and the list shows it
        label_cluster(hub.url, "c2", env="prod")
        gone = watch.until(lambda e: e["type"] == "ERROR")[-1]
        assert gone["object"]["code"] == 410 and "c2 entered" in gone["object"]["message"], gone
        watch.close()
        expected = truth_keys(quiet_sim, "c1", "v1/Pod", IN_SCOPE_NAMESPACES) | truth_keys(quiet_sim, "c2", "v1/Pod", IN_SCOPE_NAMESPACES)
        wait_until(lambda: listed_keys(http("GET", f"{hub.url}/api/v1/pods", headers=as_(token))[1]) == expected, timeout=30, what="c2 in the list")
        assert http("GET", f"{hub.url}/clusters/c2/api/v1/pods", headers=as_(token))[0] == 200
        assert [c["name"] for c in http("GET", f"{hub.url}/api/v1/clusters", headers=as_(token))[1]["items"]] == ["c1", "c2"]
        assert http("GET", f"{hub.url}/clusters/c3/api/v1/pods", headers=as_(token))[0] == 403

        # c2 unlabelled leaves it: a watch of c2's own path ends with 410, and c2 is refused again
        rv = http("GET", f"{hub.url}/clusters/c2/api/v1/services", headers=as_(token))[1]["metadata"]["resourceVersion"]
        c2_watch = Stream(f"{hub.url}/clusters/c2/api/v1/services?watch=1&resourceVersion={rv}&timeoutSeconds=120", token)
        label_cluster(hub.url, "c2", env=None)
        left = c2_watch.until(lambda e: e["type"] == "ERROR")[-1]
        assert left["object"]["code"] == 410 and "c2 left" in left["object"]["message"], left
        c2_watch.close()
        assert http("GET", f"{hub.url}/clusters/c2/api/v1/pods", headers=as_(token))[0] == 403

        # an admin token and an unscoped read token still see everything
        everything = listed_keys(http("GET", f"{hub.url}/api/v1/pods")[1])
        assert {k[0] for k in everything} == {"c1", "c2", "c3"} and {k[1] for k in everything} > set(IN_SCOPE_NAMESPACES)
        reader = scoped_token(db, "everyone")
        assert listed_keys(http("GET", f"{hub.url}/api/v1/pods", headers=as_(reader))[1]) == everything
        listing = fleetsync("token", "list", "--db", db).stdout
        assert "clusters=c1 selector=env=prod namespaces=ns-0,ns-1 types=v1/Pod,v1/Service" in listing, listing
    finally:
        for cluster, namespace, name in made:
            quiet_sim.kubectl(cluster, "delete", "service", name, "-n", namespace, "--ignore-not-found", check=False)
        for agent in agents:
            agent.stop()
        hub.proc.stop()


def _agent_token(tmp: Path, db: str, cluster: str) -> Path:
    created = fleetsync("token", "create", cluster, "--db", db)
    assert created.returncode == 0, created.stderr
    path = tmp / f"{cluster}.token"
    path.write_text(created.stdout.strip())
    return path


def _check_refusals(hub: Hub, token: str) -> None:
    """Everything named outside the scope, and every route that does not apply a scope, is 403."""
    outside = [
        "/clusters/c3/api/v1/pods",  # a cluster outside it
        "/clusters/no-such-cluster/api/v1/pods",  # 403 too: whether a cluster exists is not told
        "/clusters/c1/api/v1/namespaces/ns-2/pods",  # a namespace outside it
        "/api/v1/namespaces/ns-2/pods",
        "/clusters/c1/api/v1/configmaps",  # a type outside it
        "/clusters/c1/api/v1/nodes",  # cluster-scoped, under a namespace limit
        "/apis/fleetsync.io/v1/fleetsyncevents?cluster=c3",
        "/apis/fleetsync.io/v1/clusters/c3",
        "/api/v1/clusters/c3/labels",
        "/api/v1/servicegraph",  # ServiceEdge is not among its types
        "/api/v1/works",  # routes that apply no scope
        "/1.0/feature-gates",
        "/metrics",
        "/api/v1/settings",
    ]
    for path in outside:
        status, body = http("GET", f"{hub.url}{path}", headers=as_(token))
        message = body.get("error") if path.startswith("/1.0/") else body.get("message")  # /1.0/: microcluster's error shape
        assert status == 403 and 'token "team"' in str(message), (path, status, body)
    status, body = http("GET", f"{hub.url}/clusters/c3/api/v1/pods", headers=as_(token))
    assert "may read only clusters c1 or labelled env=prod; namespaces ns-0,ns-1; types v1/Pod,v1/Service" in body["message"], body
    assert http("GET", f"{hub.url}/api/v1/clusters/c1/labels", headers=as_(token))[0] == 200
    assert http("GET", f"{hub.url}/api", headers=as_(token))[0] == 200  # discovery is not scoped
