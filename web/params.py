"""What every view shares: query parameters read or refused with a message (400), the
group/local scope of fleet-wide views, and the answer for an unknown sensor (404)."""

from __future__ import annotations

from faust import web

from app.contract import parse_time


class BadRequest(ValueError):
    """A query parameter the view cannot use; the message says why."""


def bad_request(view: web.View, exc: BadRequest) -> web.Response:
    return view.json({"error": str(exc)}, status=400)


def unknown_sensor(view: web.View, sensor_id: str) -> web.Response:
    return view.json({"error": f"unknown sensor {sensor_id!r}"}, status=404)


def query_time(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None or not text.strip():
        return None
    ts = parse_time(text)
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
