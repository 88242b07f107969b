"""The hub's API contract, tested against a real hub (sim + hub + 2 agents, whose metrics provider
is a real Prometheus scraping the sim's Istio metrics): the OpenAPI document it serves
(``GET /openapi.json``) is valid and lists every type the hub stores (the collected ones too), and
schemathesis, generating valid and invalid requests for every operation the document
describes, finds no 5xx, no hang, no status code or content type the document does not
list, no body that does not match its schema, no invalid input that is accepted, and no
4xx without a Kubernetes ``Status`` whose message says what is wrong.

Works (``/api/v1/works``) are written too: valid generated works are created, replaced and
deleted in the hub (and applied by the agents when they target c1 or c2); the module's own
works, which c1 and c2 have applied, give reads, replaces and deletes real names and statuses.
Settings are written too (a generated PUT flips the hub's deployment type, a DELETE unsets it).
The service graph is read with generated and real clusters, over the edges both agents collected.

Watches (``watch=true``) are run with a ``timeoutSeconds`` of 1 or 2 and must end on time;
their bodies are streams of JSON objects, one per line, which are checked line by line.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from fleetsync.api.watch import CLUSTER_LABEL
from fleetsync.model.types import HUB_TYPES, ISTIO_MESH, SERVICE_EDGE, ResourceType, TypeRegistry
from tests.harness import API_TOKEN, Hub, Proc, Sim, create_token, http, label_cluster, start_agent, start_hub, start_prometheus, wait_converged, wait_until

#: Random examples per operation (the document has ~130 operations; each gets valid and invalid input).
EXAMPLES = int(os.environ.get("FLEETSYNC_CONTRACT_EXAMPLES", "12"))
#: schemathesis' coverage phase too: every parameter's boundaries and invalid values, systematically
#: (~6,500 requests, a third of them watches: ~20 minutes; run with --timeout 0).
COVERAGE = os.environ.get("FLEETSYNC_CONTRACT_COVERAGE", "") == "1"
#: Only the operations whose path matches this regular expression (e.g. ``^/api/v1/works``: many examples of a few operations).
PATHS = os.environ.get("FLEETSYNC_CONTRACT_PATHS", "")
#: A request that is not a watch answers within this many seconds.
ANSWER_WITHIN = 5.0
#: A watch ends this long after its timeoutSeconds at the latest.
WATCH_SLACK = 3.0
#: The clusters the sim runs: c1 and c2 have agents, c3 is unknown to the hub.
CLUSTERS = ("c1", "c2", "c3")
#: What the hub serves: the clusters' types and those its agents collect.
REGISTRY = TypeRegistry(HUB_TYPES)
WORKS = "/api/v1/works"
SERVICE_GRAPH = "/api/v1/servicegraph"
SETTINGS = "/api/v1/settings"


@dataclass
class Fleet:
    hub: Hub
    #: Per type, path parameters (cluster, namespace, name) of some of its real objects.
    objects: dict[ResourceType, list[dict[str, str]]]
    #: Names of works the module created (schemathesis may replace or delete them).
    works: list[str]


@pytest.fixture(scope="module")
def fleet(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One hub with two agents (c1, region eu; c2, region us), synced, their service graphs collected
    from a Prometheus that scrapes the sim's Istio metrics, for every test of the module."""
    tmp: Path = tmp_path_factory.mktemp("contract")
    db = f"sqlite:///{tmp / 'hub.db'}"
    prometheus = start_prometheus(tmp, {c: f"{sim.url}/clusters/{c}/metrics" for c in ("c1", "c2")})
    provider = ("--prometheus", prometheus.url, "--prometheus-window", "30s", "--prometheus-interval", "2s")
    hub = start_hub(tmp, db)
    agents: list[Proc] = []
    try:
        for cluster, region in (("c1", "eu"), ("c2", "us")):
            label_cluster(hub.url, cluster, region=region)
            token = create_token(tmp, db, cluster)
            agents.append(start_agent(tmp, sim, cluster, hub.agent_url, token, "--types", "all", "--label", f"region={region}", *provider))
        wait_converged(sim, hub, "c1", "c2", timeout=90, what="c1 and c2 synced")
        wait_until(lambda: _collected(hub), timeout=60, what="both clusters' service graph edges and Istio meshes on the hub")
        yield Fleet(hub, _sample_objects(hub), _create_works(hub))
    finally:
        for agent in agents:
            agent.stop()
        hub.proc.stop()
        prometheus.stop()


