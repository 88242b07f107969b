"""``fleetsync hub``: composition root of the hub process (store + transports + core + API)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING

from fleetsync.aio import cancel_the_rest
from fleetsync.cli.flags import add_flag, add_switch, non_negative_float, positive_float, positive_int, read_token_file
from fleetsync.hub.auth import hash_token
from fleetsync.store import open_store
from fleetsync.transport.base import ServerTls, parse_hub_url, parse_listen_address

if TYPE_CHECKING:
    from fleetsync.hub.core import HubSettings

# The hub's own modules (gRPC, the brokers' clients, the API) are imported when a hub runs,
# not when the CLI starts: every other fleetsync command starts faster for it.

log = logging.getLogger("fleetsync.hub")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "hub", help="run the hub", description="Accept agents over gRPC (and through MQTT / NATS brokers), apply their state to the store, serve the HTTP API."
    )
    add_flag(
        p,
        "--db",
        default="sqlite:///fleetsync.db",
        help="store URL: sqlite:///PATH (one hub), or postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE (any number of hub replicas)",
    )
    add_flag(p, "--grpc", default="127.0.0.1:7443", help="gRPC listen address for agents (HOST:PORT or :PORT)")
    add_flag(p, "--http", default="127.0.0.1:8080", help="HTTP API listen address (HOST:PORT or :PORT)")
    add_flag(
        p,
        "--broker",
        default="",
        help="also serve agents through these brokers (comma-separated): mqtt://[USER:PASSWORD@]HOST:PORT, mqtts://..., nats://[USER:PASSWORD@]HOST:PORT",
    )
    add_flag(p, "--hub-id", default=socket.gethostname(), help="this replica's name (in leases and logs)")
    add_flag(p, "--tls-cert", default="", help="serve HTTPS and gRPC over TLS (agents use grpcs://) with this certificate (PEM); needs --tls-key")
    add_flag(p, "--tls-key", default="", help="the TLS certificate's private key (PEM)")
    add_flag(
        p,
        "--tls-client-ca",
        default="",
        help="mutual TLS for agents: gRPC requires a client certificate signed by this CA (PEM), whose common name must be the agent's cluster",
    )
    add_flag(
        p,
        "--admin-token-file",
        default="",
        help="provision the API token in this file as an admin token at start (for automation; the store keeps only its hash)",
    )
    add_flag(
        p,
        "--pull-token-file",
        default="",
        help="send the token in this file (Authorization: Bearer) when fetching pull clusters' state (their agents' --serve-state-token-file)",
    )
    add_flag(p, "--heartbeat-interval", type=positive_float, default=10.0, help="agents send a heartbeat after this many idle seconds (H)")
    add_flag(p, "--inactivity-timeout", type=positive_float, default=30.0, help="a cluster with no message for this many seconds becomes inactive (T)")
    add_flag(
        p,
        "--lease-ttl",
        type=positive_float,
        default=30.0,
        help="seconds a connected agent's lease (and a replica's broker lock) lasts unrenewed; a crashed replica's clusters move after it",
    )
    add_flag(p, "--grace-period", type=non_negative_float, default=15.0, help="seconds a disconnected agent's lease is kept for it (G)")
    add_flag(p, "--max-message-bytes", type=positive_int, default=512 * 1024, help="largest agent message accepted; agents chunk below it")
    add_flag(
        p,
        "--digest-interval",
        default="300",
        help="seconds between periodic digest resyncs, as DEFAULT[,TYPE=SECONDS...] (e.g. 300,v1/Pod=60); 0 turns one off",
    )
    add_flag(
        p,
        "--push-refresh-interval",
        type=non_negative_float,
        default=600.0,
        help="seconds between scheduled refreshes (a digest of every type) of each push cluster; 0 turns them off",
    )
    add_flag(
        p,
        "--change-log-keep",
        type=positive_int,
        default=100_000,
        help="changes the store keeps for watches to resume from; a watch from an older revision gets 410 Expired and lists again",
    )
    add_flag(p, "--refresh-workers", type=positive_int, default=4, help="cluster refreshes this replica runs at once")
    add_flag(
        p,
        "--inbox-bytes",
        type=positive_int,
        default=64 * 1024 * 1024,
        help="bytes received from one cluster and not yet applied before the hub stops reading it",
    )
    add_flag(
        p,
        "--inbox-budget",
        type=positive_int,
        default=64 * 1024 * 1024,
        help="the same for all clusters together: bounds the hub's memory for received bundles whatever the fleet's size (agents wait meanwhile)",
    )
    add_flag(
        p,
        "--stream-window",
        type=positive_int,
        default=256 * 1024,
        help="gRPC: bytes each agent may have in flight to the hub beyond what it has read (the stream's HTTP/2 window)",
    )
    add_flag(p, "--batch-bundles", type=positive_int, default=1000, help="group commit: most bundles (of any clusters) in one store transaction")
    add_flag(p, "--batch-bytes", type=positive_int, default=16 * 1024 * 1024, help="group commit: most bytes of objects in one store transaction")
    add_flag(p, "--batch-linger", type=non_negative_float, default=0.002, help="group commit: seconds the writer waits for more bundles under load")
    add_flag(p, "--db-busy-timeout", type=positive_float, default=10.0, help="SQLite: seconds a write waits for another process's lock on the database")
    add_flag(
        p,
        "--store-retry",
        type=non_negative_float,
        default=30.0,
        help="seconds a cluster's writes are retried while the store cannot be written, before its session ends (the agent reconnects and resends)",
    )
    add_flag(
        p,
        "--deployment-type",
        default="",
        choices=("", "local", "maas"),
        help="seed 004's deployment type, sent to agents with the gates: local (both ways) or maas (agents' changes up only), unless the hub setting "
        "deployment-type is set (`fleetsync settings set deployment-type=maas`, which takes effect at once on every replica); unset: local",
    )
    add_switch(p, "--resync-on-startup", help="ask every cluster for a digest of every type on its first connection after the hub starts (default: on)")
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> HubSettings:
    from fleetsync.hub.core import DigestSchedule, HubSettings

    if args.heartbeat_interval >= args.inactivity_timeout:
        raise ValueError(f"--heartbeat-interval ({args.heartbeat_interval:g}s) must be shorter than --inactivity-timeout ({args.inactivity_timeout:g}s)")
    return HubSettings(
        hub_id=args.hub_id,
        heartbeat_interval=args.heartbeat_interval,
        inactivity_timeout=args.inactivity_timeout,
        grace_period=args.grace_period,
        lease_ttl=args.lease_ttl,
        max_message_bytes=args.max_message_bytes,
        digest_schedule=DigestSchedule.parse(args.digest_interval),
        resync_on_startup=args.resync_on_startup is not False,
        push_refresh_interval=args.push_refresh_interval,
        refresh_workers=args.refresh_workers,
        inbox_bytes=args.inbox_bytes,
        inbox_budget=args.inbox_budget,
        stream_window=args.stream_window,
        batch_bundles=args.batch_bundles,
        batch_bytes=args.batch_bytes,
        batch_linger=args.batch_linger,
        store_retry=args.store_retry,
        deployment_type=args.deployment_type,
        pull_token=read_token_file("--pull-token-file", args.pull_token_file, min_length=16) if args.pull_token_file else "",
    )


def _server_tls(args: argparse.Namespace) -> ServerTls | None:
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key" + (" (--tls-client-ca alone does not turn TLS on)" if args.tls_client_ca else ""))
    return ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)


def _admin_token(path: str) -> str:
    return read_token_file("--admin-token-file", path, min_length=16) if path else ""


async def serve(args: argparse.Namespace) -> None:
    from fleetsync.api.app import ApiServer  # the API reads the store; imported here to keep layers one-way
    from fleetsync.hub.core import HubCore
    from fleetsync.transport.connect import broker_server
    from fleetsync.transport.grpc import GrpcHubServer
    from fleetsync.web import https_context

    try:
        grpc_host, grpc_port = parse_listen_address(args.grpc)
        http_host, http_port = parse_listen_address(args.http)
        settings = settings_from(args)
        brokers = [parse_hub_url(url, schemes=("mqtt", "mqtts", "nats")) for url in args.broker.split(",") if url.strip()]
        tls = _server_tls(args)
        ssl_context = https_context(tls.cert_file, tls.key_file) if tls else None  # also checks that the key is the certificate's
        admin_token = _admin_token(args.admin_token_file)
        store = open_store(args.db, change_log_keep=args.change_log_keep, busy_timeout=args.db_busy_timeout)
    except ValueError as exc:
        raise SystemExit(f"fleetsync hub: {exc}") from None
    try:
        await store.open()
        if admin_token:
            await store.add_token(name="admin (--admin-token-file)", role="admin", token_hash=hash_token(admin_token))
    except (RuntimeError, OSError) as exc:
        raise SystemExit(f"fleetsync hub: --db: {exc}") from None
    core = HubCore(store, settings)
    try:
        grpc_server = GrpcHubServer(core, grpc_host, grpc_port, tls=tls)
    except (OSError, RuntimeError) as exc:
        await store.close()  # its connection's thread would keep the process from exiting
        raise SystemExit(f"fleetsync hub: cannot listen on {args.grpc}: {exc}") from None
    api = ApiServer(core, host=http_host, port=http_port, ssl_context=ssl_context)
    broker_servers = [broker_server(core, address) for address in brokers]
    await core.start()
    await grpc_server.start()
    for server in broker_servers:
        await server.start()
    try:
        await api.start()
    except OSError as exc:
        for server in broker_servers:
            await server.stop()
        await grpc_server.stop()
        await core.stop()
        await store.close()
        raise SystemExit(f"fleetsync hub: cannot listen on {args.http}: {exc.strerror}") from None
    via = "".join(f", agents also through {address}" for address in brokers)
    grpc_how = "gRPC over TLS" + (" (client certificates required)" if tls and tls.client_ca else "") if tls else "gRPC"
    print(f"fleetsync hub {args.hub_id}: {grpc_how} on {grpc_host}:{grpc_server.port}, API on {api.url}, store {args.db}{via}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await api.stop()  # first: its watches follow the core's change feed
        for server in broker_servers:
            await server.stop()
        await grpc_server.stop()
        await core.stop()
        await store.close()
        await cancel_the_rest()  # what the client libraries left running


#: How often (seconds) a thread holding the GIL is asked to hand it over. The store writes on
#: a thread of its own, and every row it binds needs the GIL back from a busy event loop: at
#: Python's default (5 ms) a 200-row batch spent most of its 600 ms waiting for that.
GIL_SWITCH_INTERVAL = 0.0005


def run(args: argparse.Namespace) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    asyncio.run(serve(args))
    return 0
