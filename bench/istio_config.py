"""How large an Istio configuration syncs: thousands of VirtualServices and DestinationRules in
one FULL, and the largest single VirtualService that fits the max message size.

The bench starts everything itself, on free loopback ports in a temporary directory:
``fleetsync sim --clusters 1 --pods P --namespaces NS --churn 0`` (a small cluster), and for
each measurement a hub on a fresh SQLite file and one agent of cluster c1 syncing only the
ten Istio types (``--types`` = ``model.types.ISTIO_TYPES``), with its metrics endpoint on.
The Istio objects are created in the simulated cluster through its Kubernetes API (``POST``
to the collection, with the kubeconfig's bearer token, ``--concurrency`` at a time), as
``kubectl create`` would; the sim records managedFields, which the agent strips.

1. **scale**: for each N of ``--scales`` (cumulative, ascending), N VirtualServices and N
   DestinationRules exist in the cluster, spread over the application namespaces, with
   realistic specs (a VirtualService: 3-6 HTTP routes with URI/header/method matches,
   weighted subsets, rewrites, timeouts, retries, fault injection, mirroring, CORS; a
   DestinationRule: load balancing, connection pool, outlier detection, TLS, subsets with
   their own policies; ~2-4 KB of JSON each). From starting the agent until the hub
   (``GET /api/v1/clusters``) holds every Istio object of the cluster and the agent is
   caught up (connected, nothing pending or unacknowledged): the time, the FULL's messages
   and bytes (``fleetsync_agent_messages_sent_total`` / ``..._bytes_sent_total``, kind
   ``full``), the largest message sent, and the hub's SQLite files (db + WAL) after it.
   Object sizes are the agent's own (``codec.make_object`` of the sim's objects: the JSON
   without managedFields, its lz4 frame, the protobuf ``Object``).
2. **single-object bound**: the largest VirtualService that fits one message, found for
   two shapes: *realistic* (K HTTP routes like the ones above -- compresses well) and
   *random* (K routes, each matching a header on a 512-character random token -- barely
   compresses). The agent leaves an object out when its serialized ``Object`` plus 8 bytes of
   framing exceeds the max message size less 1 KiB of envelope (``agent/typesync.py``);
   K is searched against that rule with the agent's own code, then the two objects at the
   bound (K) and one route beyond it (K+1) are created for each shape, and a fresh hub and
   agent (the scale objects still there) must show: the K objects on the hub with the sim's
   spec, the K+1 objects absent and named in the VirtualService type's error
   (``GET /api/v1/clusters`` ``errors``), and every other VirtualService synced.

Run (from the repository root)::

    .venv/bin/python bench/istio_config.py                                  # 1k / 5k / 10k of each, and the bound (~75 s on 2 cores)
    .venv/bin/python bench/istio_config.py --scales 1000                    # quick look (~40 s, most of it the bound's search)
    .venv/bin/python bench/istio_config.py --scales 25000 --skip-bound      # 50k Istio objects (~50 s; the agent peaks at ~380 MiB)

Exit status: 0 when every phase completed and every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import functools
import random
import string
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from benchlib import (
    DEFAULT_FLEETSYNC,
    HUB_AUTH,
    MIB,
    BenchError,
    Processes,
    free_port,
    get_json,
    mib,
    parse_metrics,
    parse_metrics_by,
    rss,
    run_bench,
    vm_hwm,
)
from fleetsync.agent.typesync import ENVELOPE_BYTES, FIELD_BYTES
from fleetsync.model.types import DESTINATION_RULE, ISTIO_TYPES, VIRTUAL_SERVICE, ResourceType
from fleetsync.protocol import codec

KIB = 1024
ISTIO_GVKS = [rt.gvk for rt in ISTIO_TYPES]
VS = VIRTUAL_SERVICE.gvk
#: The etcd request limit a real API server stores objects under (--max-request-bytes, 1.5 MiB by default).
ETCD_LIMIT = 1536 * KIB
#: The single-object search gives up beyond this much JSON (the sim takes requests up to 64 MiB).
SEARCH_LIMIT = 32 * MIB

# ---- generated Istio configuration ---------------------------------------------------------------

_WORDS = ("orders", "cart", "users", "search", "billing", "catalog", "inventory", "reviews", "payments", "auth", "media", "reports")


def _route(rng: random.Random, host: str, i: int) -> dict[str, Any]:
    """One realistic HTTP route of a VirtualService (the ``i``-th: its shape cycles)."""
    word = _WORDS[(i + rng.randrange(len(_WORDS))) % len(_WORDS)]
    v1 = rng.choice((100, 95, 90, 80, 50))
    shape = i % 5
    route: dict[str, Any] = {"name": f"{word}-{i}"}
    if shape == 0:
        route["match"] = [
            {"headers": {"x-canary": {"exact": "true"}}, "uri": {"prefix": f"/api/v2/{word}/"}},
            {"headers": {"cookie": {"regex": "^(.*?;)?(canary=always)(;.*)?$"}}, "uri": {"prefix": f"/api/v2/{word}/"}},
        ]
        route["route"] = [{"destination": {"host": host, "subset": "v2", "port": {"number": 8080}}, "weight": 100}]
        route["headers"] = {"request": {"set": {"x-route": "canary", "x-request-source": "mesh"}}, "response": {"remove": ["x-envoy-upstream-service-time"]}}
    elif shape == 1:
        route["match"] = [
            {"uri": {"prefix": f"/api/v1/{word}/"}, "method": {"exact": "GET"}},
            {"uri": {"regex": f"^/api/v1/{word}/[0-9a-f]{{8}}(/.*)?$"}, "method": {"regex": "GET|HEAD"}},
        ]
        route["rewrite"] = {"uri": f"/v1/{word}/"}
        route["route"] = [
            {"destination": {"host": host, "subset": "v1", "port": {"number": 8080}}, "weight": v1},
            {"destination": {"host": host, "subset": "v2", "port": {"number": 8080}}, "weight": 100 - v1},
        ]
    elif shape == 2:
        route["match"] = [{"uri": {"prefix": f"/internal/{word}"}, "sourceLabels": {"app": "batch-worker"}, "queryParams": {"debug": {"exact": "1"}}}]
        route["fault"] = {"delay": {"percentage": {"value": 0.5}, "fixedDelay": "3s"}, "abort": {"percentage": {"value": 0.1}, "httpStatus": 503}}
        route["route"] = [{"destination": {"host": host, "subset": "v1", "port": {"number": 8080}}}]
    elif shape == 3:
        route["match"] = [{"uri": {"exact": f"/{word}/upload"}, "method": {"exact": "POST"}, "headers": {"content-type": {"prefix": "multipart/"}}}]
        route["route"] = [{"destination": {"host": host, "subset": "v1", "port": {"number": 8080}}}]
        route["mirror"] = {"host": f"{word}-shadow.{host.split('.', 1)[1]}", "subset": "v1"}
        route["mirrorPercentage"] = {"value": 5.0}
        route["timeout"] = "30s"
    else:
        route["match"] = [{"uri": {"prefix": f"/web/{word}"}, "ignoreUriCase": True}]
        route["corsPolicy"] = {
            "allowOrigins": [{"exact": "https://app.example.com"}, {"regex": "https://.*\\.example\\.com"}],
            "allowMethods": ["GET", "POST", "PUT", "DELETE"],
            "allowHeaders": ["authorization", "content-type", "x-request-id"],
            "exposeHeaders": ["x-request-id"],
            "maxAge": "24h",
            "allowCredentials": True,
        }
        route["route"] = [{"destination": {"host": host, "subset": "v1", "port": {"number": 8080}}, "weight": v1}]
        if v1 < 100:
            route["route"].append({"destination": {"host": host, "subset": "v2", "port": {"number": 8080}}, "weight": 100 - v1})
    route["timeout"] = route.get("timeout", rng.choice(("2s", "5s", "10s", "15s")))
    route["retries"] = {
        "attempts": rng.choice((2, 3, 5)),
        "perTryTimeout": rng.choice(("500ms", "1s", "2s")),
        "retryOn": "5xx,reset,connect-failure,retriable-4xx",
    }
    return route


def _metadata(namespace: str, name: str, app: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {"app": app, "app.kubernetes.io/part-of": "shop", "app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": app, "meta.helm.sh/release-namespace": namespace},
    }


def virtual_service(rng: random.Random, namespace: str, name: str, *, routes: int | None = None) -> dict[str, Any]:
    """A realistic VirtualService: 3-6 routes (or ``routes``) and a default route, ~2-4 KB of JSON."""
    host = f"{name}.{namespace}.svc.cluster.local"
    count = rng.randint(3, 6) if routes is None else routes
    http = [_route(rng, host, i) for i in range(count)]
    v1 = rng.choice((100, 90, 75))
    http.append(
        {
            "name": "default",
            "route": [
                {"destination": {"host": host, "subset": "v1", "port": {"number": 8080}}, "weight": v1},
                {"destination": {"host": host, "subset": "v2", "port": {"number": 8080}}, "weight": 100 - v1},
            ],
            "timeout": "10s",
            "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset,connect-failure"},
        }
    )
    return {
        "apiVersion": VIRTUAL_SERVICE.api_version,
        "kind": VIRTUAL_SERVICE.kind,
        "metadata": _metadata(namespace, name, name),
        "spec": {"hosts": [host, f"{name}.shop.example.com"], "gateways": ["mesh", "istio-system/public-gateway"], "http": http},
    }


def random_virtual_service(rng: random.Random, namespace: str, name: str, *, routes: int) -> dict[str, Any]:
    """A VirtualService of ``routes`` routes, each matching a header on a 512-character random token (poorly compressible)."""
    host = f"{name}.{namespace}.svc.cluster.local"
    alphabet = string.ascii_letters + string.digits + "-_"
    http = [
        {
            "name": f"tenant-{i}",
            "match": [{"headers": {"x-api-key": {"exact": "".join(rng.choices(alphabet, k=512))}}}],
            "route": [{"destination": {"host": host, "subset": "v1"}}],
        }
        for i in range(routes)
    ]
    return {
        "apiVersion": VIRTUAL_SERVICE.api_version,
        "kind": VIRTUAL_SERVICE.kind,
        "metadata": _metadata(namespace, name, name),
        "spec": {"hosts": [host], "http": http},
    }


def destination_rule(rng: random.Random, namespace: str, name: str) -> dict[str, Any]:
    """A realistic DestinationRule, ~1.5-2.5 KB of JSON."""
    host = f"{name}.{namespace}.svc.cluster.local"
    balancer: dict[str, Any] = rng.choice(
        (
            {"simple": "LEAST_REQUEST"},
            {"simple": "ROUND_ROBIN"},
            {"consistentHash": {"httpHeaderName": "x-user-id", "minimumRingSize": 1024}},
            {"localityLbSetting": {"enabled": True, "failover": [{"from": "europe-west1", "to": "europe-west4"}]}, "simple": "LEAST_REQUEST"},
        )
    )
    return {
        "apiVersion": DESTINATION_RULE.api_version,
        "kind": DESTINATION_RULE.kind,
        "metadata": _metadata(namespace, name, name),
        "spec": {
            "host": host,
            "exportTo": [".", "istio-system"],
            "trafficPolicy": {
                "loadBalancer": balancer,
                "connectionPool": {
                    "tcp": {"maxConnections": rng.choice((100, 500, 1000)), "connectTimeout": "3s", "tcpKeepalive": {"time": "7200s", "interval": "75s"}},
                    "http": {
                        "http1MaxPendingRequests": 1024,
                        "http2MaxRequests": 1024,
                        "maxRequestsPerConnection": rng.choice((0, 10, 100)),
                        "maxRetries": 3,
                        "idleTimeout": "300s",
                        "h2UpgradePolicy": "DEFAULT",
                    },
                },
                "outlierDetection": {
                    "consecutive5xxErrors": rng.choice((3, 5, 7)),
                    "consecutiveGatewayErrors": 5,
                    "interval": "10s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 50,
                    "minHealthPercent": 30,
                },
                "tls": {"mode": "ISTIO_MUTUAL"},
                "portLevelSettings": [{"port": {"number": 8443}, "tls": {"mode": "SIMPLE", "sni": f"{name}.shop.example.com"}}],
            },
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
                {
                    "name": "canary",
                    "labels": {"version": "v2", "track": "canary"},
                    "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 100}}, "outlierDetection": {"consecutive5xxErrors": 1, "interval": "5s"}},
                },
            ],
        },
    }


# ---- the simulated cluster's API --------------------------------------------------------------------


class Cluster:
    """Cluster c1 of the sim through its Kubernetes API (the kubeconfig's server and bearer token)."""

    def __init__(self, session: aiohttp.ClientSession, kubeconfig: Path) -> None:
        doc = yaml.safe_load(kubeconfig.read_text())
        self.session = session
        self.server = doc["clusters"][0]["cluster"]["server"].rstrip("/")
        self.headers = {"Authorization": f"Bearer {doc['users'][0]['user']['token']}", "Content-Type": "application/json"}

    def url(self, rtype: ResourceType, namespace: str, name: str = "") -> str:
        return f"{self.server}{rtype.collection_path(namespace)}" + (f"/{name}" if name else "")

    async def _call(self, method: str, url: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        data = None if body is None else orjson.dumps(body)
        async with self.session.request(method, url, data=data, headers=self.headers, timeout=aiohttp.ClientTimeout(total=120)) as resp:
            raw = await resp.read()
            if resp.status not in ok:
                raise BenchError(f"{method} {url} answered HTTP {resp.status}: {raw[:300]!r}")
            return orjson.loads(raw) if raw else None

    async def create(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        return dict(await self._call("POST", self.url(rtype, obj["metadata"]["namespace"]), obj, ok=(201,)))

    async def get(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return dict(await self._call("GET", self.url(rtype, namespace, name)))

    async def delete(self, rtype: ResourceType, namespace: str, name: str) -> None:
        await self._call("DELETE", self.url(rtype, namespace, name))

    async def create_all(self, objects: list[tuple[ResourceType, dict[str, Any]]], concurrency: int) -> None:
        queue = iter(objects)

        async def worker() -> None:
            for rtype, obj in queue:
                await self.create(rtype, obj)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def wire_size(item: dict[str, Any]) -> tuple[int, int, int]:
    """(JSON bytes, lz4 bytes, the agent's size) of a cluster object as the agent makes it: what it
    compares with the max message size less :data:`ENVELOPE_BYTES`."""
    obj = codec.make_object(copy.deepcopy(item))
    raw = len(codec.body_json(obj.body, 1))
    return raw, len(obj.body), obj.ByteSize() + FIELD_BYTES


# ---- processes ----------------------------------------------------------------------------------------


async def wait_for(predicate: Callable[[], Awaitable[bool]], *, timeout: float, what: str, procs: Processes, interval: float = 0.2) -> float:
    """Seconds until ``await predicate()`` is true (BenchError after ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for child in procs.children:  # those not stopped on purpose
            if not child.stopped and not child.alive():
                raise BenchError(f"{child.name} exited with status {child.process.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            if await predicate():
                return time.monotonic() - started
        await asyncio.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")


class Pair:
    """A hub on a fresh SQLite file and an agent of c1 syncing the Istio types to it."""

    def __init__(self, procs: Processes, tmp: Path, session: aiohttp.ClientSession, name: str, max_message_bytes: int) -> None:
        self.procs, self.tmp, self.session, self.name = procs, tmp, session, name
        self.max_message_bytes = max_message_bytes
        self.db_path = tmp / f"hub-{name}.db"
        self.hub_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.hub = f"http://127.0.0.1:{self.hub_port}"
        self.metrics = f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def start_hub(self) -> None:
        db = f"sqlite:///{self.db_path}"
        token = await asyncio.to_thread(
            lambda: subprocess.run([str(self.procs.fleetsync), "token", "create", "c1", "--db", db], capture_output=True, text=True, check=True).stdout
        )
        (self.tmp / f"c1-{self.name}.token").write_text(token.strip())
        self.procs.spawn_hub(db, self.grpc_port, self.hub_port, "--max-message-bytes", str(self.max_message_bytes), name=f"hub-{self.name}")
        await wait_for(lambda: self._up(f"{self.hub}/readyz"), timeout=60, what=f"hub-{self.name}", procs=self.procs)

    def start_agent(self) -> None:
        self.procs.spawn(
            f"agent-{self.name}",
            "agent",
            "--kubeconfig",
            str(self.tmp / "kc" / "c1.kubeconfig"),
            "--cluster-id",
            "c1",
            "--hub",
            f"grpc://127.0.0.1:{self.grpc_port}",
            "--token-file",
            str(self.tmp / f"c1-{self.name}.token"),
            "--types",
            ",".join(ISTIO_GVKS),
            "--max-message-bytes",
            str(self.max_message_bytes),
            "--metrics",
            f"127.0.0.1:{self.metrics_port}",
        )

    def stop(self) -> None:
        self.procs.stop(self.procs.of(f"agent-{self.name}"), 20)
        self.procs.stop(self.procs.of(f"hub-{self.name}"), 20)

    async def _up(self, url: str) -> bool:
        async with self.session.get(url) as response:
            return response.status == 200

    async def metrics_text(self) -> str:
        async with self.session.get(self.metrics) as response:
            return await response.text()

    async def caught_up(self) -> bool:
        m = parse_metrics(await self.metrics_text())
        busy = m.get("fleetsync_agent_pending_changes", 1) + m.get("fleetsync_agent_unacked_messages", 1) + m.get("fleetsync_agent_resyncs_outstanding", 1)
        return m.get("fleetsync_agent_connected", 0) == 1 and busy == 0

    async def cluster(self) -> dict[str, Any]:
        items = (await get_json(self.session, f"{self.hub}/api/v1/clusters", headers=HUB_AUTH))["items"]
        return dict(items[0]) if items else {"objects": {}, "errors": {}}

    async def hub_object(self, rtype: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        url = f"{self.hub}/clusters/c1{rtype.collection_path(namespace)}/{name}"
        async with self.session.get(url, headers=HUB_AUTH) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise BenchError(f"GET {url} answered HTTP {response.status}")
            return dict(orjson.loads(await response.read()))

    def store_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.tmp.glob(f"{self.db_path.name}*"))


# ---- the bench ----------------------------------------------------------------------------------------


async def sim_counts(session: aiohttp.ClientSession, sim: str) -> dict[str, int]:
    (cluster,) = (await get_json(session, f"{sim}/clusters"))["clusters"]
    return {gvk: int(cluster["objects"].get(gvk, 0)) for gvk in ISTIO_GVKS}


async def object_sizes(session: aiohttp.ClientSession, sim: str) -> dict[str, float]:
    """Totals of the Istio objects' sizes as the agent makes them (JSON, lz4, Object)."""
    truth = await get_json(session, f"{sim}/clusters/c1/truth?" + "&".join(f"type={g}" for g in ISTIO_GVKS), timeout=600)
    sizes = [wire_size(o) for objs in truth["types"].values() for o in objs]
    return {"objects": len(sizes), "json": sum(s[0] for s in sizes), "lz4": sum(s[1] for s in sizes), "object": sum(s[2] for s in sizes)}


async def scale(args: argparse.Namespace, procs: Processes, tmp: Path, session: aiohttp.ClientSession, sim: str, cluster: Cluster, fig: dict[str, Any]) -> None:
    rng = random.Random(args.seed)
    namespaces = [f"ns-{i}" for i in range(args.namespaces)]
    made = 0
    fig["scale"] = []
    for n in sorted(args.scales):
        todo: list[tuple[ResourceType, dict[str, Any]]] = []
        for i in range(made, n):
            ns, name = namespaces[i % len(namespaces)], f"svc-{i:06d}"
            todo += [(VIRTUAL_SERVICE, virtual_service(rng, ns, name)), (DESTINATION_RULE, destination_rule(rng, ns, name))]
        started = time.monotonic()
        await cluster.create_all(todo, args.concurrency)
        create_s = time.monotonic() - started
        made = n
        counts = await sim_counts(session, sim)
        total = sum(counts.values())
        sizes = await object_sizes(session, sim)
        print(
            f"N={n:,}: created {len(todo):,} objects in {create_s:.1f}s ({len(todo) / create_s:,.0f}/s); the cluster holds {total:,} Istio objects, "
            f"{sizes['json'] / total:,.0f} B JSON / {sizes['lz4'] / total:,.0f} B lz4 each on average",
            flush=True,
        )

        pair = Pair(procs, tmp, session, f"n{n}", args.max_message_bytes)
        await pair.start_hub()

        async def synced(pair: Pair = pair, counts: dict[str, int] = counts) -> bool:
            c = await pair.cluster()
            return all(c["objects"].get(g, 0) == k for g, k in counts.items()) and await pair.caught_up()

        started = time.monotonic()
        pair.start_agent()
        await wait_for(synced, timeout=args.timeout, what=f"the FULL of N={n}", procs=procs)
        full_s = time.monotonic() - started
        text = await pair.metrics_text()
        messages = parse_metrics_by(text, "fleetsync_agent_messages_sent_total", "kind")
        sent = parse_metrics_by(text, "fleetsync_agent_bytes_sent_total", "kind")
        largest = parse_metrics(text).get("fleetsync_agent_largest_message_bytes", 0.0)
        errors = (await pair.cluster())["errors"]
        row = {
            "n": n,
            "objects": total,
            "by_type": counts,
            "created": len(todo),
            "create_s": create_s,
            "sizes": sizes,
            "full_s": full_s,
            "full_messages": messages.get("full", 0.0),
            "full_bytes": sent.get("full", 0.0),
            "messages": messages,
            "bytes": sent,
            "largest_message": largest,
            "hub_store_bytes": pair.store_bytes(),
            "agent_rss": rss(procs.of(f"agent-{pair.name}")[0].ps),
            "agent_peak_rss": vm_hwm(procs.of(f"agent-{pair.name}")[0].pid),
            "hub_rss": rss(procs.of(f"hub-{pair.name}")[0].ps),
            "errors": errors,
        }
        fig["scale"].append(row)
        print(
            f"  FULL: {total:,} objects on the hub in {full_s:.1f}s ({total / full_s:,.0f}/s) from the agent's start; {row['full_messages']:.0f} FULL messages, "
            f"{row['full_bytes'] / MIB:,.1f} MiB; largest message {largest / KIB:,.0f} KiB of {args.max_message_bytes / KIB:,.0f} KiB; "
            f"hub store {row['hub_store_bytes'] / MIB:,.1f} MiB; errors {errors or 'none'}",
            flush=True,
        )
        if errors:
            raise BenchError(f"type errors at N={n}: {errors}")
        pair.stop()
        row["hub_store_stopped_bytes"] = pair.store_bytes()


def largest_fitting(build: Callable[[int], dict[str, Any]], template: dict[str, Any], budget: int, *, near: int = 0) -> tuple[int, bool]:
    """(K, found): the largest route count whose object fits ``budget``, searched from ``near`` (found
    False: K routes make :data:`SEARCH_LIMIT` of JSON and still fit)."""

    def fits(k: int) -> bool:
        obj = build(k)
        obj["metadata"] = {**template, **obj["metadata"]}
        return wire_size(obj)[2] <= budget

    low, step = (max(1, near - 16), 16) if near else (1, 1)
    if not fits(low):
        if low == 1:
            raise BenchError("a 1-route VirtualService does not fit the max message size")
        low, step = 1, 1
    high = low + step
    while fits(high):
        if len(orjson.dumps(build(high))) > SEARCH_LIMIT:
            return high, False
        low, step = high, step * 2
        high = low + step
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low, True


async def bound(args: argparse.Namespace, procs: Processes, tmp: Path, session: aiohttp.ClientSession, sim: str, cluster: Cluster, fig: dict[str, Any]) -> None:
    budget = args.max_message_bytes - ENVELOPE_BYTES
    ns = "ns-0"
    # What the sim adds to an object (uid, resourceVersion, creationTimestamp, generation), to size candidates as stored.
    probe = await cluster.create(VIRTUAL_SERVICE, virtual_service(random.Random(0), ns, "bound-probe", routes=1))
    await cluster.delete(VIRTUAL_SERVICE, ns, "bound-probe")
    template = {k: v for k, v in probe["metadata"].items() if k not in ("name", "namespace", "labels", "annotations", "managedFields")}
    shapes: dict[str, Callable[[str, int], dict[str, Any]]] = {
        "realistic": lambda name, k: virtual_service(random.Random(7), ns, name, routes=k),
        "random": lambda name, k: random_virtual_service(random.Random(7), ns, name, routes=k),
    }
    fig["bound"] = {"max_message_bytes": args.max_message_bytes, "budget": budget, "shapes": {}}
    made: dict[str, dict[str, Any]] = {}
    for shape, build in shapes.items():
        name = f"bound-{shape}"
        k, found = largest_fitting(functools.partial(build, f"{name}-fits"), template, budget)
        for suffix in ("fits", "over") if found else ("fits",):
            # the smallest "-over" object beyond the bound (its name compresses a little differently)
            routes = k if suffix == "fits" else largest_fitting(functools.partial(build, f"{name}-over"), template, budget, near=k)[0] + 1
            for _attempt in range(3):  # the resourceVersion may have gained a digit since the probe: make sure of the side
                stored = await cluster.create(VIRTUAL_SERVICE, build(f"{name}-{suffix}", routes))
                size = wire_size(stored)
                if (size[2] <= budget) == (suffix == "fits"):
                    break
                await cluster.delete(VIRTUAL_SERVICE, ns, f"{name}-{suffix}")
                routes += -1 if suffix == "fits" else 1
            else:
                raise BenchError(f"cannot place {name}-{suffix} on its side of the bound")
            made[f"{name}-{suffix}"] = {"shape": shape, "routes": routes, "json": size[0], "lz4": size[1], "object": size[2], "fits": size[2] <= budget}
        fits = made[f"{name}-fits"]
        fig["bound"]["shapes"][shape] = {"found": found, "routes": fits["routes"]}
        print(
            f"bound, {shape}: {fits['routes']} routes = {fits['json'] / KIB:,.1f} KiB JSON, {fits['lz4'] / KIB:,.1f} KiB lz4 ({fits['json'] / fits['lz4']:.1f}x), "
            f"{fits['object']:,} B as the agent sizes it (budget {budget:,} B)" + ("" if found else f" -- still fits at {SEARCH_LIMIT // MIB} MiB of JSON"),
            flush=True,
        )
    fig["bound"]["objects"] = made
    over = {name for name, o in made.items() if not o["fits"]}
    counts = await sim_counts(session, sim)

    pair = Pair(procs, tmp, session, "bound", args.max_message_bytes)
    await pair.start_hub()

    async def settled() -> bool:
        c = await pair.cluster()
        error = c["errors"].get(VS, "")
        others = all(c["objects"].get(g, 0) == k for g, k in counts.items() if g != VS)
        return others and c["objects"].get(VS, 0) == counts[VS] - len(over) and all(f"{ns}/{name}" in error for name in over) and await pair.caught_up()

    started = time.monotonic()
    pair.start_agent()
    took = await wait_for(settled, timeout=args.timeout, what="the VirtualServices beyond the bound reported, the rest synced", procs=procs)
    c = await pair.cluster()
    text = await pair.metrics_text()
    largest = parse_metrics(text).get("fleetsync_agent_largest_message_bytes", 0.0)
    for name, o in made.items():
        on_hub = await pair.hub_object(VIRTUAL_SERVICE, ns, name)
        truth = await cluster.get(VIRTUAL_SERVICE, ns, name)
        o["on_hub"] = on_hub is not None
        if o["fits"] and (on_hub is None or on_hub["spec"] != truth["spec"]):
            raise BenchError(f"{name} ({o['object']:,} B, fits) is {'not on the hub' if on_hub is None else 'on the hub with another spec'}")
        if not o["fits"] and on_hub is not None:
            raise BenchError(f"{name} ({o['object']:,} B, beyond the bound) is on the hub")
    fig["bound"] |= {
        "settled_s": time.monotonic() - started,
        "wait_s": took,
        "hub_virtual_services": c["objects"].get(VS, 0),
        "sim_virtual_services": counts[VS],
        "error": c["errors"].get(VS, ""),
        "other_errors": {g: e for g, e in c["errors"].items() if g != VS},
        "largest_message": largest,
    }
    print(
        f"bound on the hub: {c['objects'].get(VS, 0):,} of {counts[VS]:,} VirtualServices synced (the {len(over)} beyond the bound left out) in {took:.1f}s; "
        f"largest message {largest:,.0f} B of {args.max_message_bytes:,} B; the type's error: {c['errors'].get(VS, '')!r}",
        flush=True,
    )
    pair.stop()


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path, fig: dict[str, Any]) -> None:
    sim_port = free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    procs.spawn(
        "sim",
        "sim",
        "--clusters",
        "1",
        "--pods",
        str(args.pods),
        "--namespaces",
        str(args.namespaces),
        "--churn",
        "0",
        "--port",
        str(sim_port),
        "--kubeconfig-dir",
        str(tmp / "kc"),
    )
    connector = aiohttp.TCPConnector(limit=max(100, args.concurrency * 2))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def up() -> bool:
            async with session.get(f"{sim}/readyz") as response:
                return response.status == 200

        await wait_for(up, timeout=120, what="the sim", procs=procs)
        cluster = Cluster(session, tmp / "kc" / "c1.kubeconfig")
        if args.scales:
            await scale(args, procs, tmp, session, sim, cluster, fig)
        if not args.skip_bound:
            await bound(args, procs, tmp, session, sim, cluster, fig)
    summary(args, fig)


def summary(args: argparse.Namespace, fig: dict[str, Any]) -> None:
    m = fig["machine"]
    rows: list[tuple[str, str]] = [
        ("machine", f"{m['nproc']} cores ({m['cpu_model']}), {m['memory'] / 2**30:.0f} GiB, Python {m['python']}"),
        (
            "scenario",
            f"sim 1 cluster (--pods {args.pods}, {args.namespaces} namespaces), hub on SQLite, 1 agent of the 10 Istio types, "
            f"--max-message-bytes {args.max_message_bytes:,} (agent and hub)",
        ),
    ]
    for r in fig.get("scale", []):
        s = r["sizes"]
        rows += [
            (
                f"N={r['n']:,} VirtualServices + DestinationRules",
                f"{r['objects']:,} Istio objects in the cluster; {r['created']:,} created in {r['create_s']:.1f}s ({r['created'] / r['create_s']:,.0f}/s)",
            ),
            (
                "  object size (avg JSON / lz4)",
                f"{s['json'] / s['objects']:,.0f} B / {s['lz4'] / s['objects']:,.0f} B ({s['json'] / s['lz4']:.1f}x); {s['json'] / MIB:,.1f} MiB JSON in all",
            ),
            ("  agent start -> hub holds all", f"{r['full_s']:.1f}s ({r['objects'] / r['full_s']:,.0f} objects/s)"),
            ("  FULL messages / bytes", f"{r['full_messages']:.0f} / {r['full_bytes'] / MIB:,.1f} MiB ({r['full_bytes'] / r['objects']:,.0f} B/object)"),
            ("  largest message", f"{r['largest_message'] / KIB:,.0f} KiB of {args.max_message_bytes / KIB:,.0f} KiB"),
            ("  hub store (SQLite db + WAL)", f"{r['hub_store_bytes'] / MIB:,.1f} MiB; {r['hub_store_stopped_bytes'] / MIB:,.1f} MiB after the hub stopped"),
            ("  RSS agent (peak) / hub", f"{r['agent_rss'] / MIB:,.0f} MiB ({mib(r['agent_peak_rss'])}) / {r['hub_rss'] / MIB:,.0f} MiB"),
        ]
    b = fig.get("bound")
    if b:
        rows.append(("single VirtualService bound", f"Object + framing <= {b['budget']:,} B (max message {b['max_message_bytes']:,} B less 1 KiB of envelope)"))
        for name, o in b["objects"].items():
            rows.append(
                (
                    f"  {name} ({o['routes']} routes)",
                    f"{o['json']:,} B JSON, {o['lz4']:,} B lz4 ({o['json'] / o['lz4']:.1f}x), {o['object']:,} B Object: "
                    + ("synced" if o["on_hub"] else "left out, in the type's error")
                    + ("" if o["fits"] == o["on_hub"] else " (UNEXPECTED)"),
                )
            )
        rows += [
            ("  the other VirtualServices", f"{b['hub_virtual_services']:,} on the hub of {b['sim_virtual_services']:,} in the cluster"),
            ("  largest message", f"{b['largest_message']:,.0f} B"),
            ("  hub: errors of the type", b["error"]),
        ]
        fits = [o for o in b["objects"].values() if o["fits"]]
        if fits:
            smallest = min(fits, key=lambda o: o["json"])
            rows.append(
                (
                    "  against etcd's limit",
                    f"an API server stores objects up to ~{ETCD_LIMIT / MIB:.1f} MiB (etcd --max-request-bytes); the least compressible VirtualService "
                    f"that fits has {smallest['json'] / MIB:.2f} MiB of JSON ({smallest['shape']})",
                )
            )
    width = max(len(name) for name, _ in rows) + 2
    print("\n".join(["", "=" * 110, "fleetsync istio config: summary", "=" * 110, *(f"{n.ljust(width)}{v}" for n, v in rows), "=" * 110]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scales", type=lambda s: [int(x) for x in s.split(",") if x.strip()], default=[1000, 5000, 10000], help="N of each kind, comma-separated")
    p.add_argument("--pods", type=int, default=20, help="application pods of the simulated cluster")
    p.add_argument("--namespaces", type=int, default=10, help="application namespaces the objects are spread over")
    p.add_argument("--max-message-bytes", type=int, default=512 * KIB, help="the agent's and the hub's max message size")
    p.add_argument("--concurrency", type=int, default=32, help="creations in flight to the sim")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per FULL")
    p.add_argument("--seed", type=int, default=1, help="seed of the generated objects")
    p.add_argument("--skip-bound", action="store_true", help="do not measure the single-object bound")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC, help="the fleetsync executable")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_bench("istio-config", parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())
