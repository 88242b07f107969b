"""Works on the agent: hold in the cluster what the hub says, keep it so, report how it went.

The hub sends this cluster's works snapshot (see :mod:`fleetsync.hub.works`) on connect and
whenever it changes. :class:`WorkApplier` reconciles the cluster with the latest one, in one
task, one pass at a time:

- **allow-list**: a manifest whose kind or namespace the agent's
  :class:`~fleetsync.model.workpolicy.WorksPolicy` does not allow is neither applied nor
  deleted (Failed, naming the rule); the rest of the work goes on;
- **apply**: each manifest of a new or changed work is server-side applied (field manager
  ``fleetsync``, conflicts forced: the work is the authority for the fields it sets) with the
  label ``fleetsync.io/work=NAME``, in the order given (a Namespace before what goes in it);
  an object that another work owns is not taken over (Failed, saying which work owns it),
  nor is one that exists without the label (Failed) unless the work says ``adopt: true``:
  it is then *adopted* (annotated ``fleetsync.io/adopted``);
- **drift**: the objects of every kind a work uses are watched (by that label); an owned
  object deleted, or changed so that it no longer holds its manifest, is applied again;
- **removal**: objects a work no longer lists, and every object of a work that is gone or no
  longer targets the cluster, are deleted if they carry the work's label, and handed back
  (label and annotation removed) if the work adopted them. What to look for comes from the hub's inventory
  (what this agent reported applying), from what this process applied, and from the label
  on the watched kinds, so nothing needs to be kept on the agent's disk;
- **status**: per manifest ``Applied``, ``Available`` (it exists and, for workloads, is
  ready: :func:`~fleetsync.model.works.is_available`) or ``Failed`` with the cluster's
  message; a work's status is sent whenever it changes, and again after a reconnect.
  Failed manifests are retried with backoff.

The library's dynamic client does discovery (which resource serves a kind, whether it is
namespaced; its cache lives in a temporary directory of this process) and the applies;
the drift watches reuse :class:`~fleetsync.agent.kube.TypeWatcher`. If the cluster's API
does not answer when the agent starts, discovery is retried with backoff (works wait; the
task never dies of it).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.dynamic import DynamicClient
from kubernetes_asyncio.dynamic.exceptions import ResourceNotFoundError

from fleetsync.agent.apijson import DICTS
from fleetsync.agent.kube import Pages, TypeWatcher, get_json, status_message
from fleetsync.agent.metrics import AgentMetrics
from fleetsync.aio import cancel_and_wait
from fleetsync.backoff import Backoff
from fleetsync.errors import FleetsyncError
from fleetsync.model.types import ResourceType
from fleetsync.model.workpolicy import WorksPolicy
from fleetsync.model.works import (
    ADOPTED_ANNOTATION,
    APPLIED,
    AVAILABLE,
    FAILED,
    FIELD_MANAGER,
    WORK_LABEL,
    drifted,
    is_available,
    manifest_id,
    manifest_problems,
    name_problem,
    split_manifest_id,
)
from fleetsync.protocol import fleetsync_pb2 as pb

log = logging.getLogger(__name__)

#: (apiVersion, kind, namespace, name) of a live object: the namespace as the cluster has it.
ObjectKey = tuple[str, str, str, str]
#: A manifest's condition and message.
Condition = tuple[str, str]


@dataclass
class DesiredWork:
    """A work as the hub's latest snapshot has it for this cluster."""

    name: str
    generation: int
    manifests: list[dict[str, Any]]
    #: What this agent last reported for it (ids), per the hub: where leftovers may be.
    inventory: list[str] = field(default_factory=list)
    #: The work's ``adopt``: take over objects that exist without the work label.
    adopt: bool = False


@dataclass
class HeldWork:
    """A work as this agent applied it: the generation, and each manifest's object and condition."""

    generation: int
    #: manifest id -> the body applied (the manifest, with the work's label and a namespace).
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: manifest id -> the live object's key (None: not applied).
    keys: dict[str, ObjectKey | None] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)


