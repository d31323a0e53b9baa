"""Where a sensor is, for the hourly aggregates per location.

A reading's ``location`` attribute names it: a string as it is, or Intel-Lab style
coordinates ``{"x": .., "y": ..}`` (metres) as the lab zone they fall in. Without
the attribute, an Intel-Lab mote id (1-54) gets the zone of its published
coordinates (app/data/mote_locs.txt). No Faust here.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

#: The lab (about 41 x 32 m) in a 4 x 2 grid of zones: lab-a1 .. lab-d2.
ZONE_WIDTH_M = 10.25
ZONE_DEPTH_M = 16.0
ZONE_COLUMNS = "abcd"


@cache
def mote_locations() -> dict[str, tuple[float, float]]:
    """The published (x, y) of the 54 Intel Lab motes, by mote id."""
    text = resources.files("app").joinpath("data/mote_locs.txt").read_text()
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            found[parts[0]] = (float(parts[1]), float(parts[2]))
    return found


def lab_zone(x: float, y: float) -> str:
    column = min(max(int(x // ZONE_WIDTH_M), 0), len(ZONE_COLUMNS) - 1)
    row = min(max(int(y // ZONE_DEPTH_M), 0), 1)
    return f"lab-{ZONE_COLUMNS[column]}{row + 1}"


def location_of(sensor_id: str, attributes: dict[str, Any]) -> str | None:
    place = attributes.get("location")
    if isinstance(place, str) and place.strip():
        return place.strip()
    if isinstance(place, dict):
        x, y = place.get("x"), place.get("y")
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (x, y)):
            return lab_zone(float(x), float(y))
    coordinates = mote_locations().get(sensor_id)
    return lab_zone(*coordinates) if coordinates else None
