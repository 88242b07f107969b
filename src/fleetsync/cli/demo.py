"""``fleetsync demo``: sim + hub (SQLite in a temporary directory) + one agent per cluster, in one
process; the agents reach the hub over gRPC, or through a broker given with ``--broker``. The
hub's API is HTTPS with a CA made for the demo, and the demo prints commands set up with it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fleetsync.aio import cancel_and_wait, cancel_the_rest
from fleetsync.cli.agent import DEFAULT_TYPES
from fleetsync.cli.flags import add_flag, non_negative_float, positive_int
from fleetsync.hub.auth import hash_token, new_token
from fleetsync.model.types import TypeRegistry
from fleetsync.sim.kubeconfig import write_fleet_kubeconfig, write_kubeconfig
from fleetsync.transport.base import BROKER_SCHEMES, HubAddress, parse_hub_url

if TYPE_CHECKING:
    from fleetsync.sim.server import SimServer
    from fleetsync.store.sqlite import SQLiteStore

# The demo runs all of fleetsync: the simulator, hub and agent modules are imported when it
# starts (in demo()), not when the CLI does, so every other command starts faster.


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("demo", help="everything in one command: simulated clusters, a hub and agents")
    add_flag(p, "--clusters", type=positive_int, default=3, help="simulated clusters")
    add_flag(p, "--pods", type=positive_int, default=100, help="pods per cluster")
    add_flag(p, "--churn", type=non_negative_float, default=2.0, help="changes per second per cluster")
    add_flag(p, "--sim-port", type=int, default=8001, help="the simulator's port")
    add_flag(p, "--http-port", type=int, default=8080, help="the hub's HTTP API port")
    add_flag(p, "--grpc-port", type=int, default=7443, help="the hub's gRPC port")
    add_flag(
        p,
        "--prometheus-port",
        type=int,
        default=9090,
        help="a Prometheus of the demo's own scrapes the simulated clusters' Istio metrics here and the agents collect the service graph "
        "from it (when the prometheus binary is installed; 0: no Prometheus)",
    )
    add_flag(
        p,
        "--broker",
        default="",
        help="the agents reach the hub through this broker (one you run): mqtt://[USER:PASSWORD@]HOST:PORT or nats://...; default: gRPC",
    )
    p.set_defaults(run=run)


#: A work the demo offers to apply: a ConfigMap and a Deployment on every cluster.
EXAMPLE_WORK = """\
apiVersion: fleetsync.io/v1
kind: Work
metadata:
  name: web
spec:
  placement:
    clusterSelector: fleetsync.io/cluster   # every cluster (try env=prod, or clusters: [c1])
  manifests:
    - apiVersion: v1
      kind: ConfigMap
      metadata: {name: web-config, namespace: default}
      data: {color: blue}
    - apiVersion: apps/v1
      kind: Deployment
      metadata: {name: web, namespace: default}
      spec:
        replicas: 2
        selector: {matchLabels: {app: web}}
        template:
          metadata: {labels: {app: web}}
          spec: {containers: [{name: web, image: nginx:1.27}]}
"""


def _prometheus(port: int, workdir: Path, sim: SimServer, clusters: list[str]) -> tuple[str, subprocess.Popen[bytes] | None]:
    """A Prometheus scraping every simulated cluster's Istio metrics, if it is installed (and wanted)."""
    if not port:
        return "", None
    from fleetsync.testing.prometheus import start_prometheus_process

    try:
        process = start_prometheus_process(workdir / "prometheus", {c: f"{sim.cluster_url(c)}/metrics" for c in clusters}, port=port, scrape_interval="5s")
    except RuntimeError as exc:  # not installed: the demo goes on without a service graph
        print(f"fleetsync demo: no service graph: {exc}", flush=True)
        return "", None
    return f"http://127.0.0.1:{port}", process


