"""The hub's HTTP side against bad input and hostile clients (issue 18, items 7, 9 and 10).

A real hub, agents spoken for by hand over gRPC (:class:`RawAgent`) to send what a real
agent never would, and plain sockets for what no HTTP client library would do.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import lz4.frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from tests.e2e.test_faults import RawAgent, pods
from tests.harness import Hub, authorized, create_token, http, hub_events, metric, start_hub, wait_until

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def hello(cluster: str, token: str) -> pb.AgentMessage:
    return pb.AgentMessage(hello=pb.Hello(cluster_id=cluster, agent_id=f"raw-{cluster}", incarnation="raw-1", token=token, protocol_version=1))


def full(type_: str, objects: list[pb.Object], seq: int = 1) -> pb.AgentMessage:
    return pb.AgentMessage(
        bundle=pb.Bundle(type=type_, incarnation="raw-1", seq=seq, base_seq=seq - 1, kind=pb.FULL, last=True, upserts=objects, compression=pb.COMPRESSION_LZ4)
    )


def raw_pod(name: str, body: bytes) -> pb.Object:
    """A pod whose body is ``body`` (lz4-compressed, as agents send bodies), whatever it holds."""
    return pb.Object(namespace="default", name=name, uid=f"uid-{name}", hash=1, body=lz4.frame.compress(body))


def get(url: str, *, accept: str = "") -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` with the hub's token: status, headers and the raw body."""
    request = urllib.request.Request(url, headers={**authorized(url), **({"Accept": accept} if accept else {})})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def watch_lines(url: str) -> list[dict[str, Any]]:
    status, _, body = get(url)
    assert status == 200, body
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def names(items: list[dict[str, Any]]) -> list[str]:
    return sorted(item["metadata"]["name"] for item in items)


async def connect(hub: Hub, cluster: str, token: str) -> RawAgent:
    raw = RawAgent(hub.grpc_port)
    await raw.send(hello(cluster, token))
    assert (await raw.receive()).HasField("welcome")
    return raw


# ---- item 7: object bodies that are not JSON objects ---------------------------------------------------


