"""The latest value of each metric of a sensor, for ``/sensors``.

Record: ``{"last_seen": ts, "metrics": {metric: [ts, value]}, "attributes": {...}}``;
a metric keeps the value with the largest time, so out-of-order readings never
replace a newer value, and merging a reading again changes nothing: a duplicate
may safely repair what a crash cut short.
"""

from __future__ import annotations

from typing import Any

from app.contract import format_ts


def merge(record: dict[str, Any] | None, ts: int, metrics: dict[str, float | None],
          attributes: dict[str, Any]) -> dict[str, Any]:
    """Fold accepted readings of one sensor at time ``ts`` into its record."""
    if record is None:
        record = {"last_seen": ts, "metrics": {}, "attributes": {}}
    latest = record["metrics"]
    for metric, value in metrics.items():
        current = latest.get(metric)
        if current is None or ts >= current[0]:
            latest[metric] = [ts, value]
    if ts >= record["last_seen"]:
        record["last_seen"] = ts
        if attributes:
            record["attributes"] = attributes
    return record


def summary(sensor_id: str, record: dict[str, Any]) -> dict[str, Any]:
    return {"sensor_id": sensor_id, "last_seen": format_ts(record["last_seen"]),
            "metrics": sorted(record["metrics"])}


def detail(sensor_id: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "sensor_id": sensor_id,
        "last_seen": format_ts(record["last_seen"]),
        "attributes": record["attributes"],
        "metrics": {
            metric: {"value": value, "time": format_ts(ts)}
            for metric, (ts, value) in sorted(record["metrics"].items())
        },
    }
