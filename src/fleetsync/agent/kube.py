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

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from fleetsync.backoff import Backoff
from fleetsync.model.types import ResourceType
from fleetsync.model.watchevents import Expired, WatchError, decode_event, event_version

log = logging.getLogger(__name__)

OnList = Callable[[ResourceType, list[dict[str, Any]]], Awaitable[None]]
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


class TypeWatcher:
    """Keeps one type's objects flowing: LIST (paged), then WATCH from its version, forever."""

    def __init__(
        self,
        api: client.ApiClient,
        rtype: ResourceType,
        *,
        on_list: OnList,
        on_event: OnEvent,
        on_error: OnError,
        page_size: int = 500,
        watch_seconds: int = 300,
    ) -> None:
        self.api = api
        self.rtype = rtype
        self.on_list = on_list
        self.on_event = on_event
        self.on_error = on_error
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        self.backoff = Backoff(initial=0.5, maximum=30)

    async def _get(self, query: list[tuple[str, Any]], timeout: float | None) -> Any:
        response = await self.api.call_api(
            self.rtype.collection_path(),
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        # Without _preload_content the library hands back the raw response, error or not.
        if response.status >= 400:
            body = await response.read()
            response.release()
            try:
                message = orjson.loads(body).get("message", "")
            except (orjson.JSONDecodeError, AttributeError):
                message = body[:200].decode(errors="replace")
            raise ApiException(status=response.status, reason=f"{self.rtype.collection_path()}: {message}")
        return response

    async def list(self) -> str:
        """All objects (every page), handed over at once; returns the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", self.page_size)]
            if token:
                query.append(("continue", token))
            response = await self._get(query, 60)
            page = orjson.loads(await response.read())
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                rv = str((page.get("metadata") or {}).get("resourceVersion", ""))
                break
        await self.on_list(self.rtype, items)
        return rv

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
                await self._failed(f"{exc.status} {exc.reason}".strip())
            except (OSError, TimeoutError, ValueError) as exc:
                await self._failed(f"{type(exc).__name__}: {exc}")

    async def _failed(self, error: str) -> None:
        log.warning("%s: %s; retrying", self.rtype, error)
        await self.on_error(self.rtype, error)
        await self.backoff.sleep()