def test_a_bundle_with_an_object_body_that_is_not_a_json_object_is_refused_naming_the_object(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    hub = start_hub(tmp_path, db)
    token = create_token(tmp_path, db, "c1").read_text().strip()

    async def scenario() -> None:
        raw = await connect(hub, "c1", token)
        bad = {
            "p2": (b"<html>not json</html>", "is not JSON"),
            "p3": (b'["a", "list"]', "JSON but not an object"),
            "p4": (b'{"metadata": "a string"}', "metadata is not an object"),
            # an lz4 bomb, 8 MiB from ~32 KB: refused on its frame's declared size, before it is decompressed
            "p5": (b"{" + b" " * (8 * 1024 * 1024) + b"}", "over the hub's limit of 4194304 bytes (--max-object-bytes)"),
        }
        for name, (body, why) in bad.items():
            await raw.send(full("v1/Pod", [*pods("p1"), raw_pod(name, body)]))
            answer = await raw.receive()
            assert answer.WhichOneof("message") == "reject", answer
            assert answer.reject.type == "v1/Pod" and f"default/{name}" in answer.reject.message and why in answer.reject.message, answer.reject.message
        # the type goes on: a well-formed FULL of it is applied, and nothing of the refused ones was kept
        await raw.send(full("v1/Pod", pods("p1", "p6")))
        answer = await raw.receive()
        assert (answer.ack.type, answer.ack.seq) == ("v1/Pod", 1), answer
        await raw.close()

    try:
        asyncio.run(scenario())
        status, body = http("GET", f"{hub.url}/api/v1/pods")
        assert status == 200 and names(body["items"]) == ["p1", "p6"], body
        assert names([e["object"] for e in watch_lines(f"{hub.url}/api/v1/pods?watch=1&timeoutSeconds=1")]) == ["p1", "p6"]
        refused = [e["message"] for e in hub_events(hub, cluster="c1", reason="TypeRefused")]
        assert any("default/p2" in m and "not JSON" in m for m in refused), refused
        assert "Traceback" not in hub.proc.output()
    finally:
        hub.proc.stop()


def test_a_stored_body_that_is_not_a_json_object_is_left_out_of_every_read_with_a_warning(tmp_path: Path) -> None:
    db_path = tmp_path / "hub.db"
    hub = start_hub(tmp_path, f"sqlite:///{db_path}")
    token = create_token(tmp_path, f"sqlite:///{db_path}", "c1").read_text().strip()

    async def write() -> None:
        raw = await connect(hub, "c1", token)
        service = codec.make_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s1", "namespace": "default"}})
        await raw.send(full("v1/Service", [service]))  # revision 1 is not a pod: a watch from it replays every pod's change
        assert (await raw.receive()).ack.type == "v1/Service"
        await raw.send(full("v1/Pod", pods("p1", "p2", "p3")))
        assert (await raw.receive()).ack.type == "v1/Pod"
        await raw.close()

    try:
        asyncio.run(write())
        # rows as an older hub (or a hand) may have left them: bodies that are not JSON objects
        with sqlite3.connect(db_path, timeout=30) as db:
            for table in ("objects", "changes"):
                db.execute(f"UPDATE {table} SET body = ? WHERE name = 'p2'", (lz4.frame.compress(b"not json at all"),))
                db.execute(f"UPDATE {table} SET body = ?, compression = 0 WHERE name = 'p3'", (b'"just a string"',))
        for url in (f"{hub.url}/api/v1/pods", f"{hub.url}/clusters/c1/api/v1/pods", f"{hub.url}/api/v1/namespaces/default/pods"):
            status, headers, raw = get(url)
            assert status == 200 and names(json.loads(raw)["items"]) == ["p1"], (url, status, raw)
            assert "2 object(s) left out" in headers.get("Warning", ""), headers
        status, _, raw = get(f"{hub.url}/api/v1/pods", accept=TABLE)
        listed = json.loads(raw)
        name_at = [c["name"] for c in listed["columnDefinitions"]].index("Name")  # a fleet-wide Table starts with Cluster
        assert status == 200 and [row["cells"][name_at] for row in listed["rows"]] == ["p1"], raw
        status, _, raw = get(f"{hub.url}/api/v1/pods?fieldSelector=metadata.name%3Dp2")
        assert status == 200 and json.loads(raw)["items"] == [], raw
        status, _, raw = get(f"{hub.url}/clusters/c1/api/v1/namespaces/default/pods/p2")
        assert status == 404 and "not a JSON object" in json.loads(raw)["message"], raw
        # watches: the initial state, and a replay of the change log, leave them out and end normally
        for url in (f"{hub.url}/api/v1/pods?watch=1&timeoutSeconds=1", f"{hub.url}/clusters/c1/api/v1/pods?watch=1&resourceVersion=1&timeoutSeconds=1"):
            events = watch_lines(url)
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "p1")], (url, events)
        assert http("GET", f"{hub.url}/api/v1/clusters")[0] == 200
        log = hub.proc.output()
        assert "the stored body of v1/Pod default/p2" in log and "Traceback" not in log, log[-3000:]
    finally:
        hub.proc.stop()


# ---- item 10: every parameter and body checked, a clear 4xx -------------------------------------------------


#: (query, the parameter the 400's message must name): values an API server refuses.
BAD_QUERIES = [
    ("watch=1&resourceVersion=%C2%B2", "resourceVersion"),  # "²": str.isdigit() holds, int() refuses
    ("watch=1&resourceVersion=-1", "resourceVersion"),
    ("watch=1&resourceVersion=99999999999999999999999", "resourceVersion"),
    ("watch=1&resourceVersion=abc", "resourceVersion"),
    ("resourceVersion=1.5", "resourceVersion"),
    ("limit=%C2%B2", "limit"),
    ("limit=-5", "limit"),
    ("limit=99999999999999999999999", "limit"),
    ("continue=not-a-token", "continue"),
    ("continue=WzEsMl0%3D", "continue"),  # base64 of [1,2]: JSON, but not a token this hub issued
    ("watch=1&timeoutSeconds=1e9", "timeoutSeconds"),
    ("watch=maybe", "watch"),
    ("watch=1&allowWatchBookmarks=2", "allowWatchBookmarks"),
    ("labelSelector=a%20in%20(", "label"),
    ("labelSelector=%3D%3D%3D", "label"),
    ("fieldSelector=spec.nothing%3Dx", "field"),
    ("clusterSelector=!!", "clusterSelector"),
    ("includeObject=Everything", "includeObject"),
]


