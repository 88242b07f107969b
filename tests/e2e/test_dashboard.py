"""The web dashboard (``GET /``), driven in a real browser: Debian's Chromium through Playwright.

A hub with no agents yet, the page signed in with a token, then agents starting: the clusters
appear live (from the events stream, no reload); a Service created in a cluster shows up in the
cluster view, its YAML one click away; a stopped agent turns its cluster stale; a gate is toggled
with an admin token and refused with a read one; a work is applied and its status per cluster shown;
a token scoped to one cluster and namespace sees only those.
Screenshots go to ``$FLEETSYNC_ARTIFACTS`` (default: ``dashboard-artifacts`` in pytest's base temp dir).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.harness import API_TOKEN, AgentFleet, Sim, create_token, fleetsync, free_port, http, spawn, start_hub, wait_until

CHROMIUM = os.environ.get("FLEETSYNC_CHROMIUM", "/usr/bin/chromium")
CLUSTERS = ("c1", "c2", "c3")
TYPES = ("--types", "v1/Service,v1/Pod")
WAIT = 30_000  # ms: the most any expectation below waits


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (make install does), or set FLEETSYNC_CHROMIUM")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = Path(os.environ.get("FLEETSYNC_ARTIFACTS") or tmp_path_factory.getbasetemp() / "dashboard-artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


class Fleet(AgentFleet):
    """A hub of the test's own (quick inactivity) and the sim's three clusters' agents, started on demand."""

    def __init__(self, sim: Sim, tmp: Path) -> None:
        super().__init__(sim, start_hub(tmp, f"sqlite:///{tmp / 'hub.db'}", "--heartbeat-interval", "0.5", "--inactivity-timeout", "3"), tmp, CLUSTERS)
        self.read_token = create_token(tmp, self.hub.db, "viewer", "read").read_text().strip()

    def agent_args(self, cluster: str) -> tuple[str, ...]:
        return (*TYPES, "--local-config", str(self.tmp / f"{cluster}-gates.json"))  # a local config: its agent applies gates, and says which


