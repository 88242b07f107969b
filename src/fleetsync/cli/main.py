"""``fleetsync`` entry point: parses the subcommand and hands over to its module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from fleetsync import __version__
from fleetsync.cli import agent, client, db, demo, gates, hub, pull, servicegraph, settings, sim, token, works
from fleetsync.cli.flags import add_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetsync", description="fleetsync: one consolidated, versioned view of many Kubernetes clusters.")
    parser.add_argument("--version", action="version", version=f"fleetsync {__version__}")
    add_flag(parser, "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity")
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
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
