"""Labelled anomalies for the simulator: what it injects, and where, so detection can
be measured (precision, recall, latency) against the truth.

Classes, each one episode on one mote:

- ``spike``: one reading's temperature or humidity jumps far off;
- ``drift``: the temperature walks away, linearly, over ``DRIFT_READINGS`` readings;
- ``stuck``: the humidity repeats one value for ``STUCK_READINGS`` readings;
- ``silent``: the mote sends nothing for ``SILENT_READINGS`` readings;
- ``battery``: the Intel-Lab fault for ``BATTERY_READINGS`` readings, voltage below
  2.3 V with a temperature past 100 degC. A mote whose battery really runs down shows
  the same fault; it is labelled ``battery`` too, from its first faulty reading on.

``rate`` is the share of readings inside an episode (default 2 %). No Faust here.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from app.contract import parse_time

DRIFT_READINGS = 20
STUCK_READINGS = 30
SILENT_READINGS = 15
BATTERY_READINGS = 10
KINDS = ("spike", "drift", "stuck", "silent", "battery")
_LENGTH = {"spike": 1, "drift": DRIFT_READINGS, "stuck": STUCK_READINGS,
           "silent": SILENT_READINGS, "battery": BATTERY_READINGS}


@dataclass
class Label:
    """One injected episode: ``start`` and ``end`` are reading times (µs), inclusive."""

    kind: str
    sensor_id: str
    metric: str | None
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Episode:
    label: Label
    left: int          #: readings still to alter
    step: int = 0
    held: float | None = None
    sign: float = 1.0


class Injector:
    """Alters a mote's readings in episodes and records a ``Label`` for each."""

    def __init__(self, rate: float, rng: random.Random, natural_fault_voltage: float) -> None:
        if not 0 <= rate < 1:
            raise ValueError("the anomaly rate is a share of readings, from 0 to below 1")
        # an episode of mean length L starting with probability p covers p*L per reading
        self.start_probability = rate / (sum(_LENGTH.values()) / len(_LENGTH))
        self.rng = rng
        self.fault_voltage = natural_fault_voltage
        self.labels: list[Label] = []
        self._active: dict[int, _Episode] = {}
        self._natural: dict[int, Label] = {}

    def apply(self, reading: dict[str, Any]) -> dict[str, Any] | None:
        """The reading as sent (altered inside an episode), or None when it is silenced."""
        mote = reading["mote_id"]
        ts = parse_time(reading["ts"]) or 0
        if reading["voltage"] < self.fault_voltage:  # a real run-down battery
            natural = self._natural.get(mote)
            if natural is None:
                natural = self._natural[mote] = Label("battery", str(mote), None, ts, ts)
                self.labels.append(natural)
            natural.end = ts
            return reading
        episode = self._active.get(mote)
        if episode is None:
            if self.rng.random() >= self.start_probability:
                return reading
            kind = self.rng.choice(KINDS)
            metric = {"spike": self.rng.choice(["temperature", "humidity"]),
                      "drift": "temperature", "stuck": "humidity"}.get(kind)
            episode = _Episode(Label(kind, str(mote), metric, ts, ts), _LENGTH[kind],
                               sign=self.rng.choice([-1.0, 1.0]))
            self.labels.append(episode.label)
            self._active[mote] = episode
        episode.label.end = ts
        episode.left -= 1
        episode.step += 1
        if episode.left <= 0:
            del self._active[mote]
        return self._alter(episode, dict(reading))

    def _alter(self, episode: _Episode, reading: dict[str, Any]) -> dict[str, Any] | None:
        kind = episode.label.kind
        if kind == "spike":
            metric = episode.label.metric
            jump = self.rng.uniform(8, 15) if metric == "temperature" else self.rng.uniform(
                15, 25)
            reading[metric] = round(reading[metric] + episode.sign * jump, 4)
            if metric == "humidity":
                reading["humidity"] = min(max(reading["humidity"], 0.5), 99.5)
        elif kind == "drift":
            reading["temperature"] = round(reading["temperature"]
                                           + episode.sign * 0.4 * episode.step, 4)
        elif kind == "stuck":
            if episode.held is None:
                episode.held = reading["humidity"]
            reading["humidity"] = episode.held
        elif kind == "silent":
            return None
        elif kind == "battery":
            reading["voltage"] = round(self.rng.uniform(2.05, 2.25), 5)
            reading["temperature"] = round(self.rng.uniform(105, 125), 4)
        return reading
