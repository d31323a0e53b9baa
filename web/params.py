"""What every view shares: query parameters read or refused with a message (400), the
group/local scope of fleet-wide views, and the answer for an unknown sensor (404).

``check_request`` is the first layer every request passes (``web.guard``): a value no
view can use is refused here, naming the parameter, before a view hands it to a store
(asyncpg refuses NUL in text; ``int()`` refuses more than 4,300 digits)."""

from __future__ import annotations

from collections.abc import Iterable

from faust import web

from app.contract import bad_text
from app.history.query import time_param

#: Longest query or path parameter value: a history cursor of the longest sensor id and
#: metric (256 characters each, app.contract) fits; aiohttp caps a request line at 8 KB.
MAX_PARAM_CHARS = 4096
#: Longest parameter name (every name a view knows is a word).
MAX_NAME_CHARS = 64


class BadRequest(ValueError):
    """A query parameter the view cannot use; the message says why."""


def bad_request(view: web.View, exc: BadRequest) -> web.Response:
    return view.json({"error": str(exc)}, status=400)


def unknown_sensor(view: web.View, sensor_id: str) -> web.Response:
    return view.json({"error": f"unknown sensor {sensor_id!r}"}, status=404)


def check_value(kind: str, name: str, value: str) -> None:
    """BadRequest naming the parameter when ``value`` holds what no view can use: NUL,
    a surrogate (no UTF-8 form: stores and JSON refuse it), or more than
    ``MAX_PARAM_CHARS`` characters."""
    shown = name if len(name) <= MAX_NAME_CHARS else f"{name[:MAX_NAME_CHARS]}..."
    if len(name) > MAX_NAME_CHARS:
        raise BadRequest(f"{kind} parameter name {shown!r} is longer than "
                         f"{MAX_NAME_CHARS} characters")
    if bad_text(name):
        raise BadRequest(f"{kind} parameter name {shown!r} holds a NUL or a surrogate")
    if len(value) > MAX_PARAM_CHARS:
        raise BadRequest(f"{kind} parameter {shown!r} is longer than {MAX_PARAM_CHARS} "
                         f"characters ({len(value)})")
    if bad_text(value):
        raise BadRequest(f"{kind} parameter {shown!r} holds a NUL or a surrogate "
                         "(percent-encoded bytes that are not UTF-8 text)")


def check_params(query: Iterable[tuple[str, str]],
                 path: Iterable[tuple[str, str]] = ()) -> None:
    """Every query and path parameter of a request checked (``check_value``)."""
    for name, value in path:
        check_value("path", name, value)
    for name, value in query:
        check_value("query", name, value)


def query_time(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None or not text.strip():
        return None
    ts = time_param(text.strip())
    if ts is None:
        raise BadRequest(f"{name}={text!r} is not a time: use ISO 8601 "
                         "(2026-11-22T10:00:00Z) or epoch seconds/ms/us/ns")
    return ts




def scope(request: web.Request) -> str:
    """``group`` (default: gather from every worker) or ``local`` (this worker's only)."""
    value = request.query.get("scope", "group")
    if value not in ("group", "local"):
        raise BadRequest(f"scope must be 'group' (default) or 'local', not {value!r}")
    return value
