"""Data quality and the daily summary, from the day records (tables.daily):

- ``/quality``: the fleet's figures for one UTC day, from every worker;
- ``/sensors/{sensor_id}/quality``: one sensor's, routed to the worker that owns it;
- ``/sensors/{sensor_id}/daily``: per day, the 1-day aggregate next to the day's
  anomaly counts by severity and its quality;
- the same figures on ``/metrics`` (computed in the background, served at scrape time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from faust import web
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.contract import format_ts, now_us
from app.main import app, settings
from app.topics import sensor_partition
from tables import daily
from tables.anomalies import SILENT
from tables.daily import DAY_S, UNATTRIBUTED, day_key, day_of
from tables.sensor_state import local_get, local_partitions, local_prefixed, state
from tables.stats import Sketching
from tables.windows import INTERVAL, LATEST, PART, describe, typical_interval, window_key
from web.group import answer, gather
from web.params import BadRequest, bad_request, scope, unknown_sensor

log = logging.getLogger(__name__)

DAY_WINDOW = next((size for size in settings.windows if size.seconds == DAY_S), None)
MAX_DAYS = 366
DEFAULT_DAYS = 7
sketching = Sketching(settings.sketch_accuracy)


def _get(partition: int, key: str) -> Any:
    raw = local_get(state, partition, key)
    return orjson.loads(raw) if raw is not None else None


def _clock(partition: int) -> int:
    """The partition's event time, never past the wall clock (as silence is judged)."""
    part = _get(partition, f"{PART}{partition}")
    now = now_us()
    return min(part["newest"], now) if part and part["newest"] else now


def _day(text: str | None) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"date={text!r} is not a day: use YYYY-MM-DD (UTC)") from None
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _day_text(day_s: int) -> str:
    return datetime.fromtimestamp(day_s, UTC).date().isoformat()


@dataclass(frozen=True)
class Sensor:
    """What every day of one sensor's quality reads: read once per request."""

    sensor_id: str
    partition: int
    last_seen: int
    clock: int  #: its partition's event time (``_clock``)
    interval: int | None
    silent: bool

    @classmethod
    def read(cls, sensor_id: str, latest: dict[str, Any], clock: int) -> Sensor:
        partition = sensor_partition(sensor_id)
        tracker = _get(partition, INTERVAL + sensor_id)
        return cls(sensor_id, partition, latest["last_seen"], clock,
                   typical_interval(tracker["gaps"]) if tracker else None,
                   _get(partition, SILENT + sensor_id) is not None)


def quality(sensor: Sensor, day_s: int) -> dict[str, Any]:
    """One sensor's quality on one UTC day."""
    partition, sensor_id, interval = sensor.partition, sensor.sensor_id, sensor.interval
    record = _get(partition, day_key(day_s, sensor_id))
    started = _get(partition, day_key(day_s - DAY_S, sensor_id)) is None
    span = daily.span(day_s, record, started, sensor.clock)
    by_metric = daily.completeness(record, interval, span)
    counts = daily.counts(record)
    return {
        "sensor_id": sensor_id, "date": _day_text(day_s), "last_seen": format_ts(sensor.last_seen),
        "freshness_s": round((now_us() - sensor.last_seen) / 1e6, 3),
        "event_time_lag_s": round(max(0, sensor.clock - sensor.last_seen) / 1e6, 3),
        "typical_interval_s": interval / 1e6 if interval else None,
        "silent": sensor.silent,
        "completeness_pct": daily.mean(by_metric.values()),
        "completeness_by_metric": by_metric,
        "counts": counts, "rates": daily.rates(counts),
    }


def _local(day_s: int) -> list[dict[str, Any]]:
    return [entry for part in _local_parts(day_s) for entry in part]


def _local_parts(day_s: int) -> Iterator[list[dict[str, Any]]]:
    """The entries of each local partition, then the unattributed ones: a caller that
    must not hold the event loop for all of them can yield in between."""
    partitions = local_partitions(state)
    for partition in partitions:
        yield _sensor_entries(partition, day_s)
    yield _unattributed(partitions, day_s)


