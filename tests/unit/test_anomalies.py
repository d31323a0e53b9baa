"""Judging batches against stored baselines and fault rules (tables.anomalies)."""

from __future__ import annotations

from app.contract import Reading
from tables import fault_rules
from tables.anomalies import Judgement
from tables.baseline import Rules

from .test_windows import DictStore

MIN = 60_000_000
T0 = 1_700_000_000 // 86400 * 86400 * 1_000_000
RULES = Rules(warmup=20, cooldown_us=5 * MIN, spikes={"temperature": 0.1})
FAULTS = fault_rules.parse(fault_rules.DEFAULT)


def mote(i: int, **values: float) -> Reading:
    base = {"temperature": 20.0 + (i % 5) * 0.1, "humidity": 40.0 + (i % 3) * 0.2,
            "voltage": 2.7 - i * 0.0005}
    return Reading("7", T0 + i * 30_000_000, {**base, **values}, {})


def judge(store: DictStore, readings: list[Reading]) -> list[dict]:
    judgement = Judgement(store, RULES, FAULTS)
    for reading in readings:
        judgement.observe(reading, reading.metrics)
    judgement.write()
    return judgement.events


def test_a_battery_fault_and_a_spike_are_reported_once_and_a_replay_reports_nothing():
    store = DictStore()
    readings = [mote(i) for i in range(40)]
    readings.append(mote(40, voltage=2.1, temperature=122.0, humidity=-3.0))
    assert judge(store, readings[:25]) == []
    events = judge(store, readings[25:])
    found = {(e["metric"], e["detector"]) for e in events}
    assert ("temperature", "spike") in found and ("temperature", "zscore") in found
    assert (None, "fault:battery") in found
    battery = next(e for e in events if e["detector"] == "fault:battery")
    assert battery["severity"] == "high" and "voltage 2.1 < 2.3" in battery["reason"]
    assert all(e["ts"] == "2023-11-14T00:20:00.000000Z" for e in events)
    assert judge(store, readings) == []  # delivered again: nothing new
    assert judge(DictStore.replay(store.log), readings) == []  # after a rebuild too


def test_a_silent_sensor_is_reported_once_and_recovers_when_it_reports_again():
    store = DictStore()
    interval = 30_000_000
    quiet = [("7", T0, interval), ("8", T0 + 60_000_000, interval), ("9", T0, None)]

    def check(now):
        judgement = Judgement(store, RULES, FAULTS)
        judgement.check_silence(quiet, now, 3)
        judgement.write()
        return [(e["sensor_id"], e["detector"]) for e in judgement.events]
    assert check(T0 + 90_000_000) == []                      # exactly 3 intervals: not yet
    assert check(T0 + 91_000_000) == [("7", "silent")]       # 8 is recent, 9 has no interval
    assert check(T0 + 200_000_000) == [("8", "silent")]      # 7 is reported once
    assert judge(store, [Reading("7", T0, {"temperature": 20.0}, {})]) == []  # old: no
    events = judge(store, [Reading("7", T0 + 210_000_000, {"temperature": 20.0}, {})])
    assert [(e["detector"], e["severity"]) for e in events] == [("recovered", "low")]
    assert store.get("~silent|7") is None and store.get("~silent|8") is not None


INTERVAL = 30_000_000


def run(readings: list[Reading], batch_size: int, scan: bool) -> list[dict]:
    """The per-sensor stage's loop over ``readings`` in batches of ``batch_size``, with
    the event-time scan of open gaps after each batch or not at all: the silence and
    recovery events."""
    store, last_seen, events = DictStore(), {}, []
    for i in range(0, len(readings), batch_size):
        judgement = Judgement(store, RULES, [], None, 3, lambda _sensor: INTERVAL)
        for reading in readings[i:i + batch_size]:
            previous = last_seen.get(reading.sensor_id)
            last_seen[reading.sensor_id] = max(previous or 0, reading.ts)
            judgement.observe(reading, reading.metrics, previous)
        if scan:
            newest = max(last_seen.values())
            judgement.check_silence(((s, t, INTERVAL) for s, t in last_seen.items()),
                                    newest, 3)
        judgement.write()
        events += [e for e in judgement.events if e["detector"] in ("silent", "recovered")]
    return events


def fleet_with_gaps() -> list[Reading]:
    """Three motes every 30 s for an hour; mote a quiet for 5 min from minute 10, b and c
    quiet together for 3 min from minute 30 (every sensor of the fleet at once: no
    partition event time moves on while they are), c again for 2 min 30 s from minute 50."""
    quiet = {"a": [(10, 15)], "b": [(30, 33)], "c": [(30, 33), (50, 52.5)]}
    readings = []
    for step in range(120):
        minute = step / 2
        for sensor in ("a", "b", "c"):
            if not any(start < minute < end for start, end in quiet[sensor]):
                readings.append(Reading(sensor, T0 + step * INTERVAL, {"t": 1.0}, {}))
    return readings


def test_a_gap_that_closes_before_any_scan_sees_it_is_reported_when_the_sensor_reports_again():
    events = run(fleet_with_gaps(), batch_size=1000, scan=False)  # one batch, no scan
    silent = [(e["sensor_id"], e["ts"]) for e in events if e["detector"] == "silent"]
    # a: last reading 10:00, silent once past 3 intervals (10:00 + 90 s); b and c
    # together; c's second gap: 50:00 to 52:30 is 5 intervals.
    assert silent == [("a", "2023-11-14T00:11:30.000000Z"), ("b", "2023-11-14T00:31:30.000000Z"),
                      ("c", "2023-11-14T00:31:30.000000Z"), ("c", "2023-11-14T00:51:30.000000Z")]
    reasons = [e["reason"] for e in events if e["detector"] == "silent"]
    assert reasons[0] == ("no reading since 2023-11-14T00:10:00.000000Z: over 3 times its "
                          "typical interval of 30 s")
    assert [e["detector"] for e in events] == ["silent", "recovered"] * 4


def test_a_replay_reports_the_same_silences_as_the_live_run_whatever_its_batches():
    readings = fleet_with_gaps()
    live = run(readings, batch_size=3, scan=True)   # a batch every 30 s, scanned
    key = [(e["sensor_id"], e["ts"], e["detector"], e["reason"]) for e in live
           if e["detector"] == "silent"]
    assert len(key) == 4
    for batch_size in (1, 7, 50, 1000):
        for scan in (True, False):
            replay = run(readings, batch_size, scan)
            assert [(e["sensor_id"], e["ts"], e["detector"], e["reason"]) for e in replay
                    if e["detector"] == "silent"] == key, (batch_size, scan)
            assert sum(e["detector"] == "recovered" for e in replay) == 4
