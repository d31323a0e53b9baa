"""Anomaly events through the real stack: raised once, and a replay raises none."""

from __future__ import annotations

import time

import orjson
import pytest
from aiokafka.partitioner import murmur2

from app.contract import format_ts, parse_time
from bench.anomaly_eval import labelled_stream, score, through_stack

from .harness import accounting, eventually, produce, read_all

pytestmark = pytest.mark.integration


def mote_readings(n: int, start: float) -> list[tuple[bytes, bytes]]:
    """A quiet mote for ``n`` readings, then the Intel-Lab battery fault."""
    docs = [{"mote_id": 9, "ts": start + i * 30, "temperature": 20.0 + (i % 5) * 0.1,
             "humidity": 40.0 + (i % 3) * 0.2, "light": float(i % 7),
             "voltage": 2.7 - i * 0.0005} for i in range(n)]
    docs.append({"mote_id": 9, "ts": start + n * 30, "temperature": 122.0,
                 "humidity": -3.0, "light": 3.0, "voltage": 2.1})
    return [(b"9", orjson.dumps(doc)) for doc in docs]


async def test_a_battery_fault_is_reported_once_and_a_replay_reports_nothing(
        make_worker, app_env, bootstrap):
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    anomalies_topic = app_env["SENSORSTREAM_ANOMALIES_TOPIC"]
    start = time.time() - 3600
    msgs = mote_readings(60, start)
    fault_ts = format_ts(parse_time(start + 60 * 30))  # as the contract reads it
    worker = make_worker().start()
    await worker.ready()
    await produce(bootstrap, topic, msgs)

    async def reported():
        records = await read_all(bootstrap, anomalies_topic, deadline=10)
        found = [orjson.loads(r.value) for r in records]
        return found if any(e["detector"] == "fault:battery" for e in found) else None
    events = await eventually(reported, "the battery fault reported", 90, interval=0.5)
    assert {e["ts"] for e in events} == {fault_ts}, events  # the quiet part raised nothing
    # (the humidity of -3 is dead-lettered by the default physical limits)
    assert {(e["metric"], e["detector"]) for e in events} >= {
        (None, "fault:battery"), ("temperature", "range"), ("temperature", "zscore"),
        ("temperature", "spike")}
    battery = next(e for e in events if e["detector"] == "fault:battery")
    assert battery["severity"] == "high" and battery["reason"].startswith("battery: voltage 2.1")
    assert all(r.key == b"9" for r in await read_all(bootstrap, anomalies_topic, deadline=10))

    # served over HTTP: newest first, filtered, bad parameters refused
    status, body = worker.get("/anomalies?sensor_id=9")
    assert status == 200 and body["count"] == len(events)
    assert sorted(map(orjson.dumps, body["anomalies"])) == sorted(map(orjson.dumps, events))
    status, body = worker.get("/anomalies?severity=high&metric=temperature")
    assert status == 200 and {a["severity"] for a in body["anomalies"]} == {"high"}
    assert all(a["metric"] == "temperature" for a in body["anomalies"])
    assert worker.get("/anomalies?since=2999-01-01T00:00:00Z")[1]["count"] == 0
    for bad in ("severity=urgent", "limit=0", "limit=x", "since=yesterday", "scope=all"):
        status, body = worker.get(f"/anomalies?{bad}")
        assert status == 400 and body["error"], bad
    status, body = worker.get("/sensors/9/baselines")
    assert status == 200
    temperature = next(b for b in body["baselines"] if b["metric"] == "temperature")
    assert temperature["readings"] == 61 and temperature["warmed_up"]
    assert temperature["expected"][0] < 20.2 < temperature["expected"][1]
    assert worker.get("/sensors/nope/baselines")[0] == 404

    accepted = accounting(worker.metrics(), topic)["accepted"]  # the fault came last
    await produce(bootstrap, topic, msgs)  # the same readings again

    def replayed():
        return accounting(worker.metrics(), topic)["duplicate"] >= accepted
    await eventually(replayed, "the replay processed", 90)
    again = [orjson.loads(r.value) for r in await read_all(bootstrap, anomalies_topic,
                                                           deadline=10)]
    assert again == events


def same_partition(sensor_id: str, partitions: int) -> str:
    """Another sensor id whose readings share ``sensor_id``'s partition."""
    def partition(key: str) -> int:
        return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
    return next(f"n{i}" for i in range(1000)
                if partition(f"n{i}") == partition(sensor_id))


