"""Client commands against a hub's HTTP API: ``clusters``, ``get``, ``check``, ``events``, ``resync``."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import time
import urllib.parse
from typing import Any

import aiohttp
import orjson
import yaml

from fleetsync.cli.flags import add_flag
from fleetsync.model.objects import CLUSTER_VERSION_ANNOTATION, human_duration
from fleetsync.model.types import HUB_TYPES, TypeRegistry, UnknownResourceType
from fleetsync.protocol.codec import strip

TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


class ClientError(Exception):
    """A request failed; the message names the URL and what the server said."""


def add_hub_flags(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--hub", default="http://127.0.0.1:8080", help="the hub's HTTP API URL")
    add_flag(p, "--token", default="", help="API token (sent as Authorization: Bearer)")
    add_flag(
        p, "--certificate-authority", default="", help="https:// hubs: the CA bundle (PEM) to verify the hub's certificate with (default: the system's CAs)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("clusters", help="list the clusters the hub knows")
    add_hub_flags(p)
    p.set_defaults(run=lambda a: run_client(_clusters(a)))
    p = subparsers.add_parser("get", help="list objects of a type, like kubectl get, across clusters")
    p.add_argument("type", help="pods, svc, deployments.apps, v1/Pod, ...")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="all namespaces (the default when -n is not given)")
    p.add_argument("-n", "--namespace", default=None, help="only this namespace")
    p.add_argument("-l", "--selector", default="", help="label selector")
    p.add_argument("-o", "--output", default="", choices=["", "wide", "json", "yaml", "name"], help="output format")
    p.add_argument("--cluster", default=None, help="only this cluster (default: every cluster)")
    add_hub_flags(p)
    p.set_defaults(run=lambda a: run_client(_get(a)))
    p = subparsers.add_parser("check", help="compare the hub's view with the simulator's truth; exit 1 on divergence")
    add_flag(p, "--sim", default="http://127.0.0.1:8001", help="the simulator's URL")
    p.add_argument("--clusters", default="", help="only these clusters (comma-separated; default: every simulated cluster)")
    p.add_argument(
        "--types",
        default="",
        help="compare these types (comma-separated, or all; default: every type the hub holds a stream or an object of, per cluster)",
    )
    add_hub_flags(p)
    p.set_defaults(run=lambda a: run_client(_check(a)))
    p = subparsers.add_parser("events", help="cluster events (connected, inactive, resyncs, gaps, ...), oldest first")
    p.add_argument("--cluster", default=None, help="only this cluster")
    p.add_argument("--reason", default=None, help="only this reason (Connected, Disconnected, Rejected, Inactive, Active, ResyncStarted, ...)")
    p.add_argument("--limit", type=int, default=100, help="the newest this many (default: 100)")
    p.add_argument("-o", "--output", default="", choices=["", "json"], help="output format")
    p.add_argument("-w", "--watch", action="store_true", help="after the newest --limit events, print new ones as any hub replica records them (Ctrl-C ends)")
    add_hub_flags(p)
    p.set_defaults(run=lambda a: run_client(_events(a)))
    p = subparsers.add_parser("resync", help="ask a cluster's agent for a digest resync (every type, or one)")
    p.add_argument("cluster", help="the cluster")
    p.add_argument("--type", default="", help="only this type (pods, v1/Pod, ...)")
    add_hub_flags(p)
    p.set_defaults(run=lambda a: run_client(_resync(a)))


def hub_session(args: argparse.Namespace, **options: Any) -> aiohttp.ClientSession:
    """A client session that verifies an https:// hub against ``--certificate-authority`` (if given)."""
    if not args.certificate_authority:
        return aiohttp.ClientSession(**options)
    try:
        context = ssl.create_default_context(cafile=args.certificate_authority)
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"--certificate-authority {args.certificate_authority}: {getattr(exc, 'strerror', None) or exc}") from None
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), **options)


def item_url(args: argparse.Namespace, collection: str, name: str = "") -> str:
    """The hub's URL of ``collection`` (e.g. ``/api/v1/works``), or of its item ``name`` (quoted)."""
    return f"{args.hub}{collection}" + (f"/{urllib.parse.quote(name, safe='')}" if name else "")


