"""``/1.0/feature-gates``: cluster-wide feature gates (seed 004), in microcluster's REST shapes.

- ``GET /1.0/feature-gates``: every gate; ``GET /1.0/feature-gates/{key}``: one (404 if unset);
- ``POST /1.0/feature-gates`` ``{"gate-key": "feature.x", "enabled": true}``: a new gate (409 if set);
- ``PUT /1.0/feature-gates/{key}`` ``{"enabled": false}``: set it, new or not (what an agent's hook does);
- ``DELETE /1.0/feature-gates/{key}``: unset it (404 if unset);
- ``GET /1.0/feature-gates/{key}/clusters``: what each cluster's local config holds of the gate
  (seed 004's "what's set where"; see :func:`fleetsync.hub.gates.cluster_value`);
- ``GET /1.0/feature-gates/{key}/history`` and ``GET /1.0/feature-gate-history`` (every gate):
  the gate history, newest first: who changed what when, old -> new, the fleet's writes
  (``cluster`` "") and the clusters' own local changes; ``?cluster=C`` (``cluster=`` for the
  fleet's writes only), ``?limit=N`` (default 100, at most :data:`MAX_HISTORY_LIMIT`).

These are extensions of seed 004's API (microcluster has no such paths), in its envelope.

Answers use microcluster's envelope (``{"type": "sync", "status": "Success", "status_code":
200, "metadata": ...}``, errors ``{"type": "error", "error_code": 404, "error": "..."}``), so
a client of seed 004's API works unchanged. A body that is not JSON is a 400; JSON that is not
a valid gate (a key outside ``feature.*``, ``enabled`` not a boolean, unknown fields) a 422.
Every write gets a new gate revision in the store (the last write wins) and records the
writer: the name of the API token that made it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from fleetsync.api.auth import caller_name
from fleetsync.hub.gates import GATES_CHANNEL, cluster_value, deployment_type, fleet_value
from fleetsync.model.gates import gate_key_problem
from fleetsync.model.status import ApiError
from fleetsync.store.contract import GateChange, GateExists, GateRecord, Store
from fleetsync.web import http_error, json_response

PREFIX = "/1.0/feature-gates"
HISTORY = "/1.0/feature-gate-history"
#: History entries one request returns by default, and at most.
DEFAULT_HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 1000


def _value(enabled: bool | None) -> str:
    return "unset" if enabled is None else "true" if enabled else "false"


def change_json(change: GateChange) -> dict[str, Any]:
    """A history entry as the API shows it (values ``true``, ``false``, ``unset``)."""
    return {
        "id": change.id,
        "gate-key": change.key,
        "cluster": change.cluster,
        "old": _value(change.old),
        "new": _value(change.new),
        "by": change.by,
        "at": change.at,
        "revision": change.revision,
    }


def gate_json(gate: GateRecord) -> dict[str, Any]:
    """A gate as the API shows it."""
    return {"gate-key": gate.key, "enabled": gate.enabled, "updated-at": gate.updated_at, "updated-by": gate.updated_by, "revision": gate.revision}


def _sync(metadata: Any, status: int = 200) -> web.Response:
    return json_response({"type": "sync", "status": "Success", "status_code": 200, "operation": "", "error_code": 0, "error": "", "metadata": metadata}, status)


def _error(code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "error", "status": "", "status_code": 0, "operation": "", "error_code": code, "error": message, "metadata": None}
    return json_response(body, code, headers)


def check_gate_key(key: str) -> str:
    """``key`` if it is a gate key; an ApiError 422 saying why not."""
    if problem := gate_key_problem(key):
        raise ApiError(422, "Invalid", problem)
    return key


@web.middleware
async def envelope_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Failures under ``/1.0/`` (the gates' own, and the token's) in microcluster's error shape;
    it runs inside the Kubernetes ``Status`` middleware, which renders the rest."""
    if not request.path.startswith("/1.0/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = http_error(request, exc)
        return _error(error.code, error.message, error.headers)


class GatesApi:
    """The handlers of ``/1.0/feature-gates``, on the hub's store."""

    middleware: Middleware = envelope_errors

    def __init__(self, store: Store, *, deployment_type: str = "", clock: Callable[[], float] = time.time) -> None:
        self.store = store
        #: The hub's --deployment-type (a hub setting overrides it): whether the fleet's gates reach clusters' local configs.
        self.deployment_type = deployment_type
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self.list)
        app.router.add_post(PREFIX, self.create)
        app.router.add_get(PREFIX + "/{key}", self.get)
        app.router.add_put(PREFIX + "/{key}", self.put)
        app.router.add_delete(PREFIX + "/{key}", self.delete)
        app.router.add_get(PREFIX + "/{key}/clusters", self.where)
        app.router.add_get(PREFIX + "/{key}/history", self.history)
        app.router.add_get(HISTORY, self.history)

    async def list(self, request: web.Request) -> web.Response:
        return _sync([gate_json(g) for g in await self.store.gates()])

    async def get(self, request: web.Request) -> web.Response:
        key = check_gate_key(request.match_info["key"])
        gate = await self.store.gate(key)
        if gate is None:
            raise ApiError(404, "NotFound", f"feature gate {key!r} is not set")
        return _sync(gate_json(gate))

    async def create(self, request: web.Request) -> web.Response:
        body = await _body(request, required=("gate-key", "enabled"))
        key = check_gate_key(_string(body, "gate-key"))
        try:
            gate = await self.store.set_gate(key, _boolean(body), by=caller_name(request), now=self.clock(), create=True)
        except GateExists:
            raise ApiError(409, "AlreadyExists", f"feature gate {key!r} is set already: change it with PUT {PREFIX}/{key}") from None
        await self._announce(gate)
        return _sync(gate_json(gate), 201)

    async def put(self, request: web.Request) -> web.Response:
        key = check_gate_key(request.match_info["key"])
        body = await _body(request, required=("enabled",))
        if "gate-key" in body and body["gate-key"] != key:
            raise ApiError(422, "Invalid", f"gate-key {_shown(body['gate-key'])} in the body is not the gate of the path, {key!r}")
        gate = await self.store.set_gate(key, _boolean(body), by=caller_name(request), now=self.clock())
        await self._announce(gate)
        return _sync(gate_json(gate))

    async def delete(self, request: web.Request) -> web.Response:
        key = check_gate_key(request.match_info["key"])
        gate = await self.store.delete_gate(key, by=caller_name(request), now=self.clock())
        if gate is None:
            raise ApiError(404, "NotFound", f"feature gate {key!r} is not set")
        await self._announce(gate)
        return _sync(gate_json(gate))

    async def where(self, request: web.Request) -> web.Response:
        """Each cluster's value of the gate: every cluster the hub knows, or has a report or an applied revision of."""
        key = check_gate_key(request.match_info["key"])
        fleet = next((g for g in await self.store.gates(since=0) if g.key == key), None)
        applied = await self.store.gates_applied()
        reported = {v.cluster: v for v in await self.store.cluster_gate_values(key=key)}
        settings = await self.store.hub_settings()
        mode = deployment_type(settings, self.deployment_type) or "local"
        names = sorted({c.name for c in await self.store.clusters()} | set(applied) | set(reported))
        fleet_shown = fleet_value(fleet)
        clusters = []
        for name in names:
            value, source = cluster_value(deployment_type=mode, fleet=fleet, applied=applied.get(name), reported=reported.get(name))
            mine = reported.get(name)
            clusters.append(
                {
                    "cluster": name,
                    "value": value,
                    "source": source,
                    "in-sync": value == fleet_shown,
                    "applied-revision": applied.get(name),
                    "reported": None if mine is None else {"value": _value(mine.enabled), "at": mine.updated_at},
                }
            )
        return _sync({"gate-key": key, "fleet": fleet_shown, "revision": fleet.revision if fleet else 0, "deployment-type": mode, "clusters": clusters})

    async def history(self, request: web.Request) -> web.Response:
        key = check_gate_key(request.match_info["key"]) if "key" in request.match_info else None
        raw = request.query.get("limit", str(DEFAULT_HISTORY_LIMIT))
        # ASCII digits only: str.isdigit also takes "²", which int refuses
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_HISTORY_LIMIT:
            raise ApiError.bad_request(f"limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}, not {raw[:40]!r}")
        changes = await self.store.gate_history(key=key, cluster=request.query.get("cluster"), limit=int(raw))
        return _sync([change_json(c) for c in changes])

    async def _announce(self, gate: GateRecord) -> None:
        """Every replica pushes the new gates to its agents at once (no polling)."""
        await self.store.notify(GATES_CHANNEL, str(gate.revision))


