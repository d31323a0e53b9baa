"""``/fleet``: what the dashboard's grid shows, gathered from every worker of the group.

Per worker: its input, dead-letter and late rates (readings per second over the last
minute, from the accounting counters), its consumer lag, and its sensors with their
latest values, today's completeness (health), freshness, position and state.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from faust import web

from app.contract import format_ts, now_us
from app.locations import mote_locations
from app.main import app, settings
from app.metrics import DEAD_LETTERED, LATE, READINGS_IN
from tables.anomalies import RECENT, RECENT_DIGITS, recent_start
from tables.daily import day_of
from tables.sensor_state import local_keys, local_partitions, local_prefixed, state
from tables.windows import LATEST
from web.dashboard_parts import RateMeter, merge_fleet, sensor_state
from web.group import answer, gather, me
from web.metrics import consumer_lag
from web.params import BadRequest, bad_request, scope
from web.quality import Sensor, quality
from web.quality import _clock as partition_clock

#: A sensor with an anomaly event this recently (event time of its partition) is
#: ``anomalous`` on the dashboard.
ANOMALOUS_FOR_S = 600
RATE_WINDOW_S = 60.0
SAMPLE_EVERY_S = 5.0
COUNTERS = {"input": READINGS_IN, "dead_letter": DEAD_LETTERED, "late": LATE}

meter = RateMeter(RATE_WINDOW_S)


def counter_totals() -> dict[str, float]:
    """Each counter summed over its labels (topics, reasons)."""
    return {name: sum(s.value for family in counter.collect() for s in family.samples
                      if s.name.endswith("_total"))
            for name, counter in COUNTERS.items()}


@app.timer(interval=SAMPLE_EVERY_S)
async def sample_rates() -> None:
    meter.sample(time.monotonic(), counter_totals())


def _lag() -> int | None:
    try:
        return sum(consumer_lag().values()) if app.consumer is not None else None
    except RuntimeError:  # the assignment changed while it was read: next poll
        return None


def _recent_anomalies(partition: int, since_us: int) -> dict[str, int]:
    """Anomaly events per sensor of one partition from ``since_us`` on (the keys are in
    time order, so only the recent ones are read)."""
    counts: dict[str, int] = {}
    for key in local_keys(state, partition, f"{RECENT}{since_us:0{RECENT_DIGITS}d}"):
        if not key.startswith(RECENT):
            break
        if recent_start(key) >= since_us:
            sensor_id = key[len(RECENT) + RECENT_DIGITS + 1:].split("|", 1)[0]
            counts[sensor_id] = counts.get(sensor_id, 0) + 1
    return counts


def _position(sensor_id: str, attributes: dict[str, Any]) -> list[float] | None:
    place = attributes.get("location")
    if isinstance(place, dict) and all(
            isinstance(place.get(k), int | float) and not isinstance(place.get(k), bool)
            for k in ("x", "y")):
        return [float(place["x"]), float(place["y"])]
    known = mote_locations().get(sensor_id)
    return list(known) if known else None


def _partition_sensors(partition: int) -> list[dict[str, Any]]:
    clock = partition_clock(partition)
    anomalies = _recent_anomalies(partition, clock - ANOMALOUS_FOR_S * 1_000_000)
    found = []
    for key, raw in local_prefixed(state, LATEST, [partition]):
        sensor_id = key[len(LATEST):]
        latest = orjson.loads(raw)
        sensor = Sensor.read(sensor_id, latest, clock)
        q = quality(sensor, day_of(clock))
        recent = anomalies.get(sensor_id, 0)
        found.append({
            "sensor_id": sensor_id, "last_seen": q["last_seen"],
            "freshness_s": q["freshness_s"], "event_time_lag_s": q["event_time_lag_s"],
            "typical_interval_s": q["typical_interval_s"],
            "health_pct": q["completeness_pct"], "silent": q["silent"],
            "recent_anomalies": recent,
            "state": sensor_state(q["silent"], q["event_time_lag_s"], q["typical_interval_s"],
                                  settings.silent_after, recent),
            "values": {metric: value for metric, (_ts, value) in latest["metrics"].items()},
            "position": _position(sensor_id, latest.get("attributes") or {}),
        })
    return found


def local_entry() -> dict[str, Any]:
    """This worker's part of ``/fleet``."""
    sensors = [s for p in local_partitions(state) for s in _partition_sensors(p)]
    return {"worker": me(), "at": format_ts(now_us()),
            "rates": meter.rates(), "rate_window_s": RATE_WINDOW_S, "lag": _lag(),
            "sensors": sensors}


@app.page("/fleet")
async def get_fleet(self: web.View, request: web.Request) -> web.Response:
    """The dashboard's grid: every sensor's latest values, health, freshness and state,
    and the group's rates and lag (``?scope=local``: this worker's entry only)."""
    try:
        where = scope(request)
    except BadRequest as exc:
        return bad_request(self, exc)
    mine = local_entry()
    if where == "local":
        return self.json({"workers": [mine]})
    workers, unreachable = await gather([mine], "/fleet", "workers")
    return self.json(answer(merge_fleet(workers, RATE_WINDOW_S), unreachable))
