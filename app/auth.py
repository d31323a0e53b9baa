"""Bearer tokens for the HTTP API: an aiohttp middleware in front of every view.

A request that changes state (any method but GET, HEAD and OPTIONS), and any request
under ``/admin/``, needs a token of ``SENSORSTREAM_API_TOKENS``; with
``SENSORSTREAM_PROTECT_READS`` the reads do too, except the probes. A refusal is the
same 401 whatever was wrong, so it tells a caller nothing about the tokens; the log says
why, never with the token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger("sensorstream.auth")

#: Always open: liveness and readiness probes carry no credentials.
OPEN_PATHS = frozenset({"/health", "/ready"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The operators' controls: reads under it need a token too (they show pauses and sinks).
ADMIN = "/admin"
#: Where a view finds the name of the token that was accepted.
TOKEN_NAME = "sensorstream.token_name"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_name(tokens: Mapping[str, str], authorization: str | None) -> str | None:
    """The name of the token in an ``Authorization: Bearer`` header, or None.

    Every configured token is compared in constant time, so the answer's timing does
    not depend on how much of a guess was right. Any text is an answer, never an error:
    a header with non-ASCII or undecodable bytes is an unknown token (401, not 500).
    """
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    try:
        # aiohttp decodes header bytes that are not UTF-8 as lone surrogates
        # (surrogateescape): they go back to their bytes; a surrogate of any other kind
        # cannot be a configured token.
        presented_bytes = presented.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    found = None
    for token, name in tokens.items():
        if hmac.compare_digest(token.encode(), presented_bytes):
            found = name
    return found


def needs_token(method: str, path: str, protect_reads: bool) -> bool:
    if method not in READ_METHODS or path == ADMIN or path.startswith(f"{ADMIN}/"):
        return True
    return protect_reads and path not in OPEN_PATHS


def unauthorized() -> web.Response:
    return web.json_response({"error": "unauthorized: send Authorization: Bearer TOKEN"},
                             status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="sensorstream"'})


def middleware(tokens: Mapping[str, str], protect_reads: bool) -> Callable:
    """The aiohttp middleware for ``tokens`` (``{token: name}``)."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if needs_token(request.method, request.path, protect_reads):
            name = token_name(tokens, request.headers.get("Authorization"))
            if name is None:
                reason = ("no token configured (SENSORSTREAM_API_TOKENS)" if not tokens
                          else "missing or unknown bearer token")
                log.warning("request refused: %s", reason,
                            extra={"method": request.method, "path": request.path,
                                   "remote": request.remote})
                return unauthorized()
            request[TOKEN_NAME] = name
        return await handler(request)

    return require_token


def service_headers(tokens: Mapping[str, str], protect_reads: bool) -> dict[str, str]:
    """Headers of a worker's own requests to the other workers of its group (the first
    configured token), when their reads are protected."""
    if not protect_reads or not tokens:
        return {}
    return {"Authorization": f"Bearer {next(iter(tokens))}"}
