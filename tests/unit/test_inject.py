"""Labelled anomalies from the simulator (app.inject): each class alters what it says,
and the labels cover what was altered."""

from __future__ import annotations

from collections import Counter, defaultdict

import orjson
import pytest

from app.contract import parse_time
from app.inject import KINDS
from app.simulator import Plan, messages

T0 = 1_700_000_000 * 1_000_000


def run(rate: float, count: int = 20_000, seed: int = 4):
    labels: list = []
    summary: Counter = Counter()
    by_mote = defaultdict(list)
    for _ts, _key, value in messages(Plan(count=count, speed=0, seed=seed, start_us=T0,
                                          anomalies=rate), summary, labels):
        doc = orjson.loads(value)
        by_mote[str(doc["mote_id"])].append((parse_time(doc["ts"]), doc))
    return labels, summary, by_mote


def inside(readings, label):
    return [doc for ts, doc in readings if label.start <= ts <= label.end]


def test_each_class_is_injected_labelled_and_altered():
    labels, summary, by_mote = run(0.02)
    kinds = Counter(label.kind for label in labels)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 3, kinds
    affected = sum(len(inside(by_mote[lb.sensor_id], lb)) for lb in labels) + summary["silenced"]
    assert 0.01 <= affected / 20_000 <= 0.03, affected  # about 2 % of readings
    for label in labels:
        seen = inside(by_mote[label.sensor_id], label)
        if label.kind == "spike":
            assert label.start == label.end and len(seen) == 1
        elif label.kind == "stuck":
            assert len({doc["humidity"] for doc in seen}) == 1 and len(seen) >= 2
        elif label.kind == "silent":
            assert seen == [] and label.end > label.start
        elif label.kind == "battery":
            assert all(doc["voltage"] < 2.3 and doc["temperature"] > 100 for doc in seen)
        elif label.kind == "drift":
            assert label.metric == "temperature" and len(seen) >= 2


def test_no_injection_labels_only_real_battery_faults():
    # most of a day: with this seed, fast motes run down
    labels, summary, by_mote = run(0.0, count=54 * 2400, seed=7)
    assert summary["silenced"] == 0
    assert labels and {label.kind for label in labels} == {"battery"}
    spans = {label.sensor_id: label for label in labels}
    assert len(spans) == len(labels)  # one label per mote, from its first faulty reading
    for mote, readings in by_mote.items():  # ... to its last: every faulty one is inside
        for ts, doc in readings:
            if doc["voltage"] < 2.3:
                assert mote in spans and spans[mote].start <= ts <= spans[mote].end


def test_a_bad_rate_is_refused():
    with pytest.raises(ValueError, match="share of readings"):
        list(messages(Plan(count=1, speed=0, anomalies=1.5), Counter()))
