"""``fleetsync agent``: composition root of the agent process."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetsync.agent.uplink import UplinkSettings
from fleetsync.aio import cancel_and_wait, cancel_the_rest
from fleetsync.cli import agentconfig
from fleetsync.cli.flags import add_flag, add_switch, non_negative_float, positive_float, positive_int, read_token_file
from fleetsync.model.names import check_cluster_name
from fleetsync.model.types import ENDPOINT_SLICE, ISTIO_TYPES, POD, SERVICE, TypeRegistry, UnknownResourceType
from fleetsync.transport.base import ClientTls, parse_hub_url, parse_listen_address
from fleetsync.transport.faults import FaultSpec

if TYPE_CHECKING:
    from fleetsync.agent.runner import AgentConfig

# The agent's own modules (the Kubernetes client, gRPC, ...) are imported when an agent runs,
# not when the CLI starts: every other fleetsync command starts faster for it.

DEFAULT_TYPES = ",".join(t.gvk for t in (SERVICE, ENDPOINT_SLICE, POD, *ISTIO_TYPES))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("agent", help="run an agent for one cluster", description="Watch one cluster and stream its state to a hub.")
    add_flag(p, "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster config)")
    add_flag(p, "--cluster-id", default=None, help="this cluster's name on the hub (required)")
    add_flag(
        p,
        "--hub",
        default=None,
        help="hub URL(s), comma-separated for failover: grpc://HOST:PORT, or a broker the hub serves: "
        "mqtt://[USER:PASSWORD@]HOST:PORT, mqtts://..., nats://[USER:PASSWORD@]HOST:PORT (required)",
    )
    add_flag(p, "--token-file", type=Path, default=None, help="file holding the agent token from `fleetsync token create CLUSTER` (required)")
    add_flag(
        p,
        "--local-config",
        default=None,
        help="the local config target of feature gates: a JSON object file, or configmap:NAMESPACE/NAME (a ConfigMap in this cluster); "
        "the hub's gates are written there, and its feature.* changes go to the hub",
    )
    add_switch(p, "--join", help="start in the join phase: push no local gate change until the hub's gates are applied (a cluster joining a fleet)")
    add_flag(
        p,
        "--istio-interval",
        type=non_negative_float,
        default=60.0,
        help="look for Istio (istiod, its revision, version and mesh config; which Istio CRDs are installed) this often, in seconds, "
        "and sync it as the cluster's IstioMesh object; 0: do not look",
    )
    add_switch(
        p, "--works", help="apply the works the hub targets at this cluster (the default); --no-works: a read-only agent, which only reports its cluster"
    )
    add_flag(p, "--tls-ca", default="", help="grpcs:// and mqtts://: CA bundle (PEM) the hub or broker certificate is verified against (default: the system's)")
    add_flag(p, "--tls-cert", default="", help="grpcs://: client certificate (PEM) for a hub that requires mutual TLS; its common name must be --cluster-id")
    add_flag(p, "--tls-key", default="", help="grpcs://: the client certificate's private key (PEM)")
    add_flag(p, "--agent-id", default="", help="stable agent identity (default: HOSTNAME/CLUSTER)")
    add_flag(p, "--types", default=DEFAULT_TYPES, help="comma-separated types to sync (group/version/Kind or kubectl names), or all")
    add_flag(p, "--namespaces", default="", help="only these namespaces (comma-separated; default all)")
    add_flag(p, "--exclude-namespaces", default="", help="never these namespaces (comma-separated)")
    add_flag(p, "--label", default="", help="cluster metadata as k=v,k=v (e.g. region=eu-west-1,env=prod)")
    add_flag(p, "--max-message-bytes", type=positive_int, default=512 * 1024, help="largest message sent to the hub (the hub may ask for less)")
    add_flag(p, "--window", type=positive_int, default=32, help="unacknowledged messages allowed per type (flow control)")
    add_flag(p, "--ack-timeout", type=positive_float, default=15.0, help="seconds without an ack before unacknowledged messages are sent again")
    add_flag(
        p,
        "--flush-interval",
        type=non_negative_float,
        default=0.05,
        help="the longest a change waits to be batched with others, in seconds: changes go at once while nothing sent is unacknowledged, "
        "else with the acks of what is in flight or after this long; 0: never wait",
    )
    add_flag(p, "--metrics", default="", help="serve Prometheus metrics on HOST:PORT (or :PORT); default: off")
    add_flag(
        p,
        "--serve-state",
        default="",
        help="pull mode: connect to no hub; serve this cluster's state at http://HOST:PORT/v1/state (and /metrics) for a hub's refresh scheduler "
        "(register it there with `fleetsync pull add`); without --serve-state-token-file anyone who reaches it may read it",
    )
    add_flag(
        p,
        "--serve-state-token-file",
        default="",
        help="--serve-state: /v1/state answers only requests with the token in this file (Authorization: Bearer; the hub's --pull-token-file)",
    )
    add_flag(
        p,
        "--prometheus",
        default="",
        help="the metrics provider: base URL of a Prometheus-compatible API (http[s]://HOST:PORT[/PATH]) to collect the mesh's service graph from "
        "(Istio's standard metrics), synced as the ServiceEdge type; default: off",
    )
    add_flag(p, "--prometheus-window", default="5m", help="--prometheus: the window the figures cover (300, 300s, 5m)")
    add_flag(p, "--prometheus-interval", default="30s", help="--prometheus: time between collections")
    add_flag(
        p,
        "--prometheus-selector",
        default=None,
        help="--prometheus: PromQL label matchers every query is limited to (default: destination_cluster=\"NAME\", NAME being istiod's CLUSTER_ID, else --cluster-id; '': none)",
    )
    add_flag(p, "--prometheus-timeout", default="10s", help="--prometheus: time allowed per query (each is tried 3 times, with backoff)")
    add_flag(p, "--prometheus-token-file", default="", help="--prometheus: file holding a bearer token to send (read at every collection)")
    add_flag(p, "--prometheus-ca", default="", help="--prometheus: CA bundle (PEM) an https:// Prometheus is verified against (default: the system's)")
    add_flag(p, "--inject-faults", default="", help="testing aid: drop/duplicate/reorder/delay messages, e.g. drop=0.05,reorder=0.1,delay=0.2,after=5,for=20")
    p.set_defaults(run=run)
    agentconfig.register(p)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def config_from(args: argparse.Namespace) -> AgentConfig:
    from fleetsync.agent.localconfig import parse_target
    from fleetsync.agent.runner import AgentConfig

    pull = bool(args.serve_state)
    if pull and args.hub:
        raise ValueError("--serve-state (pull mode) and --hub (push mode) exclude each other: choose one")
    if pull and args.metrics:
        raise ValueError("--metrics: in pull mode /metrics is served on the --serve-state address")
    required = (("--cluster-id", args.cluster_id),) if pull else (("--cluster-id", args.cluster_id), ("--hub", args.hub), ("--token-file", args.token_file))
    missing = [flag for flag, value in required if not value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}" + ("" if pull else " (or --serve-state for pull mode)"))
    if args.serve_state_token_file and not pull:
        raise ValueError("--serve-state-token-file is for pull mode (--serve-state)")
    token = "" if pull else read_token_file("--token-file", args.token_file)
    state_token = read_token_file("--serve-state-token-file", args.serve_state_token_file, min_length=16) if args.serve_state_token_file else ""
    registry = TypeRegistry()
    try:
        types = list(registry) if args.types.strip() == "all" else [registry.resolve(name) for name in _csv(args.types)]
    except UnknownResourceType as exc:
        raise ValueError(f"--types: {exc}") from None
    metadata = {}
    for pair in _csv(args.label):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--label {pair!r}: expected key=value")
        metadata[key] = value
    try:
        faults = FaultSpec.parse(args.inject_faults) if args.inject_faults else None
        metrics = parse_listen_address(args.metrics) if args.metrics else None
        serve_state = parse_listen_address(args.serve_state) if pull else None
    except ValueError as exc:
        raise ValueError(f"--inject-faults / --metrics / --serve-state: {exc}") from None
    try:
        local_config = parse_target(args.local_config) if args.local_config else None
    except ValueError as exc:
        raise ValueError(f"--local-config {exc}") from None
    hubs = [parse_hub_url(url) for url in _csv(args.hub or "")]
    prometheus = _prometheus(args)
    tls = ClientTls.from_files(args.tls_ca, args.tls_cert, args.tls_key) if (args.tls_ca or args.tls_cert or args.tls_key) else None
    if tls and not any(hub.scheme in ("grpcs", "mqtts") for hub in hubs):
        raise ValueError("--tls-ca / --tls-cert / --tls-key apply to grpcs:// and mqtts:// hub URLs only")
    return AgentConfig(
        cluster_id=check_cluster_name(args.cluster_id),
        hubs=hubs,
        tls=tls,
        local_config=local_config,
        join=bool(args.join),
        apply_works=args.works is not False,
        istio_interval=args.istio_interval,
        token=token,
        types=types,
        kubeconfig=args.kubeconfig,
        agent_id=args.agent_id,
        metadata=metadata,
        namespaces=set(_csv(args.namespaces)),
        exclude_namespaces=set(_csv(args.exclude_namespaces)),
        max_message_bytes=args.max_message_bytes,
        flush_interval=args.flush_interval,
        uplink=UplinkSettings(window=args.window, ack_timeout=args.ack_timeout),
        metrics_address=metrics,
        faults=faults,
        serve_state=serve_state,
        serve_state_token=state_token,
        **prometheus,
    )


def _prometheus(args: argparse.Namespace) -> dict[str, Any]:
    """The AgentConfig fields of the --prometheus* flags."""
    if not args.prometheus:
        given = [
            flag
            for flag, value in (
                ("--prometheus-selector", args.prometheus_selector),
                ("--prometheus-token-file", args.prometheus_token_file),
                ("--prometheus-ca", args.prometheus_ca),
            )
            if value
        ]
        if given:
            raise ValueError(f"{', '.join(given)} without --prometheus URL")
        return {}
    from fleetsync.agent.servicegraph import check_scope, check_url, parse_duration

    try:
        url = check_url(args.prometheus)
    except ValueError as exc:
        raise ValueError(f"--prometheus: {exc}") from None
    fields: dict[str, Any] = {"prometheus_url": url}
    for flag, name in (("--prometheus-window", "window"), ("--prometheus-interval", "interval"), ("--prometheus-timeout", "timeout")):
        try:
            fields[f"prometheus_{name}"] = parse_duration(getattr(args, f"prometheus_{name}"))
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    if args.prometheus_selector is not None:
        try:
            fields["prometheus_selector"] = check_scope(args.prometheus_selector)
        except ValueError as exc:
            raise ValueError(f"--prometheus-selector: {exc}") from None
    for flag, name, path in (("--prometheus-token-file", "token_file", args.prometheus_token_file), ("--prometheus-ca", "ca", args.prometheus_ca)):
        if path:
            if not Path(path).is_file():
                raise ValueError(f"{flag} {path}: no such file")
            fields[f"prometheus_{name}"] = path
    if args.prometheus_token_file and ("@" in url.partition("://")[2].partition("/")[0]):
        raise ValueError("--prometheus-token-file and credentials in the --prometheus URL exclude each other: choose one")
    return fields


async def _run(config: AgentConfig) -> None:
    from fleetsync.agent.runner import Agent

    agent = asyncio.create_task(Agent(config).run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({agent, stopping}, return_when=asyncio.FIRST_COMPLETED)
    await cancel_and_wait([agent, stopping])
    await cancel_the_rest()  # what the client libraries left running
    if not agent.cancelled() and agent.exception() is not None:
        raise agent.exception()  # type: ignore[misc]


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ValueError as exc:
        raise SystemExit(f"fleetsync agent: {exc}") from None
    asyncio.run(_run(config))
    return 0
