"""aiohttp pieces shared by every HTTP server of fleetsync (the sim's, the hub's API, the agent's metrics)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from fleetsync.model.status import ApiError

log = logging.getLogger(__name__)

JSON = "application/json"


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON)


@web.middleware
async def status_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every failure leaves as a Kubernetes ``Status`` object with the right code."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.to_status(), exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response(ApiError(exc.status, exc.reason, exc.text or exc.reason).to_status(), exc.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return json_response(ApiError(500, "InternalError", f"internal error serving {request.method} {request.path}; see the server's log").to_status(), 500)


async def serve(app: web.Application, host: str, port: int, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """Start serving ``app`` on host:port (0: a free port); returns the runner (to clean up) and the port."""
    backlog = runner_options.pop("backlog", 128)
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    if port == 0:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port
