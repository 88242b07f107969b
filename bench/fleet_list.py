"""A fleet-wide ``kubectl get pods -A --chunk-size=500`` over a large store (issue 19's figure).

The bench writes C clusters x P Pods (default 1,000 x 1,000: 1M) of store_apply.py's ~3.5 KB
Pod bodies into a SQLite store through the store contract, as the hub applies agents'
bundles, starts a real ``fleetsync hub`` on it (with an admin token; kubectl sends bearer
tokens over HTTPS only, so the hub serves TLS with a CA of the bench's own, trustme's), then times, one after the other:

- **raw**: the store read alone, in this process: ``list_objects`` page by page (500), the
  physical limit of any list (no HTTP, no rendering);
- **json**: the hub's fleet-wide list over HTTP, page by page (``limit=500`` + ``continue``),
  as ``fleetsync get`` and informers read it;
- **kubectl**: ``kubectl get pods -A --chunk-size=500`` (Tables, with the CLUSTER column),
  its output counted and discarded.

It prints each time, objects/s, the ratio to the raw rate, and the hub's RSS before and its
peak (VmHWM) after.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import psutil
import trustme

from benchlib import DEFAULT_FLEETSYNC, Processes, admin_token_file, bench_start, free_port, mib, vm_hwm
from fleetsync.store import open_store
from fleetsync.store.contract import ClusterRecord
from store_apply import INCARNATION, POD, apply_all, pod, pod_record

NAMESPACES = ("default", "web", "batch", "data")
PAGE = 500


async def populate(db: str, clusters: int, pods: int) -> float:
    """Write the fleet, one cluster at a time (its bodies are built, written and dropped); seconds."""
    store = open_store(db, change_log_keep=1000)
    await store.open()
    started = time.perf_counter()
    try:
        for k in range(1, clusters + 1):
            cluster, rng = f"c{k}", random.Random(k)
            now = time.time()
            await store.upsert_cluster(
                ClusterRecord(
                    name=cluster, agent_id=f"bench/{cluster}", incarnation=INCARNATION, status="active", connected_at=now, last_seen=now, hub_id="bench"
                )
            )
            records = [pod_record(cluster, pod(i, NAMESPACES[i % len(NAMESPACES)], rng, 0))[0] for i in range(pods)]
            await apply_all(store, records, 1000, 0)
            if k % 100 == 0:
                print(f"  written {k * pods:,} Pods ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        await store.close()
    return time.perf_counter() - started


async def raw_read(db: str) -> tuple[int, float]:
    """Every Pod through the store contract, page by page; (objects, seconds)."""
    store = open_store(db)
    await store.open()
    try:
        started, count, after = time.perf_counter(), 0, None
        while True:
            page = await store.list_objects(POD, after=after, limit=PAGE)
            count += len(page)
            if len(page) < PAGE:
                return count, time.perf_counter() - started
            last = page[-1]
            after = (last.cluster, last.namespace, last.name)
    finally:
        await store.close()


async def json_read(url: str, headers: dict[str, str], ssl_context: ssl.SSLContext) -> tuple[int, float]:
    """The hub's fleet-wide list over HTTPS, page by page; (objects, seconds)."""
    started, count, token = time.perf_counter(), 0, ""
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=ssl_context)) as session:
        while True:
            query = f"limit={PAGE}" + (f"&continue={token}" if token else "")
            async with session.get(f"{url}/api/v1/pods?{query}") as resp:
                body = orjson.loads(await resp.read())
            count += len(body["items"])
            token = body["metadata"].get("continue", "")
            if not token:
                return count, time.perf_counter() - started


def kubectl_read(url: str, kubectl: str, token: str, ca: Path) -> tuple[int, float]:
    """``kubectl get pods -A --chunk-size=500``, its rows counted; (rows, seconds)."""
    started = time.perf_counter()
    command = [kubectl, "--server", url, "--token", token, "--certificate-authority", str(ca), "get", "pods", "-A", f"--chunk-size={PAGE}", "--no-headers"]
    out = subprocess.run(command, capture_output=True, check=True)
    return out.stdout.count(b"\n"), time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--pods", type=int, default=1000, help="Pods per cluster")
    p.add_argument("--fleetsync", type=Path, default=DEFAULT_FLEETSYNC)
    args = p.parse_args()
    if bench_start("fleet_list", args) is None:
        return 1
    kubectl = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    total = args.clusters * args.pods
    with tempfile.TemporaryDirectory(prefix="fleetsync-fleet-list-") as tmp_name:
        tmp = Path(tmp_name)
        db = f"sqlite:///{tmp / 'hub.db'}"
        print(f"fleet_list: {args.clusters} clusters x {args.pods} Pods = {total:,}; work dir {tmp}", flush=True)
        written = asyncio.run(populate(db, args.clusters, args.pods))
        print(f"written in {written:.0f} s ({total / written:,.0f} Pods/s)", flush=True)
        raw_n, raw_s = asyncio.run(raw_read(db))
        procs = Processes(args.fleetsync, tmp)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(str(tmp / "ca.crt"))
        cert.private_key_pem.write_to_path(str(tmp / "hub.key"))
        cert.cert_chain_pems[0].write_to_path(str(tmp / "hub.crt"))
        context = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
        token = admin_token_file(tmp).read_text().strip()
        http_port = free_port()
        tls = ("--tls-cert", str(tmp / "hub.crt"), "--tls-key", str(tmp / "hub.key"))
        hub = procs.spawn_hub(db, free_port(), http_port, "--inactivity-timeout", "86400", *tls)
        url = f"https://127.0.0.1:{http_port}"
        try:
            deadline = time.monotonic() + 60
            while subprocess.run(["curl", "-sf", "--cacert", str(tmp / "ca.crt"), f"{url}/readyz"], capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise SystemExit("the hub did not become ready within 60 s")
                time.sleep(0.2)
            rss_before = psutil.Process(hub.pid).memory_info().rss
            json_n, json_s = asyncio.run(json_read(url, {"Authorization": f"Bearer {token}"}, context))
            kubectl_n, kubectl_s = kubectl_read(url, kubectl, token, tmp / "ca.crt")
            peak = vm_hwm(hub.pid)
        finally:
            procs.stop_all(15.0)
    raw_rate = raw_n / raw_s
    print(f"\n{'read':<28}{'objects':>10}{'seconds':>10}{'objects/s':>12}{'x raw':>8}")
    for name, n, s in (("raw store pages (limit)", raw_n, raw_s), ("hub JSON pages", json_n, json_s), ("kubectl get pods -A", kubectl_n, kubectl_s)):
        print(f"{name:<28}{n:>10,}{s:>10.1f}{n / s:>12,.0f}{(n / s) / raw_rate:>8.2f}")
    print(f"\nhub RSS before the reads {mib(rss_before)}, peak over the run {mib(peak)}")
    return 0 if raw_n == json_n == kubectl_n == total else 1


if __name__ == "__main__":
    sys.exit(main())