class KindWatch:
    """The objects of one kind that carry the work label, kept current by a watch."""

    def __init__(
        self,
        rtype: ResourceType,
        on_change: Callable[[ObjectKey, dict[str, Any] | None], None],
        applied: Callable[[], Iterable[ObjectKey]] = lambda: (),
    ) -> None:
        self.rtype = rtype
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.listed = asyncio.Event()
        #: The last failure to list or watch (``STATUS REASON``), "" once listed; ``settled``: listed, or failed once.
        self.error = ""
        self.settled = asyncio.Event()
        self._on_change = on_change
        #: What the agent applied (of every kind): one of this kind a list does not hold is gone,
        #: even if the watch never saw it (applied and deleted while the watch was down).
        self._applied = applied
        self.task: asyncio.Task[None] | None = None

    def key(self, obj: dict[str, Any]) -> ObjectKey:
        meta = obj.get("metadata") or {}
        return (self.rtype.api_version, self.rtype.kind, meta.get("namespace") or "", meta.get("name") or "")

    async def on_list(self, _: ResourceType, pages: Pages[dict[str, Any]]) -> None:
        listed: dict[ObjectKey, dict[str, Any]] = {}
        async for items in pages:
            listed.update((self.key(o), o) for o in items)
        before, self.objects = self.objects, listed
        self.listed.set()
        self.error = ""
        self.settled.set()
        mine = {k for k in self._applied() if k[:2] == (self.rtype.api_version, self.rtype.kind)}
        for key in (before.keys() | mine) - self.objects.keys():
            self._on_change(key, None)
        for key, obj in self.objects.items():
            self._on_change(key, obj)

    async def on_event(self, _: ResourceType, kind: str, obj: dict[str, Any]) -> None:
        key = self.key(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
            self._on_change(key, None)
        else:
            self.objects[key] = obj
            self._on_change(key, obj)

    async def on_error(self, rtype: ResourceType, error: str) -> None:
        if error != self.error:  # (retried with backoff: said once, not on every try)
            log.warning("works: watching %s: %s", rtype, error)
        self.error = error
        self.settled.set()

    def forbidden(self) -> bool:
        """Whether the cluster refused the list: the agent's RBAC does not let it list this kind."""
        return not self.listed.is_set() and self.error.startswith("403 ")


class WorkApplier:
    def __init__(
        self,
        api: client.ApiClient,
        *,
        metrics: AgentMetrics,
        on_report: Callable[[], None],
        policy: WorksPolicy | None = None,
        retry_max: float = 60.0,
        kube_retry_max: float = 30.0,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.on_report = on_report
        #: What works may touch on this cluster (the agent's --works-allow-* flags).
        self.policy = policy or WorksPolicy()
        #: The longest wait between retries of failed manifests, and of the first discovery of an unreachable API.
        self.retry_max = retry_max
        self.kube_retry_max = kube_retry_max
        self._cache_dir: Path | None = None
        self._dynamic: DynamicClient | None = None
        self._chunks: list[dict[str, Any]] = []
        #: The latest complete snapshot (None until the first one arrives: nothing is removed before).
        self._desired: dict[str, DesiredWork] | None = None
        self._remove: dict[str, list[str]] = {}
        self._held: dict[str, HeldWork] = {}
        self._kinds: dict[tuple[str, str], KindWatch] = {}
        #: live object key -> (work, manifest id) of what this agent applied.
        self._owners: dict[ObjectKey, tuple[str, str]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._outbox: dict[str, list[pb.ManifestStatus]] = {}
        self._removed: list[str] = []
        self._wake = asyncio.Event()
        self._retry_delay = 1.0
        self._retry_at: float | None = None
        #: Retry failed manifests in the next pass, whatever the backoff (an object was deleted: maybe the one in the way).
        self._retry_now = False

    # ---- from the session ------------------------------------------------------------------

    def snapshot(self, update: pb.SpecUpdate) -> None:
        """A works SpecUpdate (one chunk of a snapshot): once the last is in, reconcile. A snapshot
        that does not hold valid works (whatever sent it) is ignored with a warning: the works
        held stay as they are."""
        if update.chunk == 0:
            self._chunks = []
        elif update.chunk != len(self._chunks):  # the chunks before it were void (or never came): so is the snapshot
            self._chunks = []
            return
        try:
            doc = orjson.loads(update.works_json)
            if not isinstance(doc, dict):
                raise TypeError(f"a works snapshot is an object, not {type(doc).__name__}")
        except (ValueError, TypeError) as exc:
            log.warning("works: a works snapshot from the hub does not parse (%s); ignored", exc)
            self._chunks = []
            return
        self._chunks.append(doc)
        if not update.last:
            return
        chunks, self._chunks = self._chunks, []
        try:
            desired, remove = _parse_snapshot(chunks)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("works: a works snapshot from the hub is not valid (%s); ignored", str(exc)[:500])
            return
        self._desired, self._remove = desired, remove
        self.metrics.works.set(len(self._desired))
        self._wake.set()

    def outgoing(self) -> list[pb.Status]:
        """Status to send now (work statuses that changed, works removed)."""
        if not self._outbox and not self._removed:
            return []
        status = pb.Status(manifests=[m for ms in self._outbox.values() for m in ms], removed=self._removed)
        self._outbox, self._removed = {}, []
        return [status]

    def disconnected(self) -> None:
        """The connection ended: a half-received snapshot is void, and every status goes again on the next."""
        self._chunks = []
        for name in self._held:
            self._queue_status(name)

    # ---- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile whenever there is a new snapshot, drift, or a retry is due; never returns
        (it may be started again after a failure: it starts from discovery)."""
        self._cache_dir = Path(tempfile.mkdtemp(prefix="fleetsync-discovery-"))
        try:
            self._dynamic = await self._discover(self._cache_dir / "discovery.json")
            self._retry_now = True  # what failed while the API was away goes again at once
            self._wake.set()
            while True:
                timeout = None if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass
                self._wake.clear()
                if self._desired is not None:
                    try:
                        await self.reconcile()
                    except Exception:  # a bug or an unforeseen library failure: log, and try again later
                        log.exception("works: reconciling failed; retrying")
                        self._schedule_retry()
        finally:
            await cancel_and_wait([k.task for k in self._kinds.values() if k.task is not None])
            self._kinds.clear()
            self._dynamic = None
            shutil.rmtree(self._cache_dir, ignore_errors=True)

    async def _discover(self, cache_file: Path) -> DynamicClient:
        """The dynamic client, once the cluster's API answers discovery: an API server that is
        down when the agent starts (or a network not up yet) is waited for, with backoff up to
        ``kube_retry_max``, and said so in the log; works are applied once it answers."""
        backoff = Backoff(initial=0.5, maximum=self.kube_retry_max)
        failures = 0
        while True:
            try:
                found: DynamicClient = await DynamicClient(self.api, cache_file=str(cache_file))
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                delay = backoff.next_delay()
                reason = _api_message(exc) if isinstance(exc, ApiException) else f"{type(exc).__name__}: {exc}"
                log.warning("works: the cluster's API does not answer discovery (%s); works wait; retry %d in %.1fs", reason, failures, delay)
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("works: the cluster's API answers now (after %d failed attempts): applying works", failures)
            return found

    async def reconcile(self) -> None:
        """One pass: apply what is new, changed, drifted or failed; remove what is no longer wanted; report."""
        assert self._desired is not None
        retry = False
        dirty, self._dirty = self._dirty, set()
        retry_now, self._retry_now = self._retry_now, False
        for work in self._desired.values():
            held = self._held.get(work.name)
            if held is None or held.generation != work.generation:
                retry |= await self._apply_work(work, held)
            else:
                due = retry_now or self._retry_due()
                again = {m for (w, m) in dirty if w == work.name} | {m for m, (c, _) in held.conditions.items() if c == FAILED and due}
                before = dict(held.conditions)
                for manifest in work.manifests:
                    if (ident := manifest_id(manifest)) in again:
                        cause = "retry" if before[ident][0] == FAILED else "drift"
                        retry |= not await self._apply(work.name, held, manifest, cause=cause, adopt=work.adopt)
                if held.conditions != before:
                    self._queue_status(work.name)
            self._refresh_availability(work.name)
        gone = {name: ids for name, ids in self._remove.items() if name not in self._desired}
        for name in self._held.keys() - self._desired.keys():
            gone.setdefault(name, [])
        for name, ids in gone.items():
            retry |= not await self._remove_work(name, ids)
        retry |= not await self._sweep()
        retry |= any(c == FAILED for held in self._held.values() for c, _ in held.conditions.values())
        if not retry:
            self._retry_at, self._retry_delay = None, 1.0
        elif self._retry_at is None or self._retry_due():
            self._schedule_retry()

    # ---- applying ---------------------------------------------------------------------------

    async def _apply_work(self, work: DesiredWork, before: HeldWork | None) -> bool:
        """Apply a new or changed work and delete what its previous generation had beyond it; True if something must be retried."""
        held = HeldWork(work.generation)
        self._held[work.name] = held
        failed = False
        for manifest in work.manifests:
            failed |= not await self._apply(work.name, held, manifest, cause="work", adopt=work.adopt)
        leftovers = set(work.inventory) | (set(before.bodies) if before else set())
        for ident in sorted(leftovers - set(held.bodies), reverse=True):
            failed |= not await self._delete(work.name, ident, before.keys.get(ident) if before else None)
        log.info("works: %s generation %d applied (%d manifests%s)", work.name, work.generation, len(work.manifests), ", some failed" if failed else "")
        self._queue_status(work.name)
        return failed

    async def _apply(self, work: str, held: HeldWork, manifest: dict[str, Any], *, cause: str, adopt: bool) -> bool:
        """Server-side apply one manifest for ``work``, if the allow-list lets it and the object
        is the work's to hold (new, already the work's, or adopted on the work's say); True if it applied."""
        ident = manifest_id(manifest)
        body = copy.deepcopy(manifest)
        meta = body.setdefault("metadata", {})
        meta.setdefault("labels", {})[WORK_LABEL] = work
        held.bodies[ident] = body
        try:
            if problem := self.policy.kind_problem(body["apiVersion"], body["kind"]):
                raise _Refused(problem)  # before the cluster is asked anything about it
            resource = await self._resource(body["apiVersion"], body["kind"])
            if not resource.namespaced:
                meta.pop("namespace", None)
            elif not meta.get("namespace"):
                meta["namespace"] = "default"
            if problem := self.policy.object_problem(
                body["apiVersion"], body["kind"], meta.get("namespace") or "", meta["name"], namespaced=bool(resource.namespaced)
            ):
                raise _Refused(problem)
            watch = await self._watch_kind(body["apiVersion"], body["kind"])
            key = held.keys[ident] = watch.key(body)  # known before the apply: a failed one still owns its object
            if await self._adopting(work, watch, key, adopt=adopt):
                meta.setdefault("annotations", {})[ADOPTED_ANNOTATION] = work
            assert self._dynamic is not None
            applied = _checked(
                await self._dynamic.server_side_apply(resource, body=body, namespace=meta.get("namespace"), field_manager=FIELD_MANAGER, force_conflicts=True)
            )
        except _Refused as exc:
            return self._failed(work, held, ident, str(exc), cause)
        except ResourceNotFoundError:
            return self._failed(work, held, ident, f"the cluster does not serve kind {body['kind']!r} in {body['apiVersion']!r}", cause)
        except ApiException as exc:
            return self._failed(work, held, ident, _api_message(exc), cause)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return self._failed(work, held, ident, f"cannot reach the cluster's API: {type(exc).__name__}: {exc}", cause)
        self._owners[key] = (work, ident)
        held.conditions[ident] = _live_condition(applied)
        self.metrics.work_applies.labels("applied", cause).inc()
        return True

    async def _adopting(self, work: str, watch: KindWatch, key: ObjectKey, *, adopt: bool) -> bool:
        """Whether the object of ``key`` is (or becomes) one ``work`` adopted; _Refused if it is
        not the work's to apply: another work's, or one fleetsync did not create (without ``adopt``).

        The watch holds the labelled objects; one it does not hold is looked up, since it may
        exist without the label (created by someone else: never taken over unasked).
        """
        live = watch.objects.get(key)
        if live is None:
            try:
                live = await get_json(self.api, f"{watch.rtype.collection_path(key[2] or None)}/{key[3]}")
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return False  # a new object: created by this apply, so the work's own
        meta = (live or {}).get("metadata") or {}
        owner = (meta.get("labels") or {}).get(WORK_LABEL)
        where = f"{key[2]}/{key[3]}" if key[2] else key[3]
        if owner is None:
            if not adopt:
                raise _Refused(f"{key[1]} {where} exists and was not created by fleetsync; set adopt: true in the work's spec to take it over")
            log.info("works: %s adopts %s %s (adopt: true): it will be handed back, not deleted, when the work lets it go", work, key[1], where)
            return True
        if owner != work:
            raise _Refused(f"{key[1]} {where} belongs to work {owner!r}; a work does not take over another's objects")
        return ADOPTED_ANNOTATION in (meta.get("annotations") or {})

    async def _resource(self, api_version: str, kind: str) -> Any:
        """The cluster's resource serving a kind (discovery; ResourceNotFoundError if none does)."""
        assert self._dynamic is not None
        return await self._dynamic.resources.get(api_version=api_version, kind=kind)

    def _failed(self, work: str, held: HeldWork, ident: str, message: str, cause: str) -> bool:
        if held.conditions.get(ident) != (FAILED, message):
            log.warning("works: %s: %s: %s", work, ident, message)
        held.conditions[ident] = (FAILED, message)
        held.keys.setdefault(ident, None)
        self.metrics.work_applies.labels("failed", cause).inc()
        return False

    async def _watch_kind(self, api_version: str, kind: str) -> KindWatch:
        """The watch of a kind's owned objects, started (and listed, up to a few seconds) if new."""
        found = self._kinds.get((api_version, kind))
        if found is None:
            assert self._dynamic is not None
            resource = await self._dynamic.resources.get(api_version=api_version, kind=kind)
            group, _, version = api_version.rpartition("/")
            rtype = ResourceType(group=group, version=version, kind=kind, plural=str(resource.name), namespaced=bool(resource.namespaced))
            found = self._kinds[(api_version, kind)] = KindWatch(rtype, self._on_live_change, lambda: list(self._owners))
            watcher = TypeWatcher(
                self.api,
                rtype,
                DICTS,
                on_list=found.on_list,
                on_event=found.on_event,
                on_error=found.on_error,
                label_selector=WORK_LABEL,
                retry_max=self.kube_retry_max,
            )
            found.task = asyncio.create_task(watcher.run(), name=f"works-watch-{rtype.gvk}")
        deadline = time.monotonic() + 10
        while not found.listed.is_set():
            if found.forbidden():  # (not waited for again: the watch keeps trying, and the manifest is retried with backoff)
                raise _Refused(f"{_without_path(found.error)} (the agent's RBAC role does not let it watch this kind; see docs/security.md)")
            found.settled.clear()
            try:
                await asyncio.wait_for(found.settled.wait(), deadline - time.monotonic())
            except TimeoutError:
                why = f": {found.error}" if found.error else ""
                raise _Refused(f"cannot list {kind} objects of the cluster to check who owns them{why}") from None
        return found

    def _on_live_change(self, key: ObjectKey, obj: dict[str, Any] | None) -> None:
        """An owned object changed in the cluster: drift (re-apply), availability (report)."""
        if obj is None:
            self._object_gone()
        owner = self._owners.get(key)
        if owner is None:
            if obj is not None and self._desired is not None:
                self._wake.set()  # an object with the work label this agent did not apply: the sweep looks at it
            return
        work, ident = owner
        held = self._held.get(work)
        if held is None or ident not in held.bodies:
            return
        if obj is None or drifted(_content(held.bodies[ident]), obj):
            self._dirty.add((work, ident))
            self._wake.set()
        else:
            self._follow(work, held, ident, obj)

    def _object_gone(self) -> None:
        """An object with the work label is gone: it may have been in a failed manifest's way."""
        if any(c == FAILED for held in self._held.values() for c, _ in held.conditions.values()):
            self._retry_now = True
            self._wake.set()

    def _refresh_availability(self, work: str) -> None:
        held = self._held.get(work)
        if held is None:
            return
        for ident, key in held.keys.items():
            watch = self._kinds.get((key[0], key[1])) if key else None
            live = watch.objects.get(key) if watch and key else None
            if live is not None:
                self._follow(work, held, ident, live)

    def _follow(self, work: str, held: HeldWork, ident: str, live: dict[str, Any]) -> None:
        """An applied manifest's condition follows its live object (Available or Applied); a failed one stays failed."""
        if held.conditions.get(ident, (FAILED, ""))[0] == FAILED:
            return
        condition = _live_condition(live)
        if held.conditions[ident] != condition:
            held.conditions[ident] = condition
            self._queue_status(work)

    # ---- removing ---------------------------------------------------------------------------

    async def _remove_work(self, name: str, inventory: list[str]) -> bool:
        """Delete every object of a work this cluster no longer holds; True once all are gone."""
        held = self._held.get(name)
        idents = set(inventory) | (set(held.bodies) if held else set())
        ok = True
        for ident in sorted(idents, reverse=True):
            ok &= await self._delete(name, ident, held.keys.get(ident) if held else None)
        if not ok:
            return False
        self._held.pop(name, None)
        self._outbox.pop(name, None)
        self._remove.pop(name, None)
        self._removed.append(name)
        log.info("works: %s removed from the cluster", name)
        self.on_report()
        return True

    async def _delete(self, work: str, ident: str, key: ObjectKey | None) -> bool:
        """Delete the object of ``ident`` if ``work`` owns it; True if it is gone (or not ours).
        An object the allow-list does not let works touch is left as it is: the agent never
        deletes (nor even looks for) what it would not apply."""
        api_version, kind, namespace, name = split_manifest_id(ident)
        if self.policy.kind_problem(api_version, kind):
            return True
        try:
            resource = await self._resource(api_version, kind)
            if self.policy.object_problem(api_version, kind, namespace or "default", name, namespaced=bool(resource.namespaced)):
                return True
            watch = await self._watch_kind(api_version, kind)
        except ResourceNotFoundError:
            return True  # the kind is not served (any more): there is nothing of it to delete
        except _Refused as exc:
            log.warning("works: removing %s of %s: %s", ident, work, exc)
            return False
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("works: removing %s of %s: %s", ident, work, exc)
            return False
        if key is None:
            key = (api_version, kind, namespace or ("default" if watch.rtype.namespaced else ""), name)
        return await self._delete_key(work, watch, key)

    async def _delete_key(self, work: str, watch: KindWatch, key: ObjectKey) -> bool:
        """Let ``work``'s object go: deleted if the work created it, handed back if it adopted it
        (its label and annotation removed, the object kept); not touched if it is not the work's."""
        live = watch.objects.get(key)
        meta = (live or {}).get("metadata") or {}
        if live is None or (meta.get("labels") or {}).get(WORK_LABEL) != work:
            self._owners.pop(key, None)
            return True
        adopted = ADOPTED_ANNOTATION in (meta.get("annotations") or {})
        if self.policy.object_problem(key[0], key[1], key[2], key[3], namespaced=watch.rtype.namespaced):
            return True  # (the sweep's find) outside the allow-list: not the agent's to touch
        assert self._dynamic is not None
        try:
            resource = await self._dynamic.resources.get(api_version=key[0], kind=key[1])
            if adopted:
                release = {"metadata": {"labels": {WORK_LABEL: None}, "annotations": {ADOPTED_ANNOTATION: None}}}
                _checked(await self._dynamic.patch(resource, body=release, name=key[3], namespace=key[2] or None, content_type="application/merge-patch+json"))
            else:
                _checked(await self._dynamic.delete(resource, name=key[3], namespace=key[2] or None))
        except ApiException as exc:
            if exc.status != 404:
                log.warning("works: %s %s/%s of %s: %s", "handing back" if adopted else "deleting", key[1], key[3], work, _api_message(exc))
                return False
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("works: %s %s/%s of %s: %s", "handing back" if adopted else "deleting", key[1], key[3], work, exc)
            return False
        self._owners.pop(key, None)
        watch.objects.pop(key, None)
        self._object_gone()
        if adopted:
            log.info("works: handed back %s %s/%s, which %s adopted (label and annotation removed; the object is kept)", key[1], key[2], key[3], work)
        else:
            self.metrics.work_deletes.inc()
            log.info("works: deleted %s %s/%s of %s", key[1], key[2], key[3], work)
        return True

    async def _sweep(self) -> bool:
        """Delete labelled objects of watched kinds that no held work lists (e.g. applied just
        before a crash, so neither the hub's inventory nor this process knows of them)."""
        assert self._desired is not None
        wanted = {key for held in self._held.values() for key in held.keys.values() if key}
        ok = True
        for watch in list(self._kinds.values()):
            for key, obj in list(watch.objects.items()):
                work = ((obj.get("metadata") or {}).get("labels") or {}).get(WORK_LABEL, "")
                if key in wanted or (work in self._desired and work not in self._held):
                    continue
                ok &= await self._delete_key(work, watch, key)
        return ok

    # ---- status -----------------------------------------------------------------------------

    def _queue_status(self, name: str) -> None:
        held = self._held.get(name)
        if held is None:
            return
        self._outbox[name] = [
            pb.ManifestStatus(work=name, generation=held.generation, manifest=ident, applied=cond != FAILED, condition=cond, message=message)
            for ident, (cond, message) in held.conditions.items()
        ]
        self.on_report()

    def _retry_due(self) -> bool:
        return self._retry_at is not None and time.monotonic() >= self._retry_at

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self.retry_max)


class _Refused(FleetsyncError):
    """A manifest this agent will not apply: outside its allow-list, an object that is another
    work's or that fleetsync did not create (without ``adopt``), or a kind it cannot list."""


def _parse_snapshot(chunks: list[dict[str, Any]]) -> tuple[dict[str, DesiredWork], dict[str, list[str]]]:
    """The works and removals of a complete snapshot; KeyError, TypeError or ValueError if it is not valid."""
    desired: dict[str, DesiredWork] = {}
    for w in (w for chunk in chunks for w in chunk.get("works") or []):
        if problem := name_problem(w["name"]):
            raise ValueError(problem)
        if causes := manifest_problems(w["manifests"]):
            raise ValueError(f"work {w['name']}: " + "; ".join(f"{f}: {m}" for f, m in causes))
        inventory = _inventory(w.get("inventory"))
        desired[w["name"]] = DesiredWork(w["name"], int(w["generation"]), list(w["manifests"]), inventory, w.get("adopt") is True)
    remove: dict[str, list[str]] = {}
    for r in (r for chunk in chunks for r in chunk.get("remove") or []):
        if problem := name_problem(r["name"]):
            raise ValueError(problem)
        remove[r["name"]] = _inventory(r.get("inventory"))
    return desired, remove


def _inventory(value: Any) -> list[str]:
    """Manifest ids (``apiVersion/Kind/namespace/name``); ValueError for one that is not."""
    ids = [str(i) for i in value or []]
    for ident in ids:
        if len(ident.split("/")) not in (4, 5) or not all(split_manifest_id(ident)[k] for k in (0, 1, 3)):
            raise ValueError(f"{ident[:200]!r} is not a manifest id")
    return ids


def _checked(answer: Any) -> dict[str, Any]:
    """The object a request answered, as a dict; an ApiException for a failure ``Status`` (the
    dynamic client returns some failures, a 422 on apply among them, instead of raising)."""
    found: dict[str, Any] = answer.to_dict() if hasattr(answer, "to_dict") else dict(answer)
    if found.get("kind") == "Status" and found.get("status") == "Failure":
        failure = ApiException(status=int(found.get("code") or 500), reason=str(found.get("reason") or ""))
        failure.body = orjson.dumps(found)
        raise failure
    return found


def _live_condition(obj: dict[str, Any]) -> Condition:
    return (AVAILABLE if is_available(obj) else APPLIED, "")


def _content(body: dict[str, Any]) -> dict[str, Any]:
    """What of an applied body a live object must hold (list items may lack apiVersion and kind)."""
    return {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}


def _without_path(error: str) -> str:
    """``403 deployments.apps is forbidden: ...`` of a watch's ``403 /apis/apps/v1/deployments: deployments.apps is forbidden: ...``."""
    status, _, rest = error.partition(" ")
    path, sep, message = rest.partition(": ")
    return f"{status} {message}" if sep and path.startswith("/") else error


def _api_message(exc: ApiException) -> str:
    """The cluster's own message of a failed request (its Status), or the status line."""
    return f"{exc.status} {status_message(exc.body) or exc.reason}"
