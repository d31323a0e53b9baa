"""Hourly aggregates per location, built from sealed base windows of its sensors.

Record ``1h|{start_s:010d}|{location}`` -> ``{"s": {metric: stats}, "sensors": {sensor_id:
hex bitmask of the base windows merged}}``: the bitmask recognises a base window
delivered again, so merging is replay-safe, and its keys count the distinct
sensors reporting. ``~loc|{location}`` keeps the first and last hour seen. A base
window arriving after its hour closed is folded in as a correction. No Faust here.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import orjson

from app.contract import format_ts
from tables import stats
from tables.stats import Sketching

HOUR_S = 3600
LABEL = "1h"
INDEX = "~loc|"


def hour_key(start_s: int, location: str) -> str:
    return f"{LABEL}|{start_s:010d}|{location}"


def merge_window(records: MutableMapping[str, dict[str, Any]], location: str,
                 window: dict[str, Any]) -> str | None:
    """Fold one sealed base window into its hour; the hour's key, or None when the
    window was merged before."""
    start_s = window["start"] // HOUR_S * HOUR_S
    key = hour_key(start_s, location)
    record = records.get(key)
    if record is None:
        record = records[key] = {"s": {}, "sensors": {}}
    bit = 1 << ((window["start"] - start_s) // window["size"])
    mask = int(record["sensors"].get(window["sensor_id"], "0"), 16)
    if mask & bit:
        return None
    record["sensors"][window["sensor_id"]] = format(mask | bit, "x")
    for metric, metric_stats in window["s"].items():
        into = record["s"].get(metric)
        if into is None:
            record["s"][metric] = metric_stats
        else:
            stats.merge(into, metric_stats)
    return key


def describe(start_s: int, record: dict[str, Any], sketching: Sketching, open_: bool,
             metric: str | None = None) -> dict[str, Any]:
    return {
        "window": LABEL, "start": format_ts(start_s * 1_000_000),
        "end": format_ts((start_s + HOUR_S) * 1_000_000), "open": open_,
        "sensors": len(record["sensors"]),
        "metrics": {name: stats.describe(s, sketching)
                    for name, s in sorted(record["s"].items())
                    if metric is None or name == metric},
    }


def hand_over(location: str, windows: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"location": location, "windows": windows})
