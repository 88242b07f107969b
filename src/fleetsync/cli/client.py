"""Client commands against a hub's HTTP API: ``clusters``, ``get``, ``check``, ``events``, ``resync``.

Exit codes, as kubectl's: 0 done, 1 an error (the hub refused or could not be reached, a file
could not be read, ``check`` found divergence), 2 a usage error only (a command line this
program cannot act on: an unknown type, a malformed ``KEY=VALUE``), which scripts can tell
from a failure worth retrying.
"""

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
from fleetsync.errors import FleetsyncError
from fleetsync.model import clusterlabels
from fleetsync.model.objects import CLUSTER_VERSION_ANNOTATION, human_duration
from fleetsync.model.types import HUB_TYPES, ResourceType, TypeRegistry, UnknownResourceType
from fleetsync.protocol.codec import strip

TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


class ClientError(FleetsyncError):
    """A request failed; the message names the URL and what the server said (exit code 1)."""


class UsageError(ClientError):
    """The command line cannot be acted on (exit code 2); the message says what is wrong."""


#: fleetsync's own events (``api/events.py``) and its Cluster objects (``api/clusters.py``).
EVENTS_PATH = "/apis/fleetsync.io/v1/fleetsyncevents"
CLUSTERS_PATH = "/apis/fleetsync.io/v1/clusters"


def add_hub_flags(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--hub", default="http://127.0.0.1:8080", help="the hub's HTTP API URL")
    add_flag(p, "--token", default="", help="API token (sent as Authorization: Bearer)")
    add_flag(
        p, "--certificate-authority", default="", help="https:// hubs: the CA bundle (PEM) to verify the hub's certificate with (default: the system's CAs)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "clusters",
        help="list the clusters the hub knows; show and set their labels; delete one",
        description="Without an action: list the clusters. `label` and `labels` change and show the labels an admin sets on a cluster, "
        "which works' placement and clusterSelector match (never the --label metadata an agent reports of itself). "
        "`delete` forgets a retired cluster: its tokens, objects (watchers see them deleted) and everything else the hub keeps of it.",
    )
    add_hub_flags(p)
    p.set_defaults(run=lambda a: run_client(_clusters(a)))
    actions = p.add_subparsers(dest="clusters_command", metavar="ACTION")
    label = actions.add_parser(
        "label", help="set (KEY=VALUE) and remove (KEY-) a cluster's labels, like kubectl label (admin token)", description="e.g. c1 env=prod tier-"
    )
    label.add_argument("name", help="the cluster (it need not have connected yet)")
    label.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-", help="labels to set or remove")
    add_hub_flags(label)
    label.set_defaults(run=lambda a: run_client(_label(a)))
    show = actions.add_parser("labels", help="show a cluster's labels (set by an admin) and its agent's metadata (as reported)")
    show.add_argument("name", help="the cluster")
    add_hub_flags(show)
    show.set_defaults(run=lambda a: run_client(_labels(a)))
    delete = actions.add_parser(
        "delete",
        help="delete a cluster from the hub (admin token): revoke its agent tokens, remove its objects, labels, streams and leases, disconnect its agent",
    )
    delete.add_argument("name", help="the cluster")
    add_hub_flags(delete)
    delete.set_defaults(run=lambda a: run_client(_delete(a)))
    p = subparsers.add_parser("get", help="list objects of a type, like kubectl get, across clusters")
    p.add_argument("type", help="pods, svc, deployments.apps, v1/Pod, ...")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="all namespaces (the default when -n is not given)")
    p.add_argument("-n", "--namespace", default=None, help="only this namespace")
    p.add_argument("-l", "--selector", default="", help="label selector")
    p.add_argument("-o", "--output", default="", choices=["", "wide", "json", "yaml", "name"], help="output format")
    p.add_argument("--cluster", default=None, help="only this cluster (default: every cluster, through the hub's fleet-wide path)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=500,
        help="objects per request (the list's limit; the hub's continue token fetches the next page), as kubectl's --chunk-size (default: 500)",
    )
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
    """Run a client command: its exit code, 1 after a ClientError (printed), 2 after a UsageError."""
    try:
        return int(asyncio.run(coro))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


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


