"""An informer for the hub, in the manner of client-go's: list + watch into a local cache.

::

    informer = Informer("https://hub:8080", "/api/v1/pods", label_selector="app=web", token=READ_TOKEN)
    informer.add_index("node", lambda pod: [pod["spec"].get("nodeName", "")])
    informer.on_add(lambda pod: ...)       # and on_update(old, new), on_delete(last)
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    informer.by_index("node", "node-1")

``path`` is any collection the hub serves: one cluster's (``/clusters/c1/api/v1/pods``)
or the fleet's (``/api/v1/pods``, objects labelled ``fleetsync.io/cluster``). The
informer lists in pages, then watches from the list's revision with bookmarks; a 410
(the change log no longer reaches back) relists and reports the difference as events; a
broken connection reconnects with backoff and resumes from the last revision seen; a
refused token ends :meth:`Informer.run` with :class:`Refused`. With
``resync_period``, every cached object is handed to ``on_update(obj, obj)`` that often,
as client-go does, so handlers can re-check what they manage.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from fleetsync.backoff import Backoff
from fleetsync.errors import FleetsyncError
from fleetsync.model.objects import CLUSTER_LABEL
from fleetsync.model.objects import object_key as model_object_key
from fleetsync.model.watchevents import Expired, WatchError, decode_event, event_version

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class Refused(FleetsyncError):
    """The hub refused the informer's token (401) or its role (403): retrying cannot help,
    so :meth:`Informer.run` raises this with the hub's message."""


def object_key(obj: Obj) -> str:
    """``[cluster/]namespace/name``: fleet-wide reads hold objects of several clusters."""
    meta = obj.get("metadata") or {}
    cluster = (meta.get("labels") or {}).get(CLUSTER_LABEL)
    key = model_object_key(meta.get("namespace", ""), meta.get("name", ""))
    return f"{cluster}/{key}" if cluster else key