def _collected(hub: Hub) -> bool:
    """Both agents' ServiceEdges and IstioMeshes are on the hub, and the service graph shows both clusters' edges."""
    status, body = http("GET", f"{hub.url}/api/v1/clusters")
    assert status == 200, body
    counts = {c["name"]: c["objects"] for c in body["items"]}
    if not all(counts.get(c, {}).get(t.gvk) for c in ("c1", "c2") for t in (SERVICE_EDGE, ISTIO_MESH)):
        return False
    status, graph = http("GET", f"{hub.url}{SERVICE_GRAPH}")
    assert status == 200, graph
    return {cluster for edge in graph["edges"] for cluster in edge["clusters"]} == {"c1", "c2"}


def _sample_objects(hub: Hub) -> dict[ResourceType, list[dict[str, str]]]:
    """A few objects of every type the hub holds, as path parameters, from fleet-wide lists."""
    samples: dict[ResourceType, list[dict[str, str]]] = {}
    for rtype in REGISTRY:
        status, body = http("GET", f"{hub.url}{rtype.collection_path()}?limit=20")
        assert status == 200, body
        samples[rtype] = [
            {"cluster": item["metadata"]["labels"][CLUSTER_LABEL], "namespace": item["metadata"].get("namespace", ""), "name": item["metadata"]["name"]}
            for item in body["items"]
        ]
    for rtype in (REGISTRY.resolve("pods"), SERVICE_EDGE, ISTIO_MESH):
        assert samples[rtype], f"the hub holds {rtype.plural}"
    return samples


def _create_works(hub: Hub) -> list[str]:
    """Works applied on c1 (by name) and c2 (by label), so that reads show real per-cluster statuses."""
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "contract", "namespace": "default"}, "data": {"a": "b"}}
    names = ["contract", "contract-2"]
    for name in names:
        work = {
            "apiVersion": "fleetsync.io/v1",
            "kind": "Work",
            "metadata": {"name": name},
            "spec": {"placement": {"clusters": ["c1"], "clusterSelector": "region=us"}},
        }
        work["spec"]["manifests"] = [{**config_map, "metadata": {**config_map["metadata"], "name": name}}]
        status, body = http("POST", f"{hub.url}{WORKS}", work)
        assert status == 201, body
    wait_until(
        lambda: all(http("GET", f"{hub.url}{WORKS}/{name}")[1]["status"]["available"] == 2 for name in names), timeout=30, what="c1 and c2 to apply the works"
    )
    return names


# ---- the document ----------------------------------------------------------------------------


def test_the_openapi_document_is_valid_and_lists_every_type(fleet: Fleet) -> None:
    status, document = http("GET", f"{fleet.hub.url}/openapi.json", headers={"Authorization": ""})  # public, like the probes
    assert status == 200, document
    schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.0 meta-schema
    assert document["openapi"] == "3.0.3"
    paths = document["paths"]
    for rtype in REGISTRY:
        collection = rtype.collection_path("{namespace}") if rtype.namespaced else rtype.collection_path()
        assert "get" in paths[f"/clusters/{{cluster}}{rtype.collection_path()}"], rtype
        assert "get" in paths[f"/clusters/{{cluster}}{collection}"], rtype
        assert "get" in paths[f"/clusters/{{cluster}}{collection}/{{name}}"], rtype
        assert "get" in paths[rtype.collection_path()], rtype
        assert "get" in paths[collection], rtype
        assert f"{collection}/{{name}}" not in paths, f"{rtype}: no get by name across clusters"
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/api/v1/clusters", "/apis/fleetsync.io/v1/fleetsyncevents"):
        assert "get" in paths[path], path
    assert "post" in paths["/api/v1/clusters/{cluster}/resync"]
    assert {"get", "post"} <= paths["/1.0/feature-gates"].keys() and {"get", "put", "delete"} <= paths["/1.0/feature-gates/{key}"].keys()
    assert {"get", "post"} <= paths[WORKS].keys() and {"get", "put", "delete"} <= paths[f"{WORKS}/{{name}}"].keys()
    assert "get" in paths[SERVICE_GRAPH] and "get" in paths[SETTINGS] and {"put", "delete"} <= paths[f"{SETTINGS}/{{key}}"].keys()
    cluster = document["components"]["schemas"]["Cluster"]
    assert {"istio", "serviceGraph"} <= set(cluster["required"]) and cluster["properties"]["istio"]["nullable"], cluster
    operations = [(path, op) for path, item in paths.items() for method, op in item.items() if method in ("get", "put", "post", "delete")]
    public = {path for path, op in operations if op.get("security") == []}
    assert public == {"/healthz", "/livez", "/readyz", "/openapi.json"}


