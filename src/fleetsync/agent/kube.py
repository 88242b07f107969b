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
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from fleetsync.backoff import Backoff
from fleetsync.model.types import ResourceType
from fleetsync.model.watchevents import Expired, WatchError, decode_event, event_version

log = logging.getLogger(__name__)

#: A source that has its objects at once (Istio detection, the service graph) hands them over as a list.
OnList = Callable[[ResourceType, list[dict[str, Any]]], Awaitable[None]]
#: A LIST's pages, each fetched when the one before has been taken.
Pages = AsyncIterator[list[dict[str, Any]]]
#: A TypeWatcher hands a LIST over page by page: a page can be made into wire objects and
#: dropped before the next is read, so the agent never holds a whole type's JSON at once.
OnPages = Callable[[ResourceType, Pages], Awaitable[None]]
OnEvent = Callable[[ResourceType, str, dict[str, Any]], Awaitable[None]]
OnError = Callable[[ResourceType, str], Awaitable[None]]


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """An ApiClient from a kubeconfig file, or the in-cluster service account when None."""
    configuration = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
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


async def no_pages() -> Pages:
    """The pages of an empty list (a type that is absent)."""
    yield []


class TypeWatcher:
    """Keeps one type's objects flowing: LIST (paged), then WATCH from its version, forever."""

    def __init__(
        self,
        api: client.ApiClient,
        rtype: ResourceType,
        *,
        on_list: OnPages,
        on_event: OnEvent,
        on_error: OnError,
        page_size: int = 500,
        watch_seconds: int = 300,
        label_selector: str = "",
        absent_recheck: float = 60.0,
    ) -> None:
        self.api = api
        self.rtype = rtype
        self.on_list = on_list
        self.on_event = on_event
        self.on_error = on_error
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        #: Only objects with these labels (e.g. what a work owns); "": every object of the type.
        self.label_selector = label_selector
        #: A custom type whose CRD is not installed is absent (not failed); it is looked for again this often.
        self.absent = False
        self.absent_recheck = absent_recheck
        self.backoff = Backoff(initial=0.5, maximum=30)

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

        async def pages() -> Pages:
            token = ""
            while True:
                query: list[tuple[str, Any]] = [("limit", self.page_size)]
                if token:
                    query.append(("continue", token))
                response = await self._get(query, 60)
                page = orjson.loads(await response.read())
                metadata = page.get("metadata") or {}
                token = metadata.get("continue") or ""
                if not token:
                    listed.append(str(metadata.get("resourceVersion", "")))
                yield page.get("items") or []
                if not token:
                    return

        await self.on_list(self.rtype, pages())
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
                    decoded = decode_event(line)
                except WatchError as exc:
                    raise ApiException(status=exc.code, reason=exc.message) from None
                if decoded is None:
                    continue
                kind, obj = decoded
                rv = event_version(obj, rv)
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
            except (OSError, TimeoutError, ValueError) as exc:
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
