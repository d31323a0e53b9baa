"""Judging one batch of a partition's readings: baselines and fault rules in the state
table, and the anomaly events they raise. No Faust here.

Keys (next to the window keys of tables.windows, in the same table):

- ``~base|{sensor}|{metric}``: the baseline record (tables.baseline);
- ``~fault|{sensor}|{rule}``: ``{"through": ts, "cool": {...}}`` of a fault rule;
- ``~anom|{ts}|{sensor}|{metric}|{detector}``: the recent anomaly events, in time
  order, kept for ``SENSORSTREAM_ANOMALY_RETENTION`` (``GET /anomalies``).

Replay-safe the way a baseline is: a reading not newer than a record's ``through``
changes nothing and raises nothing. The events are sent, and the producer flushed,
before the records are written (agents.per_sensor), so a crash can repeat an event
(same sensor, metric, time and detector: consumers upsert) but never lose one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from app.contract import Reading, format_ts, parse_time
from tables import baseline
from tables.baseline import Finding, Rules
from tables.fault_rules import FaultRule
from tables.windows import Store

BASE = "~base|"
FAULT = "~fault|"
RECENT = "~anom|"  #: ``~anom|{ts:020d}|{sensor}|{metric or -}|{detector}``: recent events


class Judgement:
    """The anomalies of one batch; ``write`` stores what the batch learned."""

    def __init__(self, store: Store, rules: Rules, faults: list[FaultRule]) -> None:
        self.store = store
        self.rules = rules
        self.faults = faults
        self.events: list[dict[str, Any]] = []
        self._records: dict[str, dict[str, Any]] = {}
        self._dirty: dict[str, None] = {}

    def _record(self, key: str, new: dict[str, Any]) -> dict[str, Any]:
        if key not in self._records:
            raw = self.store.get(key)
            self._records[key] = orjson.loads(raw) if raw is not None else new
        return self._records[key]

    def observe(self, reading: Reading, latest: Mapping[str, float | None]) -> None:
        """Judge each metric of ``reading`` against its baseline, and the fault rules
        against the sensor's ``latest`` values (this reading merged in)."""
        for metric, value in reading.metrics.items():
            if value is None:
                continue
            key = f"{BASE}{reading.sensor_id}|{metric}"
            record = self._record(key, baseline.new())
            findings = baseline.observe(record, metric, reading.ts, value, self.rules)
            if record["through"] == reading.ts:
                self._dirty[key] = None
            for finding in findings:
                self.events.append(event(reading.sensor_id, metric, reading.ts, value, finding))
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
                self.events.append(event(reading.sensor_id, None, reading.ts, None, finding))

    def write(self) -> None:
        for anomaly in self.events:
            self.store.put(recent_key(anomaly), orjson.dumps(anomaly))
        for key in self._dirty:
            self.store.put(key, orjson.dumps(self._records[key]))


def recent_key(anomaly: dict[str, Any]) -> str:
    return (f"{RECENT}{parse_time(anomaly['ts']):020d}|{anomaly['sensor_id']}|"
            f"{anomaly['metric'] or '-'}|{anomaly['detector']}")


def recent_start(key: str) -> int:
    """The reading time of a recent-anomaly key."""
    return int(key[len(RECENT):len(RECENT) + 20])


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