async def test_a_silent_sensor_is_reported_and_recovers(make_worker, app_env, bootstrap):
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    anomalies_topic = app_env["SENSORSTREAM_ANOMALIES_TOPIC"]
    start = time.time() - 3600
    msgs = mote_readings(60, start)[:-1]  # quiet: 30 min every 30 s
    neighbour = same_partition("9", int(app_env["SENSORSTREAM_PARTITIONS"]))
    worker = make_worker().start()
    await worker.ready()
    await produce(bootstrap, topic, msgs)
    ticks = iter(range(10**6))

    async def reported(detector: str):
        # The neighbour moves the partition's event time on (15 min past mote 9's last
        # reading); the stage looks for silent sensors at most every 10 s.
        n = next(ticks)
        await produce(bootstrap, topic, [(neighbour.encode(), orjson.dumps(
            {"sensor_id": neighbour, "ts": start + 60 * 30 + 900 + n, "temperature": 1.0}))])
        records = await read_all(bootstrap, anomalies_topic, deadline=10)
        found = [orjson.loads(r.value) for r in records]
        return [e for e in found if e["detector"] == detector] or None
    (silent,) = await eventually(lambda: reported("silent"), "mote 9 reported silent", 90,
                                 interval=1)
    assert silent["sensor_id"] == "9" and silent["severity"] == "medium"
    assert "times its typical interval of 30" in silent["reason"], silent

    await produce(bootstrap, topic, [(b"9", orjson.dumps(
        {"mote_id": 9, "ts": start + 60 * 30 + 1000, "temperature": 20.1}))])
    (recovered,) = await eventually(lambda: reported("recovered"), "mote 9 recovered", 60,
                                    interval=1)
    assert recovered["sensor_id"] == "9" and recovered["severity"] == "low"


async def test_a_sensor_whose_whole_partition_went_quiet_is_reported_silent_by_the_wall_clock(
        make_worker, app_env, bootstrap):
    """Live input every 5 s for 20 min, then nothing at all: no batch moves the
    partition's event time on, so only the wall clock can tell (issue 19, point 6)."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    anomalies_topic = app_env["SENSORSTREAM_ANOMALIES_TOPIC"]
    now = time.time()
    first = now - 1200
    docs = [{"sensor_id": "q1", "ts": first + 5 * i, "temperature": 20.0 + (i % 3) * 0.1}
            for i in range(241)]
    last = docs[-1]["ts"]
    worker = make_worker().start()
    await worker.ready()
    await produce(bootstrap, topic, [(b"q1", orjson.dumps(d)) for d in docs])

    async def reported(detector: str):
        records = await read_all(bootstrap, anomalies_topic, deadline=10)
        found = [orjson.loads(r.value) for r in records]
        return [e for e in found if e["detector"] == detector] or None
    (silent,) = await eventually(lambda: reported("silent"), "q1 reported silent", 150,
                                 interval=2)
    assert silent["sensor_id"] == "q1"
    # Timed when the gap passed 3 typical intervals, with the gap's start in the reason.
    assert parse_time(silent["ts"]) == parse_time(last) + 15_000_000, silent
    assert silent["reason"] == (f"no reading since {format_ts(parse_time(last))}: over 3 "
                                f"times its typical interval of 5 s"), silent
    assert time.time() - last >= 15

    await produce(bootstrap, topic, [(b"q1", orjson.dumps(
        {"sensor_id": "q1", "ts": time.time(), "temperature": 20.0}))])
    (recovered,) = await eventually(lambda: reported("recovered"), "q1 recovered", 60,
                                    interval=1)
    assert recovered["sensor_id"] == "q1" and recovered["severity"] == "low"


async def test_detection_quality_on_a_labelled_stream(make_worker, app_env, bootstrap):
    """The simulator's injected anomalies through the real stack: precision and recall of
    every class at least 0.8, and the same readings again raise nothing new."""
    msgs, labels = labelled_stream(20_000, rate=0.04, seed=5)
    worker = make_worker().start()
    await worker.ready()
    events, replayed = await through_stack(bootstrap, worker, app_env, msgs)
    table = score(labels, events, grace_us=600_000_000)
    for kind, row in table.items():
        assert row["labels"] >= 3, (kind, row)
        assert row["precision"] >= 0.8 and row["recall"] >= 0.8, (kind, row)
    assert replayed == 0