def test_bad_query_parameters_and_bodies_are_clear_4xx_never_500(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        for query, parameter in BAD_QUERIES:
            status, body = http("GET", f"{hub.url}/api/v1/pods?{query}")
            assert status == 400 and body["kind"] == "Status" and parameter in body["message"], (query, status, body)
        # feature gates: a 2 MB body, PATCH, and a value too deep to echo
        status, body = http("POST", f"{hub.url}/1.0/feature-gates", b'{"gate-key": "' + b"x" * 2_000_000 + b'", "enabled": true}')
        assert status == 413 and "larger than 1048576 bytes" in body["error"], (status, str(body)[:300])
        request = urllib.request.Request(f"{hub.url}/1.0/feature-gates/feature.x", data=b"{}", method="PATCH", headers=authorized(hub.url + "/"))
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError("PATCH was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 405 and set(exc.headers["Allow"].split(",")) >= {"GET", "PUT", "DELETE"}, (exc.code, dict(exc.headers))
            assert "PATCH" in json.loads(exc.read())["error"]
        deep = b'{"gate-key": "feature.x", "enabled": ' + b"[" * 500 + b"]" * 500 + b"}"
        status, body = http("PUT", f"{hub.url}/1.0/feature-gates/feature.x", deep)
        assert status == 422 and "enabled must be true or false" in body["error"], (status, body)
        # works and settings: bodies over the cap, and YAML that is not a work
        status, body = http("PUT", f"{hub.url}/api/v1/works/w1", b"x" * 1_500_000, headers={"Content-Type": "application/yaml"})
        assert status == 413, (status, str(body)[:300])
        status, body = http("PUT", f"{hub.url}/api/v1/works/w1", b"a: [unclosed", headers={"Content-Type": "application/yaml"})
        assert status == 400 and "not valid YAML" in body["message"], body
        status, body = http("PUT", f"{hub.url}/api/v1/settings/deployment-type", b"x" * 1_500_000)
        assert status == 413 and body["kind"] == "Status", (status, str(body)[:300])
        assert http("GET", f"{hub.url}/readyz")[0] == 200
        assert "Traceback" not in hub.proc.output(), hub.proc.output()[-3000:]
    finally:
        hub.proc.stop()


#: The parameters of a list or watch, each with values a client could send.
PARAMETERS = ("labelSelector", "fieldSelector", "clusterSelector", "limit", "continue", "resourceVersion", "timeoutSeconds", "watch", "allowWatchBookmarks")
#: Text a hostile or broken client sends: any unicode (digits of other scripts, superscripts), controls, signs, huge numbers.
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789²³¹٣-+.eE ,=!()<>/", min_size=1, max_size=30),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
)


def test_generated_bad_queries_and_bodies_never_get_a_500_and_the_hub_keeps_serving(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    answered: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        path=st.sampled_from(["/api/v1/pods", "/clusters/c1/api/v1/pods", "/apis/fleetsync.io/v1/fleetsyncevents", "/apis/apps/v1/namespaces/x/deployments"]),
        query=st.dictionaries(st.sampled_from(PARAMETERS), HOSTILE_TEXT, min_size=1, max_size=4),
    )
    def queries(path: str, query: dict[str, str]) -> None:
        if query.get("watch", "").lower() in ("1", "true"):
            query["timeoutSeconds"] = "1"  # a valid watch ends at once
        status, body = http("GET", f"{hub.url}{path}?{urllib.parse.urlencode(query)}")
        answered[status] = answered.get(status, 0) + 1
        assert status < 500, (path, query, status, body)

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        path=st.sampled_from(["/1.0/feature-gates", "/1.0/feature-gates/feature.x", "/api/v1/works/w1", "/api/v1/settings/deployment-type"]),
        method=st.sampled_from(["POST", "PUT", "PATCH"]),
        body=st.one_of(
            st.binary(max_size=200),
            st.recursive(st.none() | st.booleans() | st.text(max_size=10), lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c), max_leaves=20).map(
                lambda v: json.dumps(v).encode()
            ),
        ),
        content_type=st.sampled_from(["application/json", "application/yaml", "text/plain"]),
    )
    def bodies(path: str, method: str, body: bytes, content_type: str) -> None:
        status, answer = http(method, f"{hub.url}{path}", body, headers={"Content-Type": content_type})
        answered[status] = answered.get(status, 0) + 1
        assert status < 500, (path, method, body, status, answer)

    try:
        queries()
        bodies()
        assert any(400 <= code < 500 for code in answered), answered
        assert http("GET", f"{hub.url}/readyz")[0] == 200
        assert "Traceback" not in hub.proc.output(), hub.proc.output()[-3000:]
    finally:
        hub.proc.stop()


