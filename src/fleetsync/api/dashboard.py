"""The hub's web dashboard: ``GET /`` is the page, ``GET /ui/NAME`` its assets.

Plain HTML, CSS and JavaScript modules shipped in the package (``fleetsync/api/static``):
nothing to build, nothing fetched from elsewhere. The page and its assets hold no data and
are served without a token (``api/auth.py``); the page asks for an API token once, keeps it
in the browser's session (or local) storage and sends it with every API call it makes, which
the hub checks as it checks any other client's (read: the views; admin: gate and work edits).

Only the files found in the package at start are served, by name (no paths, no directory
listing); each answer says ``Cache-Control: no-cache`` so that a new hub version's page is
picked up at once.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from fleetsync.model.status import ApiError

#: The page.
INDEX = "/"
#: Where the page's assets are served (``/ui/app.js``, ...).
ASSETS = "/ui/"
#: The files served, by suffix, with their media types.
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: The page and its scripts talk to this hub only.
SECURITY_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files shipped in the package: name -> (content, media type)."""
    found: dict[str, tuple[bytes, str]] = {}
    for entry in (resources.files("fleetsync.api") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            found[entry.name] = (entry.read_bytes(), MEDIA_TYPES[suffix])
    if "index.html" not in found:
        raise RuntimeError("the dashboard's files are missing from the fleetsync package (fleetsync/api/static/index.html)")
    return found


class Dashboard:
    """Serves the dashboard's page and assets from memory."""

    def __init__(self) -> None:
        self.assets = load_assets()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(INDEX, self.index)
        app.router.add_get(ASSETS + "{name}", self.asset)

    async def index(self, request: web.Request) -> web.Response:
        return self._serve("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.assets:
            raise ApiError.path_not_found(request.path)
        return self._serve(name)

    def _serve(self, name: str) -> web.Response:
        body, media_type = self.assets[name]
        return web.Response(body=body, content_type=media_type, charset="utf-8", headers=SECURITY_HEADERS)