@pytest.fixture
def fleet(quiet_sim: Sim, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(quiet_sim, tmp_path)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def page(browser: Browser, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield opened
        assert not errors, f"the page's scripts failed: {errors}"
    finally:
        opened.screenshot(path=str(artifacts / f"{request.node.name}-last.png"), full_page=True)
        context.close()


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    expect(page.locator("#login")).to_be_hidden()


def test_the_page_and_its_assets_need_no_token_but_the_api_still_does(fleet: Fleet) -> None:
    url = fleet.hub.url
    status, body = http("GET", f"{url}/", headers={"Authorization": ""})
    assert status == 200 and '<script type="module" src="/ui/app.js">' in body, body
    for asset in ("app.js", "api.js", "style.css"):
        assert http("GET", f"{url}/ui/{asset}", headers={"Authorization": ""})[0] == 200, asset
    status, body = http("GET", f"{url}/ui/nope.js", headers={"Authorization": ""})
    assert status == 404 and body["kind"] == "Status", body
    for path in ("/ui/../api/v1/clusters", "/ui/%2e%2e/api/v1/clusters", "/ui/..%2Fapi%2Fv1%2Fclusters"):  # no way out of /ui/ to the API
        status, body = http("GET", f"{url}{path}", headers={"Authorization": ""})
        assert status in (401, 404) and body["kind"] == "Status", (path, body)
    for method, path in (("GET", "/api/v1/clusters"), ("POST", "/"), ("PUT", "/ui/app.js"), ("GET", "/metrics")):
        status, body = http(method, f"{url}{path}", headers={"Authorization": ""})
        assert status == 401 and "needs an API token" in body["message"], (method, path, body)


def test_clusters_appear_as_agents_start_and_a_stopped_agent_turns_its_cluster_stale(fleet: Fleet, page: Page, artifacts: Path) -> None:
    page.goto(fleet.hub.url)
    page.fill("#token", "not-a-token-of-this-hub")
    page.click("#login button[type=submit]")
    expect(page.locator("#error")).to_contain_text("not valid on this hub")
    sign_in(page, fleet.hub.url, API_TOKEN)
    expect(page.locator("#clusters")).to_contain_text("no cluster yet")
    page.screenshot(path=str(artifacts / "01-fleet-empty.png"))

    fleet.start_all()  # after the page is open: the rows come live, without a reload
    page.evaluate("window.__loaded = performance.timeOrigin")
    for cluster in CLUSTERS:
        row = page.locator(f'#clusters tr[data-cluster="{cluster}"]')
        expect(row).to_have_attribute("data-status", "active", timeout=WAIT)
        pods = len(fleet.sim.truth(cluster, "v1/Pod"))
        expect(row.locator('span.count[data-type="v1/Pod"]')).to_have_text(f"Pod {pods}", timeout=WAIT)
        expect(row.locator("td.transport")).to_have_text("grpc", timeout=WAIT)
    expect(page.locator("#fleet-summary")).to_contain_text("3 clusters · 3 active")
    expect(page.locator("#live")).to_have_class("on")
    page.screenshot(path=str(artifacts / "02-fleet-live.png"), full_page=True)

    page.fill("#fleet-filter", "c2")
    expect(page.locator("#clusters tbody tr")).to_have_count(1)
    page.fill("#fleet-filter", "")

    fleet.agents["c3"].stop()  # the hub marks it inactive after 3 s; the Inactive event updates the page
    expect(page.locator('#clusters tr[data-cluster="c3"]')).to_have_attribute("data-status", "stale", timeout=WAIT)
    expect(page.locator('#clusters tr[data-cluster="c3"]')).to_have_attribute("data-connected", "false")
    expect(page.locator('#clusters tr[data-cluster="c1"]')).to_have_attribute("data-status", "active")
    assert page.evaluate("window.__loaded") is not None, "the page was not reloaded"
    page.screenshot(path=str(artifacts / "03-fleet-stale.png"), full_page=True)

    page.click("#nav a[data-view=events]")
    expect(page.locator('#events tr[data-cluster="c3"][data-reason="Inactive"]').first).to_be_visible(timeout=WAIT)
    page.select_option("#events-reason", "Connected")
    expect(page.locator("#events tr[data-reason]")).to_have_count(3, timeout=WAIT)
    page.screenshot(path=str(artifacts / "04-events.png"), full_page=True)


def test_the_cluster_view_lists_objects_follows_a_new_service_and_shows_its_yaml(fleet: Fleet, page: Page, artifacts: Path) -> None:
    fleet.start("c1")
    sign_in(page, f"{fleet.hub.url}/#/cluster/c1/v1%2FService", fleet.read_token)
    services = len(fleet.sim.truth("c1", "v1/Service"))
    expect(page.locator("#objects tr[data-name]")).to_have_count(services, timeout=WAIT)
    try:
        manifest = fleet.tmp / "dash-live.yaml"
        manifest.write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: dash-live, namespace: default, labels: {app: dash}}\n"
            "spec: {selector: {app: dash}, ports: [{port: 80, targetPort: 8080}]}\n"
        )
        fleet.sim.kubectl("c1", "apply", "--server-side", "-f", str(manifest))
        row = page.locator('#objects tr[data-name="dash-live"]')
        expect(row).to_be_visible(timeout=WAIT)  # through the watch: no reload, no polling
        row.click()
        expect(page.locator("#yaml")).to_contain_text("name: dash-live")
        expect(page.locator("#yaml")).to_contain_text("port: 80")
        page.fill("#object-search", "dash-")
        expect(page.locator("#objects tr[data-name]")).to_have_count(1)
        page.screenshot(path=str(artifacts / "05-cluster-service-yaml.png"), full_page=True)
        page.fill("#object-search", "")
        page.fill("#label-selector", "no-such-label")
        page.press("#label-selector", "Enter")
        expect(page.locator("#objects")).to_contain_text("no objects", timeout=WAIT)
        page.click('#types a[data-type="v1/Pod"]')
        expect(page.locator("#objects tr[data-name]")).to_have_count(min(100, len(fleet.sim.truth("c1", "v1/Pod"))), timeout=WAIT)
        expect(page.locator('#cluster-events tr[data-reason="Connected"]').first).to_be_visible()
    finally:
        fleet.sim.kubectl("c1", "delete", "service", "dash-live", "--ignore-not-found")