async def _instructions(
    store: SQLiteStore, workdir: Path, hub_url: str, ca: Path, sim_url: str, broker: HubAddress | None, clusters: list[str], prometheus_url: str = ""
) -> str:
    """What to try, ready to paste: kubectl and fleetsync set up with the hub's CA and a read
    token (kubectl sends tokens over HTTPS only, hence the demo's own CA), and an admin token for acting."""
    read, admin = new_token(), new_token()
    await store.add_token(name="demo-reader", role="read", token_hash=hash_token(read))
    await store.add_token(name="demo-admin", role="admin", token_hash=hash_token(admin))
    hub_kubeconfig = write_fleet_kubeconfig(workdir, "fleetsync", hub_url, read, clusters, certificate_authority=ca)
    bin_dir = Path(sys.executable).parent
    kubectl = bin_dir / "kubectl" if (bin_dir / "kubectl").exists() else "kubectl"
    fleetsync = bin_dir / "fleetsync"
    via = f" -> {broker}" if broker else ""
    work = workdir / "web-work.yaml"
    work.write_text(EXAMPLE_WORK)
    return (
        f"fleetsync demo: {len(clusters)} simulated clusters -> agents{via} -> hub (SQLite in {workdir})\n"
        f"  hub API:   {hub_url}/api/v1/clusters   (HTTPS with the demo's CA {ca}; needs a token)\n"
        f"  dashboard: {hub_url}/   (in a browser; trust {ca} or accept the warning, and sign in with the read token of the export below)\n"
        f"  first:     export KUBECONFIG={hub_kubeconfig} FLEETSYNC_HUB={hub_url} FLEETSYNC_CERTIFICATE_AUTHORITY={ca} FLEETSYNC_TOKEN={read}\n"
        f"             (kubectl and fleetsync now reach the hub, trust its CA and use a read-only API token)\n"
        f"  try:       {kubectl} get pods -A -l fleetsync.io/cluster=c2   (the whole fleet as one cluster)\n"
        f"             {kubectl} get pods -A   (a CLUSTER column says where each row is from)\n"
        f"             {kubectl} --context fleetsync/c1 get pods -A   (one cluster: a context per cluster, `kubectl config get-contexts`)\n"
        f"             {kubectl} --context fleetsync/c1 get pods -A -w   (changes as they come)\n"
        f"             {fleetsync} get pods -A\n"
        f"             {fleetsync} check --sim {sim_url}\n"
        f"             {fleetsync} events -w   (follows them)\n"
        + (f"             {fleetsync} servicegraph   (the mesh's edges from {prometheus_url}; about a minute to fill its window)\n" if prometheus_url else "")
        + f"  as admin:  {fleetsync} resync c1 --type pods --token {admin}\n"
        f"             {fleetsync} gates set feature.multi-region=true --token {admin}   (then: cat {workdir}/gates/c2.json)\n"
        f"             {fleetsync} works apply -f {work} --wait applied --token {admin}   (then: {fleetsync} works get web)\n"
        f"  Ctrl-C stops everything.\n"
    )