def test_work_bodies_schemathesis_cannot_send_are_refused_with_a_status(fleet: Fleet) -> None:
    """What schemathesis, which sends JSON values, cannot generate: YAML that JSON cannot hold and
    nesting deeper than the hub writes are a 400 Status (not a 500); YAML's non-string keys are strings."""
    url = f"{fleet.hub.url}{WORKS}/odd"
    yaml_work = "spec: {manifests: [{apiVersion: v1, kind: ConfigMap, metadata: {name: odd}, data: %s}]}"
    sent: list[tuple[bytes, str]] = [
        ((yaml_work % data).encode(), "application/yaml")
        for data in ("{a: !!binary aGk=}", "!!set {a}", "{a: 123456789012345678901234567890}", "&loop [*loop]", "[" * 5000 + "]" * 5000)
    ]
    deep = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "odd"}, "data": "DEEP"}
    sent.append((json.dumps({"spec": {"manifests": [deep]}}).replace('"DEEP"', "[" * 300 + "]" * 300).encode(), "application/json"))
    for body, content_type in sent:
        status, answer = http("PUT", url, body, headers={"Content-Type": content_type})
        assert status == 400 and answer["kind"] == "Status" and "not valid" in answer["message"], (body[:100], answer)
    status, answer = http("PUT", url, (yaml_work % "{1: one, 2.5: half}").encode(), headers={"Content-Type": "application/yaml"})
    assert status == 201 and answer["spec"]["manifests"][0]["data"] == {"1": "one", "2.5": "half"}, answer
    assert http("DELETE", url)[0] == 200


def test_setting_bodies_schemathesis_cannot_send_are_refused_with_a_status(fleet: Fleet) -> None:
    """Bodies that are JSON but nested deeper than the hub writes (in its message about them) are a
    422 Status (not a 500), like any other body that is not ``{"value": ...}``; nothing is set."""
    url = f"{fleet.hub.url}{SETTINGS}/deployment-type"
    before = http("GET", f"{fleet.hub.url}{SETTINGS}")[1]
    for body in (b"[" * 300 + b"]" * 300, b'{"value": ' + b"[" * 300 + b"]" * 300 + b"}", b'{"value": "maas", "more": ' + b"[" * 300 + b"]" * 300 + b"}"):
        status, answer = http("PUT", url, body, headers={"Content-Type": "application/json"})
        assert status == 422 and answer["kind"] == "Status" and answer["message"], (body[:20], status, answer)
    assert http("GET", f"{fleet.hub.url}{SETTINGS}")[1] == before


# ---- every operation, by schemathesis ------------------------------------------------------------


@pytest.fixture(scope="module")
def api_schema(fleet: Fleet) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            # Valid and invalid input. No undocumented parameters: the hub ignores them, as Kubernetes does (clients
            # send many). No generated credentials: every case has the token, and ignored_auth probes without it.
            "generation": {"mode": "all", "max-examples": EXAMPLES, "allow-extra-parameters": False, "with-security-parameters": False},
            "phases": {"examples": {"enabled": False}, "coverage": {"enabled": COVERAGE}, "stateful": {"enabled": False}},
            "auth": {"openapi": {"bearerAuth": {"bearer": API_TOKEN}}},
        }
    )
    return schemathesis.openapi.from_url(f"{fleet.hub.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")
