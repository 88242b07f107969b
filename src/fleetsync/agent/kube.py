"""List + watch of one resource type, with a maintained client (kubernetes_asyncio) for config and auth.

The library's typed watch (``kubernetes_asyncio.watch.Watch``) deserializes every
event into model objects, the most expensive thing on the agent's hot path, and
retries a 410 once before raising. We use the library for what it does well
(kubeconfig / in-cluster config, auth, TLS, the HTTP session) through
``ApiClient.call_api(..., _preload_content=False)`` and read the raw
newline-delimited events ourselves, parsing each once with orjson.

410 Gone (an ERROR event with code 410, or a 410 answer) means the version we
watch from is older than the server's history: list again. Bookmarks only move the
resourceVersion. See https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Generic

import aiohttp
import orjson
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from fleetsync.agent.apijson import Decoding, Item
from fleetsync.backoff import Backoff
from fleetsync.errors import FleetsyncError
from fleetsync.heap import release_free_memory
from fleetsync.model.clusters import KUBERNETES_VERSION, NODE_COUNT
from fleetsync.model.types import ResourceType
from fleetsync.model.watchevents import Expired, WatchError

log = logging.getLogger(__name__)

#: A source that has its objects at once (Istio detection, the service graph) hands them over as a list.
OnList = Callable[[ResourceType, list[dict[str, Any]]], Awaitable[None]]
#: A LIST's pages, each fetched when the one before has been taken.
Pages = AsyncIterator[list[Item]]
#: A TypeWatcher hands a LIST over page by page: a page can be made into wire objects and
#: dropped before the next is read, so the agent never holds a whole type's JSON at once.
OnPages = Callable[[ResourceType, Pages[Item]], Awaitable[None]]
OnEvent = Callable[[ResourceType, str, Item], Awaitable[None]]
OnError = Callable[[ResourceType, str], Awaitable[None]]


class KubeconfigError(FleetsyncError, ValueError):
    """No way to reach the cluster's API: one line saying what was tried (the agent exits with 2). A ValueError, as
    a kubeconfig that does not load always was (the local config target retries on it)."""


#: Where a pod's service account token is mounted (the in-cluster config reads it).
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def find_kubeconfig(
    flag: str | None, *, environ: Mapping[str, str] = os.environ, home: Path | None = None, in_cluster_token: Path = IN_CLUSTER_TOKEN
) -> str | None:
    """The kubeconfig to use, as kubectl chooses it: ``--kubeconfig``, else ``$KUBECONFIG`` (files
    separated by ``:``, merged), else ``~/.kube/config`` if it exists; None: the in-cluster config
    (a pod's service account), if this runs in a pod. KubeconfigError naming what was tried if none is there."""
    if flag:
        if not Path(flag).expanduser().is_file():
            raise KubeconfigError(f"--kubeconfig {flag}: no such file")
        return flag
    if listed := environ.get("KUBECONFIG", ""):
        if not any(Path(p).expanduser().is_file() for p in listed.split(os.pathsep) if p):
            raise KubeconfigError(f"$KUBECONFIG={listed}: no such file")
        return listed
    default = (home or _home()) / ".kube" / "config"
    if default.is_file():
        return str(default)
    if environ.get("KUBERNETES_SERVICE_HOST") and environ.get("KUBERNETES_SERVICE_PORT") and in_cluster_token.is_file():
        return None
    raise KubeconfigError(
        f"no Kubernetes API to talk to: no --kubeconfig, $KUBECONFIG not set, no {default}, and not in a pod "
        f"(KUBERNETES_SERVICE_HOST unset or no {in_cluster_token}); give --kubeconfig FILE"
    )


def _home() -> Path:
    """The user's home; a relative "~" when there is none (a container user with no passwd entry and
    no $HOME): its ~/.kube/config then does not exist."""
    try:
        return Path.home()
    except (RuntimeError, KeyError):  # (Python >= 3.12 raises; 3.11 hands back "~")
        return Path("~")


async def api_client(flag: str | None) -> client.ApiClient:
    """An ApiClient of the kubeconfig :func:`find_kubeconfig` chooses for ``--kubeconfig``'s
    ``flag``, or of the pod's service account; KubeconfigError if there is none or it does not
    load (saying why, in one line)."""
    kubeconfig = find_kubeconfig(flag)
    configuration = client.Configuration()
    try:
        if kubeconfig:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except (config.ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, AttributeError) as exc:  # (a file that is not a kubeconfig)
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster config"
        raise KubeconfigError(f"{where}: {' '.join(str(exc).split())[:300]}") from None
    return client.ApiClient(configuration)


def status_message(body: bytes | None) -> str:
    """The message of an error answer's Kubernetes ``Status`` (or the start of a body that is not one)."""
    try:
        return str(orjson.loads(body or b"").get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return (body or b"")[:200].decode(errors="replace")


async def raise_for_status(response: Any, what: str) -> None:
    """An ApiException with the server's message for an error answer (without
    ``_preload_content`` the library hands back the raw response, error or not)."""
    if response.status < 400:
        return
    body = await response.read()
    response.release()
    raise ApiException(status=response.status, reason=f"{what}: {status_message(body)}")


async def get_json(api: client.ApiClient, path: str, query: list[tuple[str, Any]] | None = None, *, timeout: float = 30) -> Any:
    """GET ``path`` of the cluster's API, decoded once with orjson; ApiException on an error answer."""
    response = await api.call_api(
        path,
        "GET",
        query_params=query or [],
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=timeout,
    )
    await raise_for_status(response, path)
    try:
        return orjson.loads(await response.read())
    finally:
        response.release()


async def cluster_facts(api: client.ApiClient, *, timeout: float = 10.0) -> dict[str, str]:
    """The cluster's Kubernetes version (``/version``'s gitVersion) and node count, for the Hello:
    each left out if the cluster does not tell (an RBAC that does not allow listing nodes, a
    slow API server), never a reason not to sync. The node count is one page of names
    (``limit=500``, plus the server's ``remainingItemCount`` when it gives one)."""
    facts: dict[str, str] = {}
    try:
        version = await get_json(api, "/version", timeout=timeout)
        if isinstance(version, dict) and isinstance(version.get("gitVersion"), str):
            facts[KUBERNETES_VERSION] = version["gitVersion"][:100]
    except Exception as exc:  # any failure only leaves the fact out
        log.info("the cluster's version is not known: %s", exc)
    try:
        nodes = await get_json(api, "/api/v1/nodes", [("limit", 500)], timeout=timeout)
        items = nodes.get("items") if isinstance(nodes, dict) else None
        if isinstance(items, list):
            remaining = (nodes.get("metadata") or {}).get("remainingItemCount") or 0
            facts[NODE_COUNT] = str(len(items) + (remaining if isinstance(remaining, int) else 0))
    except Exception as exc:  # any failure only leaves the fact out
        log.info("the cluster's node count is not known: %s", exc)
    return facts


async def no_pages() -> Pages[Any]:
    """The pages of an empty list (a type that is absent)."""
    yield []


class TypeWatcher(Generic[Item]):
    """Keeps one type's objects flowing: LIST (paged), then WATCH from its version, forever."""

    def __init__(
        self,
        api: client.ApiClient,
        rtype: ResourceType,
        decoding: Decoding[Item],
        *,
        on_list: OnPages[Item],
        on_event: OnEvent[Item],
        on_error: OnError,
        page_size: int = 100,
        watch_seconds: int = 300,
        label_selector: str = "",
        absent_recheck: float = 60.0,
        retry_max: float = 30.0,
        list_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.api = api
        self.rtype = rtype
        self.decoding = decoding
        self.on_list = on_list
        self.on_event = on_event
        self.on_error = on_error
        #: Objects per LIST page (the agent's --list-page-size, 500 as client-go's): what a page costs
        #: is its bytes while its objects are made into their wire form (docs/agent-memory.md).
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        #: Only objects with these labels (e.g. what a work owns); "": every object of the type.
        self.label_selector = label_selector
        #: A custom type whose CRD is not installed is absent (not failed); it is looked for again this often.
        self.absent = False
        self.absent_recheck = absent_recheck
        #: Failed lists and watches are retried with backoff up to ``retry_max`` seconds (the agent's --kube-retry-max).
        self.backoff = Backoff(initial=0.5, maximum=retry_max)
        #: Shared by the agent's watchers: how many LISTs run at once. Thirteen types listing together
        #: each held a page, and the heap kept that peak (fragmented by the cache built meanwhile) long
        #: after (docs/agent-memory.md).
        self.list_slots = list_slots

    async def _get(self, query: list[tuple[str, Any]], timeout: float | None) -> Any:
        if self.label_selector:
            query = [*query, ("labelSelector", self.label_selector)]
        response = await self.api.call_api(
            self.rtype.collection_path(),
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        await raise_for_status(response, self.rtype.collection_path())
        return response

    async def list(self) -> str:
        """All objects, handed over page by page (``on_list`` must read every page); returns the list's resourceVersion."""
        listed: list[str] = []

        async def pages() -> Pages[Item]:
            token = ""
            while True:
                query: list[tuple[str, Any]] = [("limit", self.page_size)]
                if token:
                    query.append(("continue", token))
                response = await self._get(query, 60)
                items, token, version = self.decoding.page(await response.read())
                if not token:
                    listed.append(version)
                yield items
                if not token:
                    return

        async with self.list_slots or contextlib.nullcontext():
            await self.on_list(self.rtype, pages())
        release_free_memory()  # the pages' JSON is garbage now: do not keep the high-water mark (heap.py)
        if not listed:
            raise RuntimeError(f"{self.rtype}: the list was not read to its end")
        if self.absent:
            log.info("%s: now served by this cluster", self.rtype)
            self.absent = False
        return listed[0]

    async def watch(self, rv: str) -> str:
        """Watch from ``rv`` until the server ends the stream; returns the last version seen."""
        query = [("watch", "1"), ("allowWatchBookmarks", "true"), ("resourceVersion", rv), ("timeoutSeconds", self.watch_seconds)]
        response = await self._get(query, None)
        try:
            async for line in response.content:
                try:
                    decoded = self.decoding.event(line)
                except WatchError as exc:
                    raise ApiException(status=exc.code, reason=exc.message) from None
                if decoded is None:
                    continue
                kind, obj, version = decoded
                rv = version or rv
                if kind != "BOOKMARK":
                    await self.on_event(self.rtype, kind, obj)
        finally:
            response.release()
        return rv

    async def run(self) -> None:
        """Never returns: errors are reported and retried with backoff; 410 relists at once."""
        while True:
            try:
                rv = await self.list()
                self.backoff.reset()
                while True:
                    rv = await self.watch(rv)
            except Expired as exc:
                log.info("%s: watch expired (%s); listing again", self.rtype, exc)
            except ApiException as exc:
                if exc.status == 410:
                    continue
                if exc.status == 404 and self.rtype.custom:
                    await self._absent()
                    continue
                await self._failed(f"{exc.status} {exc.reason}".strip())
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:  # (a server gone mid-watch: ServerDisconnectedError, ClientPayloadError)
                await self._failed(f"{type(exc).__name__}: {exc}")

    async def _absent(self) -> None:
        """A custom type the cluster does not serve (its CRD is not installed, e.g. a cluster without
        Istio): no objects, and no error either; looked for again every ``absent_recheck`` seconds."""
        if not self.absent:
            log.info("%s: not served by this cluster (its CRD is not installed); holding none, checking again every %.0fs", self.rtype, self.absent_recheck)
            self.absent = True
            await self.on_list(self.rtype, no_pages())
        await asyncio.sleep(self.absent_recheck)

    async def _failed(self, error: str) -> None:
        log.warning("%s: %s; retrying", self.rtype, error)
        await self.on_error(self.rtype, error)
        await self.backoff.sleep()