def test_a_scoped_token_sees_only_its_cluster_and_namespace(fleet: Fleet, page: Page, artifacts: Path) -> None:
    fleet.start_all()
    created = fleetsync("token", "create", "team-a", "--role", "read", "--db", fleet.hub.db, "--clusters", "c1", "--namespaces", "ns-0")
    assert created.returncode == 0, created.stderr
    sign_in(page, fleet.hub.url, created.stdout.strip())
    expect(page.locator('#clusters tr[data-cluster="c1"]')).to_have_attribute("data-status", "active", timeout=WAIT)
    expect(page.locator("#clusters tbody tr")).to_have_count(1)
    expect(page.locator("#fleet-summary")).to_contain_text("1 clusters · 1 active")
    page.screenshot(path=str(artifacts / "10-scoped-fleet.png"), full_page=True)

    page.goto(f"{fleet.hub.url}/#/cluster/c1/v1%2FPod")
    in_scope = [p for p in fleet.sim.truth("c1", "v1/Pod") if p["metadata"]["namespace"] == "ns-0"]
    assert 0 < len(in_scope) < len(fleet.sim.truth("c1", "v1/Pod"))
    expect(page.locator("#objects tr[data-name]")).to_have_count(min(100, len(in_scope)), timeout=WAIT)
    expect(page.locator('#objects tr[data-name]:not([data-namespace="ns-0"])')).to_have_count(0)
    expect(page.locator("#cluster-select option")).to_have_count(1)
    page.screenshot(path=str(artifacts / "11-scoped-cluster.png"), full_page=True)

    page.click("#nav a[data-view=events]")
    expect(page.locator('#events tr[data-cluster="c1"]').first).to_be_visible(timeout=WAIT)
    expect(page.locator("#events tr[data-cluster]:not([data-cluster=c1])")).to_have_count(0)
    assert {e["cluster"] for e in http("GET", f"{fleet.hub.url}/apis/fleetsync.io/v1/fleetsyncevents?limit=1000")[1]["items"]} == set(
        CLUSTERS
    )  # what the admin sees


