"""``fleetsync sim``: composition root of the simulator process."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import shutil
import signal
import sys
from pathlib import Path

from fleetsync import logs
from fleetsync.cli.flags import add_flag, add_switch, non_negative_float, non_negative_int, positive_int

log = logging.getLogger("fleetsync.sim")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "sim",
        help="serve simulated Kubernetes clusters (for the demo, tests and benchmarks)",
        description="Serve N simulated Kubernetes API servers on one port: cluster NAME at "
        "http://HOST:PORT/clusters/NAME, with a kubeconfig for each in --kubeconfig-dir. "
        'PUT /churn {"rate": R} re-rates churn while running (0 pauses); GET /clusters/NAME/truth dumps a cluster. '
        "GET /clusters/NAME/metrics serves Istio's standard metrics (istio_requests_total, "
        "istio_request_duration_milliseconds; reporter=destination) of the cluster's Services for Prometheus to scrape: "
        "in each istio-injection=enabled namespace, istio-ingressgateway calls the first Service (by name) and each "
        "Service the next one or two, at a rate, error ratio and latency fixed per edge; the counters grow with time "
        "from when an edge appeared (empty with --no-istio). GET /clusters/NAME/mesh-traffic shows the configured "
        'edges (JSON); PUT /clusters/NAME/metrics-outage {"down": true} makes /metrics answer 503 until {"down": false}.',
    )
    add_flag(p, "--clusters", type=positive_int, default=3, help="number of virtual clusters (named c1, c2, ...)")
    add_flag(p, "--pods", type=non_negative_int, default=100, help="application pods per cluster")
    add_flag(p, "--namespaces", type=positive_int, default=3, help="application namespaces per cluster")
    add_flag(p, "--pods-per-service", type=positive_int, default=5, help="pods per application (Service + Deployment)")
    add_flag(p, "--churn", type=non_negative_float, default=0.0, help="change operations per second per cluster (0 = none)")
    add_flag(p, "--seed", type=int, default=1, help="seed of the generated objects and churn")
    add_flag(p, "--host", default="127.0.0.1", help="address to listen on")
    add_flag(p, "--port", type=non_negative_int, default=8001, help="port to listen on (0 = any free port)")
    add_flag(p, "--kubeconfig-dir", type=Path, default=Path("sim-kubeconfigs"), help="where to write NAME.kubeconfig for each cluster")
    add_flag(
        p,
        "--watch-history",
        type=positive_int,
        default=5_000,
        help="changes kept per cluster for watches and consistent pages (about 6 KiB each); older answers 410 Gone",
    )
    add_flag(p, "--bookmark-interval", type=non_negative_float, default=5.0, help="seconds between watch BOOKMARK events")
    add_switch(p, "--istio", help="install the Istio CRDs and objects (default: on)")
    p.set_defaults(run=run)


async def serve(args: argparse.Namespace, *, ready: asyncio.Event | None = None) -> None:
    from fleetsync.sim.fleet import SimConfig, SimFleet  # the simulator: only when it runs, not for every command
    from fleetsync.sim.kubeconfig import write_kubeconfig
    from fleetsync.sim.server import SimServer

    config = SimConfig(
        clusters=args.clusters,
        pods=args.pods,
        namespaces=args.namespaces,
        pods_per_service=args.pods_per_service,
        churn=args.churn,
        seed=args.seed,
        history=args.watch_history,
        istio=args.istio is not False,
    )
    log.info("building %d clusters x %d pods ...", config.clusters, config.pods)
    fleet = SimFleet(config)
    # The population is long-lived: move it out of the collector's sight, or every full
    # collection walks hundreds of thousands of objects (0.5 s pauses at 100 x 1,000 pods).
    gc.collect()
    gc.freeze()
    server = SimServer(fleet, host=args.host, port=args.port, bookmark_interval=args.bookmark_interval)
    try:
        await server.start()
    except OSError as exc:
        raise SystemExit(f"fleetsync sim: cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    for cluster in fleet.clusters.values():
        write_kubeconfig(args.kubeconfig_dir, cluster.name, server.cluster_url(cluster.name), cluster.token)
    logs.announce(
        f"fleetsync sim: {len(fleet.clusters)} clusters, {fleet.total_objects()} objects, churn {config.churn}/s per cluster\n"
        f"  API:         http://{args.host}:{server.port}/clusters/NAME   (NAME = {', '.join(fleet.clusters)})\n"
        f"  kubeconfigs: {args.kubeconfig_dir}/NAME.kubeconfig\n"
        f"  metrics:     http://{args.host}:{server.port}/clusters/NAME/metrics   (Istio's, for Prometheus; /mesh-traffic: what they are set to)\n"
        f"  try:         {_kubectl()} --kubeconfig {args.kubeconfig_dir}/{next(iter(fleet.clusters))}.kubeconfig get pods -A",
        logger="fleetsync.sim",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await server.stop()


def _kubectl() -> str:
    """The kubectl a user can run: the one beside this interpreter (the wheel), else PATH's."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl") or "kubectl"


def run(args: argparse.Namespace) -> int:
    asyncio.run(serve(args))
    return 0