class Informer:
    def __init__(
        self,
        hub: str,
        path: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        cluster_selector: str = "",
        token: str = "",
        resync_period: float = 0.0,
        page_size: int = 500,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``token``: an API token (role read is enough); ``ssl_context``: what an https:// hub is
        verified against (default: the system's CAs)."""
        self.url = hub.rstrip("/") + path
        self.selectors = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector), ("clusterSelector", cluster_selector)) if v}
        self.headers = {"Accept": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        self.resync_period = resync_period
        self.page_size = page_size
        self.ssl_context = ssl_context
        self.cache: dict[str, Obj] = {}
        #: Set once the first list is in the cache.
        self.synced = asyncio.Event()
        self.resource_version = ""
        self._indexers: dict[str, Callable[[Obj], list[str]]] = {}
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._on_add: list[Callable[[Obj], None]] = []
        self._on_update: list[Callable[[Obj, Obj], None]] = []
        self._on_delete: list[Callable[[Obj], None]] = []

    # ---- handlers and indexes ----------------------------------------------------------

    def on_add(self, handler: Callable[[Obj], None]) -> None:
        self._on_add.append(handler)

    def on_update(self, handler: Callable[[Obj, Obj], None]) -> None:
        self._on_update.append(handler)

    def on_delete(self, handler: Callable[[Obj], None]) -> None:
        self._on_delete.append(handler)

    def add_index(self, name: str, index: Callable[[Obj], list[str]]) -> None:
        """Index the cache by ``index(obj)`` (a list of values); query with :meth:`by_index`."""
        self._indexers[name] = index
        self._indices[name] = {}
        for key, obj in self.cache.items():
            self._index(key, None, obj)

    def by_index(self, name: str, value: str) -> list[Obj]:
        return [self.cache[key] for key in sorted(self._indices[name].get(value, ()))]

    def get(self, key: str) -> Obj | None:
        return self.cache.get(key)

    def objects(self) -> list[Obj]:
        """Every cached object (a snapshot)."""
        return list(self.cache.values())

    def _index(self, key: str, old: Obj | None, new: Obj | None) -> None:
        for name, index in self._indexers.items():
            values = self._indices[name]
            for value in index(old) if old is not None else []:
                values.get(value, set()).discard(key)
            for value in index(new) if new is not None else []:
                values.setdefault(value, set()).add(key)

    def _fire(self, handlers: list[Any], *args: Obj) -> None:
        for handler in handlers:
            try:
                handler(*args)
            except Exception:  # one handler's bug must not stop the informer
                log.exception("informer handler failed")

    def _put(self, obj: Obj) -> None:
        key = object_key(obj)
        old = self.cache.get(key)
        self.cache[key] = obj
        self._index(key, old, obj)
        if old is None:
            self._fire(self._on_add, obj)
        else:
            self._fire(self._on_update, old, obj)

    def _remove(self, key: str) -> None:
        old = self.cache.pop(key, None)
        if old is not None:
            self._index(key, old, None)
            self._fire(self._on_delete, old)

    # ---- list and watch ----------------------------------------------------------------

    async def run(self) -> None:
        """List, then watch, forever (cancel the task to stop)."""
        backoff = Backoff(initial=0.2, maximum=10.0)
        connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context else None
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)) as session:
            resync = asyncio.create_task(self._resync_forever()) if self.resync_period > 0 else None
            try:
                while True:
                    try:
                        if not self.resource_version:
                            await self._list(session)
                        await self._watch(session)
                        backoff.reset()
                    except Expired:
                        log.info("informer %s: resourceVersion %s expired; listing again", self.url, self.resource_version)
                        self.resource_version = ""
                    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                        delay = backoff.next_delay()
                        log.warning("informer %s: %s; again in %.1fs", self.url, exc or type(exc).__name__, delay)
                        await asyncio.sleep(delay)
            finally:
                if resync is not None:
                    resync.cancel()

    async def _get(self, session: aiohttp.ClientSession, params: dict[str, str]) -> aiohttp.ClientResponse:
        response = await session.get(f"{self.url}?{urlencode(self.selectors | params)}", headers=self.headers)
        if response.status == 410:
            response.release()
            raise Expired(self.resource_version)
        if response.status in (401, 403):
            body = await response.text()
            response.release()
            try:
                message = orjson.loads(body).get("message", body)
            except (orjson.JSONDecodeError, AttributeError):
                message = body[:300]
            raise Refused(f"{self.url}: {response.status} {message}")
        if response.status >= 400:
            body = await response.text()
            response.release()
            raise aiohttp.ClientResponseError(response.request_info, (), status=response.status, message=body[:300])
        return response

    async def _list(self, session: aiohttp.ClientSession) -> None:
        fresh: dict[str, Obj] = {}
        token, rv = "", ""
        while True:
            response = await self._get(session, {"limit": str(self.page_size)} | ({"continue": token} if token else {}))
            page = orjson.loads(await response.read())
            for obj in page.get("items") or []:
                fresh[object_key(obj)] = obj
            meta = page.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion", ""))  # the first page's: the watch replays what changed since
            token = meta.get("continue") or ""
            if not token:
                break
        for key in [k for k in self.cache if k not in fresh]:
            self._remove(key)
        for obj in fresh.values():
            self._put(obj)
        self.resource_version = rv
        self.synced.set()

    async def _watch(self, session: aiohttp.ClientSession) -> None:
        params = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": self.resource_version, "timeoutSeconds": "300"}
        response = await self._get(session, params)
        try:
            async for line in response.content:
                try:
                    decoded = decode_event(line)
                except WatchError as exc:
                    raise aiohttp.ClientError(f"watch error: {exc.message}") from None
                if decoded is None:
                    continue
                kind, obj = decoded
                self.resource_version = event_version(obj, self.resource_version)
                if kind == "DELETED":
                    self._remove(object_key(obj))
                elif kind in ("ADDED", "MODIFIED"):
                    self._put(obj)
        finally:
            response.release()

    async def _resync_forever(self) -> None:
        next_at = time.monotonic() + self.resync_period
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.resync_period
            for obj in list(self.cache.values()):
                self._fire(self._on_update, obj, obj)
