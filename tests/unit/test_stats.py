"""Mergeable window statistics: merging equals one pass, quantiles keep their guarantee."""

import itertools
import math
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from tables import stats
from tables.stats import Sketching

sketching = Sketching(0.01)
values = st.one_of(st.none(), st.floats(-1e4, 1e4, allow_nan=False), st.just(0.0))


def one_pass(items):
    s = sketching.new()
    for ts, value in items:
        sketching.add(s, value, ts)
    return s


@settings(max_examples=200, deadline=None)
@given(st.lists(values, max_size=60), st.lists(st.integers(0, 60), max_size=4))
def test_merging_parts_equals_one_pass(raw, cuts):
    items = list(enumerate(raw))
    bounds = sorted({0, len(items), *(min(c, len(items)) for c in cuts)})
    merged = sketching.new()
    for lo, hi in itertools.pairwise(bounds):
        stats.merge(merged, one_pass(items[lo:hi]))
    whole = one_pass(items)
    for position in (stats.N, stats.MISSING, stats.MIN, stats.MAX, stats.FIRST, stats.LAST,
                     stats.POS, stats.NEG, stats.ZEROS):
        assert merged[position] == whole[position]
    scale = max([abs(v) for v in raw if v is not None] + [1.0])
    assert math.isclose(merged[stats.MEAN], whole[stats.MEAN], rel_tol=1e-9,
                        abs_tol=1e-12 * scale)
    assert math.isclose(merged[stats.M2], whole[stats.M2], rel_tol=1e-9,
                        abs_tol=1e-9 * scale * scale)


def test_describe_matches_the_textbook():
    data = [3.5, -1.25, 0.0, 7.0, 2.0, None, 11.5]
    s = one_pass(list(enumerate(data)))
    d = stats.describe(s, sketching)
    present = [v for v in data if v is not None]
    assert (d["count"], d["missing"], d["min"], d["max"]) == (6, 1, -1.25, 11.5)
    assert math.isclose(d["mean"], statistics.fmean(present), rel_tol=1e-12)
    assert math.isclose(d["stddev"], statistics.stdev(present), rel_tol=1e-12)
    assert d["first"] == "1970-01-01T00:00:00.000000Z"
    assert d["last"] == "1970-01-01T00:00:00.000006Z"
    assert stats.describe(one_pass([(0, 4.0)]), sketching)["stddev"] is None
    assert stats.describe(one_pass([(0, None)]), sketching)["mean"] is None


def true_neighbours(present, q):
    ordered = sorted(present)
    rank = q * (len(ordered) - 1)
    return ordered[math.floor(rank)], ordered[math.ceil(rank)]


def within(estimate, candidates, alpha):
    return any(abs(estimate - x) <= alpha * abs(x) + 1e-12 for x in candidates)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(0.0)),
                min_size=1, max_size=300))
def test_quantiles_are_within_the_relative_accuracy(present):
    s = one_pass(list(enumerate(present)))
    for name, q in stats.QUANTILES:
        estimate = sketching.quantiles(s)[name]
        assert within(estimate, true_neighbours(present, q), 0.01), (name, estimate)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300))
def test_quantiles_never_leave_the_windows_min_and_max(present):
    s = one_pass(list(enumerate(present)))
    for name, _ in stats.QUANTILES:
        assert min(present) <= sketching.quantiles(s)[name] <= max(present), name


def test_quantiles_of_equal_values_are_that_value():
    # A bin's representative value is not the value itself (2.73 falls in a bin whose
    # representative is above it): every quantile of a constant window is the constant.
    s = one_pass([(i, 2.73) for i in range(100)])
    assert set(sketching.quantiles(s).values()) == {2.73}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(0.0)),
                min_size=1, max_size=300))
def test_quantiles_are_nearest_rank_within_the_relative_accuracy(present):
    # As SQL's percentile_disc: the value at position ceil(q * n) - 1 of the sorted values.
    s = one_pass(list(enumerate(present)))
    ordered = sorted(present)
    for name, q in stats.QUANTILES:
        want = ordered[max(math.ceil(q * len(ordered)) - 1, 0)]
        got = sketching.quantiles(s)[name]
        assert abs(got - want) <= 0.01 * abs(want) + 1e-12, (name, got, want)


def test_the_p95_of_two_readings_is_the_higher_one():
    s = one_pass([(0, 38.5), (1, 39.5)])
    got = sketching.quantiles(s)
    assert abs(got["p50"] - 38.5) <= 0.01 * 38.5
    for name in ("p95", "p99"):
        assert abs(got[name] - 39.5) <= 0.01 * 39.5 and got[name] > 39.0, (name, got[name])
