"""Judging one batch of a partition's readings: baselines and fault rules in the state
table, and the anomaly events they raise. No Faust here.

Keys (next to the window keys of tables.windows, in the same table):

- ``~base|{sensor}|{metric}``: the baseline record (tables.baseline);
- ``~fault|{sensor}|{rule}``: ``{"through": ts, "cool": {...}}`` of a fault rule;
- ``~silent|{sensor}``: a sensor reported silent, until it reports again;
- ``~anom|{ts}|{sensor}|{metric}|{detector}``: the recent anomaly events, in time
  order, kept for ``SENSORSTREAM_ANOMALY_RETENTION`` (``GET /anomalies``).

Replay-safe the way a baseline is: a reading not newer than a record's ``through``
changes nothing and raises nothing. The events are sent, and the producer flushed,
before the records are written (agents.per_sensor), so a crash can repeat an event
(same sensor, metric, time and detector: consumers upsert) but never lose one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from app.contract import Reading, format_ts, parse_time
from tables import baseline
from tables.baseline import Finding, Rules
from tables.daily import Days
from tables.fault_rules import FaultRule
from tables.windows import Store

BASE = "~base|"
FAULT = "~fault|"
SILENT = "~silent|"  #: ``~silent|{sensor}``: ``{"last_seen": ts, "at": ts}`` while silent
RECENT = "~anom|"  #: ``~anom|{ts:020d}|{sensor}|{metric or -}|{detector}``: recent events
RECENT_DIGITS = 20


class Judgement:
    """The anomalies of one batch; ``write`` stores what the batch learned."""

    def __init__(self, store: Store, rules: Rules, faults: list[FaultRule],
                 days: Days | None = None, silent_after: float | None = None,
                 interval_of: Callable[[str], int | None] | None = None) -> None:
        self.store = store
        self.rules = rules
        self.faults = faults
        self.days = days  #: counts the events per sensor and day (tables.daily), if kept
        #: Gaps over ``silent_after`` typical intervals (``interval_of(sensor)``) are
        #: reported when the sensor reports again (``observe`` with ``previous``).
        self.silent_after = silent_after
        self.interval_of = interval_of
        self._intervals: dict[str, int | None] = {}
        self.events: list[dict[str, Any]] = []
        self._records: dict[str, dict[str, Any] | None] = {}
        self._dirty: dict[str, None] = {}

    def _record(self, key: str, new: dict[str, Any] | None) -> Any:
        if key not in self._records:
            raw = self.store.get(key)
            self._records[key] = orjson.loads(raw) if raw is not None else new
        return self._records[key]

    def check_silence(self, sensors: Iterable[tuple[str, int, int | None]], now: int,
                      after: float) -> None:
        """Report each of ``(sensor, last_seen, typical interval)`` whose last reading is
        more than ``after`` intervals before ``now``, once: while its gap is still open."""
        for sensor_id, last_seen, interval in sensors:
            if interval and now - last_seen > after * interval:
                self._silent(sensor_id, last_seen, interval, after, now)

    def _silent(self, sensor_id: str, last_seen: int, interval: int, after: float,
                now: int) -> None:
        """A silence, unless already reported. Its event is the same whoever finds it
        (the scan of an open gap, or the sensor's next reading closing it) and whenever:
        timed when the gap passed ``after`` intervals, with the gap's start in its
        reason, so a replay reports the same silences as the live run."""
        key = SILENT + sensor_id
        if self._record(key, None) is not None:
            return
        self._records[key] = {"last_seen": last_seen, "at": now}
        self._dirty[key] = None
        self._raise(sensor_id, None, last_seen + int(after * interval), None, Finding(
            "silent", "medium", f"no reading since {format_ts(last_seen)}: over {after:g} "
            f"times its typical interval of {interval / 1e6:g} s"))

    def _gap(self, reading: Reading, previous: int | None) -> None:
        """A gap the sensor's ``reading`` closes: a silence no scan saw (the rest of its
        partition was quiet too, or the gap closed between two scans) is reported now;
        then the sensor has ``recovered``."""
        sensor_id = reading.sensor_id
        if (self.silent_after is not None and previous is not None
                and reading.ts > previous and self._record(SILENT + sensor_id, None) is None):
            if sensor_id not in self._intervals:
                self._intervals[sensor_id] = (self.interval_of(sensor_id)
                                              if self.interval_of is not None else None)
            interval = self._intervals[sensor_id]
            if interval and reading.ts - previous > self.silent_after * interval:
                self._silent(sensor_id, previous, interval, self.silent_after, reading.ts)
        self._recovery(reading)

    def _recovery(self, reading: Reading) -> None:
        key = SILENT + reading.sensor_id
        silent = self._record(key, None)
        if silent is None or reading.ts <= silent["last_seen"]:
            return
        self._records[key] = None
        self._dirty[key] = None
        quiet_s = (reading.ts - silent["last_seen"]) / 1e6
        self._raise(reading.sensor_id, None, reading.ts, None, Finding(
            "recovered", "low", f"reporting again after {quiet_s:g} s of silence "
            f"(reported silent at {format_ts(silent['at'])})"))

    def observe(self, reading: Reading, latest: Mapping[str, float | None],
                previous: int | None = None) -> None:
        """Judge each metric of ``reading`` against its baseline, and the fault rules
        against the sensor's ``latest`` values (this reading merged in); ``previous``:
        the sensor's newest reading time before this one, to find the gap it closes."""
        self._gap(reading, previous)
        for metric, value in reading.metrics.items():
            if value is None:
                continue
            key = f"{BASE}{reading.sensor_id}|{metric}"
            record = self._record(key, baseline.new())
            findings = baseline.observe(record, metric, reading.ts, value, self.rules)
            if record["through"] == reading.ts:
                self._dirty[key] = None
            for finding in findings:
                self._raise(reading.sensor_id, metric, reading.ts, value, finding)
        for rule in self.faults:
            key = f"{FAULT}{reading.sensor_id}|{rule.name}"
            record = self._record(key, {"through": None, "cool": {}})
            if record["through"] is not None and reading.ts <= record["through"]:
                continue
            record["through"] = reading.ts
            self._dirty[key] = None
            reason = rule.check(latest)
            found = [Finding(f"fault:{rule.name}", "high", reason)] if reason else []
            for finding in baseline.cool(record, reading.ts, found, self.rules):
                self._raise(reading.sensor_id, None, reading.ts, None, finding)

    def _raise(self, sensor_id: str, metric: str | None, ts: int, value: float | None,
               finding: Finding) -> None:
        self.events.append(event(sensor_id, metric, ts, value, finding))
        if self.days is not None:
            self.days.anomaly(sensor_id, metric, ts, finding.detector, finding.severity,
                              finding.suppressed, finding.summary)

    def write(self) -> None:
        for anomaly in self.events:
            self.store.put(recent_key(anomaly), orjson.dumps(anomaly))
        for key in self._dirty:
            record = self._records[key]
            if record is None:
                self.store.delete(key)
            else:
                self.store.put(key, orjson.dumps(record))


def recent_key(anomaly: dict[str, Any]) -> str:
    return (f"{RECENT}{parse_time(anomaly['ts']):0{RECENT_DIGITS}d}|{anomaly['sensor_id']}|"
            f"{anomaly['metric'] or '-'}|{anomaly['detector']}")


def recent_start(key: str) -> int:
    """The reading time of a recent-anomaly key."""
    return int(key[len(RECENT):len(RECENT) + RECENT_DIGITS])


def event(sensor_id: str, metric: str | None, ts: int, value: float | None,
          finding: Finding) -> dict[str, Any]:
    """An anomaly as emitted and served: upsert key (sensor_id, metric, ts, detector)."""
    return {
        "sensor_id": sensor_id, "metric": metric, "ts": format_ts(ts), "value": value,
        "detector": finding.detector, "severity": finding.severity,
        "reason": finding.reason,
        "expected": list(finding.expected) if finding.expected is not None else None,
        "z": round(finding.z, 3) if finding.z is not None else None,
        "suppressed": finding.suppressed, "summary": finding.summary,
    }
