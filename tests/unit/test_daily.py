"""Day records per sensor (tables.daily): quality counts as the windows classify readings,
anomaly counts exact under re-delivery, and the figures read back from them."""

from __future__ import annotations

import orjson

from app.contract import Reading, Source
from tables import daily
from tables.anomalies import Judgement
from tables.daily import DAY_S, DAY_US, Days, day_key

from .test_anomalies import FAULTS, RULES, mote
from .test_windows import MIN, DictStore, engine

DAY0 = 1_700_000_000 // DAY_S * DAY_S  # a UTC midnight, seconds
T0 = DAY0 * 1_000_000
RANGES = {"t": (0.0, 50.0)}


def apply(store, rows, partition=0):
    days = Days(store, RANGES)
    batch = engine(lateness_min=1).batch(store, partition, days)
    for sensor, ts, value in rows:
        batch.add(Reading(sensor, ts, {"t": value}, {}), Source("in", 0, 0, None))
    batch.seal()
    days.write()
    batch.write()
    return days


def record(store, sensor, day_s=DAY0):
    raw = store.get(day_key(day_s, sensor))
    return orjson.loads(raw) if raw is not None else None


def test_readings_count_on_the_day_of_their_time_by_kind():
    store = DictStore()
    rows = [("s", T0 + i * MIN, float(i)) for i in range(10)]
    rows += [("s", T0 + 2 * MIN, 2.0),            # duplicate
             ("s", T0 + 11 * MIN, None),          # null
             ("s", T0 + 12 * MIN, 80.0),          # outside the operating range
             ("s", T0 + DAY_US + MIN, 1.0)]       # the next day
    apply(store, rows)
    apply(store, [("s", T0 + 3 * MIN + 1, 5.0)])  # minute 3 sealed: the watermark passed it
    today = daily.counts(record(store, "s"))
    assert today == {"accepted": 12, "null": 1, "out_of_range": 1, "duplicate": 1, "late": 1,
                     "dead_letter": 0, "received": 14}
    assert daily.counts(record(store, "s", DAY0 + DAY_S))["accepted"] == 1
    assert record(store, "s")["first"] == T0
    rates = daily.rates(today)
    assert rates["duplicate"] == round(1 / 14, 6) and rates["dead_letter"] == 0.0


def test_dead_letters_count_per_sensor_and_unattributed():
    store = DictStore()
    days = Days(store, RANGES)
    days.dead_letters("s", T0 + MIN, 2)
    days.dead_letters(daily.UNATTRIBUTED, T0 + MIN, 1)
    days.write()
    assert daily.counts(record(store, "s"))["dead_letter"] == 2
    assert store.get(day_key(DAY0, "")) is not None
    assert daily.rates(daily.counts(record(store, "s")))["dead_letter"] == 1.0


def test_anomaly_counts_are_exact_when_a_batch_is_judged_again():
    store = DictStore()
    readings = [mote(i) for i in range(40)]
    readings.append(mote(40, voltage=2.1, temperature=122.0, humidity=-3.0))

    def judge(rows):
        days = Days(store, {})
        judgement = Judgement(store, RULES, FAULTS, days)
        for reading in rows:
            judgement.observe(reading, reading.metrics)
        # A crash before the baselines are stored: the day record is, the batch comes again.
        days.write()
        return judgement.events

    events = judge(readings)
    assert events and judge(readings) == events  # judged again from the same baselines
    counts = daily.anomalies(record(store, "7", mote(0).ts // DAY_US * DAY_S))
    assert counts["total"] == len(events)
    assert counts["by_severity"]["high"] == sum(e["severity"] == "high" for e in events)
    assert counts["by_detector"]["fault:battery"] == 1


def test_cooldown_repeats_and_recoveries_are_not_counted_as_anomalies():
    store = DictStore()
    days = Days(store, {})
    days.anomaly("s", "t", T0, "zscore", "high", 0, False)
    days.anomaly("s", "t", T0 + MIN, "zscore", "low", 4, True)       # a cooldown's end
    days.anomaly("s", None, T0 + 2 * MIN, "recovered", "low", 0, False)
    days.anomaly("s", "t", T0 + 9 * MIN, "zscore", "medium", 2, False)
    days.anomaly("s", "t", T0 + 9 * MIN, "zscore", "medium", 2, False)  # raised again
    days.write()
    assert daily.anomalies(record(store, "s")) == {
        "total": 2, "by_severity": {"low": 0, "medium": 1, "high": 1},
        "by_detector": {"zscore": 2}, "repeats_in_cooldown": 6}


def test_completeness_covers_the_part_of_the_day_the_sensor_could_report_in():
    rec = daily.new()
    rec["m"] = {"t": [720, 0, 0, 0, 0], "h": [360, 0, 0, 0, 0]}
    rec["first"] = T0 + 12 * 3600 * 1_000_000
    interval = 60_000_000
    whole = daily.span(DAY0, rec, False, T0 + 2 * DAY_US)
    assert whole == DAY_US
    assert daily.completeness(rec, interval, whole) == {"h": 25.0, "t": 50.0}
    started = daily.span(DAY0, rec, True, T0 + 2 * DAY_US)  # it started at noon
    assert daily.completeness(rec, interval, started) == {"h": 50.0, "t": 100.0}
    so_far = daily.span(DAY0, rec, False, T0 + 6 * 3600 * 1_000_000)  # it is 06:00
    assert so_far == 6 * 3600 * 1_000_000
    assert daily.completeness(rec, None, whole) == {}
    assert daily.mean([50.0, None, 100.0]) == 75.0 and daily.mean([None]) is None


def test_the_fleet_sums_counts_and_ranks_the_least_complete_sensors():
    def entry(sensor, completeness, received, late):
        totals = {**dict.fromkeys((*daily.KINDS, "dead_letter"), 0), "received": received,
                  "accepted": received - late, "late": late}
        return {"sensor_id": sensor, "completeness_pct": completeness, "freshness_s": 5.0,
                "event_time_lag_s": 1.0, "silent": sensor == "b", "counts": totals}
    unattributed = {"sensor_id": None, "counts": {
        **dict.fromkeys((*daily.KINDS, "received"), 0), "dead_letter": 3, "received": 3}}
    fleet = daily.fleet([entry("a", 90.0, 10, 1), entry("b", 40.0, 7, 0),
                         entry("c", None, 0, 0), unattributed])
    assert fleet["sensors"] == 3 and fleet["silent"] == 1
    assert fleet["completeness_pct"] == 65.0 and fleet["completeness_min_pct"] == 40.0
    assert [e["sensor_id"] for e in fleet["least_complete"]] == ["b", "a"]
    assert fleet["counts"]["received"] == 20 and fleet["counts"]["dead_letter"] == 3
    assert fleet["rates"]["late"] == 0.05 and fleet["rates"]["dead_letter"] == 0.15
