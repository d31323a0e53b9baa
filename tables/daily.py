"""Per sensor and UTC day: how good its data was and which anomalies it raised. The
daily summary (``/sensors/{id}/daily``, next to the 1-day aggregate) and the data
quality figures (``/quality``, ``/sensors/{id}/quality``, ``/metrics``) read it. No Faust.

Key ``~day|{day_start_s:010d}|{sensor}`` (sensor ``""``: dead letters whose sensor id
could not be read), in the state table next to the windows. Readings count on the day of
their reading time; dead letters on the day the sensor's partition had reached.

Anomaly counts are exact: each (metric, detector) raises events in time order, so a
record keeps the newest time it counted per pair and an event raised again (a batch
re-delivered after a crash) is not counted twice. The quality counts are counted as the
stage classifies readings: after a crash, the readings of a re-delivered batch that the
state had already stored count again, as duplicates (the aggregates stay exact).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from tables.windows import Store

DAY = "~day|"
DAY_DIGITS = 10
DAY_S = 86_400
DAY_US = DAY_S * 1_000_000
UNATTRIBUTED = ""
#: Per metric, in the order the record keeps them.
KINDS = ("accepted", "null", "out_of_range", "duplicate", "late")
RATES = ("null", "out_of_range", "duplicate", "late", "dead_letter")
SEVERITIES = ("low", "medium", "high")
#: Events that are not anomalies of the sensor's data: a cooldown's end (its repeats are
#: counted apart) and a silent sensor reporting again.
NOT_COUNTED = frozenset({"recovered"})


def day_key(day_s: int, sensor_id: str) -> str:
    return f"{DAY}{day_s:0{DAY_DIGITS}d}|{sensor_id}"


def day_of(ts: int) -> int:
    """The UTC day (its start, in seconds) of a time in microseconds."""
    return ts // DAY_US * DAY_S


def new() -> dict[str, Any]:
    return {"first": None, "m": {}, "dead_letter": 0, "anomalies": {}, "detectors": {},
            "repeats": 0, "last": {}}


class Days:
    """The day records one batch changes; ``write`` stores them."""

    def __init__(self, store: Store, ranges: Mapping[str, tuple[float, float]]) -> None:
        self.store = store
        self.ranges = ranges
        self._records: dict[str, dict[str, Any]] = {}
        self.created: list[int] = []  #: days of records this batch started

    def record(self, sensor_id: str, ts: int) -> dict[str, Any]:
        day_s = day_of(ts)
        key = day_key(day_s, sensor_id)
        record = self._records.get(key)
        if record is None:
            raw = self.store.get(key)
            if raw is None:
                record = new()
                self.created.append(day_s)
            else:
                record = orjson.loads(raw)
            self._records[key] = record
        return record

    def _metric(self, sensor_id: str, ts: int, metric: str) -> list[int]:
        return self.record(sensor_id, ts)["m"].setdefault(metric, [0] * len(KINDS))

    def accepted(self, sensor_id: str, ts: int, metric: str, value: float | None) -> None:
        counts = self._metric(sensor_id, ts, metric)
        counts[0] += 1
        if value is None:
            counts[1] += 1
        else:
            bounds = self.ranges.get(metric)
            if bounds is not None and not bounds[0] <= value <= bounds[1]:
                counts[2] += 1
        record = self.record(sensor_id, ts)
        if record["first"] is None or ts < record["first"]:
            record["first"] = ts

    def rejected(self, sensor_id: str, ts: int, metric: str, kind: str) -> None:
        """A ``duplicate`` or ``late`` reading of one metric."""
        self._metric(sensor_id, ts, metric)[KINDS.index(kind)] += 1

    def dead_letters(self, sensor_id: str, ts: int, n: int) -> None:
        self.record(sensor_id, ts)["dead_letter"] += n

    def anomaly(self, sensor_id: str, metric: str | None, ts: int, detector: str,
                severity: str, suppressed: int, summary: bool) -> None:
        """Count an anomaly event once, however often it is raised."""
        record = self.record(sensor_id, ts)
        pair = f"{metric or '-'}|{detector}"
        if ts <= record["last"].get(pair, -1):
            return
        record["last"][pair] = ts
        record["repeats"] += suppressed
        if summary or detector in NOT_COUNTED:
            return
        record["anomalies"][severity] = record["anomalies"].get(severity, 0) + 1
        record["detectors"][detector] = record["detectors"].get(detector, 0) + 1

    def write(self) -> None:
        for key, record in self._records.items():
            self.store.put(key, orjson.dumps(record))


# -- reading them back ------------------------------------------------------------------

def anomalies(record: dict[str, Any] | None) -> dict[str, Any]:
    """A day's anomaly counts: emitted events by severity and detector, and the repeats
    that cooldowns counted instead of emitting."""
    record = record or new()
    by_severity = {s: record["anomalies"].get(s, 0) for s in SEVERITIES}
    return {"total": sum(by_severity.values()), "by_severity": by_severity,
            "by_detector": dict(sorted(record["detectors"].items())),
            "repeats_in_cooldown": record["repeats"]}


def counts(record: dict[str, Any] | None) -> dict[str, int]:
    """A day's readings of the sensor: received (every reading the stage classified, dead
    letters included) and each kind."""
    record = record or new()
    totals = dict.fromkeys(KINDS, 0)
    for metric_counts in record["m"].values():
        for kind, n in zip(KINDS, metric_counts, strict=True):
            totals[kind] += n
    totals["dead_letter"] = record["dead_letter"]
    totals["received"] = (totals["accepted"] + totals["duplicate"] + totals["late"]
                          + totals["dead_letter"])
    return totals


def rates(totals: Mapping[str, int]) -> dict[str, float | None]:
    """Each kind as a fraction of the readings received."""
    received = totals["received"]
    return {kind: round(totals[kind] / received, 6) if received else None for kind in RATES}


def completeness(record: dict[str, Any] | None, interval_us: int | None,
                 span_us: int) -> dict[str, float | None]:
    """Per metric: readings received (nulls included) over those expected in ``span_us``
    at the sensor's typical interval, % (capped at 100)."""
    if record is None or not interval_us or span_us <= 0:
        return {}
    return {metric: round(min(100.0, 100.0 * c[0] * interval_us / span_us), 2)
            for metric, c in sorted(record["m"].items())}


