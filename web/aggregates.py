"""``/sensors/{sensor_id}/aggregates`` and ``/locations/{location}/aggregates``: live and
sealed windows, read on the worker that owns the key (any worker answers)."""

from __future__ import annotations

from typing import Any

import orjson
from faust import web

from app.contract import format_ts, normalise_metric
from app.main import app, settings
from app.topics import sensor_partition
from tables import locations as location_windows
from tables.sensor_state import local_get, locations, state
from tables.stats import Sketching
from tables.windows import INTERVAL, LATEST, PART, describe, typical_interval, window_key
from web.params import BadRequest, bad_request, query_time, unknown_sensor

MAX_WINDOWS = 10_000
DEFAULT_WINDOWS = 60
SIZES = {size.label: size for size in settings.windows}
LATENESS_S = settings.allowed_lateness
sketching = Sketching(settings.sketch_accuracy)


def _range(request: web.Request, size_s: int, default_until: int) -> tuple[int, int]:
    """Window starts (seconds) from ``since`` to ``until``, both included."""
    until = query_time(request, "until")
    since = query_time(request, "since")
    until_s = (default_until if until is None else until) // 1_000_000 // size_s * size_s
    if since is None:
        since_s = until_s - (DEFAULT_WINDOWS - 1) * size_s
    else:
        since_s = since // 1_000_000 // size_s * size_s
    if since_s > until_s:
        raise BadRequest("since must not be after until")
    count = (until_s - since_s) // size_s + 1
    if count > MAX_WINDOWS:
        raise BadRequest(f"the range holds {count} windows, at most {MAX_WINDOWS} per "
                         "request: narrow since/until or use a larger window")
    return since_s, until_s


def _metric(request: web.Request, known: set[str], owner: str) -> str | None:
    text = request.query.get("metric")
    if text is None or not text.strip():
        return None
    metric = normalise_metric(text)
    if metric not in known:
        raise BadRequest(f"{owner} has no metric {text!r}; it has: {', '.join(sorted(known))}")
    return metric


def _window(request: web.Request, allowed: dict[str, Any], default: str) -> str:
    label = request.query.get("window", default).strip()
    if label not in allowed:
        raise BadRequest(f"window={label!r} is not kept; use one of: {', '.join(allowed)}")
    return label


@app.page("/sensors/{sensor_id}/aggregates")
@app.table_route(table=state, match_info="sensor_id")
async def sensor_aggregates(self: web.View, request: web.Request,
                            sensor_id: str) -> web.Response:
    """A sensor's windows of one size in time order, open ones flagged."""
    partition = sensor_partition(sensor_id)
    raw = local_get(state, partition, LATEST + sensor_id)
    if raw is None:
        return unknown_sensor(self, sensor_id)
    record = orjson.loads(raw)
    try:
        label = _window(request, SIZES, settings.windows[0].label)
        size = SIZES[label]
        metric = _metric(request, set(record["metrics"]), f"sensor {sensor_id!r}")
        since_s, until_s = _range(request, size.seconds, record["last_seen"])
    except BadRequest as exc:
        return bad_request(self, exc)
    part = local_get(state, partition, f"{PART}{partition}")
    newest = orjson.loads(part)["newest"] if part else None
    tracker = local_get(state, partition, INTERVAL + sensor_id)
    interval = typical_interval(orjson.loads(tracker)["gaps"]) if tracker else None
    found = []
    for start in range(since_s, until_s + 1, size.seconds):
        value = local_get(state, partition, window_key(size, start, sensor_id))
        if value is None:
            continue
        window = describe(size, start, orjson.loads(value), sketching, metric, newest, interval)
        if window["metrics"]:
            found.append(window)
    return self.json({
        "sensor_id": sensor_id, "window": label, "metric": metric,
        "since": format_ts(since_s * 1_000_000),
        "until": format_ts((until_s + size.seconds) * 1_000_000),
        "count": len(found), "windows": found,
    })


@app.page("/locations/{location}/aggregates")
@app.table_route(table=locations, match_info="location")
async def location_aggregates(self: web.View, request: web.Request,
                              location: str) -> web.Response:
    """A location's hourly aggregates with the number of sensors reporting."""
    partition = sensor_partition(location)
    raw = local_get(locations, partition, location_windows.INDEX + location)
    if raw is None:
        return self.json({"error": f"unknown location {location!r}"}, status=404)
    index = orjson.loads(raw)
    hour = location_windows.HOUR_S
    try:
        _window(request, {location_windows.LABEL: hour}, location_windows.LABEL)
        since_s, until_s = _range(request, hour, index["last"] * 1_000_000)
    except BadRequest as exc:
        return bad_request(self, exc)
    part = local_get(locations, partition, f"{PART}{partition}")
    newest_end = orjson.loads(part)["newest_end"] if part else 0
    records = []
    for start in range(since_s, until_s + 1, hour):
        value = local_get(locations, partition, location_windows.hour_key(start, location))
        if value is not None:
            records.append((start, orjson.loads(value)))
    known = {m for _, record in records for m in record["s"]}
    try:
        metric = _metric(request, known, f"location {location!r}") if known else None
    except BadRequest as exc:
        return bad_request(self, exc)
    found = [location_windows.describe(start, record, sketching,
                                       start + hour + LATENESS_S > newest_end, metric)
             for start, record in records]
    return self.json({
        "location": location, "window": location_windows.LABEL, "metric": metric,
        "since": format_ts(since_s * 1_000_000),
        "until": format_ts((until_s + hour) * 1_000_000),
        "count": len(found), "windows": found,
    })
