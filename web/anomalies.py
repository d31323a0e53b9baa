"""``/anomalies`` (the fleet's recent anomaly events, from every worker) and
``/sensors/{sensor_id}/baselines`` (routed to the worker that owns the sensor)."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlencode

import orjson
from faust import web

from app.contract import format_ts, normalise_metric
from app.main import app, settings
from app.topics import sensor_partition
from tables import baseline
from tables.anomalies import BASE, RECENT, recent_start
from tables.sensor_state import local_get, local_keys, local_prefixed, state
from tables.windows import LATEST
from web.group import answer, gather
from web.params import BadRequest, bad_request, query_time, scope, unknown_sensor

SEVERITIES = ("low", "medium", "high")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
RULES = baseline.Rules.from_settings(settings)


def _filters(request: web.Request) -> dict[str, Any]:
    query = request.query
    severity = query.get("severity", "").strip() or None
    if severity is not None and severity not in SEVERITIES:
        raise BadRequest(f"severity={severity!r}: use one of {', '.join(SEVERITIES)} "
                         "(that severity and above)")
    text = query.get("limit", str(DEFAULT_LIMIT)).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f"limit={text!r}: a whole number from 1 to {MAX_LIMIT}")
    metric = query.get("metric", "").strip()
    return {"sensor_id": query.get("sensor_id", "").strip() or None,
            "metric": normalise_metric(metric) if metric else None,
            "severity": severity, "since": query_time(request, "since"), "limit": int(text)}


def _local(filters: dict[str, Any]) -> list[dict[str, Any]]:
    since = filters["since"]
    least = SEVERITIES.index(filters["severity"]) if filters["severity"] else 0
    found = []
    for key, value in local_prefixed(state, RECENT):
        if since is not None and recent_start(key) < since:
            continue
        anomaly = orjson.loads(value)
        if filters["sensor_id"] not in (None, anomaly["sensor_id"]):
            continue
        if filters["metric"] not in (None, anomaly["metric"]):
            continue
        if SEVERITIES.index(anomaly["severity"]) < least:
            continue
        found.append(anomaly)
    return found


@app.page("/anomalies")
async def list_anomalies(self: web.View, request: web.Request) -> web.Response:
    """Recent anomaly events, newest first: ``sensor_id``, ``metric``, ``severity`` (that
    and above), ``since`` and ``limit`` (default 100) narrow them."""
    try:
        filters = _filters(request)
        where = scope(request)
    except BadRequest as exc:
        return bad_request(self, exc)
    found, unreachable = _local(filters), []
    if where == "group":
        query = {k: v for k, v in request.query.items() if k != "scope"}
        found, unreachable = await gather(found, f"/anomalies?{urlencode(query)}", "anomalies")
    found.sort(key=lambda a: (a["ts"], a["sensor_id"], a["metric"] or "", a["detector"]),
               reverse=True)
    return self.json(answer({"count": min(len(found), filters["limit"]),
                             "anomalies": found[:filters["limit"]]}, unreachable))


def describe(metric: str, record: dict[str, Any]) -> dict[str, Any]:
    """A baseline as operators read it."""
    sd = baseline.stddev(record)
    warm = record["n"] >= RULES.warmup and sd > 0
    hours = {}
    for hour, (n, mean, m2) in sorted(record["hours"].items()):
        hours[hour] = {"readings": n, "mean": mean,
                       "stddev": math.sqrt(m2 / (n - 1)) if n > 1 else None}
    return {
        "metric": metric, "readings": record["n"], "warmed_up": warm,
        "mean": record["mean"] if record["n"] else None,
        "stddev": sd if record["n"] > 1 else None,
        "expected": [record["mean"] - RULES.z_low * sd, record["mean"] + RULES.z_low * sd]
        if warm else None,
        "last_judged": format_ts(record["through"]) if record["through"] else None,
        "by_hour_utc": hours,
    }


@app.page("/sensors/{sensor_id}/baselines")
@app.table_route(table=state, match_info="sensor_id")
async def get_baselines(self: web.View, request: web.Request, sensor_id: str) -> web.Response:
    partition = sensor_partition(sensor_id)
    if local_get(state, partition, LATEST + sensor_id) is None:
        return unknown_sensor(self, sensor_id)
    prefix = f"{BASE}{sensor_id}|"
    metrics = []
    for key in local_keys(state, partition, prefix):
        if not key.startswith(prefix):
            break
        raw = local_get(state, partition, key)
        if raw is not None:
            metrics.append(describe(key[len(prefix):], orjson.loads(raw)))
    return self.json({"sensor_id": sensor_id, "half_life_s": RULES.half_life_us / 1e6,
                      "warmup": RULES.warmup, "baselines": metrics})
