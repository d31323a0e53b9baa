"""The outermost layers of every request (aiohttp middlewares, app.main): parameters no
view can use are refused with 400 before any view runs (``web.params.check_params``), and
an exception no view expected becomes a short JSON 500, its traceback logged here, never
sent. Issue 18: NUL bytes reached asyncpg and a 5,000-digit time reached ``int()``, and
both answered with aiohttp's 500."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from web.params import BadRequest, check_params

log = logging.getLogger("sensorstream.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def last_resort(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: whatever a view (or a layer inside) raises, the caller gets JSON."""
    try:
        return await handler(request)
    except (web.HTTPException, asyncio.CancelledError):
        raise  # aiohttp's own answers (404, 405, ...) and a client gone away
    except Exception as exc:
        log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=True,
                  extra={"method": request.method, "path": request.path})
        return web.json_response(
            {"error": "internal error: the request failed; the server log has the cause"},
            status=500)


@web.middleware
async def checked_params(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (400, naming the parameter) a query or path parameter with NUL, a
    surrogate or more than ``MAX_PARAM_CHARS`` characters."""
    try:
        check_params(request.query.items(), request.match_info.items())
    except BadRequest as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return await handler(request)
