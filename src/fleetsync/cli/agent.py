"""``fleetsync agent``: composition root of the agent process."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetsync.agent.uplink import UplinkSettings
from fleetsync.aio import cancel_and_wait, cancel_the_rest
from fleetsync.cli import agentconfig
from fleetsync.cli.flags import add_flag, add_switch, non_negative_float, positive_float, positive_int, read_token_file
from fleetsync.model.names import check_cluster_name
from fleetsync.model.types import ENDPOINT_SLICE, ISTIO_TYPES, POD, SERVICE, TypeRegistry, UnknownResourceType
from fleetsync.model.typeselect import TypeSelection
from fleetsync.protocol.hello import agent_id_problem
from fleetsync.transport.base import ClientTls, parse_hub_url, parse_listen_address
from fleetsync.transport.faults import FaultSpec

if TYPE_CHECKING:
    from fleetsync.agent.runner import AgentConfig

# The agent's own modules (the Kubernetes client, gRPC, ...) are imported when an agent runs,
# not when the CLI starts: every other fleetsync command starts faster for it.

DEFAULT_TYPES = ",".join(t.gvk for t in (SERVICE, ENDPOINT_SLICE, POD, *ISTIO_TYPES))


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("agent", help="run an agent for one cluster", description="Watch one cluster and stream its state to a hub.")
    add_flag(
        p,
        "--kubeconfig",
        default=None,
        help="kubeconfig file of the cluster (default, as kubectl: $KUBECONFIG, else ~/.kube/config if it exists, else the in-cluster config "
        "of the pod's service account)",
    )
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
    add_switch(
        p,
        "--join",
        help="always start in the join phase: push no local gate change until the hub's gates are applied, and take them over the local ones "
        "(a cluster new to the fleet joins without it)",
    )
    add_switch(
        p,
        "--bootstrap",
        help="this cluster bootstraps the fleet's gates (seed 004): its local gates go up even the first time it connects, instead of being "
        "overwritten by the fleet's as a new cluster's are",
    )
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
    add_flag(
        p,
        "--works-allow-kinds",
        default="default",
        help="kinds works may apply here, comma-separated: GROUP/KIND or GROUP/VERSION/KIND (core/ConfigMap, v1/ConfigMap, apps/Deployment, "
        "*.istio.io/*, *: every kind); 'default' stands for the namespaced everyday kinds (ConfigMap, Secret, Service, ServiceAccount, "
        "PersistentVolumeClaim, Deployment, StatefulSet, DaemonSet, Job, CronJob, HorizontalPodAutoscaler, PodDisruptionBudget, Ingress, NetworkPolicy). "
        "Cluster-scoped kinds (Namespace, ClusterRole, CRDs, ...) and RBAC kinds must be named, group and kind, not matched by a wildcard",
    )
    add_flag(
        p,
        "--works-allow-namespaces",
        default="*",
        help="namespaces works may apply to, comma-separated patterns ('*' wildcards); a Namespace object by its name",
    )
    add_flag(
        p,
        "--works-deny-namespaces",
        default="kube-system,kube-public,kube-node-lease",
        help="namespaces works may never touch, comma-separated patterns; they win over --works-allow-namespaces ('': none)",
    )
    add_flag(p, "--works-retry-max", type=positive_float, default=60.0, help="the longest wait, in seconds, between retries of a work's failed manifests")
    add_flag(
        p,
        "--kube-retry-max",
        type=positive_float,
        default=30.0,
        help="the longest wait, in seconds, between retries of the cluster's API (lists and watches, the works task's discovery when the API "
        "is down at start, a ConfigMap local config) and of a failed agent task",
    )
    add_flag(
        p,
        "--list-page-size",
        type=positive_int,
        default=500,
        help="objects per page of the agent's LISTs (client-go's default): a page's bytes are held while its objects are made "
        "into their wire form, so smaller pages keep the peak lower; larger ones list a big cluster faster (docs/agent-memory.md)",
    )
    add_flag(p, "--tls-ca", default="", help="grpcs:// and mqtts://: CA bundle (PEM) the hub or broker certificate is verified against (default: the system's)")
    add_flag(p, "--tls-cert", default="", help="grpcs://: client certificate (PEM) for a hub that requires mutual TLS; its common name must be --cluster-id")
    add_flag(p, "--tls-key", default="", help="grpcs://: the client certificate's private key (PEM)")
    add_flag(p, "--agent-id", default="", help="stable agent identity (default: HOSTNAME/CLUSTER)")
    add_flag(
        p,
        "--types",
        default=DEFAULT_TYPES,
        help="comma-separated types to sync (group/version/Kind or kubectl names, CRDs included), or all: every type the cluster serves "
        "that can be listed and watched (Secrets only when named)",
    )
    add_flag(
        p,
        "--exclude-types",
        default="",
        help="comma-separated types never synced: names (events, deployments.apps), group wildcards (*.istio.io, events.k8s.io/*, core/*) or resource-name wildcards (*bindings in any group, virtual*.networking.istio.io in one)",
    )
    add_flag(
        p,
        "--discovery-interval",
        type=non_negative_float,
        default=30.0,
        help="with --types all: seconds between reads of the cluster's discovery, so CRDs created later start syncing without a restart; 0: only at start",
    )
    add_switch(p, "--sync-secret-data", help="sync Secrets' data and stringData (without it a synced Secret's values are left out)")
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
    add_flag(p, "--connect-timeout", type=positive_float, default=10.0, help="seconds to wait for a connection to the hub (or broker) to be established")
    add_flag(p, "--hello-timeout", type=positive_float, default=30.0, help="seconds to wait for the hub's answer to Hello before connecting again")
    add_flag(p, "--keepalive-time", type=positive_float, default=20.0, help="gRPC: ping a silent hub after this many seconds (HTTP/2 keepalive)")
    add_flag(
        p,
        "--keepalive-timeout",
        type=positive_float,
        default=10.0,
        help="gRPC: drop the connection if a keepalive ping is not answered within this many seconds",
    )
    add_flag(p, "--reconnect-backoff", type=positive_float, default=0.2, help="seconds before the first reconnection; doubled (with jitter) on each failure")
    add_flag(p, "--reconnect-backoff-max", type=positive_float, default=10.0, help="the most the reconnect backoff grows to, in seconds")
    add_flag(p, "--inject-faults", default="", help="testing aid: drop/duplicate/reorder/delay messages, e.g. drop=0.05,reorder=0.1,delay=0.2,after=5,for=20")
    p.set_defaults(run=run)
    agentconfig.register(p)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def config_from(args: argparse.Namespace) -> AgentConfig:
    from fleetsync.agent.localconfig import parse_target
    from fleetsync.agent.runner import AgentConfig

    pull = bool(args.serve_state)
    if args.join and args.bootstrap:
        raise ValueError("--join and --bootstrap exclude each other: a cluster either joins the fleet's gates or bootstraps them")
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
    selection = TypeSelection.parse(args.types, args.exclude_types)
    registry = TypeRegistry()
    try:  # types this agent knows are resolved now (a typo fails at once); others from the cluster's discovery
        types = [] if selection.all else selection.choose(registry)
        discover = None if types else selection
    except UnknownResourceType:
        types, discover = [], selection
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
    from fleetsync.model.workpolicy import PolicyError, WorksPolicy

    try:
        works_policy = WorksPolicy.parse(args.works_allow_kinds, args.works_allow_namespaces, args.works_deny_namespaces)
    except PolicyError as exc:
        raise ValueError(f"--works-allow-kinds / --works-allow-namespaces / --works-deny-namespaces: {exc}") from None
    hubs = [parse_hub_url(url) for url in _csv(args.hub or "")]
    prometheus = _prometheus(args)
    tls = ClientTls.from_files(args.tls_ca, args.tls_cert, args.tls_key) if (args.tls_ca or args.tls_cert or args.tls_key) else None
    if tls and not any(hub.scheme in ("grpcs", "mqtts") for hub in hubs):
        raise ValueError("--tls-ca / --tls-cert / --tls-key apply to grpcs:// and mqtts:// hub URLs only")
    if args.agent_id and (problem := agent_id_problem(args.agent_id)):
        raise ValueError(f"--agent-id: {problem}")
    if args.reconnect_backoff > args.reconnect_backoff_max:
        raise ValueError(f"--reconnect-backoff ({args.reconnect_backoff:g}s) must not exceed --reconnect-backoff-max ({args.reconnect_backoff_max:g}s)")
    return AgentConfig(
        cluster_id=check_cluster_name(args.cluster_id),
        hubs=hubs,
        tls=tls,
        local_config=local_config,
        join=bool(args.join),
        bootstrap=bool(args.bootstrap),
        apply_works=args.works is not False,
        works_policy=works_policy,
        works_retry_max=args.works_retry_max,
        kube_retry_max=args.kube_retry_max,
        list_page_size=args.list_page_size,
        istio_interval=args.istio_interval,
        token=token,
        types=types,
        discover=discover,
        discovery_interval=args.discovery_interval if selection.all else 0.0,
        sync_secret_data=bool(args.sync_secret_data),
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
        connect_timeout=args.connect_timeout,
        hello_timeout=args.hello_timeout,
        keepalive_time=args.keepalive_time,
        keepalive_timeout=args.keepalive_timeout,
        reconnect_backoff_initial=args.reconnect_backoff,
        reconnect_backoff_max=args.reconnect_backoff_max,
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
    from fleetsync.agent.kube import KubeconfigError, find_kubeconfig

    try:
        config = config_from(args)
    except ValueError as exc:
        raise SystemExit(f"fleetsync agent: {exc}") from None
    try:
        find_kubeconfig(config.kubeconfig)  # at once, not from inside the running agent
        asyncio.run(_run(config))
    except KubeconfigError as exc:  # no cluster to talk to (or a kubeconfig that does not load): a usage error, as kubectl's
        print(f"fleetsync agent: {exc}", file=sys.stderr)
        return 2
    return 0