def run_client(coro: Any) -> int:
    try:
        return int(asyncio.run(coro))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def fetch(session: aiohttp.ClientSession, url: str, *, accept: str = "application/json", token: str = "", method: str = "GET", body: Any = None) -> Any:
    """The decoded JSON answer of ``url`` (``body``, if given, sent as JSON); a ClientError naming
    the URL and the server's message otherwise."""
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else orjson.dumps(body)
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        async with session.request(method, url, headers=headers, data=data) as response:
            answer = await response.read()
            if response.status >= 400:
                try:
                    decoded = orjson.loads(answer)
                    message = decoded.get("message") or decoded.get("error") or ""  # a Kubernetes Status, or microcluster's error
                except (orjson.JSONDecodeError, AttributeError):
                    message = answer.decode(errors="replace")[:200]
                raise ClientError(f"{url}: {response.status} {message}")
            return orjson.loads(answer)
    except aiohttp.ClientError as exc:
        raise ClientError(f"cannot reach {url}: {exc}") from None


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]
    for row in [headers, *rows]:
        print("   ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())


async def _clusters(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        data = await fetch(session, f"{args.hub}/api/v1/clusters", token=args.token)
    now = time.time()
    rows = [
        [
            c["name"],
            c["status"] + (" (stale)" if c.get("stale") else ""),
            "yes" if c.get("connected") else "no",
            c["agent"] or "-",
            human_duration(now - c["lastHeartbeat"]) + " ago" if c["lastHeartbeat"] else "-",
            sum(c["objects"].values()),
            len(c["errors"]),
            _istio(c.get("istio")),
            "-" if not c.get("serviceGraph") else "ok" if c["serviceGraph"]["healthy"] else "failing",
        ]
        for c in data["items"]
    ]
    print_table(["NAME", "STATUS", "CONNECTED", "AGENT", "LAST-SEEN", "OBJECTS", "ERRORS", "ISTIO", "METRICS"], rows)
    return 0


def _istio(summary: dict[str, Any] | None) -> str:
    """``1.24.1`` (several control planes: ``1.24.1/canary:1.25.0``), ``none``, or ``-`` when not reported."""
    if summary is None:
        return "-"
    planes = summary["controlPlanes"]
    return "/".join(p["version"] if p["revision"] == "default" else f"{p['revision']}:{p['version']}" for p in planes) or "none"


async def _events(args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit)}
    if args.cluster:
        query["cluster"] = args.cluster
    if args.reason:
        query["reason"] = args.reason
    async with hub_session(args) as session:
        data = await fetch(session, f"{args.hub}/api/v1/events?{urllib.parse.urlencode(query)}", token=args.token)
    if args.watch:
        return await _watch_events(args, query, data["items"])
    if args.output == "json":
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not data["items"]:
        print("No events found.", file=sys.stderr)
        return 0
    now = time.time()
    rows = [[human_duration(now - e["time"]), e["cluster"], e["reason"], e["type"] or "-", e["message"]] for e in data["items"]]
    print_table(["AGE", "CLUSTER", "REASON", "TYPE", "MESSAGE"], rows)
    return 0


def _event_line(event: dict[str, Any], output: str) -> str:
    if output == "json":
        return orjson.dumps(event).decode()
    at = time.strftime("%H:%M:%S", time.localtime(event["time"]))
    return f"{at}   {event['cluster']:<16} {event['reason']:<16} {event['type'] or '-':<40} {event['message']}"


async def _watch_events(args: argparse.Namespace, query: dict[str, str], first: list[dict[str, Any]]) -> int:
    """Print ``first``, then follow ``GET /api/v1/events?watch=1`` from the last one, reconnecting (with ``since``) when the stream ends."""
    if args.output != "json":
        print(f"{'TIME':<8}   {'CLUSTER':<16} {'REASON':<16} {'TYPE':<40} MESSAGE", flush=True)
    for event in first:
        print(_event_line(event, args.output), flush=True)
    since = first[-1]["id"] if first else None
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with hub_session(args, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session:
        while True:
            params = {k: v for k, v in query.items() if k != "limit"} | {"watch": "1"} | ({"since": str(since)} if since is not None else {})
            url = f"{args.hub}/api/v1/events?{urllib.parse.urlencode(params)}"
            try:
                async with session.get(url, headers=headers) as response:
                    if response.status >= 400:
                        raise ClientError(f"{url}: {response.status} {(await response.text())[:200]}")
                    async for line in response.content:
                        if line.strip():
                            event = orjson.loads(line)
                            since = event["id"]
                            print(_event_line(event, args.output), flush=True)
            except aiohttp.ClientError as exc:
                print(f"lost the hub ({exc}); following again in 1s", file=sys.stderr)
                await asyncio.sleep(1)


async def _resync(args: argparse.Namespace) -> int:
    query = f"?{urllib.parse.urlencode({'type': args.type})}" if args.type else ""
    async with hub_session(args) as session:
        data = await fetch(session, f"{args.hub}/api/v1/clusters/{urllib.parse.quote(args.cluster)}/resync{query}", token=args.token, method="POST")
    print(f"{args.cluster}: {data['message']}; follow it with `fleetsync events --cluster {args.cluster}`")
    return 0


async def _get(args: argparse.Namespace) -> int:
    try:
        rtype = TypeRegistry(HUB_TYPES).resolve(args.type)
    except UnknownResourceType as exc:
        raise ClientError(str(exc)) from None
    query = f"?labelSelector={args.selector}" if args.selector else ""
    async with hub_session(args) as session:
        clusters = [args.cluster] if args.cluster else [c["name"] for c in (await fetch(session, f"{args.hub}/api/v1/clusters", token=args.token))["items"]]
        path = rtype.collection_path(args.namespace)
        if args.output in ("json", "yaml", "name"):
            items = []
            for cluster in clusters:
                items += (await fetch(session, f"{args.hub}/clusters/{cluster}{path}{query}", token=args.token))["items"]
            if args.output == "name":
                for item in items:
                    print(f"{rtype.plural}/{item['metadata']['name']}")
                return 0
            doc = {"apiVersion": "v1", "kind": "List", "items": items}
            print(
                orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() if args.output == "json" else yaml.safe_dump(doc, sort_keys=False),
                end="\n" if args.output == "json" else "",
            )
            return 0
        headers: list[str] = []
        rows: list[list[Any]] = []
        wide = args.output == "wide"
        for cluster in clusters:
            tbl = await fetch(session, f"{args.hub}/clusters/{cluster}{path}{query}", accept=TABLE_ACCEPT, token=args.token)
            keep = [i for i, c in enumerate(tbl["columnDefinitions"]) if wide or c["priority"] == 0]
            headers = (
                ["CLUSTER"] + (["NAMESPACE"] if rtype.namespaced and not args.namespace else []) + [tbl["columnDefinitions"][i]["name"].upper() for i in keep]
            )
            for row in tbl["rows"]:
                ns = [row["object"]["metadata"].get("namespace", "")] if rtype.namespaced and not args.namespace else []
                rows.append([cluster, *ns, *(row["cells"][i] for i in keep)])
    if not rows:
        print(f"No {rtype.plural} found.", file=sys.stderr)
        return 0
    print_table(headers, rows)
    return 0


def canonical(obj: dict[str, Any]) -> bytes:
    """An object's content as the agent ships it (stripped, sorted keys: equal objects, equal bytes),
    without its ``resourceVersion``: the hub's reads carry the hub revision there, and the cluster's
    in an annotation, which the simulator's truth lacks. (A cluster's resourceVersion changes only with
    the content, so equal content is the same version.)"""
    stripped = strip(obj)
    meta = stripped.get("metadata")
    if isinstance(meta, dict):
        meta.pop("resourceVersion", None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and annotations.pop(CLUSTER_VERSION_ANNOTATION, None) is not None and not annotations:
            del meta["annotations"]
    return orjson.dumps(stripped, option=orjson.OPT_SORT_KEYS)


async def divergence(
    session: aiohttp.ClientSession, sim: str, hub: str, *, token: str = "", only: set[str] | None = None, types: list[str] | None = None
) -> dict[str, dict[str, tuple[int, int, int]]]:
    """cluster -> type -> (missing, extra, stale) between the sim's truth and the hub (of every simulated
    cluster, or of ``only`` these), for ``types`` or else every type the hub holds a stream or an object of."""
    clusters = {c["name"]: c for c in (await fetch(session, f"{hub}/api/v1/clusters", token=token))["items"]}
    report: dict[str, dict[str, tuple[int, int, int]]] = {}
    registry = TypeRegistry()
    served = {t.gvk for t in registry}
    simulated = (await fetch(session, f"{sim}/clusters"))["clusters"]
    unknown = (only or set()) - {c["name"] for c in simulated}
    if unknown:
        raise ClientError(f"the simulator has no cluster {', '.join(sorted(unknown))}")
    for sim_cluster in simulated:
        name = sim_cluster["name"]
        if only and name not in only:
            continue
        hub_cluster = clusters.get(name)
        if hub_cluster is None or not (hub_cluster["types"] or hub_cluster["objects"]):
            report[name] = {"(cluster not synced)": (sum(sim_cluster["objects"].values()), 0, 0)}
            continue
        held = {t for t in set(hub_cluster["types"]) | set(hub_cluster["objects"]) if t in served}  # not what agents collect elsewhere
        compare = sorted(held if types is None else set(types) & set(sim_cluster["objects"]))
        truth = (await fetch(session, f"{sim}/clusters/{name}/truth?" + "&".join(f"type={t}" for t in compare)))["types"]
        report[name] = {}
        for type_ in compare:
            rtype = registry.by_gvk(type_)
            want = {f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": canonical(o) for o in truth.get(type_, [])}
            listed = (await fetch(session, f"{hub}/clusters/{name}{rtype.collection_path()}", token=token))["items"]
            have = {f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": canonical(o) for o in listed}
            missing = len(want.keys() - have.keys())
            extra = len(have.keys() - want.keys())
            stale = sum(1 for k in want.keys() & have.keys() if want[k] != have[k])
            report[name][type_] = (missing, extra, stale)
    return report


def _check_types(text: str) -> list[str] | None:
    if not text.strip():
        return None
    registry = TypeRegistry()
    if text.strip() == "all":
        return [t.gvk for t in registry]
    try:
        return [registry.resolve(name.strip()).gvk for name in text.split(",") if name.strip()]
    except UnknownResourceType as exc:
        raise ClientError(f"--types: {exc}") from None


async def _check(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        only = {c.strip() for c in args.clusters.split(",") if c.strip()} or None
        report = await divergence(session, args.sim, args.hub, token=args.token, only=only, types=_check_types(args.types))
    rows = [[c, t, m, e, s] for c, types in report.items() for t, (m, e, s) in types.items()]
    print_table(["CLUSTER", "TYPE", "MISSING", "EXTRA", "STALE"], rows)
    diverged = sum(m + e + s for types in report.values() for m, e, s in types.values())
    print(f"\n{'converged' if not diverged else f'DIVERGENT: {diverged} objects differ'}")
    return 1 if diverged else 0