def span(day_s: int, record: dict[str, Any] | None, started_that_day: bool, clock_us: int) -> int:
    """How much of the day the sensor could have reported in: from the day's start (or its
    first reading, on the day it started) to the day's end or ``clock_us``."""
    start = day_s * 1_000_000
    if started_that_day and record is not None and record["first"] is not None:
        start = record["first"]
    return max(0, min((day_s + DAY_S) * 1_000_000, clock_us) - start)


def mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 2) if known else None


def fleet(entries: list[dict[str, Any]], worst: int = 10) -> dict[str, Any]:
    """The fleet's figures from per-sensor quality entries (``sensor_id`` None: dead
    letters without a readable sensor id, which count in the totals only)."""
    sensors = [e for e in entries if e["sensor_id"] is not None]
    totals = {kind: sum(e["counts"][kind] for e in entries)
              for kind in (*KINDS, "dead_letter", "received")}
    known = sorted((e for e in sensors if e["completeness_pct"] is not None),
                   key=lambda e: (e["completeness_pct"], e["sensor_id"]))
    freshness = sorted(e["freshness_s"] for e in sensors)
    lag = sorted(e["event_time_lag_s"] for e in sensors)
    return {
        "sensors": len(sensors),
        "silent": sum(1 for e in sensors if e["silent"]),
        "completeness_pct": mean(e["completeness_pct"] for e in sensors),
        "completeness_min_pct": known[0]["completeness_pct"] if known else None,
        "freshness_s": {"p50": freshness[len(freshness) // 2] if freshness else None,
                        "max": freshness[-1] if freshness else None},
        "event_time_lag_s": {"p50": lag[len(lag) // 2] if lag else None,
                             "max": lag[-1] if lag else None},
        "counts": totals,
        "rates": rates(totals),
        "least_complete": [{k: e[k] for k in ("sensor_id", "completeness_pct", "freshness_s")}
                           for e in known[:worst]],
    }
