"""``fleetsync servicegraph [--cluster C] [-n NS]``: the mesh's service graph, merged across clusters."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from typing import Any

from fleetsync.cli.client import add_hub_flags, fetch, hub_session, print_table, run_client


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "servicegraph",
        help="the mesh's service graph: request rate, error rate and latency per source -> destination service",
        description="Edges come from the agents' metrics providers (--prometheus): an edge seen in several clusters is merged "
        "(counts and latency histograms added, then rates and percentiles computed).",
    )
    p.add_argument("--cluster", action="append", default=[], help="only this cluster (repeat for several; default: every cluster)")
    p.add_argument("-n", "--namespace", default="", help="only edges from or to services of this namespace")
    p.add_argument("-o", "--output", default="", choices=["", "json"], help="output format")
    add_hub_flags(p)
    p.set_defaults(run=lambda a: run_client(_graph(a)))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms" if value >= 10 else f"{value:.1f}ms"


async def _graph(args: argparse.Namespace) -> int:
    query = [("cluster", c) for c in args.cluster] + ([("namespace", args.namespace)] if args.namespace else [])
    async with hub_session(args) as session:
        graph: dict[str, Any] = await fetch(session, f"{args.hub}/api/v1/servicegraph?{urllib.parse.urlencode(query)}", token=args.token)
    if args.output == "json":
        print(json.dumps(graph, indent=2))
        return 0
    for cluster, error in sorted(graph["errors"].items()):
        print(f"warning: cluster {cluster}: metrics provider failing (its last edges are shown): {error}", file=sys.stderr)
    if not graph["edges"]:
        print("No service graph edges (agents collect them with --prometheus).", file=sys.stderr)
        return 0
    rows = []
    for e in graph["edges"]:
        latency = e["latencyMs"]
        rows.append(
            [
                f"{e['source']['namespace']}/{e['source']['service']}",
                f"{e['destination']['namespace']}/{e['destination']['service']}",
                ",".join(e["clusters"]),
                f"{e['requestRate']:.2f}",
                f"{100 * e['errorRate']:.2f}%",
                _ms(latency["p50"]),
                _ms(latency["p90"]),
                _ms(latency["p99"]),
            ]
        )
    print_table(["SOURCE", "DESTINATION", "CLUSTERS", "RPS", "ERRORS", "P50", "P90", "P99"], rows)
    print(f"{len(graph['nodes'])} services, {len(graph['edges'])} edges, over {graph['window']:.0f}s windows", file=sys.stderr)
    return 0
