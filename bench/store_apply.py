"""How fast the SQLite store applies bundles: objects/s through ``SQLiteStore.apply_bundle``.

The bench builds N Pod-like objects (realistic ~3 KB JSON: labels, annotations,
owner references, a container with env, probes and resources, volumes, status
with conditions and container statuses; random uids, IPs and timestamps so that
they compress like real ones), serializes, hashes and lz4-compresses each with the
agent's codec (``make_object``) and turns it into the hub's record (``object_record``),
and applies them in bundles of B objects (one transaction each) to a fresh
store in a temporary directory, spread over namespaces of one cluster. Three passes,
each timed from the first bundle to the last commit:

- insert: every object is new (ADDED; object row + change-log row each);
- update: the same keys with new bodies and hashes (MODIFIED);
- no-op: the update pass again, same hashes: only the lookup of the stored hashes,
  no writes (the steady state of a FULL resync of an unchanged cluster).

``--synchronous`` picks SQLite's setting: FULL (the hub's default: every commit is
fsynced) or NORMAL (fsync at checkpoints only), to show what durability costs.

Run (from the repository root)::

    .venv/bin/python bench/store_apply.py                        # 20,000 objects, bundles of 500, FULL
    .venv/bin/python bench/store_apply.py --synchronous NORMAL
    .venv/bin/python bench/store_apply.py -n 100000 -b 1000 --dir /var/tmp   # another disk
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetsync.hub.engine import object_record
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.protocol.codec import body_json, make_object
from fleetsync.store.contract import ObjectRecord, Store
from fleetsync.store.sqlite import SQLiteStore

CLUSTER = "bench"
POD = "v1/Pod"
INCARNATION = "bench-1"


def stamp(rng: random.Random) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + rng.randrange(10_000_000)))


def pod(i: int, namespace: str, rng: random.Random, generation: int, *, app: str | None = None) -> dict[str, Any]:
    """A Running Pod of a ReplicaSet of ``app`` (default: one of 97 ``svc-N``), labelled app, pod-template-hash, team and tier."""
    app = app or f"svc-{i % 97}"
    rs = f"{app}-{rng.getrandbits(32):08x}"[:20]
    name = f"{rs}-{rng.getrandbits(24):06x}"
    ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def container(cname: str, image: str, port: int) -> dict[str, Any]:
        return {
            "name": cname,
            "image": f"registry.example.com/team-{i % 13}/{image}:1.{i % 40}.{generation}",
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
            "env": [
                {"name": "APP_NAME", "value": app},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
                {"name": "LOG_LEVEL", "value": rng.choice(["info", "debug", "warn"])},
                {"name": "DB_URL", "valueFrom": {"secretKeyRef": {"name": f"{app}-db", "key": "url"}}},
            ],
            "resources": {"limits": {"cpu": "500m", "memory": f"{rng.choice([256, 512, 1024])}Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": port, "scheme": "HTTP"}, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 3},
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/app"},
                {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True},
            ],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        }

    def status(cname: str, image: str) -> dict[str, Any]:
        return {
            "name": cname,
            "image": f"registry.example.com/team-{i % 13}/{image}:1.{i % 40}.{generation}",
            "imageID": f"registry.example.com/team-{i % 13}/{image}@sha256:{rng.getrandbits(256):064x}",
            "containerID": f"containerd://{rng.getrandbits(256):064x}",
            "ready": True,
            "started": True,
            "restartCount": rng.randrange(3),
            "state": {"running": {"startedAt": stamp(rng)}},
        }

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.UUID(int=rng.getrandbits(128))),
            "resourceVersion": str(1_000_000 * generation + i),
            "creationTimestamp": stamp(rng),
            "generateName": f"{rs}-",
            "labels": {"app": app, "pod-template-hash": rs[-10:], "team": f"team-{i % 13}", "tier": rng.choice(["web", "api", "worker"])},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/restartedAt": stamp(rng),
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs,
                    "uid": str(uuid.UUID(int=rng.getrandbits(128))),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [container(app, app, 8080)],
            "volumes": [
                {"name": "config", "configMap": {"name": f"{app}-config", "defaultMode": 420}},
                {
                    "name": "kube-api-access",
                    "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420},
                },
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": app,
            "nodeName": f"node-{rng.randrange(200):03d}.eu-west-1.compute.internal",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": True,
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp(rng)}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "hostIP": f"172.20.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": stamp(rng),
            "containerStatuses": [status(app, app)],
            "qosClass": "Burstable",
        },
    }


def pod_record(cluster: str, body: dict[str, Any]) -> tuple[ObjectRecord, int]:
    """``body`` as the hub stores it, and the size of its JSON: serialized (sorted keys), hashed and
    lz4-compressed by the agent's codec, made into a record by the hub's engine."""
    obj = make_object(body)
    return object_record(cluster, POD, INCARNATION, obj, pb.COMPRESSION_LZ4), len(body_json(obj.body, pb.COMPRESSION_LZ4))


def records(n: int, generation: int, seed: int) -> tuple[list[ObjectRecord], int, int]:
    """N objects (same keys for every generation), and their total JSON and compressed sizes."""
    rng = random.Random(seed * 1000 + generation)
    out: list[ObjectRecord] = []
    raw = packed = 0
    for i in range(n):
        namespace = f"ns-{i % 50}"
        body = pod(i, namespace, rng, generation)
        body["metadata"]["name"] = f"pod-{i:07d}"  # stable keys across generations
        record, size = pod_record(CLUSTER, body)
        raw += size
        packed += len(record.body)
        out.append(record)
    return out, raw, packed


async def apply_all(store: Store, objects: list[ObjectRecord], bundle: int, seq: int, *, on_commit: Callable[[int], None] | None = None) -> tuple[float, int]:
    """Apply ``objects`` (all of one cluster) in bundles, as a hub applies DELTAs; (seconds, the last seq used).
    ``on_commit(rev)``: called after each bundle's commit with the store's revision after it."""
    started = time.perf_counter()
    for start in range(0, len(objects), bundle):
        seq += 1
        rev = await store.apply_bundle(
            objects[0].cluster,
            POD,
            incarnation=INCARNATION,
            seq=seq,
            upserts=objects[start : start + bundle],
            deletes=[],
            full_seq=None,
            full_end=False,
            move_to=(INCARNATION, seq),
            now=time.time(),
        )
        if on_commit is not None:
            on_commit(rev)
    return time.perf_counter() - started, seq


async def run(args: argparse.Namespace) -> None:
    first, raw, packed = records(args.objects, 0, args.seed)
    second, _, _ = records(args.objects, 1, args.seed)
    print(f"{args.objects} objects in bundles of {args.bundle}, synchronous={args.synchronous}")
    print(f"bodies: {raw / args.objects:,.0f} B JSON, {packed / args.objects:,.0f} B lz4 on average ({raw / packed:.1f}x)")
    with tempfile.TemporaryDirectory(prefix="fleetsync-bench-", dir=args.dir) as tmp:
        path = Path(tmp) / "hub.db"
        store = SQLiteStore(path, synchronous=args.synchronous, change_log_keep=args.keep)
        await store.open()
        try:
            seq = 0
            for label, objects in (("insert", first), ("update", second), ("no-op", second)):
                seconds, seq = await apply_all(store, objects, args.bundle, seq)
                bundles = -(-len(objects) // args.bundle)
                print(f"{label:>7}: {len(objects) / seconds:>9,.0f} objects/s  ({seconds:6.2f} s, {1000 * seconds / bundles:6.1f} ms/bundle)")
            print(f"rev {await store.current_rev()}, oldest {await store.oldest_rev()}")
        finally:
            await store.close()
        print(f"database file: {path.stat().st_size / 1e6:,.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-n", "--objects", type=int, default=20_000, help="objects per pass")
    parser.add_argument("-b", "--bundle", type=int, default=500, help="objects per bundle (one transaction)")
    parser.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"], help="SQLite synchronous setting")
    parser.add_argument("--keep", type=int, default=100_000, help="change_log_keep of the store")
    parser.add_argument("--dir", default=None, help="where to create the temporary database (default: the system temp dir)")
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
