"""The dashboard's parts that need no Faust (unit-tested on their own): its static files
and plotly's bundle from the installed package, the rate meter and a sensor's state."""

from __future__ import annotations

import gzip
import hashlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata, resources
from typing import Any

#: The dashboard's own files (web/dashboard/) by the name the pages ask for.
ASSET_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
PLOTLY = "plotly.min.js"


class MissingAsset(LookupError):
    """An asset name the dashboard does not serve."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> Asset:
    return Asset(body, gzip.compress(body, 6), content_type,
                 '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


@cache
def plotly_js() -> Asset:
    """plotly.js as the installed ``plotly`` package ships it (no vendored copy, nothing
    fetched at run time); gzipped once, as it is ~4.8 MB."""
    try:
        body = resources.files("plotly").joinpath("package_data", PLOTLY).read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise MissingAsset(f"{PLOTLY} not found in the installed plotly package "
                           f"({exc}): install the dependency 'plotly'") from exc
    return _asset(body, ASSET_TYPES[".js"])


def plotly_version() -> str:
    return metadata.version("plotly")


@cache
def asset(name: str) -> Asset:
    """A file of web/dashboard/ (html, js, css) or plotly's bundle; MissingAsset for any
    other name (and for a path: only plain file names are looked up)."""
    if name == PLOTLY:
        return plotly_js()
    suffix = name[name.rfind("."):] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in ASSET_TYPES:
        raise MissingAsset(name)
    path = resources.files("web").joinpath("dashboard", name)
    if not path.is_file():
        raise MissingAsset(name)
    return _asset(path.read_bytes(), ASSET_TYPES[suffix])


class RateMeter:
    """Per-second rates of monotonic counters over the last ``window_s`` seconds, from
    samples taken every few seconds (a rate needs two samples; a process restart starts
    the counters, and this meter, from zero)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def sample(self, now: float, totals: Mapping[str, float]) -> None:
        self._samples.append((now, dict(totals)))
        # keep one sample at or before the window's start, so the rate spans the window
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def rates(self) -> dict[str, float | None]:
        """Per counter: its increase per second between the oldest and newest sample kept;
        None before two samples."""
        if len(self._samples) < 2:
            return dict.fromkeys(self._samples[-1][1], None) if self._samples else {}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        span = t1 - t0
        return {name: round(max(0.0, value - first.get(name, 0.0)) / span, 3)
                if span > 0 else None for name, value in last.items()}


def sensor_state(silent: bool, event_time_lag_s: float, interval_s: float | None,
                 silent_after: float, recent_anomalies: int) -> str:
    """``stale`` (reported silent, or already past the silence rule's bound while the
    detector has not run yet), else ``anomalous`` (anomaly events in the recent window),
    else ``ok``."""
    if silent or (interval_s and event_time_lag_s > silent_after * interval_s):
        return "stale"
    if recent_anomalies:
        return "anomalous"
    return "ok"


def merge_fleet(workers: list[dict[str, Any]], rate_window_s: float) -> dict[str, Any]:
    """The group's figures from each worker's entry: rates and lag summed (None when no
    worker has one yet), sensors merged and sorted (numeric ids in numeric order)."""
    def total(values: list[float | int | None]) -> float | int | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    sensors = sorted((dict(s, worker=w["worker"]) for w in workers for s in w["sensors"]),
                     key=lambda s: (not s["sensor_id"].isdigit(),
                                    int(s["sensor_id"]) if s["sensor_id"].isdigit() else 0,
                                    s["sensor_id"]))
    names = sorted({name for w in workers for name in w["rates"]})
    states: dict[str, int] = {}
    for sensor in sensors:
        states[sensor["state"]] = states.get(sensor["state"], 0) + 1
    return {
        "rates": {name: total([w["rates"].get(name) for w in workers]) for name in names},
        "rate_window_s": rate_window_s,
        "lag": total([w["lag"] for w in workers]),
        "states": states, "count": len(sensors), "sensors": sensors,
        "workers": [{k: v for k, v in w.items() if k != "sensors"} | {
            "sensors": len(w["sensors"])} for w in workers],
    }
