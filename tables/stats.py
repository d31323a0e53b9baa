"""Mergeable statistics of one metric in one window, as a JSON-ready list.

``[n, missing, mean, m2, min, max, first, last, positive_bins, negative_bins, zeros]``:
count, mean and M2 follow Welford when a value is added and Chan et al. when two
windows merge, so larger windows built from smaller ones are exact. The bins are
a DDSketch (its logarithmic mapping, sparse counts keyed by bin index): merging
adds counts, so a sketch depends only on the values, never on their order, and a
quantile is within the relative accuracy of a true value at its rank.
No Faust here: the per-sensor agent, the location agent and tests share it.
"""

from __future__ import annotations

import math
from typing import Any

from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

from app.contract import format_ts

N, MISSING, MEAN, M2, MIN, MAX, FIRST, LAST, POS, NEG, ZEROS = range(11)
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))

Stats = list[Any]


class Sketching:
    """The sketch's relative accuracy and the value-to-bin mapping it implies."""

    def __init__(self, relative_accuracy: float) -> None:
        self.relative_accuracy = relative_accuracy
        self.mapping = LogarithmicMapping(relative_accuracy)
        self._smallest = self.mapping.min_possible

    def new(self) -> Stats:
        return [0, 0, 0.0, 0.0, None, None, None, None, {}, {}, 0]

    def add(self, stats: Stats, value: float | None, ts: int) -> None:
        """Fold one reading (``None``: a null value, counted as missing) into ``stats``."""
        if stats[FIRST] is None or ts < stats[FIRST]:
            stats[FIRST] = ts
        if stats[LAST] is None or ts > stats[LAST]:
            stats[LAST] = ts
        if value is None:
            stats[MISSING] += 1
            return
        n = stats[N] = stats[N] + 1
        delta = value - stats[MEAN]
        stats[MEAN] += delta / n
        stats[M2] += delta * (value - stats[MEAN])
        if stats[MIN] is None or value < stats[MIN]:
            stats[MIN] = value
        if stats[MAX] is None or value > stats[MAX]:
            stats[MAX] = value
        if value > self._smallest:
            bins = stats[POS]
            key = str(self.mapping.key(value))
        elif value < -self._smallest:
            bins = stats[NEG]
            key = str(self.mapping.key(-value))
        else:
            stats[ZEROS] += 1
            return
        bins[key] = bins.get(key, 0) + 1

    def quantiles(self, stats: Stats) -> dict[str, float | None]:
        """p50/p95/p99 by nearest rank (SQL's ``percentile_disc``: the smallest value with
        at least that share of the values at or below it), from the bins, through the
        library's own walk, kept within the window's exact min and max (a bin's
        representative value can fall outside them, where no true quantile can be).

        The library's own rank, ``q * (n - 1)`` rounded down, gives the *lower* of two
        values as their p95: a 1-minute window of a mote holds about two readings, and
        its p95 drew below its mean on the dashboard."""
        if not stats[N]:
            return {name: None for name, _ in QUANTILES}
        sketch = DDSketch(self.relative_accuracy)
        value_of = self.mapping.value
        for key, count in stats[POS].items():
            sketch.add(value_of(int(key)), count)
        for key, count in stats[NEG].items():
            sketch.add(-value_of(int(key)), count)
        if stats[ZEROS]:
            sketch.add(0.0, stats[ZEROS])
        low, high, n = stats[MIN], stats[MAX], stats[N]
        return {name: min(max(sketch.get_quantile_value(_walk_at(q, n)), low), high)
                for name, q in QUANTILES}


def _walk_at(q: float, n: int) -> float:
    """The fraction to give DDSketch's walk (rank ``fraction * (n - 1)``) so that it lands
    on the nearest-rank position ``ceil(q * n) - 1``: half a rank past it, which the walk
    rounds down, safe from floating-point error."""
    if n < 2:
        return 0.0
    k = max(math.ceil(q * n) - 1, 0)
    return 1.0 if k >= n - 1 else (k + 0.5) / (n - 1)


def merge(into: Stats, other: Stats) -> None:
    """Fold ``other`` into ``into`` exactly (Chan et al. for mean and M2; bin counts add)."""
    for position, pick in ((FIRST, min), (LAST, max)):
        if other[position] is not None:
            into[position] = other[position] if into[position] is None else pick(
                into[position], other[position])
    into[MISSING] += other[MISSING]
    n_b = other[N]
    if not n_b:
        return
    n_a = into[N]
    n = n_a + n_b
    delta = other[MEAN] - into[MEAN]
    into[MEAN] += delta * n_b / n
    into[M2] += other[M2] + delta * delta * n_a * n_b / n
    into[N] = n
    into[MIN] = other[MIN] if into[MIN] is None else min(into[MIN], other[MIN])
    into[MAX] = other[MAX] if into[MAX] is None else max(into[MAX], other[MAX])
    for position in (POS, NEG):
        bins = into[position]
        for key, count in other[position].items():
            bins[key] = bins.get(key, 0) + count
    into[ZEROS] += other[ZEROS]


def stddev_samp(stats: Stats) -> float | None:
    """As SQL ``stddev_samp``: None below two values."""
    if stats[N] < 2:
        return None
    return math.sqrt(max(stats[M2], 0.0) / (stats[N] - 1))


def describe(stats: Stats, sketching: Sketching) -> dict[str, Any]:
    """The statistics a user reads: JSON-ready, times in ISO 8601."""
    n = stats[N]
    return {
        "count": n,
        "missing": stats[MISSING],
        "mean": stats[MEAN] if n else None,
        "min": stats[MIN],
        "max": stats[MAX],
        "stddev": stddev_samp(stats),
        **sketching.quantiles(stats),
        "first": None if stats[FIRST] is None else format_ts(stats[FIRST]),
        "last": None if stats[LAST] is None else format_ts(stats[LAST]),
    }