async def _label(args: argparse.Namespace) -> int:
    try:
        add, remove = clusterlabels.parse_args(args.changes)
    except ValueError as exc:
        raise UsageError(f"fleetsync clusters label: {exc}") from None
    patch: dict[str, str | None] = {**add, **dict.fromkeys(remove)}
    async with hub_session(args) as session:
        answer = await fetch(session, f"{item_url(args, '/api/v1/clusters', args.name)}/labels", token=args.token, method="PATCH", body={"labels": patch})
    print(f"{answer['cluster']}: {_shown(answer['labels'])}")
    return 0


async def _labels(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        answer = await fetch(session, f"{item_url(args, '/api/v1/clusters', args.name)}/labels", token=args.token)
    print_table(["CLUSTER", "LABELS", "REPORTED (NOT TRUSTED)"], [[answer["cluster"], _shown(answer["labels"]), _shown(answer["reported"])]])
    return 0


async def _delete(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        answer = await fetch(session, item_url(args, CLUSTERS_PATH, args.name), token=args.token, method="DELETE")
    print(answer.get("message") or f"cluster {args.name} deleted")
    return 0


def _shown(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


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
        data = await fetch(session, f"{args.hub}{EVENTS_PATH}?{urllib.parse.urlencode(query)}", token=args.token)
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
    """Print ``first``, then follow ``GET /apis/fleetsync.io/v1/fleetsyncevents?watch=1`` from the last one, reconnecting (with ``since``) when the stream ends."""
    if args.output != "json":
        print(f"{'TIME':<8}   {'CLUSTER':<16} {'REASON':<16} {'TYPE':<40} MESSAGE", flush=True)
    for event in first:
        print(_event_line(event, args.output), flush=True)
    since = first[-1]["id"] if first else None
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    async with hub_session(args, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session:
        while True:
            params = {k: v for k, v in query.items() if k != "limit"} | {"watch": "1"} | ({"since": str(since)} if since is not None else {})
            url = f"{args.hub}{EVENTS_PATH}?{urllib.parse.urlencode(params)}"
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


async def _pages(session: aiohttp.ClientSession, url: str, query: dict[str, str], *, chunk: int, token: str, accept: str) -> list[dict[str, Any]]:
    """Every page of the list at ``url`` (``limit=chunk``, then the hub's ``continue`` token until
    it gives none): one answer per page, as kubectl reads a list."""
    pages: list[dict[str, Any]] = []
    token_ = ""
    while True:
        page_query = {**query, "limit": str(chunk)} | ({"continue": token_} if token_ else {})
        page = await fetch(session, f"{url}?{urllib.parse.urlencode(page_query)}", accept=accept, token=token)
        pages.append(page)
        token_ = (page.get("metadata") or {}).get("continue") or ""
        if not token_:
            return pages


async def _resolve_type(session: aiohttp.ClientSession, args: argparse.Namespace) -> ResourceType:
    """The type ``args.type`` names: one the hub is built with, or else one its discovery
    serves (a CRD an agent reported), so ``fleetsync get widgets`` works as kubectl does."""
    try:
        return TypeRegistry(HUB_TYPES).resolve(args.type)
    except UnknownResourceType:
        pass
    try:
        return (await hub_types(session, args.hub, token=args.token)).resolve(args.type)
    except UnknownResourceType as exc:
        raise UsageError(f"{exc} (the hub's discovery lists no such type)") from None


async def _get(args: argparse.Namespace) -> int:
    """List through the hub's fleet-wide path (or one cluster's with ``--cluster``), page by page."""
    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be at least 1, not {args.chunk_size}")
    query = {"labelSelector": args.selector} if args.selector else {}
    tables = args.output not in ("json", "yaml", "name")
    async with hub_session(args) as session:
        rtype = await _resolve_type(session, args)
        base = f"{args.hub}/clusters/{urllib.parse.quote(args.cluster, safe='')}" if args.cluster else args.hub
        url = base + rtype.collection_path(args.namespace)
        pages = await _pages(session, url, query, chunk=args.chunk_size, token=args.token, accept=TABLE_ACCEPT if tables else "application/json")
    if not tables:
        items = [item for page in pages for item in page["items"]]
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
    wide = args.output == "wide"
    with_namespace = rtype.namespaced and not args.namespace
    headers: list[str] = []
    rows: list[list[Any]] = []
    for tbl in pages:
        columns = tbl["columnDefinitions"]
        # a fleet-wide Table starts with its Cluster column; one cluster's has none: the row is from --cluster
        fleet = bool(columns) and columns[0]["name"] == "Cluster"
        keep = [i for i, c in enumerate(columns) if (wide or c["priority"] == 0) and not (fleet and i == 0)]
        headers = ["CLUSTER"] + (["NAMESPACE"] if with_namespace else []) + [columns[i]["name"].upper() for i in keep]
        for row in tbl["rows"]:
            ns = [row["object"]["metadata"].get("namespace", "")] if with_namespace else []
            rows.append([row["cells"][0] if fleet else args.cluster, *ns, *(row["cells"][i] for i in keep)])
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


async def hub_types(session: aiohttp.ClientSession, hub: str, *, token: str = "") -> TypeRegistry:
    """The types the hub serves, from its discovery (its fixed ones and every one its agents
    reported, CRDs included); the ones agents collect elsewhere (``*.fleetsync.io``) left out."""
    documents = [("", "v1", await fetch(session, f"{hub}/api/v1", token=token))]
    for group in (await fetch(session, f"{hub}/apis", token=token)).get("groups", []):
        if group["name"] == "fleetsync.io" or group["name"].endswith(".fleetsync.io"):
            continue
        for version in group.get("versions", []):
            documents.append((group["name"], version["version"], await fetch(session, f"{hub}/apis/{group['name']}/{version['version']}", token=token)))
    known = {t.gvk: t for t in TypeRegistry()}
    types = []
    for group, version, document in documents:
        for resource in document.get("resources", []):
            if "/" in resource["name"]:
                continue
            rtype = ResourceType(
                group, version, resource["kind"], resource["name"], bool(resource.get("namespaced")), short_names=tuple(resource.get("shortNames", ()))
            )
            types.append(known.get(rtype.gvk, rtype))
    return TypeRegistry(types)


async def divergence(
    session: aiohttp.ClientSession, sim: str, hub: str, *, token: str = "", only: set[str] | None = None, types: list[str] | None = None
) -> dict[str, dict[str, tuple[int, int, int]]]:
    """cluster -> type -> (missing, extra, stale) between the sim's truth and the hub (of every simulated
    cluster, or of ``only`` these), for ``types`` (names, or ``all``: every type both serve) or else every
    type the hub holds a stream or an object of."""
    clusters = {c["name"]: c for c in (await fetch(session, f"{hub}/api/v1/clusters", token=token))["items"]}
    report: dict[str, dict[str, tuple[int, int, int]]] = {}
    registry = await hub_types(session, hub, token=token)
    served = {t.gvk for t in registry}
    try:
        wanted = None if types is None or types == ["all"] else {registry.resolve(name).gvk for name in types}
    except UnknownResourceType as exc:
        raise ClientError(f"--types: {exc}") from None
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
        compare = sorted(held) if types is None else sorted((served if wanted is None else wanted) & set(sim_cluster["objects"]))
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
    """``--types`` of check: None (every type the hub holds of a cluster), ["all"], or names (resolved
    against what the hub serves)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names or None


async def _check(args: argparse.Namespace) -> int:
    async with hub_session(args) as session:
        only = {c.strip() for c in args.clusters.split(",") if c.strip()} or None
        report = await divergence(session, args.sim, args.hub, token=args.token, only=only, types=_check_types(args.types))
    rows = [[c, t, m, e, s] for c, types in report.items() for t, (m, e, s) in types.items()]
    print_table(["CLUSTER", "TYPE", "MISSING", "EXTRA", "STALE"], rows)
    diverged = sum(m + e + s for types in report.values() for m, e, s in types.values())
    print(f"\n{'converged' if not diverged else f'DIVERGENT: {diverged} objects differ'}")
    return 1 if diverged else 0
