"""``fleetsync`` entry point: parses the subcommand and hands over to its module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import metadata

from fleetsync import logs, tracing
from fleetsync.cli import agent, client, db, demo, gates, hub, pull, servicegraph, settings, sim, token, works
from fleetsync.cli.flags import add_flag
from fleetsync.extras import ExtrasMissing, install_hint


def installed_version() -> str:
    """The installed distribution's version (what pip and ``fleetsync --version`` agree on); the
    source's own when fleetsync runs from a tree that was never installed."""
    try:
        return metadata.version("fleetsync")
    except metadata.PackageNotFoundError:
        from fleetsync import __version__

        return __version__


#: The commands that trace (the others make no spans).
TRACED = ("hub", "agent", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetsync", description="fleetsync: one consolidated, versioned view of many Kubernetes clusters.")
    parser.add_argument("--version", action="version", version=f"fleetsync {installed_version()}")
    add_flag(parser, "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity")
    add_flag(
        parser, "--log-format", default="text", choices=list(logs.FORMATS), help="log lines as text, or as one JSON object each (with cluster, type, session)"
    )
    add_flag(
        parser,
        "--otlp-endpoint",
        default="",
        help="hub, agent, demo: send OpenTelemetry traces (agent send -> hub apply -> watch delivery) to this OTLP gRPC collector, "
        "e.g. http://127.0.0.1:4317; also on when OTEL_EXPORTER_OTLP_ENDPOINT is set; needs fleetsync[otel]",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    sim.register(subparsers)
    hub.register(subparsers)
    agent.register(subparsers)
    token.register(subparsers)
    db.register(subparsers)
    pull.register(subparsers)
    client.register(subparsers)
    gates.register(subparsers)
    works.register(subparsers)
    settings.register(subparsers)
    servicegraph.register(subparsers)
    demo.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        logs.configure(level=args.log_level, fmt=args.log_format)
    except ValueError as exc:  # (a value from the environment: argparse checked the flag's)
        parser.error(f"--log-format: {exc}")
    if args.command in TRACED and (endpoint := tracing.wanted(args.otlp_endpoint)):
        try:
            tracing.configure(service=f"fleetsync-{args.command}", endpoint=endpoint)
        except tracing.TracingUnavailable as exc:
            if args.otlp_endpoint:
                parser.error(str(exc))
            # only the environment asked (OTEL_EXPORTER_OTLP_ENDPOINT may be there for other programs)
            logging.getLogger("fleetsync").warning("%s; running without tracing", exc)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except ExtrasMissing as exc:  # the command checked what it needs before starting
        print(f"fleetsync {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency: name the extra to install, not a traceback
        hint = install_hint(exc.name or "", command=args.command)
        if hint is None:
            raise
        print(f"fleetsync {args.command}: {hint}", file=sys.stderr)
        return 2
    finally:
        tracing.shutdown()