def _sensor_entries(partition: int, day_s: int) -> list[dict[str, Any]]:
    clock = _clock(partition)
    return [quality(Sensor.read(key[len(LATEST):], orjson.loads(value), clock), day_s)
            for key, value in local_prefixed(state, LATEST, [partition])]


def _unattributed(partitions: list[int], day_s: int) -> list[dict[str, Any]]:
    found = []
    for partition in partitions:
        record = _get(partition, day_key(day_s, UNATTRIBUTED))
        if record is not None:
            found.append({"sensor_id": None, "date": _day_text(day_s),
                          "counts": daily.counts(record)})
    return found


def _default_day() -> int:
    """The day the newest of this worker's partitions is in (event time, never past the
    wall clock): today for a live fleet, the replayed day for a replay."""
    return day_of(max((_clock(p) for p in local_partitions(state)), default=now_us()))


@app.page("/quality")
async def fleet_quality(self: web.View, request: web.Request) -> web.Response:
    """The fleet's data quality on one UTC day (``date``, default: the current one)."""
    try:
        day_s = _day(request.query.get("date"))
        where = scope(request)
    except BadRequest as exc:
        return bad_request(self, exc)
    day_s = _default_day() if day_s is None else day_s
    found = _local(day_s)
    if where == "local":
        return self.json({"sensors": found})
    found, unreachable = await gather(
        found, f"/quality?{urlencode({'date': _day_text(day_s)})}", "sensors")
    return self.json(answer({"date": _day_text(day_s), **daily.fleet(found)}, unreachable))


@app.page("/sensors/{sensor_id}/quality")
@app.table_route(table=state, match_info="sensor_id")
async def sensor_quality(self: web.View, request: web.Request, sensor_id: str) -> web.Response:
    """One sensor's data quality on one UTC day (``date``, default: the current one)."""
    partition = sensor_partition(sensor_id)
    latest = _get(partition, LATEST + sensor_id)
    if latest is None:
        return unknown_sensor(self, sensor_id)
    try:
        day_s = _day(request.query.get("date"))
    except BadRequest as exc:
        return bad_request(self, exc)
    sensor = Sensor.read(sensor_id, latest, _clock(partition))
    day_s = day_of(sensor.clock) if day_s is None else day_s
    return self.json(quality(sensor, day_s))


@app.page("/sensors/{sensor_id}/daily")
@app.table_route(table=state, match_info="sensor_id")
async def sensor_daily(self: web.View, request: web.Request, sensor_id: str) -> web.Response:
    """Per UTC day from ``since`` to ``until`` (default: the last 7 of the sensor's days):
    the 1-day aggregate, the anomalies by severity and detector, and the data quality."""
    partition = sensor_partition(sensor_id)
    latest = _get(partition, LATEST + sensor_id)
    if latest is None:
        return unknown_sensor(self, sensor_id)
    sensor = Sensor.read(sensor_id, latest, _clock(partition))
    try:
        until = _day(request.query.get("until"))
        until = day_of(max(sensor.last_seen, sensor.clock)) if until is None else until
        since = _day(request.query.get("since"))
        since = until - (DEFAULT_DAYS - 1) * DAY_S if since is None else since
        if since > until:
            raise BadRequest("since must not be after until")
        if (until - since) // DAY_S + 1 > MAX_DAYS:
            raise BadRequest(f"at most {MAX_DAYS} days per request: narrow since/until")
    except BadRequest as exc:
        return bad_request(self, exc)
    days = []
    for day_s in range(since, until + 1, DAY_S):
        record = _get(partition, day_key(day_s, sensor_id))
        window = (_get(partition, window_key(DAY_WINDOW, day_s, sensor_id))
                  if DAY_WINDOW is not None else None)
        if record is None and window is None:
            continue
        days.append({
            "date": _day_text(day_s),
            "aggregate": describe(DAY_WINDOW, day_s, window, sketching,
                                  newest_us=sensor.clock) if window else None,
            "anomalies": daily.anomalies(record),
            "quality": quality(sensor, day_s),
        })
    return self.json({"sensor_id": sensor_id, "since": _day_text(since),
                      "until": _day_text(until), "count": len(days), "days": days})