def test_gates_are_toggled_with_an_admin_token_and_refused_with_a_read_token(fleet: Fleet, page: Page, artifacts: Path) -> None:
    gates = f"{fleet.hub.url}/1.0/feature-gates"
    fleet.start_all("c1", "c2")
    sign_in(page, f"{fleet.hub.url}/#/gates", API_TOKEN)
    page.fill("#gate-key", "feature.dashboard")
    page.click("#gate-form button[type=submit]")
    row = page.locator('#gates tr[data-gate="feature.dashboard"]')
    expect(row).to_have_attribute("data-enabled", "true", timeout=WAIT)
    assert http("GET", f"{gates}/feature.dashboard")[1]["metadata"]["enabled"] is True
    row.locator("button.toggle").click()
    expect(row).to_have_attribute("data-enabled", "false", timeout=WAIT)
    status, body = http("GET", f"{gates}/feature.dashboard")
    assert status == 200 and body["metadata"]["enabled"] is False and body["metadata"]["updated-by"] == "admin (--admin-token-file)", body
    # each cluster's status: its agent applied the newest gates (c3 has no agent: never reported)
    for cluster in ("c1", "c2"):
        expect(page.locator(f'#gate-clusters tr[data-cluster="{cluster}"]')).to_have_attribute("data-gates", "in-sync", timeout=WAIT)
    expect(page.locator('#gate-clusters tr[data-cluster="c1"] td.gates')).to_contain_text(f"revision {body['metadata']['revision']}")
    fleet.agents["c2"].stop()
    row.locator("button.toggle").click()  # a write c2 cannot receive
    expect(page.locator('#gate-clusters tr[data-cluster="c2"]')).to_have_attribute("data-gates", "behind", timeout=WAIT)
    expect(page.locator('#gate-clusters tr[data-cluster="c1"]')).to_have_attribute("data-gates", "in-sync", timeout=WAIT)
    page.screenshot(path=str(artifacts / "06-gates-admin.png"), full_page=True)

    page.click("#signout")
    sign_in(page, f"{fleet.hub.url}/#/gates", fleet.read_token)
    page.locator('#gates tr[data-gate="feature.dashboard"] button.toggle').click()
    expect(page.locator("#error")).to_contain_text('token "viewer" has role read')
    expect(page.locator("#error")).to_contain_text("needs role admin")
    assert http("GET", f"{gates}/feature.dashboard")[1]["metadata"]["enabled"] is True, "the refused toggle changed nothing"
    page.screenshot(path=str(artifacts / "07-gates-refused.png"), full_page=True)


def test_a_work_applied_from_the_page_shows_its_status_per_cluster(fleet: Fleet, page: Page, artifacts: Path) -> None:
    fleet.start_all("c1", "c2")
    sign_in(page, f"{fleet.hub.url}/#/works", API_TOKEN)
    page.fill("#work-name", "dash-work")
    page.fill(
        "#work-editor",
        "metadata: {name: dash-work}\nspec:\n  placement: {clusters: [c1, c2]}\n  manifests:\n"
        "    - {apiVersion: v1, kind: ConfigMap, metadata: {name: dash-work, namespace: default}, data: {color: blue}}\n",
    )
    page.click("#work-apply")
    row = page.locator('#works tr[data-work="dash-work"]')
    expect(row.locator("td.targeted")).to_have_text("2", timeout=WAIT)
    expect(row.locator("td.applied")).to_have_text("2", timeout=WAIT)
    row.click()
    expect(page.locator('#work-clusters tr[data-cluster="c1"]')).to_contain_text("ConfigMap")
    page.screenshot(path=str(artifacts / "08-works.png"), full_page=True)
    assert http("GET", f"{fleet.hub.url}/api/v1/works/dash-work")[1]["status"]["applied"] == 2
    row.locator("button.delete").click()
    expect(row).to_have_count(0, timeout=WAIT)

    page.click("#nav a[data-view=graph]")
    expect(page.locator("#view")).to_contain_text("no service graph")  # no agent has a Prometheus here (test_servicegraph.py has one)
    # the drawing, from an answer of the hub's shape: columns by depth, edges labelled rate / error rate / p99
    page.route("**/api/v1/servicegraph?cluster=c1", lambda route: route.fulfill(json=SERVICE_GRAPH))
    page.select_option("#graph-cluster", "c1")
    expect(page.locator("#graph g.node")).to_have_count(3)
    expect(page.locator('#graph g.edge[data-source="web.shop"][data-destination="cart.shop"]')).to_contain_text("12.5/s · 1.2% err · p99 240ms")
    expect(page.locator('#graph g.edge.bad[data-source="cart.shop"]')).to_contain_text("8.0% err")
    xs = [page.locator(f'#graph g.node[data-service="{name}.shop"]').get_attribute("transform") for name in ("web", "cart", "db")]
    assert [x and float(x.split("(")[1].split(",")[0]) for x in xs] == [30.0, 410.0, 790.0], xs
    expect(page.locator('#graph g.edge.back[data-source="db.shop"][data-destination="web.shop"]')).to_have_count(1)
    page.screenshot(path=str(artifacts / "09-service-graph.png"), full_page=True)


