"""What the agent finds of Istio in its cluster, synced as one ``IstioMesh`` object named ``istio``.

Every ``interval`` seconds (and at start) the agent looks for:

- **control planes**: istiod Deployments (label ``app=istiod``) in any namespace, each with its
  revision (label ``istio.io/rev``, ``default`` without one), version (its image's tag), image,
  replicas, the mesh config of that revision (ConfigMap ``istio``, or ``istio-REV``, key
  ``mesh``, parsed) and the cluster's name in Istio's metrics (its ``CLUSTER_ID``, ``Kubernetes``
  when unset), which the service graph's default scope follows;
- **CRDs**: which of the Istio types fleetsync syncs the cluster serves (installed) and which
  it does not (absent). An absent one is not an error: its type syncs no objects, and its
  watcher looks for it again now and then (:meth:`fleetsync.agent.kube.TypeWatcher._absent`).

The object goes to the hub like any other (type ``mesh.fleetsync.io/v1/IstioMesh``), so
``kubectl get istiomeshes`` works against the hub, and ``/api/v1/clusters`` shows each
cluster's control planes. A failure (e.g. the agent may not list Deployments) is reported as
that type's error, and the last state found stays on the hub.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from fleetsync.agent.kube import OnError, OnList, get_json
from fleetsync.model.types import CRD, ISTIO_MESH, ISTIO_TYPES

log = logging.getLogger(__name__)

DEFAULT_REVISION = "default"
#: The cluster name istiod puts in its metrics' ``*_cluster`` labels when its ``CLUSTER_ID`` is not set
#: (a single-cluster install: ``values.global.multiCluster.clusterName`` left empty).
DEFAULT_MESH_CLUSTER = "Kubernetes"


def _version(image: str) -> str:
    """The tag of ``registry/istio/pilot:1.24.1`` (``""`` without one, or for a digest)."""
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name and "@" not in name else ""


def control_plane(deployment: dict[str, Any], mesh_config: dict[str, Any] | None) -> dict[str, Any]:
    """An istiod Deployment as the IstioMesh object lists it."""
    meta, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    container = next((c for c in containers if c.get("name") == "discovery"), containers[0])
    image = str(container.get("image") or "")
    env = {str(e.get("name")): e.get("value") for e in container.get("env") or [] if isinstance(e, dict)}
    return {
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "revision": (meta.get("labels") or {}).get("istio.io/rev") or DEFAULT_REVISION,
        "version": _version(image),
        "image": image,
        "replicas": int(spec.get("replicas", 1) or 0),
        "readyReplicas": int(status.get("readyReplicas") or 0),
        "meshConfig": mesh_config,
        #: The name Istio's metrics give this cluster (source_cluster / destination_cluster).
        "clusterId": str(env.get("CLUSTER_ID") or DEFAULT_MESH_CLUSTER),
    }


def mesh_clusters(mesh: dict[str, Any]) -> list[str]:
    """The cluster names an IstioMesh object's control planes give this cluster in Istio's metrics."""
    return sorted({str(c["clusterId"]) for c in mesh["spec"]["controlPlanes"] if c.get("clusterId")})


def mesh_object(control_planes: list[dict[str, Any]], crd_names: set[str]) -> dict[str, Any]:
    """The cluster's IstioMesh object: control planes, and the Istio CRDs installed and absent (no
    timestamp: the object changes, and is sent, only when what it says changes)."""
    installed = [t.gvk for t in ISTIO_TYPES if f"{t.plural}.{t.group}" in crd_names]
    return {
        "apiVersion": ISTIO_MESH.api_version,
        "kind": ISTIO_MESH.kind,
        "metadata": {"name": "istio", "labels": {"istio-installed": "true" if control_planes else "false"}},
        "spec": {
            "controlPlanes": sorted(control_planes, key=lambda c: (c["namespace"], c["revision"])),
            "crds": {"installed": installed, "absent": [t.gvk for t in ISTIO_TYPES if t.gvk not in installed]},
        },
    }


class IstioDetector:
    """Looks for Istio every ``interval`` seconds; hands the IstioMesh object over as a list of one."""

    def __init__(self, api: client.ApiClient, *, on_list: OnList, on_error: OnError, interval: float = 60.0) -> None:
        self.api = api
        self.on_list = on_list
        self.on_error = on_error
        self.interval = interval
        #: Set once the first look is over (found or failed): what depends on it may start then.
        self.looked = asyncio.Event()

    async def detect(self) -> dict[str, Any]:
        deployments = await get_json(self.api, "/apis/apps/v1/deployments", [("labelSelector", "app=istiod")])
        planes = []
        for deployment in deployments.get("items") or []:
            meta = deployment.get("metadata") or {}
            revision = (meta.get("labels") or {}).get("istio.io/rev") or DEFAULT_REVISION
            planes.append(control_plane(deployment, await self._mesh_config(meta.get("namespace", ""), revision)))
        crds = await get_json(self.api, CRD.collection_path())
        names = {str((c.get("metadata") or {}).get("name")) for c in crds.get("items") or []}
        return mesh_object(planes, names)

    async def _mesh_config(self, namespace: str, revision: str) -> dict[str, Any] | None:
        name = "istio" if revision == DEFAULT_REVISION else f"istio-{revision}"
        try:
            found = await get_json(self.api, f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        try:
            parsed = yaml.safe_load((found.get("data") or {}).get("mesh") or "")
        except yaml.YAMLError as exc:
            return {"error": f"ConfigMap {namespace}/{name}: mesh is not valid YAML: {exc}"}
        return parsed if isinstance(parsed, dict) else None

    async def run(self) -> None:
        """Never returns; a failed look is reported as the type's error and tried again next interval."""
        found: dict[str, Any] | None = None
        while True:
            try:
                mesh = await self.detect()
            except ApiException as exc:
                await self.on_error(ISTIO_MESH, f"looking for Istio: {exc.status} {exc.reason}".strip())
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                await self.on_error(ISTIO_MESH, f"looking for Istio: {type(exc).__name__}: {exc}")
            else:
                summary = [(c["namespace"], c["revision"], c["version"]) for c in mesh["spec"]["controlPlanes"]]
                if found is None or summary != [(c["namespace"], c["revision"], c["version"]) for c in found["spec"]["controlPlanes"]]:
                    log.info("Istio control planes: %s", ", ".join(f"{ns} revision {rev} version {v or '?'}" for ns, rev, v in summary) or "none")
                found = mesh
                await self.on_list(ISTIO_MESH, [mesh])
            self.looked.set()
            await asyncio.sleep(self.interval)
