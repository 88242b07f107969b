"""``/api/v1/settings``: the hub's runtime settings, shared by every replica through the store.

- ``GET /api/v1/settings``: every known setting, with its value (null: unset, the default applies);
- ``PUT /api/v1/settings/{key}`` ``{"value": "maas"}``: set one (admin);
- ``DELETE /api/v1/settings/{key}``: unset it (admin).

Known settings (:data:`SETTINGS`) say which values they take; anything else is a 404 (an
unknown key) or a 422 (a value it does not take). A change is announced like a gate write,
so every replica sends its agents a new gate snapshot at once: the deployment type is read
from here on every change, as seed 004 asks.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from fleetsync.hub.gates import DEPLOYMENT_TYPE, DEPLOYMENT_TYPES, GATES_CHANNEL
from fleetsync.model.status import ApiError
from fleetsync.store.contract import Store
from fleetsync.web import json_response

PREFIX = "/api/v1/settings"
#: key -> (the values it takes, what it means).
SETTINGS: dict[str, tuple[tuple[str, ...], str]] = {
    DEPLOYMENT_TYPE: (
        DEPLOYMENT_TYPES,
        "seed 004's deployment type: local (gates sync both ways) or maas (agents' changes go up, the hub's are not written down); unset: the hub's "
        "--deployment-type, else local",
    ),
}


class SettingsApi:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self.list_settings)
        app.router.add_put(PREFIX + "/{key}", self.put)
        app.router.add_delete(PREFIX + "/{key}", self.delete)

    async def list_settings(self, request: web.Request) -> web.Response:
        stored = await self.store.hub_settings()
        items = [{"key": key, "value": stored.get(key), "values": list(values), "description": text} for key, (values, text) in SETTINGS.items()]
        return json_response({"kind": "SettingList", "apiVersion": "fleetsync.io/v1", "items": items})

    async def put(self, request: web.Request) -> web.Response:
        key = _known(request.match_info["key"])
        try:
            body: Any = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise ApiError.bad_request(f'the body is not JSON ({exc}); send e.g. {{"value": "maas"}}') from None
        if not isinstance(body, dict) or set(body) != {"value"}:
            raise ApiError(422, "Invalid", f'the body must be {{"value": ...}} and nothing else, not {_shown(body, 200)}')
        value = body["value"]
        if value not in SETTINGS[key][0]:
            raise ApiError(422, "Invalid", f"{key} takes {' or '.join(SETTINGS[key][0])}, not {_shown(value, 100)}")
        await self.store.set_hub_setting(key, value)
        await self.store.notify(GATES_CHANNEL, key)
        return json_response({"key": key, "value": value})

    async def delete(self, request: web.Request) -> web.Response:
        key = _known(request.match_info["key"])
        await self.store.set_hub_setting(key, None)
        await self.store.notify(GATES_CHANNEL, key)
        return json_response({"key": key, "value": None})


def _shown(value: Any, limit: int) -> str:
    """``value`` as JSON for a message, at most ``limit`` characters (orjson reads deeper nesting than it writes)."""
    try:
        return orjson.dumps(value).decode()[:limit]
    except orjson.JSONEncodeError:
        return "a value nested too deeply to show"


def _known(key: str) -> str:
    if key not in SETTINGS:
        raise ApiError(404, "NotFound", f"no hub setting {key!r}; the settings are: {', '.join(SETTINGS)}")
    return key