def _end(service: str) -> dict[str, str]:
    return {"service": service, "namespace": "shop"}


SERVICE_GRAPH = {
    "kind": "ServiceGraph",
    "apiVersion": "fleetsync.io/v1",
    "clusters": ["c1"],
    "namespace": "",
    "window": 300,
    "nodes": [{"service": name, "namespace": "shop", "clusters": ["c1"], "requestRateIn": 1.0, "requestRateOut": 1.0} for name in ("cart", "db", "web")],
    "edges": [
        {
            "source": _end("web"),
            "destination": _end("cart"),
            "clusters": ["c1"],
            "requests": 3750.0,
            "requestRate": 12.5,
            "errorRate": 0.012,
            "latencyMs": {"p50": 21.3, "p90": 88.0, "p99": 240.1},
            "window": 300,
        },
        {  # web also calls db directly: db still goes right of cart, its deepest caller
            "source": _end("web"),
            "destination": _end("db"),
            "clusters": ["c1"],
            "requests": 300.0,
            "requestRate": 1.0,
            "errorRate": 0.0,
            "latencyMs": {"p50": 2.0, "p90": 5.0, "p99": 9.0},
            "window": 300,
        },
        {  # and db calls back into web: a cycle, drawn back
            "source": _end("db"),
            "destination": _end("web"),
            "clusters": ["c1"],
            "requests": 30.0,
            "requestRate": 0.1,
            "errorRate": 0.0,
            "latencyMs": {"p50": 2.0, "p90": 5.0, "p99": 9.0},
            "window": 300,
        },
        {
            "source": _end("cart"),
            "destination": _end("db"),
            "clusters": ["c1"],
            "requests": 900.0,
            "requestRate": 3.0,
            "errorRate": 0.08,
            "latencyMs": {"p50": 2.0, "p90": 5.0, "p99": None},
            "window": 300,
        },
    ],
    "errors": {},
}


def test_the_demo_dashboard_shows_its_clusters_as_the_demo_starts_and_its_live_service_graph(browser: Browser, tmp_path: Path, artifacts: Path) -> None:
    """``fleetsync demo`` as a user runs it: the printed dashboard URL, the printed read token; the
    clusters come in as the demo's agents connect, and its own Prometheus feeds the graph."""
    ports = {flag: free_port() for flag in ("--sim-port", "--http-port", "--grpc-port", "--prometheus-port")}
    demo = spawn(tmp_path, "demo", "demo", "--clusters", "2", "--pods", "30", *(x for flag, port in ports.items() for x in (flag, str(port))))
    context = browser.new_context(viewport={"width": 1400, "height": 900}, ignore_https_errors=True)  # the demo's own CA
    page = context.new_page()
    try:
        wait_until(lambda: "Ctrl-C stops everything" in demo.output(), timeout=30, what="the demo's instructions")
        url = re.search(r"dashboard: (\S+)", demo.output())
        token = re.search(r"FLEETSYNC_TOKEN=(\S+)", demo.output())
        assert url and token, demo.output()
        sign_in(page, url.group(1), token.group(1))
        for cluster in ("c1", "c2"):
            expect(page.locator(f'#clusters tr[data-cluster="{cluster}"]')).to_have_attribute("data-status", "active", timeout=WAIT)
        page.screenshot(path=str(artifacts / "10-demo-fleet.png"), full_page=True)
        page.click("#nav a[data-view=graph]")
        # the view refreshes itself every 10 s; the demo's Prometheus needs a few scrapes before the agents' first edges
        expect(page.locator("#graph g.edge").first).to_be_visible(timeout=120_000)
        page.screenshot(path=str(artifacts / "11-demo-service-graph.png"), full_page=True)
    finally:
        context.close()
        demo.stop(signal.SIGINT)