async def _body(request: web.Request, *, required: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object with the ``required`` fields and no others but gate-key and enabled."""
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError.bad_request(f'the body is not JSON ({exc}); send e.g. {{"gate-key": "feature.x", "enabled": true}}') from None
    if not isinstance(body, dict):
        raise ApiError(422, "Invalid", f'the body must be a JSON object like {{"gate-key": "feature.x", "enabled": true}}, not {type(body).__name__}')
    missing = [f for f in required if f not in body]
    unknown = sorted(set(body) - {"gate-key", "enabled"})
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown field {', '.join(unknown)}"] if unknown else [])
        raise ApiError(422, "Invalid", f"invalid gate: {'; '.join(problems)} (fields: gate-key, enabled)")
    return body


def _string(body: dict[str, Any], field: str) -> str:
    value = body[field]
    if not isinstance(value, str):
        raise ApiError(422, "Invalid", f"{field} must be a string, not {_shown(value)}")
    return value


def _boolean(body: dict[str, Any]) -> bool:
    value = body["enabled"]
    if not isinstance(value, bool):
        raise ApiError(422, "Invalid", f"enabled must be true or false, not {_shown(value)}")
    return value


def _shown(value: Any, limit: int = 200) -> str:
    """``value`` as JSON for a message, at most ``limit`` characters (orjson reads deeper nesting than it writes)."""
    try:
        return orjson.dumps(value).decode()[:limit]
    except orjson.JSONEncodeError:
        return "a value nested too deeply to show"
