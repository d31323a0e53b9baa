"""Baselines and detectors (tables.baseline): forgetting, warm-up, severities,
winsorising, seasonal slots, spikes, stuck values, cooldown, and replay."""

from __future__ import annotations

import copy
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tables import baseline
from tables.baseline import HOUR_US, Rules

MIN = 60_000_000
T0 = 1_700_000_000 // 86400 * 86400 * 1_000_000


def feed(record, rules, points, metric="temperature"):
    out = []
    for ts, value in points:
        out.extend((ts, f) for f in baseline.observe(record, metric, ts, value, rules))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3 * HOUR_US), st.floats(-50, 50)),
                min_size=2, max_size=60),
       st.integers(HOUR_US // 4, 48 * HOUR_US))
def test_forgetting_mean_and_variance_equal_the_weighted_definition(steps, half_life):
    """Learned without clipping (warm-up never ends), the record holds the weighted mean
    and variance with weights 0.5 ** (age / half-life)."""
    rules = Rules(half_life_us=half_life, warmup=10**9)
    record = baseline.new()
    ts, points = T0, []
    for gap, value in steps:
        ts += gap
        points.append((ts, value))
    feed(record, rules, points)
    weights = [0.5 ** ((ts - t) / half_life) for t, _ in points]
    total = sum(weights)
    mean = sum(w * v for w, (_, v) in zip(weights, points, strict=True)) / total
    var = sum(w * (v - mean) ** 2 for w, (_, v) in zip(weights, points, strict=True)) / total
    assert math.isclose(record["w"], total, rel_tol=1e-9)
    assert math.isclose(record["mean"], mean, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(baseline.stddev(record) ** 2, var, rel_tol=1e-6, abs_tol=1e-9)


def steady(n, start=T0, every=30_000_000, seed=1, level=20.0, noise=0.5):
    rng = random.Random(seed)
    return [(start + i * every, level + rng.gauss(0, noise)) for i in range(n)]


def test_no_statistical_judgement_during_warm_up():
    rules = Rules(warmup=30)
    record = baseline.new()
    points = [*steady(29), (T0 + 29 * 30_000_000, 80.0)]
    assert feed(record, rules, points) == []


def test_z_score_severities_and_winsorising():
    rules = Rules(warmup=30, cooldown_us=0)
    record = baseline.new()
    feed(record, rules, steady(200))
    mean, sd = record["mean"], baseline.stddev(record)
    ts = T0 + 200 * 30_000_000
    got = {}
    for i, z in enumerate((2.0, 3.5, 5.0, 9.0)):
        before = copy.deepcopy(record)
        found = baseline.observe(record, "temperature", ts + i * MIN, mean + z * sd, rules)
        got[z] = [(f.detector, f.severity) for f in found]
        # what the z-score rejects is learned clipped to the threshold
        if z > rules.z_low:
            assert record["mean"] <= before["mean"] + rules.z_low * sd / record["w"] + 1e-9
        record = before  # judge each against the same baseline
    assert got == {2.0: [], 3.5: [("zscore", "low")], 5.0: [("zscore", "medium")],
                   9.0: [("zscore", "high")]}


def test_a_replay_judges_and_learns_nothing():
    rules = Rules(warmup=30)
    record = baseline.new()
    points = [*steady(100), (T0 + 100 * 30_000_000, 60.0)]
    first = feed(record, rules, points)
    assert (first[-1][0], first[-1][1].detector) == (points[-1][0], "zscore")
    snapshot = copy.deepcopy(record)
    assert feed(record, rules, points) == []
    assert record == snapshot


def test_range_spike_and_stuck():
    rules = Rules(warmup=10**9, ranges={"temperature": (-10.0, 60.0)},
                  spikes={"temperature": 0.5}, stuck_count=5, cooldown_us=0)
    record = baseline.new()
    points = [(T0, 20.0), (T0 + MIN, 21.0),        # 1/60 per s: fine
              (T0 + 2 * MIN, 70.0),                 # out of range, and a spike
              (T0 + 3 * MIN, 22.0)]                 # a spike back
    points += [(T0 + (4 + i) * MIN, 23.0) for i in range(6)]  # stuck after 5 in a row
    found = [(ts, f.detector) for ts, f in feed(record, rules, points)]
    assert found == [(T0 + 2 * MIN, "range"), (T0 + 2 * MIN, "spike"),
                     (T0 + 3 * MIN, "spike"), (T0 + 8 * MIN, "stuck")]


def test_seasonal_slot_judges_once_it_has_history():
    rules = Rules(warmup=10**9, seasonal_min=20, cooldown_us=0)
    record = baseline.new()
    rng = random.Random(3)
    points = []
    for day in range(25):  # 02:00 is cold (5 degC), noon is warm (25 degC)
        points.append((T0 + day * 24 * HOUR_US + 2 * HOUR_US, 5 + rng.gauss(0, 0.3)))
        points.append((T0 + day * 24 * HOUR_US + 12 * HOUR_US, 25 + rng.gauss(0, 0.3)))
    assert feed(record, rules, points) == []
    late_night = T0 + 25 * 24 * HOUR_US + 2 * HOUR_US
    found = baseline.observe(record, "temperature", late_night, 25.0, rules)
    assert [(f.detector, f.severity) for f in found] == [("seasonal", "high")]


def test_cooldown_counts_repeats_and_hands_the_count_on():
    rules = Rules(warmup=10**9, ranges={"humidity": (0.0, 100.0)}, cooldown_us=5 * MIN)
    record = baseline.new()
    bad = [(T0 + i * MIN, -4.0) for i in range(4)]           # 0: emitted, 1-3: counted
    found = feed(record, rules, bad, metric="humidity")
    assert [(ts, f.suppressed) for ts, f in found] == [(T0, 0)]
    again = feed(record, rules, [(T0 + 6 * MIN, -4.0)], metric="humidity")
    assert [(f.detector, f.suppressed, f.summary) for _, f in again] == [("range", 3, False)]
    quiet = feed(record, rules, [(T0 + 12 * MIN, 40.0), (T0 + 13 * MIN, 41.0)],
                 metric="humidity")
    assert quiet == []  # nothing was suppressed in the last cooldown: no summary
    feed(record, rules, [(T0 + 14 * MIN, -1.0), (T0 + 15 * MIN, -2.0)], metric="humidity")
    ended = feed(record, rules, [(T0 + 20 * MIN, 42.0)], metric="humidity")
    assert [(f.detector, f.suppressed, f.summary) for _, f in ended] == [("range", 1, True)]
