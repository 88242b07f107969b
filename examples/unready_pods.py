"""An example controller on the hub: the fleet's unready pods, per cluster, kept current.

It does what a controller built on client-go informers does against one cluster, but for
every cluster the hub holds, with no connection to any of them: one informer lists and
watches ``/api/v1/pods`` across the fleet (each pod labelled ``fleetsync.io/cluster``), an
index groups the cache by cluster, and handlers report each pod that stops or starts
being Ready. Every ``--report`` seconds (and on demand, after the first sync) it prints
the unready count per cluster, which is where a real controller would page someone,
open a ticket or scale something.

Run it against a hub (the demo prints the settings to export first)::

    export FLEETSYNC_HUB=https://127.0.0.1:8080 FLEETSYNC_TOKEN=... FLEETSYNC_CERTIFICATE_AUTHORITY=...
    python examples/unready_pods.py --selector 'app in (web,api)' --cluster-selector env=prod
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections import Counter
from typing import Any

from fleetsync.client import Informer, Refused

CLUSTER = "fleetsync.io/cluster"


def ready(pod: dict[str, Any]) -> bool:
    """Kubernetes' own definition: the pod's Ready condition is True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def name(pod: dict[str, Any]) -> str:
    meta = pod["metadata"]
    return f"{meta['labels'][CLUSTER]}/{meta.get('namespace', '')}/{meta['name']}"


class UnreadyPods:
    """The controller: an informer, an index by cluster, and handlers that react to changes."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        informer.add_index("cluster", lambda pod: [pod["metadata"]["labels"][CLUSTER]])
        informer.on_add(self.added)
        informer.on_update(self.updated)
        informer.on_delete(self.deleted)

    def say(self, line: str) -> None:
        if self.informer.synced.is_set():  # the first list's adds are summarised, not listed
            print(line, flush=True)

    def added(self, pod: dict[str, Any]) -> None:
        if not ready(pod):
            self.say(f"unready  {name(pod)} (new)")

    def updated(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        if ready(old) and not ready(new):
            self.say(f"unready  {name(new)}")
        elif not ready(old) and ready(new):
            self.say(f"ready    {name(new)}")

    def deleted(self, pod: dict[str, Any]) -> None:
        self.say(f"deleted  {name(pod)}" + ("" if ready(pod) else " (was unready)"))

    def report(self) -> str:
        unready = Counter(pod["metadata"]["labels"][CLUSTER] for pod in self.informer.objects() if not ready(pod))
        clusters = sorted({pod["metadata"]["labels"][CLUSTER] for pod in self.informer.objects()})
        per_cluster = ", ".join(f"{c} {unready[c]}/{len(self.informer.by_index('cluster', c))}" for c in clusters)
        return f"report   {len(self.informer.objects())} pods in {len(clusters)} clusters, unready: {per_cluster or 'none'}"


async def main(args: argparse.Namespace) -> int:
    context = ssl.create_default_context(cafile=args.certificate_authority) if args.certificate_authority else None
    informer = Informer(args.hub, "/api/v1/pods", label_selector=args.selector, cluster_selector=args.cluster_selector, token=args.token, ssl_context=context)
    controller = UnreadyPods(informer)
    running = asyncio.create_task(informer.run())
    synced = asyncio.create_task(informer.synced.wait())
    await asyncio.wait({running, synced}, return_when=asyncio.FIRST_COMPLETED)
    try:
        while not running.done():
            print(controller.report(), flush=True)
            await asyncio.wait({running}, timeout=args.report)
        await running  # it only ends by failing: show why
    except Refused as exc:
        print(f"error: the hub refused this controller: {exc}", file=sys.stderr)
        return 2
    finally:
        running.cancel()
        synced.cancel()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hub", default=os.environ.get("FLEETSYNC_HUB", "http://127.0.0.1:8080"), help="the hub's API URL (FLEETSYNC_HUB)")
    p.add_argument("--token", default=os.environ.get("FLEETSYNC_TOKEN", ""), help="an API token, role read (FLEETSYNC_TOKEN)")
    p.add_argument(
        "--certificate-authority",
        default=os.environ.get("FLEETSYNC_CERTIFICATE_AUTHORITY", ""),
        help="the CA of an https:// hub (FLEETSYNC_CERTIFICATE_AUTHORITY)",
    )
    p.add_argument("--selector", default="", help="only pods with these labels (e.g. 'app in (web,api)')")
    p.add_argument("--cluster-selector", default="", help="only clusters with these labels (e.g. region=eu,env=prod)")
    p.add_argument("--report", type=float, default=30.0, help="seconds between reports")
    return p.parse_args(argv)


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse_args())))
    except KeyboardInterrupt:
        sys.exit(130)
