"""A live baseline per (sensor, metric) and the detectors that judge a reading against it.

No Faust here: the per-sensor stage keeps one record per (sensor, metric) in its state
table, the evaluation and the tests drive the same functions.

Record (JSON-ready dict)::

    {"through": ts,              # newest reading time judged and learned
     "since": ts,                # the first one
     "n": count, "w": weight, "mean": m, "s": weighted sum of squares,
     "last": [ts, value],        # the previous reading, for spikes
     "run": [value, since_ts, count, fired],   # equal values in a row, for stuck
     "hours": {"HH": [n, mean, m2]},           # hour-of-day slots (UTC)
     "cool": {detector: [until_ts, suppressed]}}

Why ``through``: readings are judged and learned in time order only. A reading not
newer than ``through`` (delivered again after a crash, or out of order) neither moves
the baseline nor raises an anomaly, so a replay changes nothing and emits nothing.

The mean and variance forget exponentially in event time: a reading ``dt`` after the
previous one scales the old weight by ``0.5 ** (dt / half_life)``. A reading judged
anomalous by its z-score is winsorised before it is learned (clipped to the threshold),
so one fault does not drag the baseline, while a lasting shift still moves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class Rules:
    """What counts as anomalous (settings fill it in)."""

    half_life_us: int = HOUR_US
    warmup: int = 30                      #: readings before any statistical judgement
    z_low: float = 3.0                    #: |z| above: low; above z_medium: medium ...
    z_medium: float = 4.0
    z_high: float = 6.0                   #: ... above z_high: high
    seasonal_min: int = 20                #: readings in an hour slot before it judges
    seasonal_days: int = 3                #: ... and days of history behind the baseline
    stuck_count: int = 20                 #: equal values in a row that make a stuck sensor
    stuck_us: int = 2 * HOUR_US           #: ... or this long with one value
    cooldown_us: int = 5 * 60_000_000
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  #: operating range
    spikes: dict[str, float] = field(default_factory=dict)  #: max change per second
    stuck_exempt: frozenset[str] = frozenset()  #: metrics that may rest at one value
    #: A floor under each metric's standard deviation: deviations within a few times
    #: this are never anomalous, however steady the metric was (its resolution).
    min_stddev: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any) -> Rules:
        low, medium, high = settings.anomaly_z
        return cls(half_life_us=int(settings.baseline_half_life * 1e6),
                   warmup=settings.anomaly_warmup, z_low=low, z_medium=medium, z_high=high,
                   stuck_count=settings.stuck_readings, stuck_us=int(settings.stuck_for * 1e6),
                   cooldown_us=int(settings.anomaly_cooldown * 1e6),
                   ranges=dict(settings.operating_ranges), spikes=dict(settings.spike_limits),
                   stuck_exempt=frozenset(settings.stuck_exempt),
                   min_stddev=dict(settings.anomaly_min_stddev))


@dataclass
class Finding:
    """One detector's verdict on one reading (or the end of a cooldown)."""

    detector: str
    severity: str
    reason: str
    expected: tuple[float, float] | None = None
    z: float | None = None
    suppressed: int = 0  #: repeats counted, not emitted, in the cooldown before this one
    summary: bool = False  #: the end of a cooldown that suppressed repeats


def new() -> dict[str, Any]:
    return {"through": None, "since": None, "n": 0, "w": 0.0, "mean": 0.0, "s": 0.0, "last": None,
            "run": None, "hours": {}, "cool": {}}


def stddev(record: dict[str, Any]) -> float:
    return math.sqrt(record["s"] / record["w"]) if record["w"] > 0 else 0.0


def spread(record: dict[str, Any], metric: str, rules: Rules) -> float:
    """The standard deviation a reading is judged by: the baseline's, or the floor."""
    return max(stddev(record), rules.min_stddev.get(metric, 0.0))


def severity(z: float, rules: Rules) -> str | None:
    size = abs(z)
    if size > rules.z_high:
        return "high"
    if size > rules.z_medium:
        return "medium"
    if size > rules.z_low:
        return "low"
    return None


def observe(record: dict[str, Any], metric: str, ts: int, value: float,
            rules: Rules) -> list[Finding]:
    """Judge ``value`` at ``ts`` against ``record`` and learn it; the findings that pass
    the cooldown. Nothing happens for a reading not newer than ``record["through"]``."""
    if record["through"] is not None and ts <= record["through"]:
        return []
    findings = _judge(record, metric, ts, value, rules)
    _learn(record, metric, ts, value, rules)
    return cool(record, ts, findings, rules)