class QualityCollector(Collector):
    """``/metrics``: this worker's share of the fleet's quality figures on the current
    day, and per sensor up to ``SENSORSTREAM_QUALITY_METRICS_SENSORS`` sensors.

    The figures read every sensor's state (~1 s per 100,000 sensors), so a scrape never
    computes them: ``refresh_quality`` does, in the background, a partition at a time
    (the stream runs in between), at most every ``MIN_AGE_S`` and never more often than
    20 times the last computation took. A scrape serves the latest figures."""

    MIN_AGE_S = 15.0

    def __init__(self) -> None:
        self.figures: tuple[list[dict[str, Any]], dict[str, Any]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not app.started or app.consumer is None or not app.tables.recovery.completed.is_set():
            return
        if self.figures is None:
            return
        entries, totals = self.figures
        readings = GaugeMetricFamily(
            "sensorstream_quality_readings",
            "Readings of the current UTC day on this worker's sensors, by kind", labels=["kind"])
        for kind, n in totals["counts"].items():
            readings.add_metric([kind], n)
        yield readings
        yield GaugeMetricFamily("sensorstream_quality_sensors",
                                "Sensors this worker owns", value=totals["sensors"])
        yield GaugeMetricFamily("sensorstream_quality_silent_sensors",
                                "Sensors of this worker reported silent", value=totals["silent"])
        if totals["completeness_pct"] is not None:
            yield GaugeMetricFamily(
                "sensorstream_quality_completeness_percent",
                "Mean completeness of this worker's sensors on the current UTC day",
                value=totals["completeness_pct"])
        if totals["freshness_s"]["max"] is not None:
            yield GaugeMetricFamily(
                "sensorstream_quality_freshness_max_seconds",
                "Seconds since the last reading of this worker's stalest sensor",
                value=totals["freshness_s"]["max"])
        sensors = [e for e in entries if e["sensor_id"] is not None]
        if not sensors or len(sensors) > settings.quality_metrics_sensors:
            return
        completeness = GaugeMetricFamily(
            "sensorstream_sensor_completeness_percent",
            "Readings received over readings expected on the current UTC day", labels=["sensor_id"])
        freshness = GaugeMetricFamily(
            "sensorstream_sensor_freshness_seconds", "Seconds since the sensor's last reading",
            labels=["sensor_id"])
        rate = GaugeMetricFamily(
            "sensorstream_sensor_quality_rate",
            "Fraction of the sensor's readings of the current UTC day, by kind",
            labels=["sensor_id", "kind"])
        for entry in sensors:
            if entry["completeness_pct"] is not None:
                completeness.add_metric([entry["sensor_id"]], entry["completeness_pct"])
            freshness.add_metric([entry["sensor_id"]], entry["freshness_s"])
            for kind, value in entry["rates"].items():
                if value is not None:
                    rate.add_metric([entry["sensor_id"], kind], value)
        yield from (completeness, freshness, rate)


COLLECTOR = QualityCollector()
REGISTRY.register(COLLECTOR)


@app.task
async def refresh_quality() -> None:
    """Recompute the figures ``/metrics`` serves, yielding to the stream between
    partitions."""
    while True:
        if not app.started or app.consumer is None or (
                not app.tables.recovery.completed.is_set()):
            await asyncio.sleep(1.0)
            continue
        began = time.monotonic()
        try:
            entries: list[dict[str, Any]] = []
            for part in _local_parts(_default_day()):
                entries += part
                await asyncio.sleep(0)
            COLLECTOR.figures = entries, daily.fleet(entries)
        except Exception as exc:  # e.g. partitions moved meanwhile: the next round retries
            log.warning("quality figures for /metrics not recomputed: %s", exc)
        await asyncio.sleep(max(QualityCollector.MIN_AGE_S, 20 * (time.monotonic() - began)))