if PATHS:
    schema = schema.include(path_regex=PATHS)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas rename the test's node through ``node._nodeid``, which
    pytest 9.2 no longer has (it keeps a structured id): give it one to read and write."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _first(value: Any) -> str:
    """A query value as the hub reads it (the first of repeated ones), as text. A generated list or
    object goes out as repeated parameters (requests sends each of its items, an object's keys),
    and the hub reads the first."""
    if isinstance(value, list | dict):
        value = next(iter(value), "")
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _is_watch(query: dict[str, Any]) -> bool:
    return "watch" in query and _first(query["watch"]).lower() in ("1", "true")


def _type_of(path: str) -> ResourceType | None:
    """The type whose collection or object ``path`` (an operation's template) is."""
    path = path.removeprefix("/clusters/{cluster}").removesuffix("/{name}")
    return next((t for t in REGISTRY if path in (t.collection_path(), t.collection_path("{namespace}"))), None)


def _pick(case: Case, what: str, among: int) -> int:
    """A choice of ``among`` (0 ... among - 1) that depends only on what was generated, so that
    Hypothesis replays a case exactly (schemathesis' coverage phase allows no extra draws)."""
    return zlib.crc32(f"{what} {case.path_parameters!r} {case.query!r}".encode()) % among


def _with_real_names(case: Case, fleet: Fleet) -> None:
    """Half the time, path parameters of a real object (or a real cluster) instead of generated ones,
    so that reads also reach the objects, not only the 404s of names that do not exist."""
    wanted = set(case.path_parameters)
    if not wanted:
        return
    rtype = _type_of(case.path)
    candidates = [{k: v for k, v in obj.items() if k in wanted} for obj in fleet.objects.get(rtype, [])] if rtype else []
    if case.path == f"{WORKS}/{{name}}":
        candidates = [{"name": name} for name in fleet.works]
    elif not candidates or set(candidates[0]) != wanted:
        candidates = [{"cluster": c} for c in CLUSTERS] if wanted == {"cluster"} else []
    choice = _pick(case, "names", 2 * len(candidates)) if candidates else len(candidates)
    if choice < len(candidates):
        case.path_parameters = {**case.path_parameters, **candidates[choice]}  # (the case is revalidated: it may turn valid)


def _with_real_query(case: Case, fleet: Fleet) -> None:
    """Half the time each, a service graph asked of real clusters (c3 is in the sim but unknown to the hub:
    a 404) and of a real namespace instead of generated ones, so that it answers with edges, not only
    the 404s of clusters and the empty graphs of namespaces that do not exist."""
    if case.path != SERVICE_GRAPH or not case.query:
        return
    if "cluster" in case.query:
        clusters: list[list[str]] = [["c1"], ["c2"], ["c1", "c2"], ["c2,c1"], [" c1 , c2 "], ["c1", "c3"]]
        choice = _pick(case, "clusters", 2 * len(clusters))
        if choice < len(clusters):
            case.query = {**case.query, "cluster": clusters[choice]}
    if "namespace" in case.query:
        namespaces = sorted({edge["namespace"] for edge in fleet.objects[SERVICE_EDGE]} | {"istio-system"})  # the gateway's, a source only
        choice = _pick(case, "namespace", 2 * len(namespaces))
        if choice < len(namespaces):
            case.query = {**case.query, "namespace": namespaces[choice]}


def _with_watch_timeout(case: Case) -> float | None:
    """A watch ends after 1 or 2 s: its timeoutSeconds, unless the case sends one the hub must
    refuse anyway (not a count), is replaced. Returns the timeout (None: not a watch)."""
    if not _is_watch(case.query):
        return None
    sent = _first(case.query.get("timeoutSeconds", ""))
    if sent and not (sent.isascii() and sent.isdigit()):
        return 0.0  # refused at once
    timeout = 1 + _pick(case, "timeout", 2)
    case.query = {**case.query, "timeoutSeconds": timeout}
    return float(timeout)


#: The HTTP layer's bound on a request line (aiohttp's ``max_line_size``, docs/security.md): a longer
#: one is refused with a plain-text 400 before any API code runs, as a Kubernetes API server
#: refuses an oversized request head with a plain-text 431.
MAX_REQUEST_LINE = 8190


