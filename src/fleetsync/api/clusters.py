"""Clusters as first-class objects: the ``fleetsync.io/v1`` group on the hub's Kubernetes-compatible API.

- ``GET /apis/fleetsync.io`` and ``/apis/fleetsync.io/v1``: discovery, so that kubectl finds
  ``clusters`` (``Cluster``, cluster-scoped) and ``fleetsyncevents`` (``api/events.py``);
- ``GET /apis/fleetsync.io/v1/clusters``: every cluster the hub knows (connected once, or
  labelled by an admin) as a ``Cluster`` object (``model/clusters.py``); a Table for
  ``kubectl get clusters`` (status, connected, agent, last heartbeat, sync lag, Kubernetes
  version, nodes, labels);
  with ``fieldSelector`` (``metadata.name``) and ``labelSelector`` (on the admin labels); with
  ``watch=1`` a stream of ``ADDED`` / ``MODIFIED`` / ``DELETED`` events (``kubectl get clusters
  -w``): the fleet is read again whenever any replica records an event (clusters change with
  events: connections, inactivity, deletions) and at least every ``WATCH_POLL`` seconds, and
  a cluster is sent when it changed other than in its heartbeat time and sync lag;
- ``GET /apis/fleetsync.io/v1/clusters/NAME``: one (``kubectl get cluster c1 -o yaml``);
- ``DELETE /apis/fleetsync.io/v1/clusters/NAME`` (admin; ``fleetsync clusters delete NAME``,
  ``kubectl delete cluster NAME``): forget the cluster. In one store transaction its agent
  tokens are revoked, its objects removed through the change log (watchers get ``DELETED``
  events), and its lease, streams, labels, work statuses, gate revision and refresh target
  dropped; then every replica ends the session of its agent, if connected there (it is refused
  from now on: its token is gone), and a ``ClusterDeleted`` event records what was removed.

The per-cluster API (``/clusters/C/apis/fleetsync.io/v1``) serves discovery of
``fleetsyncevents`` only: a cluster is an object of the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiohttp import web

from fleetsync.api import params
from fleetsync.api.events import FLEETSYNC_EVENT, GROUP, GroupApi
from fleetsync.api.scope import scope_of
from fleetsync.hub import events
from fleetsync.hub.clusterlabels import CLUSTERS_CHANNEL
from fleetsync.hub.core import CLUSTER_DELETED_CHANNEL
from fleetsync.model import discovery
from fleetsync.model.clusters import KIND, ClusterFacts, cluster_object
from fleetsync.model.names import check_cluster_name
from fleetsync.model.scope import Scope
from fleetsync.model.selectors import FieldSelector, LabelSelector, SelectorError
from fleetsync.model.status import ApiError, status_body
from fleetsync.model.tables import table
from fleetsync.model.types import ResourceType
from fleetsync.store.contract import ClusterRecord, StreamRecord
from fleetsync.web import json_response

CLUSTER = ResourceType(GROUP, "v1", KIND, "clusters", False, short_names=("fsc",), has_status=True)
BASE = f"/apis/{GROUP}/v1"
#: What the group serves: fleetsync's events are read-only, a cluster can also be deleted.
_VERBS = {CLUSTER.plural: ["delete", "get", "list", "watch"], FLEETSYNC_EVENT.plural: ["get", "list"]}
#: A watch of clusters reads the fleet again at least this often (seconds), events or not.
WATCH_POLL = 5.0
#: How long a watch of clusters lasts unless ``timeoutSeconds`` says otherwise.
WATCH_TIMEOUT = 1800.0
#: What changes with every heartbeat: a watch does not send a cluster for these alone.
_VOLATILE = ("lastHeartbeatTime", "syncLagSeconds")


def resource_list(types: list[ResourceType]) -> dict[str, Any]:
    """The group/version's APIResourceList, with the verbs each resource takes."""
    document = discovery.api_resource_list(GROUP, "v1", types, read_only=True)
    for resource in document["resources"]:
        resource["verbs"] = _VERBS.get(resource["name"], resource["verbs"])
    return document