# ---- item 9: slow and too many connections ----------------------------------------------------------------


def slow_client(port: int) -> socket.socket:
    """A connection that starts a request and never finishes its headers (slowloris)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the hub closed ``sock`` (it may have sent a 408 first)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_slow_headers_are_cut_off_and_connections_are_capped_while_normal_clients_and_watches_are_served(tmp_path: Path) -> None:
    hub = start_hub(
        tmp_path,
        f"sqlite:///{tmp_path / 'hub.db'}",
        "--http-header-timeout",
        "2",
        "--http-idle-timeout",
        "2",
        "--http-max-connections",
        "400",
    )
    slow: list[socket.socket] = []
    try:
        # a watch that outlives both timeouts, opened before the flood: it streams to its end
        watch = urllib.request.urlopen(
            urllib.request.Request(f"{hub.url}/apis/fleetsync.io/v1/fleetsyncevents?watch=1&timeoutSeconds=6", headers=authorized(hub.url + "/")), timeout=20
        )
        started = time.monotonic()
        slow = [slow_client(hub.http_port) for _ in range(300)]
        for sock in slow[::10]:
            sock.sendall(b"x")  # trickling bytes does not extend the deadline
        assert http("GET", f"{hub.url}/readyz")[0] == 200  # a normal client is served meanwhile
        wait_until(lambda: all(closed_by_peer(s) for s in slow), timeout=10, what="the hub to close 300 connections stuck in their headers")
        assert time.monotonic() - started < 2 + 5, time.monotonic() - started
        assert metric(f"{hub.url}/metrics", "fleetsync_http_connections_cut_total", reason="header-timeout") >= 300
        assert http("GET", f"{hub.url}/readyz")[0] == 200
        # a kept-alive connection left idle is closed after --http-idle-timeout
        idle = socket.create_connection(("127.0.0.1", hub.http_port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        wait_until(lambda: closed_by_peer(idle), timeout=8, what="the idle connection to be closed")
        idle.close()
        # the cap: 400 connections are held, the next is answered 503 and closed at once (on a
        # hub of its own whose header timeout outlasts this part: a loaded machine may take
        # longer than 2 s to open 400 connections, and the timeout would cut them meanwhile)
        for sock in slow:
            sock.close()
        capped = start_hub(tmp_path, f"sqlite:///{tmp_path / 'capped.db'}", "--http-header-timeout", "60", "--http-max-connections", "400")
        try:
            slow = [slow_client(capped.http_port) for _ in range(400)]
            wait_until(lambda: b"503" in _refused_answer(capped.http_port), timeout=10, what="a connection over the cap to be refused with 503")
            for sock in slow:
                sock.close()
            slow = []
            wait_until(lambda: http("GET", f"{capped.url}/readyz", timeout=2)[0] == 200, timeout=10, what="the hub to serve again below the cap")
            assert metric(f"{capped.url}/metrics", "fleetsync_http_connections_cut_total", reason="max-connections") >= 1
        finally:
            capped.proc.stop()
        # the watch was never cut: it ends on its own timeoutSeconds, cleanly
        watch.read()
        assert time.monotonic() - started >= 5.5, time.monotonic() - started
        watch.close()
        assert "Traceback" not in hub.proc.output(), hub.proc.output()[-3000:]
    finally:
        for sock in slow:
            sock.close()
        hub.proc.stop()


def _refused_answer(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        return sock.recv(4096)


def test_a_tls_handshake_that_never_comes_is_cut_off_by_the_header_timeout(tmp_path: Path) -> None:
    hub = start_hub(tmp_path, f"sqlite:///{tmp_path / 'hub.db'}", "--http-header-timeout", "2", tls=True)
    silent: list[socket.socket] = []
    try:
        started = time.monotonic()
        silent = [socket.create_connection(("127.0.0.1", hub.http_port), timeout=10) for _ in range(50)]  # not a byte of TLS
        assert http("GET", f"{hub.url}/readyz")[0] == 200
        wait_until(lambda: all(closed_by_peer(s) for s in silent), timeout=10, what="the hub to close 50 connections that never start TLS")
        assert time.monotonic() - started < 2 + 5, time.monotonic() - started
    finally:
        for sock in silent:
            sock.close()
        hub.proc.stop()