def _request_line_bytes(response: Response) -> int:
    parts = urlsplit(str(response.request.url))
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return len(f"{response.request.method} {target} HTTP/1.1".encode())


def _refused_by_the_http_layer(response: Response) -> bool:
    """A request line over the HTTP layer's bound, answered by that layer's plain-text 400 naming the bound."""
    too_long = _request_line_bytes(response) > MAX_REQUEST_LINE - 64  # (the last few bytes' count is the parser's)
    return too_long and response.status_code == 400 and response.content.startswith(f"Got more than {MAX_REQUEST_LINE} bytes".encode())


def content_type_is_documented(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """schemathesis's content-type check, except for the HTTP layer's own 400 (see :data:`MAX_REQUEST_LINE`)."""
    if _refused_by_the_http_layer(response):
        return None
    return content_type_conformance(ctx, response, case)


def errors_are_statuses_with_a_message(ctx: CheckContext, response: Response, case: Case) -> None:
    """Every 4xx is a Kubernetes Status whose message says what is wrong (under /1.0/, microcluster's error);
    a request line over the HTTP layer's bound gets that layer's 400, naming the bound."""
    if not 400 <= response.status_code < 500 or _refused_by_the_http_layer(response):
        return
    try:
        status = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"a {response.status_code} whose body is not JSON: {response.content[:300]!r}") from None
    if case.path.startswith("/1.0/"):  # seed 004's API: microcluster's error shape
        assert isinstance(status, dict) and status.get("type") == "error", f"a {response.status_code} that is not an error: {status!r}"
        assert isinstance(status.get("error"), str) and status["error"].strip(), f"a {response.status_code} error without a message: {status!r}"
        assert status.get("error_code") == response.status_code, f"a {response.status_code} error with code {status.get('error_code')!r}"
        return
    assert isinstance(status, dict) and status.get("kind") == "Status", f"a {response.status_code} that is not a Status: {status!r}"
    assert isinstance(status.get("message"), str) and status["message"].strip(), f"a {response.status_code} Status without a message: {status!r}"
    assert status.get("code") == response.status_code, f"a {response.status_code} Status with code {status.get('code')!r}"


def _check_stream(case: Case, body: bytes) -> None:
    """A watch's body: JSON objects, one per line (Kubernetes WatchEvents, or events of
    /apis/fleetsync.io/v1/fleetsyncevents and /clusters/{cluster}/apis/fleetsync.io/v1/fleetsyncevents)."""
    for line in body.splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        if case.path.endswith("/apis/fleetsync.io/v1/fleetsyncevents"):  # fleet-wide, or /clusters/{cluster}/...: the same stream of one cluster
            assert {"id", "reason", "cluster", "message"} <= event.keys(), event
        else:
            assert event.get("type") in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR") and isinstance(event.get("object"), dict), event
            if event["type"] == "ERROR":
                assert event["object"].get("kind") == "Status" and event["object"].get("message"), event


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_is_documented,
    negative_data_rejection,
    ignored_auth,  # a 2xx is sent again without the token and with a wrong one: both must be refused
    errors_are_statuses_with_a_message,
]


@schema.parametrize()
def test_every_operation_keeps_the_contract(case: Case, fleet: Fleet) -> None:
    _with_real_names(case, fleet)
    _with_real_query(case, fleet)
    watch_timeout = _with_watch_timeout(case)
    deadline = ANSWER_WITHIN if watch_timeout is None else watch_timeout + WATCH_SLACK
    started = time.monotonic()
    response = case.call(timeout=deadline)  # a read that stalls this long fails too
    took = time.monotonic() - started
    what = f"{case.method} {case.formatted_path}" if watch_timeout is None else f"a watch with timeoutSeconds={watch_timeout:g}"
    assert took < deadline, f"{what} took {took:.1f}s"
    # a watch's stream is checked line by line below: a single JSON schema cannot describe it
    checks = CHECKS if watch_timeout is not None else [*CHECKS, response_schema_conformance]
    case.validate_response(response, checks=checks, transport_kwargs={"timeout": ANSWER_WITHIN})
    if watch_timeout is not None and response.status_code == 200:
        _check_stream(case, response.content)