class ClustersApi(GroupApi):
    def add_routes(self, app: web.Application) -> None:
        for prefix in ("", "/clusters/{cluster}"):
            app.router.add_get(f"{prefix}/apis/{GROUP}", self.group)
        app.router.add_get(BASE, self.fleet_resources)
        app.router.add_get(f"/clusters/{{cluster}}{BASE}", self.cluster_resources)
        app.router.add_get(f"{BASE}/clusters", self.list)
        app.router.add_get(BASE + "/clusters/{name}", self.get)
        app.router.add_delete(BASE + "/clusters/{name}", self.delete)

    async def group(self, request: web.Request) -> web.Response:
        return json_response(discovery.api_group(GROUP, ["v1"]))

    async def fleet_resources(self, request: web.Request) -> web.Response:
        return json_response(resource_list([CLUSTER, FLEETSYNC_EVENT]))

    async def cluster_resources(self, request: web.Request) -> web.Response:
        return json_response(resource_list([FLEETSYNC_EVENT]))

    async def _facts(self, name: str | None = None) -> list[ClusterFacts]:
        """What the hub knows of every cluster (or of ``name``): a few queries for the whole fleet, not a few per cluster."""
        now = self.core.clock()
        connected = {lease.cluster for lease in await self.store.leases() if lease.connected and lease.expires_at > now}
        labels = await self.store.cluster_labels(name)
        streams: dict[str, list[StreamRecord]] = {}
        for stream in await self.store.streams(name):
            streams.setdefault(stream.cluster, []).append(stream)
        if name is None:
            records = {c.name: c for c in await self.store.clusters()}
            counts = await self.store.counts_by_cluster()
        else:
            found = await self.store.cluster(name)
            records = {name: found} if found else {}
            counts = {name: await self.store.counts(name)}
        for labelled in labels:  # labelled by an admin before its first connection: known, never connected
            records.setdefault(labelled, ClusterRecord(name=labelled))
        facts = []
        for cluster in sorted(records):
            session = self.core.sessions.get(cluster)
            lag = session.engine.sync_lag if session is not None and session.engine is not None else None
            facts.append(
                ClusterFacts(
                    records[cluster],
                    connected=cluster in connected,
                    labels=labels.get(cluster, {}),
                    streams=streams.get(cluster, []),
                    objects=counts.get(cluster, {}),
                    sync_lag=lag,
                )
            )
        return facts

    async def _selected(self, labels: LabelSelector, fields: FieldSelector, scope: Scope | None = None) -> dict[str, dict[str, Any]]:
        """name -> Cluster object of every cluster the selectors match (and ``scope`` admits)."""
        selected = {}
        in_scope = await self.scopes.clusters(scope)
        for facts in await self._facts():
            if in_scope is not None and facts.record.name not in in_scope:
                continue
            if labels.matches(facts.labels) and fields.matches({"metadata.name": facts.record.name}):
                selected[facts.record.name] = cluster_object(facts)
        return selected

    async def list(self, request: web.Request) -> web.StreamResponse:
        try:
            labels = LabelSelector.parse(request.query.get("labelSelector"))
            fields = FieldSelector.parse(request.query.get("fieldSelector"), allowed=CLUSTER.field_selector_keys - {"metadata.namespace"})
        except SelectorError as exc:
            raise ApiError.bad_request(str(exc)) from None
        timeout = float(params.count(request.query, "timeoutSeconds")) or WATCH_TIMEOUT
        scope = scope_of(request)
        if params.flag(request.query, "watch"):
            return await self.streaming(self._watch(request, labels, fields, timeout, scope))
        rev = str(await self.store.current_rev())
        items = list((await self._selected(labels, fields, scope)).values())
        if "as=Table" in request.headers.get("Accept", ""):
            return json_response(table(KIND, items, resource_version=rev, include_object=params.include_object(request.query)))
        return json_response({"kind": "ClusterList", "apiVersion": CLUSTER.api_version, "metadata": {"resourceVersion": rev}, "items": items})

    async def _watch(self, request: web.Request, labels: LabelSelector, fields: FieldSelector, timeout: float, scope: Scope | None) -> web.StreamResponse:
        """Every selected cluster as ADDED, then its changes, one WatchEvent per line, for ``timeout`` seconds."""
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        await response.prepare(request)
        sent: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    seen = self.core.newest_event
                    rev = str(await self.store.current_rev())
                    now = await self._selected(labels, fields, scope)
                    out = b""
                    for name, obj in now.items():
                        before = sent.get(name)
                        if before is None or _steady(before) != _steady(obj):
                            obj["metadata"]["resourceVersion"] = rev
                            out += _event("ADDED" if before is None else "MODIFIED", obj)
                            sent[name] = obj
                    for name in sorted(set(sent) - set(now)):
                        gone = sent.pop(name)
                        gone["metadata"]["resourceVersion"] = rev
                        out += _event("DELETED", gone)
                    if out:
                        await response.write(out)
                    await self.core.wait_for_events(seen, timeout=WATCH_POLL)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def get(self, request: web.Request) -> web.Response:
        name = _name(request)
        await self.scopes.check_cluster(request, scope_of(request), name)
        found = await self._facts(name)
        if not found:
            raise ApiError.not_found(CLUSTER.plural, name, GROUP)
        item = cluster_object(found[0], resource_version=str(await self.store.current_rev()))
        if "as=Table" in request.headers.get("Accept", ""):
            return json_response(table(KIND, [item], include_object=params.include_object(request.query)))
        return json_response(item)

    async def delete(self, request: web.Request) -> web.Response:
        name = _name(request)
        gone = await self.store.delete_cluster(name)
        if not gone.found:
            raise ApiError.not_found(CLUSTER.plural, name, GROUP)
        await self.store.notify(CLUSTER_DELETED_CHANNEL, name)  # every replica ends its agent's session
        await self.store.notify(CLUSTERS_CHANNEL, name)  # and forgets its labels
        await self.core.events.record(
            name, events.CLUSTER_DELETED, f"cluster deleted through the API: {gone.objects} object(s) removed, {gone.tokens} agent token(s) revoked"
        )
        return json_response(
            status_body(
                f"cluster {name} deleted: {gone.objects} object(s) removed, {gone.tokens} agent token(s) revoked",
                status="Success",
                details={"name": name, "group": GROUP, "kind": CLUSTER.plural},
            )
        )


def _steady(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without what changes with every heartbeat and without its resourceVersion."""
    status = {k: v for k, v in obj["status"].items() if k not in _VOLATILE}
    metadata = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return {**obj, "metadata": metadata, "status": status}


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


def _name(request: web.Request) -> str:
    try:
        return check_cluster_name(request.match_info["name"])
    except ValueError as exc:
        raise ApiError.bad_request(str(exc)) from None
