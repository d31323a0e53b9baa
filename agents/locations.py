"""Hourly aggregates per location, from the sealed base windows of its sensors.

Fed by the per-sensor stage through ``windows-by-location`` (keyed by location), so
each location's hours live in one partition. Merging is replay-safe (tables.locations).
"""

from __future__ import annotations

from typing import Any

import orjson

from app.main import app
from app.topics import by_location
from tables import locations as location_windows
from tables.sensor_state import locations
from tables.windows import PART


@app.agent(by_location, name="per-location")
async def per_location(stream):
    async for event in stream.events():
        apply(event.message.partition, orjson.loads(event.value))


def apply(partition: int, doc: dict[str, Any]) -> None:
    location = doc["location"]
    records: dict[str, dict[str, Any]] = {}
    changed: dict[str, None] = {}
    newest_end = 0
    for window in doc["windows"]:
        key = location_windows.hour_key(
            window["start"] // location_windows.HOUR_S * location_windows.HOUR_S, location)
        if key not in records:
            raw = locations.get(key.encode())
            if raw is not None:
                records[key] = orjson.loads(raw)
        merged = location_windows.merge_window(records, location, window)
        if merged is not None:
            changed[merged] = None
        newest_end = max(newest_end, window["start"] + window["size"])
    for key in changed:
        locations[key.encode()] = orjson.dumps(records[key])
    if changed:
        starts = [int(key.split("|", 2)[1]) for key in changed]
        index_key = (location_windows.INDEX + location).encode()
        raw = locations.get(index_key)
        index = orjson.loads(raw) if raw else {"first": min(starts), "last": max(starts)}
        updated = {"first": min(index["first"], *starts), "last": max(index["last"], *starts)}
        if raw is None or updated != index:
            locations[index_key] = orjson.dumps(updated)
    part_key = f"{PART}{partition}".encode()
    raw = locations.get(part_key)
    if raw is None or orjson.loads(raw)["newest_end"] < newest_end:
        locations[part_key] = orjson.dumps({"newest_end": newest_end})
