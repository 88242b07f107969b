"""aiohttp pieces shared by every HTTP server of fleetsync (the sim's, the hub's API, the agent's metrics)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from fleetsync.model.status import ApiError

log = logging.getLogger(__name__)

JSON = "application/json"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON, headers=headers)


@web.middleware
async def status_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Every failure leaves as a Kubernetes ``Status`` object with the right code."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.to_status(), exc.code, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = http_error(request, exc)
        return json_response(error.to_status(), exc.status, error.headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return json_response(ApiError(500, "InternalError", f"internal error serving {request.method} {request.path}; see the server's log").to_status(), 500)


def http_error(request: web.Request, exc: web.HTTPException) -> ApiError:
    """aiohttp's own refusal of a request (no route, a method the route has not, a body over
    ``client_max_size``) as an error that says what to do; only its ``Allow`` header is kept
    (its others describe aiohttp's plain-text body, which is not sent)."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if exc.status == 404:  # no route matched: say which path, as Kubernetes does
        return ApiError.path_not_found(request.path)
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        error = ApiError.method_not_allowed(request.method, request.path + (f"; allowed: {allowed.replace(',', ', ')}" if allowed else ""))
        error.headers = headers or {}
        return error
    if exc.status == 413:
        return ApiError(
            413,
            "RequestEntityTooLarge",
            f"the body of {request.method} {request.path} is larger than {request.client_max_size} bytes, the most this server takes",
        )
    return ApiError(exc.status, exc.reason.replace(" ", ""), exc.text or exc.reason, headers=headers)


def https_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server's TLS context from PEM files; a ValueError saying what is wrong with them."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:  # before OSError, which it is a kind of
        raise ValueError(f"TLS certificate {cert_file} / key {key_file}: {exc.reason or exc} (is the key the certificate's, both PEM?)") from None
    except OSError as exc:
        raise ValueError(f"TLS certificate {cert_file} / key {key_file}: {exc.strerror or exc}") from None
    return context


async def serve(app: web.Application, host: str, port: int, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """Start serving ``app`` on host:port (0: a free port; HTTPS with ``ssl_context=``); returns the runner (to clean up) and the port."""
    backlog = runner_options.pop("backlog", 128)
    ssl_context = runner_options.pop("ssl_context", None)
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    if port == 0:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port