def _judge(record: dict[str, Any], metric: str, ts: int, value: float,
           rules: Rules) -> list[Finding]:
    found: list[Finding] = []
    bounds = rules.ranges.get(metric)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        found.append(Finding("range", "medium", f"{metric} {value:g} outside its operating "
                             f"range {bounds[0]:g}..{bounds[1]:g}", expected=bounds))
    sd = spread(record, metric, rules)
    if record["n"] >= rules.warmup and sd > 0:
        z = (value - record["mean"]) / sd
        level = severity(z, rules)
        if level:
            expected = (record["mean"] - rules.z_low * sd, record["mean"] + rules.z_low * sd)
            found.append(Finding("zscore", level, f"{metric} {value:g} is {z:+.1f} standard "
                                 f"deviations from its baseline {record['mean']:g}",
                                 expected=expected, z=z))
    slot = record["hours"].get(_hour(ts))
    history = ts - record["since"] if record["since"] is not None else 0
    if (slot is not None and slot[0] >= rules.seasonal_min and slot[2] > 0
            and history >= rules.seasonal_days * 24 * HOUR_US):
        slot_sd = max(math.sqrt(slot[2] / (slot[0] - 1)), rules.min_stddev.get(metric, 0.0))
        z = (value - slot[1]) / slot_sd
        level = severity(z, rules)
        if level:
            expected = (slot[1] - rules.z_low * slot_sd, slot[1] + rules.z_low * slot_sd)
            found.append(Finding("seasonal", level, f"{metric} {value:g} is {z:+.1f} standard "
                                 f"deviations from its usual {slot[1]:g} at {_hour(ts)}:00 UTC",
                                 expected=expected, z=z))
    last = record["last"]
    bound = rules.spikes.get(metric)
    if last is not None and bound is not None and ts > last[0]:
        rate = abs(value - last[1]) / ((ts - last[0]) / 1e6)
        if rate > bound:
            found.append(Finding("spike", "medium", f"{metric} changed {value - last[1]:+g} in "
                                 f"{(ts - last[0]) / 1e6:g} s ({rate:g}/s, bound {bound:g}/s)"))
    run = record["run"]
    if metric not in rules.stuck_exempt and run is not None and value == run[0] and not run[3]:
        count, held = run[2] + 1, ts - run[1]
        if count >= rules.stuck_count or held >= rules.stuck_us:
            found.append(Finding("stuck", "medium", f"{metric} has read {value:g} "
                                 f"{count} times over {held / 1e6:g} s"))
    return found


def _learn(record: dict[str, Any], metric: str, ts: int, value: float, rules: Rules) -> None:
    learned = value
    sd = spread(record, metric, rules)
    if record["n"] >= rules.warmup and sd > 0:  # winsorise what the z-score rejects
        low, high = record["mean"] - rules.z_low * sd, record["mean"] + rules.z_low * sd
        learned = min(max(value, low), high)
    through = record["through"]
    decay = 0.5 ** ((ts - through) / rules.half_life_us) if through is not None else 0.0
    weight = record["w"] * decay + 1.0
    delta = learned - record["mean"]
    mean = record["mean"] + delta / weight
    record["s"] = record["s"] * decay + delta * (learned - mean)  # West (1979), decayed
    record.update(w=weight, mean=mean, n=record["n"] + 1, through=ts, last=[ts, value])
    if record["since"] is None:
        record["since"] = ts
    slot = record["hours"].setdefault(_hour(ts), [0, 0.0, 0.0])
    slot[0] += 1
    slot_delta = learned - slot[1]
    slot[1] += slot_delta / slot[0]
    slot[2] += slot_delta * (learned - slot[1])
    run = record["run"]
    if run is not None and value == run[0]:
        fired = run[3] or run[2] + 1 >= rules.stuck_count or ts - run[1] >= rules.stuck_us
        record["run"] = [value, run[1], run[2] + 1, fired]
    else:
        record["run"] = [value, ts, 1, False]


def cool(record: dict[str, Any], ts: int, findings: list[Finding],
         rules: Rules) -> list[Finding]:
    """Repeats of a detector inside its cooldown are counted, not emitted. The count
    goes with the next emitted finding, or with a summary at the cooldown's end."""
    cool = record["cool"]
    passed: list[Finding] = []
    fired = {finding.detector for finding in findings}
    for detector, (until, suppressed) in list(cool.items()):
        if ts >= until and detector not in fired:
            if suppressed:
                passed.append(Finding(detector, "low", f"{suppressed} repeats of {detector} "
                                      "in the cooldown", suppressed=suppressed, summary=True))
            del cool[detector]
    for finding in findings:
        until, suppressed = cool.get(finding.detector, (0, 0))
        if ts < until:
            cool[finding.detector] = [until, suppressed + 1]
            continue
        finding.suppressed = suppressed
        cool[finding.detector] = [ts + rules.cooldown_us, 0]
        passed.append(finding)
    return passed


def _hour(ts: int) -> str:
    return f"{ts // HOUR_US % 24:02d}"
