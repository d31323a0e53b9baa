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
