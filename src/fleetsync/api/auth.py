"""Who may use the hub's HTTP API: bearer tokens with roles.

Every request but the health checks, the API description and the dashboard's page and
static assets (``GET /``, ``GET /ui/...``: they hold no data; the API calls the page makes
carry a token like any other client's) carries
``Authorization: Bearer TOKEN`` (``kubectl --token``, ``fleetsync --token`` or
``FLEETSYNC_TOKEN``). A token's role decides what it may do:

- ``read``: every read (GET, including lists and watches); a read token created with a
  scope (``--clusters``, ``--cluster-selector``, ``--namespaces``, ``--types``) reads only
  what is in it, and only through the routes in :data:`SCOPE_AWARE_ROUTES`, which narrow
  their answers to it (``api/scope.py``); every other route is 403 for it;
- ``admin``: everything (also resyncs, and later gates and works);
- ``agent``: nothing here. An agent token writes its own cluster through the agent
  protocol only; it reads nothing, so a leaked agent token exposes no other cluster.

Tokens are looked up by their SHA-256 in the store, and the answer is cached for a few
seconds so that a busy API does not query the store per request; a deleted token stops
working within that time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from fleetsync.hub.auth import hash_token
from fleetsync.model.status import ApiError
from fleetsync.store.contract import Store, TokenRecord

#: Paths anyone may read: probes (kubelet and load balancers send no token) and the API description.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/livez", "/openapi.json"})
#: The dashboard's page and the prefix of its static assets (api/dashboard.py), public for GET and HEAD only.
DASHBOARD_PAGE = "/"
DASHBOARD_ASSETS = "/ui/"
#: Methods a read token may use.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The request key under which handlers find the caller's TokenRecord.
CALLER = "fleetsync.caller"

#: The routes (aiohttp's canonical patterns) that apply a scoped read token's scope
#: (``api/scope.py``); a scoped token is refused every other one, so that a route added later
#: is closed to it until it applies the scope too.
SCOPE_AWARE_ROUTES = frozenset(
    {
        "/api/v1/clusters",
        "/api/v1/clusters/{cluster}/labels",
        "/api/v1/servicegraph",
        # fleetsync's own events (api/events.py) and the fleetsync.io group's discovery
        "/apis/fleetsync.io/v1/fleetsyncevents",
        "/clusters/{cluster}/apis/fleetsync.io/v1/fleetsyncevents",
        "/apis/fleetsync.io",
        "/apis/fleetsync.io/v1",
        "/clusters/{cluster}/apis/fleetsync.io",
        "/clusters/{cluster}/apis/fleetsync.io/v1",
        # the Cluster resource (api/clusters.py; deleting one needs an admin token anyway)
        "/apis/fleetsync.io/v1/clusters",
        "/apis/fleetsync.io/v1/clusters/{name}",
        "/clusters/{cluster}/{tail}",
        "/version",
        "/api",
        "/apis",
        "/api/{tail}",
        "/apis/{tail}",
    }
)

_HOW_TO = "send `Authorization: Bearer TOKEN` (kubectl --token, fleetsync --token or FLEETSYNC_TOKEN); an admin creates one with `fleetsync token create NAME --role read`"


class Authenticator:
    """Maps an ``Authorization`` header to the token's record, with a short cache."""

    def __init__(self, store: Store, *, cache_seconds: float = 5.0, max_cached: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.max_cached = max_cached
        self.clock = clock
        self._cache: dict[str, tuple[float, TokenRecord | None]] = {}

    async def caller(self, header: str | None) -> TokenRecord:
        """The token the header presents; ApiError 401 saying what is wrong otherwise."""
        if not header:
            raise _unauthorized(f"this hub needs an API token: {_HOW_TO}")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized(f"the Authorization header must be `Bearer TOKEN`, not a {scheme or 'blank'} credential")
        record = await self._find(hash_token(token))
        if record is None:
            raise _unauthorized("the API token is not valid on this hub (it is unknown, or was deleted with `fleetsync token delete`)")
        return record

    async def _find(self, token_hash: str) -> TokenRecord | None:
        now = self.clock()
        cached = self._cache.get(token_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self.store.find_token(token_hash)
        if len(self._cache) >= self.max_cached:  # unknown tokens are cached too; bound what a flood of them costs
            self._cache.clear()
        self._cache[token_hash] = (now + self.cache_seconds, record)
        return record


def authorize(caller: TokenRecord, method: str, path: str) -> None:
    """ApiError 403 unless ``caller`` may send ``method`` to ``path``."""
    if caller.role == "agent":
        raise ApiError.forbidden(
            f'token "{caller.name}" is an agent token: it may only sync cluster {caller.name} through the agent protocol, '
            "not use the API; use a token created with --role read or --role admin"
        )
    if caller.role == "admin" or (caller.role == "read" and method in READ_METHODS):
        return
    raise ApiError.forbidden(f'token "{caller.name}" has role {caller.role}: {method} {path} needs role admin')


def middleware(authenticator: Authenticator) -> Middleware:
    """An aiohttp middleware admitting only callers whose token allows the request
    (errors are raised as ApiError, for the status middleware outside it to render)."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not public(request.method, request.path):
            caller = await authenticator.caller(request.headers.get("Authorization"))
            authorize(caller, request.method, request.path)
            resource = request.match_info.route.resource
            if caller.role == "read" and caller.scope is not None and resource is not None and resource.canonical not in SCOPE_AWARE_ROUTES:
                raise ApiError.forbidden(
                    f'token "{caller.name}" is scoped (to part of the fleet): {request.path} is not filtered by a scope, so it needs a read token without one'
                )
            request[CALLER] = caller
        return await handler(request)

    return authenticate


def public(method: str, path: str) -> bool:
    """Whether ``method path`` needs no token: the probes, the API description, the dashboard's page and assets."""
    if path in PUBLIC_PATHS:
        return True
    return method in ("GET", "HEAD") and (path == DASHBOARD_PAGE or path.startswith(DASHBOARD_ASSETS))


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "Unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="fleetsync"'})


def caller_name(request: web.Request) -> str:
    """Who made ``request``: its token's name (what the store records as a write's author)."""
    caller: TokenRecord | None = request.get(CALLER)
    return caller.name if caller else "unknown"
