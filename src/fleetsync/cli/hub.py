"""``fleetsync hub``: composition root of the hub process (store + transports + core + API)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleetsync import logs
from fleetsync.aio import cancel_the_rest
from fleetsync.cli.flags import add_flag, add_switch, non_negative_float, non_negative_int, positive_float, positive_int, read_token_file
from fleetsync.extras import MODULE_OF_SCHEME, require
from fleetsync.heap import retain_less, trim_every
from fleetsync.hub.auth import hash_token
from fleetsync.store import open_store
from fleetsync.transport.base import BROKER_SCHEMES, ServerTls, parse_hub_url, parse_listen_address

if TYPE_CHECKING:
    from fleetsync.hub.core import HubSettings
    from fleetsync.hub.limits import ProtocolLimits

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
    add_flag(
        p,
        "--http-header-timeout",
        type=positive_float,
        default=10.0,
        help="seconds a new HTTP connection has to send a complete request head; a slower one is answered 408 and closed",
    )
    add_flag(
        p,
        "--http-idle-timeout",
        type=positive_float,
        default=90.0,
        help="seconds an HTTP connection with no request in progress stays open after its last response (a watch in progress is never cut)",
    )
    add_flag(
        p,
        "--http-max-connections",
        type=positive_int,
        default=1000,
        help="HTTP connections open at once (watches included); more are answered 503 and closed at once",
    )
    add_flag(p, "--http-max-body-bytes", type=positive_int, default=1024 * 1024, help="largest HTTP request body (gates, works, settings); larger: 413")
    add_flag(p, "--hub-id", default=socket.gethostname(), help="this replica's name (in leases and logs)")
    add_flag(
        p,
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop: uvloop (libuv; about a fifth less CPU per agent message, docs/performance.md) or Python's own asyncio loop",
    )
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
        "--chunk-bytes",
        type=positive_int,
        default=128 * 1024,
        help="agents fill their FULL chunks and delta bundles to this size; a larger object goes alone, up to --max-message-bytes",
    )
    add_flag(
        p,
        "--digest-interval",
        default="300",
        help="anti-entropy, partial syncs: seconds between digests of each type, as DEFAULT[,TYPE=SECONDS...] (e.g. 300,v1/Pod=60); 0 turns one off",
    )
    add_flag(
        p,
        "--push-refresh-interval",
        type=non_negative_float,
        default=600.0,
        help="anti-entropy, full syncs: seconds between digests of every type of each push cluster (each counts as every type's partial sync); 0 turns them off",
    )
    add_flag(
        p,
        "--change-log-keep",
        type=positive_int,
        default=100_000,
        help="changes the store keeps for watches to resume from; a watch from an older revision gets 410 Expired and lists again",
    )
    add_flag(
        p,
        "--events-keep",
        type=positive_int,
        default=10_000,
        help="events the store keeps fleet-wide (what `fleetsync events` and the dashboard read back); the oldest go first",
    )
    add_flag(
        p,
        "--gate-history-keep",
        type=positive_int,
        default=10_000,
        help="gate history entries the store keeps (admin writes and clusters' local changes, old -> new); the oldest go first",
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
        default=64 * 1024,
        help="gRPC: bytes each agent may have in flight to the hub beyond what it has read (the stream's HTTP/2 window)",
    )
    add_flag(p, "--batch-bundles", type=positive_int, default=1000, help="group commit: most bundles (of any clusters) in one store transaction")
    add_flag(p, "--batch-bytes", type=positive_int, default=16 * 1024 * 1024, help="group commit: most bytes of objects in one store transaction")
    add_flag(p, "--batch-linger", type=non_negative_float, default=0.002, help="group commit: seconds the writer waits for more bundles under load")
    add_flag(p, "--db-busy-timeout", type=positive_float, default=10.0, help="SQLite: seconds a write waits for another process's lock on the database")
    add_flag(
        p,
        "--db-writer",
        choices=("process", "thread"),
        default="process",
        help="write the agents' bundles from a process of the hub's own (its own core: the hub's event loop is one core of Python) or from the hub's process (SQLite: a thread; PostgreSQL: the event loop)",
    )
    add_flag(
        p,
        "--db-timeout",
        type=positive_float,
        default=30.0,
        help="PostgreSQL: seconds a connection attempt or one statement may take before it fails as unavailable (then retried, see --store-retry)",
    )
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
    _limit_flags(p)
    add_switch(p, "--resync-on-startup", help="ask every cluster for a digest of every type on its first connection after the hub starts (default: on)")
    p.set_defaults(run=run)


def _limit_flags(p: argparse.ArgumentParser) -> None:
    """The bounds on what a peer may cost the hub (:class:`~fleetsync.hub.limits.ProtocolLimits`)."""
    add_flag(
        p, "--hello-timeout", type=positive_float, default=10.0, help="seconds a new gRPC stream (or connection) may take to send its Hello before it is closed"
    )
    add_flag(
        p,
        "--max-pending-hellos",
        type=positive_int,
        default=256,
        help="gRPC streams that have not said Hello yet, at most; a new one beyond it is refused at once (RESOURCE_EXHAUSTED)",
    )
    add_flag(p, "--grpc-max-streams-per-connection", type=positive_int, default=8, help="gRPC: concurrent streams one connection may open (an agent uses one)")
    add_flag(p, "--keepalive-time", type=positive_float, default=20.0, help="gRPC: ping a silent agent after this many seconds (HTTP/2 keepalive)")
    add_flag(
        p, "--keepalive-timeout", type=positive_float, default=10.0, help="gRPC: drop an agent whose keepalive ping is not answered within this many seconds"
    )
    add_flag(
        p,
        "--auth-failures-per-minute",
        type=positive_float,
        default=6.0,
        help="Hellos with a bad token (or malformed) refused per peer address and minute, after a burst of --auth-failure-burst; "
        "beyond it the refusal waits --auth-failure-delay and is recorded nowhere but /metrics",
    )
    add_flag(p, "--auth-failure-burst", type=positive_int, default=5, help="refused Hellos a peer address may have at once before its rate applies")
    add_flag(p, "--auth-failure-delay", type=non_negative_float, default=1.0, help="seconds a refusal beyond a peer's rate waits before it is sent")
    add_flag(
        p,
        "--auth-failure-peers",
        type=positive_int,
        default=10_000,
        help="peer addresses whose refused-Hello rate is remembered; the least recently seen are forgotten first (and start again with a full burst)",
    )
    add_flag(
        p,
        "--rejected-events",
        type=non_negative_int,
        default=20,
        help="refused Hellos recorded as Rejected events per --rejected-events-window, fleet-wide; the rest are summed up in one event per window",
    )
    add_flag(p, "--rejected-events-window", type=positive_float, default=600.0, help="seconds of the --rejected-events window")
    add_flag(
        p,
        "--max-reported-types",
        type=positive_int,
        default=1000,
        help="resource types (CRDs included) one cluster's agent may report; the ones beyond are refused by name",
    )
    add_flag(p, "--max-event-bytes", type=positive_int, default=2048, help="an event's message is cut to this many bytes")
    add_flag(
        p,
        "--max-object-bytes",
        type=positive_int,
        default=4 * 1024 * 1024,
        help="largest object body accepted (declared in its lz4 frame and once decompressed, at most 64 MiB); a bundle with a bigger one, or one that is not a JSON object, is refused",
    )
    add_flag(
        p,
        "--max-digest-ratio",
        type=positive_int,
        default=16,
        help="a digest chunk's packed entries may decompress to at most this many times --max-message-bytes; a chunk that would is refused",
    )
    add_flag(p, "--max-digest-entries", type=positive_int, default=2_000_000, help="entries one digest (all its chunks) may carry before it is refused")
    add_flag(p, "--max-digest-chunks", type=positive_int, default=10_000, help="chunks one digest may have before it is refused")
    add_flag(p, "--digest-timeout", type=positive_float, default=600.0, help="seconds a digest may take from its first chunk to its last before it is refused")
    add_flag(
        p,
        "--broker-session-queue",
        type=positive_int,
        default=1024,
        help="MQTT/NATS: messages of one agent session received and not yet handled; beyond it the session is ended (the agent reconnects)",
    )
    add_flag(
        p,
        "--broker-session-bytes",
        type=positive_int,
        default=64 * 1024 * 1024,
        help="MQTT/NATS: bytes of one agent session received and not yet handled; beyond it the session is ended (the agent reconnects)",
    )
    add_flag(p, "--pull-max-bytes", type=positive_int, default=256 * 1024 * 1024, help="the largest answer a pull refresh (GET /v1/state) may read")
    add_flag(p, "--pull-timeout", type=positive_float, default=30.0, help="seconds a pull refresh's GET /v1/state may take")


def limits_from(args: argparse.Namespace) -> ProtocolLimits:
    from fleetsync.hub.limits import ProtocolLimits
    from fleetsync.protocol.codec import READ_LIMIT

    if args.max_object_bytes > READ_LIMIT:
        raise ValueError(f"--max-object-bytes ({args.max_object_bytes}) may be at most {READ_LIMIT} (the most a stored body is decompressed to when read)")
    return ProtocolLimits(
        hello_timeout=args.hello_timeout,
        max_pending_hellos=args.max_pending_hellos,
        max_streams_per_connection=args.grpc_max_streams_per_connection,
        keepalive_time=args.keepalive_time,
        keepalive_timeout=args.keepalive_timeout,
        auth_failures_per_minute=args.auth_failures_per_minute,
        auth_failure_burst=args.auth_failure_burst,
        auth_failure_delay=args.auth_failure_delay,
        auth_failure_peers=args.auth_failure_peers,
        rejected_events=args.rejected_events,
        rejected_events_window=args.rejected_events_window,
        max_event_bytes=args.max_event_bytes,
        max_reported_types=args.max_reported_types,
        max_object_bytes=args.max_object_bytes,
        max_digest_ratio=args.max_digest_ratio,
        max_digest_entries=args.max_digest_entries,
        max_digest_chunks=args.max_digest_chunks,
        digest_timeout=args.digest_timeout,
        broker_session_queue=args.broker_session_queue,
        broker_session_bytes=args.broker_session_bytes,
        pull_max_bytes=args.pull_max_bytes,
        pull_timeout=args.pull_timeout,
    )


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
        chunk_bytes=args.chunk_bytes,
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
        limits=limits_from(args),
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
    from fleetsync.api.limits import HttpLimits
    from fleetsync.hub.core import HubCore
    from fleetsync.transport.connect import broker_server
    from fleetsync.transport.grpc_hub import GrpcHubServer
    from fleetsync.web import https_context

    try:
        grpc_host, grpc_port = parse_listen_address(args.grpc)
        http_host, http_port = parse_listen_address(args.http)
        settings = settings_from(args)
        brokers = [parse_hub_url(url, schemes=BROKER_SCHEMES) for url in args.broker.split(",") if url.strip()]
        tls = _server_tls(args)
        ssl_context = https_context(tls.cert_file, tls.key_file) if tls else None  # also checks that the key is the certificate's
        admin_token = _admin_token(args.admin_token_file)
        store = open_store(
            args.db,
            change_log_keep=args.change_log_keep,
            events_keep=args.events_keep,
            gate_history_keep=args.gate_history_keep,
            busy_timeout=args.db_busy_timeout,
            timeout=args.db_timeout,
            batch_writer=args.db_writer,
        )
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
    limits = HttpLimits(
        header_timeout=args.http_header_timeout,
        idle_timeout=args.http_idle_timeout,
        max_connections=args.http_max_connections,
        max_body_bytes=args.http_max_body_bytes,
    )
    api = ApiServer(core, host=http_host, port=http_port, ssl_context=ssl_context, limits=limits)
    broker_servers = [broker_server(core, address) for address in brokers]
    await core.start()
    trimmer = asyncio.create_task(trim_every(HEAP_TRIM_INTERVAL), name="heap-trim")
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
    logs.announce(f"fleetsync hub {args.hub_id}: {grpc_how} on {grpc_host}:{grpc_server.port}, API on {api.url}, store {args.db}{via}", logger="fleetsync.hub")
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
        trimmer.cancel()
        await cancel_the_rest()  # what the client libraries left running


#: How often (seconds) a thread holding the GIL is asked to hand it over. The store writes on
#: a thread of its own, and every row it binds needs the GIL back from a busy event loop: at
#: Python's default (5 ms) a 200-row batch spent most of its 600 ms waiting for that.
GIL_SWITCH_INTERVAL = 0.0005


#: Seconds between two returns of the heap's free pages to the kernel (fleetsync/heap.py).
HEAP_TRIM_INTERVAL = 5.0


def run(args: argparse.Namespace) -> int:
    require(_modules_needed(args), command="hub")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    retain_less()  # the hub's RSS follows what it holds, not what passed through it (fleetsync/heap.py)
    with asyncio.Runner(loop_factory=_loop_factory(args.event_loop)) as runner:
        runner.run(serve(args))
    return 0


def _modules_needed(args: argparse.Namespace) -> list[str]:
    """The optional libraries this hub will import, checked together before it starts so a
    missing one is named with the others (fleetsync/extras.py), not found one at a time."""
    needed = ["simdjson"]  # bodies are checked by fleetsync.protocol.bodies
    if args.event_loop == "uvloop":
        needed.append("uvloop")
    needed.append("asyncpg" if args.db.startswith(("postgresql://", "postgres://")) else "aiosqlite")
    needed += [MODULE_OF_SCHEME[scheme] for url in args.broker.split(",") if (scheme := url.strip().partition("://")[0]) in MODULE_OF_SCHEME]
    return needed


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The hub's event loop. Every agent message costs the loop a few task switches, futures
    and callbacks; uvloop (libuv, in C) does those for less CPU, and the hub is bound by one
    core of Python (docs/performance.md). gRPC's asyncio stack and aiohttp run on either."""
    if name == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop
