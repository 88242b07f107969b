"""The agent's local config target, the part seed 004's snap config plays: a JSON object file
(the default) or a ConfigMap in the agent's own cluster (``configmap:NAMESPACE/NAME``).

Gates are its ``feature.*`` keys with ``true``/``false`` values; other keys belong to whoever
else uses the target and are kept as they are. Beside the config, each target keeps the
*agreed state* (the gates both the agent and the hub last agreed on, see
:mod:`fleetsync.agent.gatesync`) where it survives a restart:

- **file** (:class:`FileTarget`): a JSON object (gates as JSON booleans; the strings
  "true"/"false" are read too), replaced atomically (a temporary file renamed over it), so
  a reader never sees half a file; the agreed state in ``FILE.synced``. Changes are found
  by looking at the file (its inode, size and times) every ``interval`` seconds. Its
  directory is not created: a missing one (a volume not mounted yet, a typo) is said once,
  and nothing is written until it appears.
- **ConfigMap** (:class:`ConfigMapTarget`): its ``data`` (strings: gates are "true" or
  "false"); the agreed state in its annotation ``fleetsync.io/synced-gates`` (a JSON
  object), written in the same request as the data it goes with. Changes are found by a
  watch of that one ConfigMap (a field selector on its name). It is created when first
  written (the namespace must exist).

:class:`LocalConfig` is the plain synchronous file reader/writer (also used by
:func:`fleetsync.client.check_gated`); :class:`LocalConfigTarget` is what the agent's gate
sync uses, whichever the target.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.config.config_exception import ConfigException

from fleetsync.agent.kube import api_client, status_message
from fleetsync.backoff import Backoff
from fleetsync.errors import FleetsyncError
from fleetsync.model.gates import GATE_KEY
from fleetsync.model.watchevents import Expired, WatchError, decode_event, event_version

log = logging.getLogger(__name__)

#: ``--local-config configmap:NAMESPACE/NAME``: a ConfigMap target; anything else is a file.
CONFIGMAP_PREFIX = "configmap:"
#: The annotation of a ConfigMap target holding the agreed state (a JSON object: gate -> bool).
SYNCED_ANNOTATION = "fleetsync.io/synced-gates"
#: The field manager of the agent's (and ``fleetsync agent config``'s) writes to a ConfigMap.
FIELD_MANAGER = "fleetsync-agent"

_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MERGE_PATCH = "application/merge-patch+json"


class LocalConfigError(FleetsyncError, ValueError):
    """The local config target cannot be read or written, or does not hold what it should."""


def gates_of(data: Mapping[str, Any]) -> dict[str, bool]:
    """The ``feature.*`` keys whose values are booleans, or the strings "true"/"false" (any case);
    anything else is not a gate and is left alone."""
    found: dict[str, bool] = {}
    for key, value in data.items():
        if not GATE_KEY.fullmatch(key):
            continue
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if isinstance(value, bool):
            found[key] = value
    return found


def _agreed_of(text: str | None) -> dict[str, bool]:
    """The agreed state from its JSON text ({} if there is none or it is not a JSON object)."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, bool)} if isinstance(data, dict) else {}


class LocalConfig:
    """A JSON object file, read and written synchronously."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        """The whole file ({} if it does not exist yet)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LocalConfigError(f"local config {self.path}: {exc.strerror}") from None
        if not text.strip():
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LocalConfigError(f"local config {self.path} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise LocalConfigError(f"local config {self.path} must be a JSON object (key -> value), not {type(data).__name__}")
        return data

    def gates(self) -> dict[str, bool]:
        """The ``feature.*`` keys whose values are booleans (anything else is not a gate and is left alone)."""
        return gates_of(self.read())

    def update(self, changes: Mapping[str, bool | str | None]) -> None:
        """Set or remove (None) keys, keeping the rest of the file."""
        data = self.read()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        _replace(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _replace(path: Path, text: str) -> None:
    """Write ``path`` atomically: a temporary file beside it, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- the targets the agent syncs ------------------------------------------------------------------


class LocalConfigTarget(Protocol):
    """Where an agent keeps the cluster's gates, and the state last agreed with the hub."""

    async def read(self) -> dict[str, Any]:
        """Every key and its value as stored ({} if the target does not exist yet)."""
        ...

    async def gates(self) -> dict[str, bool]:
        """The gates (see :func:`gates_of`)."""
        ...

    async def agreed(self) -> dict[str, bool]:
        """The agreed state as last written ({} if none was)."""
        ...

    async def write(self, changes: Mapping[str, bool | str | None], *, agreed: Mapping[str, bool] | None = None) -> None:
        """Set or remove (None) keys, keeping the others; with ``agreed``, store that agreed
        state too (written after the keys, or with them). Nothing is written if nothing changes."""
        ...

    async def watch(self, changed: Callable[[], None]) -> None:
        """Forever: call ``changed`` whenever the target may have changed (and once at the start)."""
        ...

    async def close(self) -> None:
        """Release what the target holds open."""
        ...


class FileTarget:
    """A JSON object file (:class:`LocalConfig`), its agreed state in ``FILE.synced``, read every ``interval`` s."""

    def __init__(self, path: Path, *, interval: float = 0.2) -> None:
        self.file = LocalConfig(path)
        self.synced_path = path.with_name(path.name + ".synced")
        self.interval = interval

    def __str__(self) -> str:
        return str(self.file.path)

    async def read(self) -> dict[str, Any]:
        return self.file.read()

    async def gates(self) -> dict[str, bool]:
        return self.file.gates()

    async def agreed(self) -> dict[str, bool]:
        try:
            return _agreed_of(self.synced_path.read_text())
        except FileNotFoundError:
            return {}

    async def write(self, changes: Mapping[str, bool | str | None], *, agreed: Mapping[str, bool] | None = None) -> None:
        if (changes or agreed is not None) and not self.file.path.parent.is_dir():
            raise LocalConfigError(f"local config {self.file.path}: its directory {self.file.path.parent} does not exist; nothing is written until it does")
        try:
            if changes:
                self.file.update(changes)
            if agreed is not None:
                tmp = self.synced_path.with_name(self.synced_path.name + ".tmp")
                tmp.write_text(json.dumps(dict(agreed), sort_keys=True))
                tmp.replace(self.synced_path)
        except OSError as exc:
            raise LocalConfigError(f"local config {self.file.path}: {exc.strerror or exc}") from None

    async def watch(self, changed: Callable[[], None]) -> None:
        """``changed`` at the start and whenever the file or its directory looks different: not
        on every look, so a target that cannot be written (a missing directory) is retried at
        the gates task's backoff, not at this pace, and at once when its directory appears."""
        seen: tuple[tuple[int, int, int, int] | None, bool] | None = None
        while True:
            directory = self.file.path.parent.is_dir()
            now = (_signature(self.file.path), directory)
            if now != seen:
                if directory and seen is not None and not seen[1]:
                    log.info("local config %s: its directory exists now", self)
                seen = now
                changed()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        pass


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    """What tells one version of a file from another (None: there is none): an atomic replace
    changes the inode, an edit in place the size or times."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class ConfigMapRef:
    """``configmap:NAMESPACE/NAME``."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{CONFIGMAP_PREFIX}{self.namespace}/{self.name}"

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/configmaps"


def parse_target(text: str) -> Path | ConfigMapRef:
    """``configmap:NAMESPACE/NAME`` as a :class:`ConfigMapRef`, anything else as a file path;
    a ValueError if it names a ConfigMap badly."""
    if not text.startswith(CONFIGMAP_PREFIX):
        return Path(text)
    namespace, sep, name = text.removeprefix(CONFIGMAP_PREFIX).partition("/")
    if not sep:
        raise ValueError(f"{text!r}: expected configmap:NAMESPACE/NAME")
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"{text!r}: {namespace!r} is not a namespace name (lowercase letters, digits and '-', at most 63)")
    if len(name) > 253 or not _NAME.match(name):
        raise ValueError(f"{text!r}: {name!r} is not a ConfigMap name (lowercase letters, digits, '-' and '.', at most 253)")
    return ConfigMapRef(namespace, name)


def open_target(spec: Path | ConfigMapRef, *, kubeconfig: str | None = None, interval: float = 0.2, retry_max: float = 30.0) -> LocalConfigTarget:
    """The target ``spec`` names (a ConfigMap is reached through ``kubeconfig``, None: in-cluster;
    its watch is retried with backoff up to ``retry_max`` seconds)."""
    if isinstance(spec, ConfigMapRef):
        return ConfigMapTarget(spec, kubeconfig=kubeconfig, retry_max=retry_max)
    return FileTarget(spec, interval=interval)


class KubeError(LocalConfigError):
    """A request to the cluster failed: its HTTP status (0: no answer) and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConfigMapTarget:
    """A ConfigMap in the agent's cluster, its agreed state in the annotation :data:`SYNCED_ANNOTATION`."""

    def __init__(
        self, ref: ConfigMapRef, *, kubeconfig: str | None = None, api: client.ApiClient | None = None, watch_seconds: int = 300, retry_max: float = 30.0
    ) -> None:
        self.ref = ref
        self.retry_max = retry_max
        self.kubeconfig = kubeconfig
        self._api = api
        self._own_api = api is None
        self.watch_seconds = watch_seconds

    def __str__(self) -> str:
        return str(self.ref)

    # ---- requests ----

    async def _client(self) -> client.ApiClient:
        if self._api is None:
            try:
                api = await api_client(self.kubeconfig)
            except (ConfigException, OSError, ValueError) as exc:
                raise LocalConfigError(f"local config {self}: no access to the cluster: {exc}") from None
            if self._api is None:
                self._api = api
            else:  # another task made one meanwhile
                await api.close()
        return self._api

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = 30,
    ) -> Any:
        """The raw response of a request (2xx); otherwise a :class:`KubeError`."""
        api = await self._client()
        if body is not None:
            query = [*(query or []), ("fieldManager", FIELD_MANAGER)]
        try:
            response = await api.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeError(0, f"local config {self}: {method} {path}: {type(exc).__name__}: {exc}") from None
        if response.status >= 400:
            raw = await response.read()
            response.release()
            message = status_message(raw)
            raise KubeError(response.status, f"local config {self}: {method} {path}: {response.status} {message}".rstrip())
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(method, path, **kwargs)
        try:
            raw = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeError(0, f"local config {self}: {method} {path}: {type(exc).__name__}: {exc}") from None
        finally:
            response.release()
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise KubeError(0, f"local config {self}: {method} {path}: the answer is not JSON: {exc}") from None
        return decoded if isinstance(decoded, dict) else {}

    async def get(self) -> dict[str, Any] | None:
        """The ConfigMap (None if it does not exist)."""
        try:
            return await self._json("GET", f"{self.ref.path}/{self.ref.name}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    # ---- LocalConfigTarget ----

    async def read(self) -> dict[str, Any]:
        return dict((await self.get() or {}).get("data") or {})

    async def gates(self) -> dict[str, bool]:
        return gates_of(await self.read())

    async def agreed(self) -> dict[str, bool]:
        current = await self.get() or {}
        return _agreed_of(((current.get("metadata") or {}).get("annotations") or {}).get(SYNCED_ANNOTATION))

    async def write(self, changes: Mapping[str, bool | str | None], *, agreed: Mapping[str, bool] | None = None) -> None:
        texts = {key: None if value is None else _text(value) for key, value in changes.items()}
        for _ in range(5):  # created or deleted meanwhile by someone else: look again
            current = await self.get()
            data = (current or {}).get("data") or {}
            annotations = ((current or {}).get("metadata") or {}).get("annotations") or {}
            patch = {key: text for key, text in texts.items() if data.get(key) != text}
            agreed_text = (
                json.dumps(dict(agreed), sort_keys=True) if agreed is not None and _agreed_of(annotations.get(SYNCED_ANNOTATION)) != dict(agreed) else None
            )
            if not patch and agreed_text is None:
                return
            metadata: dict[str, Any] = {"annotations": {SYNCED_ANNOTATION: agreed_text}} if agreed_text is not None else {}
            try:
                if current is None:
                    body = {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": self.ref.name, "namespace": self.ref.namespace, **metadata},
                        "data": {key: text for key, text in patch.items() if text is not None},
                    }
                    await self._json("POST", self.ref.path, body=body)
                else:
                    await self._json("PATCH", f"{self.ref.path}/{self.ref.name}", body={"metadata": metadata, "data": patch}, content_type=_MERGE_PATCH)
                return
            except KubeError as exc:
                if exc.status not in (404, 409) or (current is None and exc.status == 404):  # 404 on create: no such namespace
                    raise
        raise LocalConfigError(f"local config {self}: it keeps being created and deleted under the agent; not written")

    async def watch(self, changed: Callable[[], None]) -> None:
        backoff = Backoff(initial=0.5, maximum=self.retry_max)
        while True:
            try:
                listed = await self._json("GET", self.ref.path, query=[("fieldSelector", f"metadata.name={self.ref.name}")], timeout=60)
                rv = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                changed()
                backoff.reset()
                while True:
                    rv = await self._watch_from(rv, changed)
            except Expired:
                continue  # our version is gone from the server's history: list again
            except KubeError as exc:
                if exc.status == 410:
                    continue
                log.warning("%s; watching it again", exc)
            except LocalConfigError as exc:  # no access to the cluster (yet): a kubeconfig being written, say
                log.warning("%s; trying again", exc)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("local config %s: watch: %s: %s; watching it again", self, type(exc).__name__, exc)
            await backoff.sleep()

    async def _watch_from(self, rv: str, changed: Callable[[], None]) -> str:
        """One watch request from ``rv`` until the server ends it; returns the last version seen."""
        query: list[tuple[str, Any]] = [
            ("fieldSelector", f"metadata.name={self.ref.name}"),
            ("watch", "1"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", rv),
            ("timeoutSeconds", self.watch_seconds),
        ]
        response = await self._request("GET", self.ref.path, query=query, timeout=None)
        try:
            async for line in response.content:
                try:
                    decoded = decode_event(line)
                except WatchError as exc:
                    raise KubeError(exc.code, f"local config {self}: watch: {exc.code} {exc.message}") from None
                if decoded is None:
                    continue
                kind, obj = decoded
                rv = event_version(obj, rv)
                if kind != "BOOKMARK":
                    changed()
        finally:
            response.release()
        return rv

    async def close(self) -> None:
        if self._api is not None and self._own_api:
            await self._api.close()
            self._api = None


def _text(value: bool | str) -> str:
    """A ConfigMap value: gates as "true"/"false", other values as given."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