async def demo(args: argparse.Namespace) -> None:
    from fleetsync.agent.runner import Agent, AgentConfig
    from fleetsync.api.app import ApiServer
    from fleetsync.certs import make_server_certificate
    from fleetsync.hub.core import HubCore, HubSettings
    from fleetsync.sim.fleet import SimConfig, SimFleet
    from fleetsync.sim.server import SimServer
    from fleetsync.store.sqlite import SQLiteStore
    from fleetsync.transport.connect import broker_server
    from fleetsync.transport.grpc_hub import GrpcHubServer
    from fleetsync.web import https_context

    try:
        broker = parse_hub_url(args.broker, schemes=BROKER_SCHEMES) if args.broker else None
    except ValueError as exc:
        raise SystemExit(f"fleetsync demo: --broker: {exc}") from None
    workdir = Path(tempfile.mkdtemp(prefix="fleetsync-demo-"))
    fleet = SimFleet(SimConfig(clusters=args.clusters, pods=args.pods, churn=args.churn))
    sim = SimServer(fleet, port=args.sim_port)
    store = SQLiteStore(workdir / "hub.db")
    await store.open()
    core = HubCore(store, HubSettings(hub_id="demo-hub"))
    grpc_server = GrpcHubServer(core, "127.0.0.1", args.grpc_port)
    broker_listener = broker_server(core, broker) if broker else None
    tls = make_server_certificate(workdir / "tls", ["127.0.0.1", "localhost"])
    api = ApiServer(core, port=args.http_port, ssl_context=https_context(tls.cert, tls.key))
    try:
        await sim.start()
        await core.start()
        await grpc_server.start()
        await api.start()
    except OSError as exc:
        raise SystemExit(f"fleetsync demo: cannot listen: {exc.strerror} (another demo running? use --sim-port/--http-port/--grpc-port)") from None
    if broker_listener is not None:
        await broker_listener.start()
    prometheus_url, prometheus = _prometheus(args.prometheus_port, workdir, sim, list(fleet.clusters))
    registry = TypeRegistry()
    agents = []
    (workdir / "gates").mkdir()  # the agents' local config files' directory (an agent never creates it: a missing volume)
    for name in fleet.clusters:
        kubeconfig = write_kubeconfig(workdir / "kubeconfigs", name, sim.cluster_url(name), fleet.clusters[name].token)
        token = new_token()
        await store.add_token(name=name, role="agent", token_hash=hash_token(token), grants=["gates"])  # one operator: local gate changes go up
        config = AgentConfig(
            cluster_id=name,
            hubs=[broker or HubAddress("grpc", "127.0.0.1", grpc_server.port)],
            token=token,
            types=[registry.resolve(t) for t in DEFAULT_TYPES.split(",")],
            kubeconfig=str(kubeconfig),
            agent_id=f"demo-agent-{name}",
            metadata=fleet.clusters[name].labels,
            local_config=workdir / "gates" / f"{name}.json",  # each cluster's feature gates (`fleetsync agent config ...`)
            prometheus_url=prometheus_url,
            prometheus_window=60.0,
            prometheus_interval=10.0,
        )
        agents.append(asyncio.create_task(Agent(config).run()))
    hub_url = f"https://127.0.0.1:{api.port}"
    print(await _instructions(store, workdir, hub_url, tls.ca, f"http://127.0.0.1:{sim.port}", broker, list(fleet.clusters), prometheus_url), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    last_applied, last_time = 0.0, time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            applied = sum((float(s.value) for m in core.metrics.objects_applied.collect() for s in m.samples if s.name.endswith("_total")), 0.0)
            now = time.monotonic()
            rate = (applied - last_applied) / (now - last_time)
            last_applied, last_time = applied, now
            clusters = await store.clusters()
            objects = sum(sum(types.values()) for types in (await store.counts_by_cluster()).values())
            active = sum(c.status == "active" for c in clusters)
            tty = sys.stdout.isatty()  # a live line on a terminal, a log line otherwise
            summary = f"clusters {active}/{len(fleet.clusters)} active   objects {objects:>7}   changes/s {rate:>7.1f}   lag {core.metrics.max_lag() * 1000:>6.0f} ms   hub rev {await store.current_rev():>8}"
            print(f"\r  {summary}" if tty else f"  {summary}", end="" if tty else "\n", flush=True)
    finally:
        print("\nshutting down", flush=True)
        await cancel_and_wait(agents)
        if broker_listener is not None:
            await broker_listener.stop()
        await api.stop()  # first: its watches follow the core's change feed
        await grpc_server.stop(0.5)
        await core.stop()
        await sim.stop()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        await store.close()
        await cancel_the_rest()  # what the client libraries left running


def run(args: argparse.Namespace) -> int:
    asyncio.run(demo(args))
    return 0
