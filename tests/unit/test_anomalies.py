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
