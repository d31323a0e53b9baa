"""Through the real stack: a plain Kafka client produces, the worker validates, dedups,
dead-letters and counts; checked against an independent reference computation."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from app.contract import Contract, format_ts
from app.settings import load
from app.simulator import Plan, messages

from .harness import (
    ROOT,
    accounting,
    create_topic,
    eventually,
    produce,
    read_all,
)

pytestmark = pytest.mark.integration


def reference(app_env: dict[str, str], msgs: Iterable[tuple[bytes | None, bytes]],
              seen: set | None = None) -> dict:
    """What the worker must report for ``msgs``: the contract's verdict per message and a
    plain set for deduplication."""
    contract = Contract.from_settings(load({k: v for k, v in app_env.items()
                                            if k.startswith("SENSORSTREAM_")}))
    seen = set() if seen is None else seen
    expected = Counter()
    reasons: Counter[str] = Counter()
    for _key, value in msgs:
        parsed = contract.parse(value)
        expected["in"] += parsed.count_in
        expected["dead_lettered"] += len(parsed.rejections)
        reasons.update(str(r.reason) for r in parsed.rejections)
        for reading in parsed.readings:
            for metric, metric_value in reading.metrics.items():
                row = (reading.sensor_id, metric, reading.ts)
                if row in seen:
                    expected["duplicate"] += 1
                else:
                    seen.add(row)
                    expected["accepted"] += 1
                    expected["missing"] += metric_value is None
    return {"counts": expected, "reasons": reasons, "seen": seen}


async def settled(worker, topic: str, readings_in: float) -> dict[str, float]:
    """The accounting once the worker is idle with every reading of the test counted."""
    def check():
        counts = accounting(worker.metrics(), topic)
        total = counts["accepted"] + counts["dead_lettered"] + counts["duplicate"] + counts["late"]
        return counts if counts["in"] == readings_in and total == readings_in else None
    return await eventually(check, f"accounting of {readings_in:g} readings settles", 90)


def assert_counts(counts: dict[str, float], expected: Counter) -> None:
    for kind in ("in", "accepted", "dead_lettered", "duplicate", "missing"):
        assert counts[kind] == expected[kind], (kind, counts, expected)
    assert counts["late"] == 0


async def test_every_shape_from_an_independent_client(make_worker, app_env, bootstrap):
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    worker = make_worker().start()
    await worker.ready()
    now = time.time()
    iso = format_ts(int((now - 120) * 1e6))
    docs = [
        {"sensor_id": "wide-1", "ts": now - 60, "temperature": 21.5, "humidity": 40,
         "light": None, "location": "hall", "firmware": "2.1"},
        {"device_id": "obj-1", "timestamp": iso, "metrics": {"Pressure": 1013.25, "co2": 415}},
        {"mote_id": 7, "time": int((now - 30) * 1000), "metric": "temperature", "value": 19.0},
        {"asset_id": "long-2", "event_time": int((now - 30) * 1e9), "sensor_type": "vibration",
         "value": 0.02, "unit": "g"},
        [{"sensor_id": "arr-1", "ts": iso, "light": 120}, {"sensor_id": "arr-2", "ts": iso,
                                                          "humidity": 150}],
        {"gateway_id": "gw-1", "device_id": "gw-dev", "location": "roof",
         "readings": [{"ts": iso, "voltage": 2.71}, {"ts": "soon", "voltage": 2.7},
                      {"sensor_id": "gw-other", "ts": int(now - 10), "voltage": 2.5}]},
    ]
    raw = [(None, orjson.dumps(d)) for d in docs] + [(b"k", b"\xff\xfe not json")]
    await produce(bootstrap, topic, raw)
    ref = reference(app_env, raw)
    counts = await settled(worker, topic, ref["counts"]["in"])
    assert_counts(counts, ref["counts"])

    status, body = worker.get("/sensors")
    assert status == 200
    assert {s["sensor_id"] for s in body["sensors"]} == {
        "wide-1", "obj-1", "7", "long-2", "arr-1", "gw-dev", "gw-other"}
    status, wide = worker.get("/sensors/wide-1")
    assert status == 200
    assert wide["metrics"]["temperature"]["value"] == 21.5
    assert wide["metrics"]["light"]["value"] is None
    assert wide["attributes"] == {"location": "hall", "firmware": "2.1"}
    assert worker.get("/sensors/obj-1")[1]["metrics"]["pressure"]["value"] == 1013.25
    assert worker.get("/sensors/long-2")[1]["metrics"]["vibration"]["value"] == 0.02
    assert worker.get("/sensors/gw-dev")[1]["attributes"] == {
        "gateway_id": "gw-1", "location": "roof"}
    status, missing = worker.get("/sensors/no-such-sensor")
    assert status == 404 and "no-such-sensor" in missing["error"]
    status, bad = worker.get("/sensors?scope=everything")
    assert status == 400 and "scope" in bad["error"]

    dead = await read_all(bootstrap, app_env["SENSORSTREAM_DLQ_TOPIC"], expected=3)
    assert sorted(orjson.loads(r.value)["reason"] for r in dead) == [
        "invalid_time", "not_json", "out_of_range"]


async def test_ten_thousand_messages_account_exactly(make_worker, app_env, bootstrap):
    """Valid readings in several shapes and envelopes, exact duplicates and malformed
    messages: the counters satisfy the accounting exactly and every dead letter carries
    its reason and original bytes."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    worker = make_worker().start()
    plan = Plan(sensors=54, count=20_000, speed=0, duplicates=0.1, malformed=0.08, seed=2026,
                shape="mixed", start_us=int((time.time() - 6 * 3600) * 1e6))
    msgs = [(key, value) for _ts, key, value in messages(plan, Counter())][:10_000]
    assert len(msgs) == 10_000
    await worker.ready()
    await produce(bootstrap, topic, msgs)
    ref = reference(app_env, msgs)
    assert ref["counts"]["duplicate"] > 1000 and ref["counts"]["dead_lettered"] > 250
    counts = await settled(worker, topic, ref["counts"]["in"])
    assert_counts(counts, ref["counts"])

    samples = worker.metrics()
    by_reason = Counter({dict(labels)["reason"]: int(v) for (name, labels), v in samples.items()
                         if name == "sensorstream_readings_dead_lettered_total"
                         and dict(labels)["topic"] == topic and v})
    assert by_reason == ref["reasons"]

    dead = await read_all(bootstrap, app_env["SENSORSTREAM_DLQ_TOPIC"],
                          expected=ref["counts"]["dead_lettered"])
    assert len(dead) == ref["counts"]["dead_lettered"]
    originals = {value for _key, value in msgs}
    seen_reasons: Counter[str] = Counter()
    for record in dead:
        body = orjson.loads(record.value)
        headers = dict(record.headers)
        assert headers["sensorstream-reason"].decode() == body["reason"]
        assert headers["sensorstream-source-topic"].decode() == topic == body["source"]["topic"]
        assert int(headers["sensorstream-source-offset"]) == body["source"]["offset"]
        assert body["message"]
        original = (base64.b64decode(body["original"]) if body["original_encoding"] == "base64"
                    else body["original"].encode())
        assert original in originals
        seen_reasons[body["reason"]] += 1
    assert seen_reasons == ref["reasons"]


async def test_deduplication_survives_sigkill_and_redelivery(make_worker, app_env, bootstrap,
                                                              tmp_path):
    """A SIGKILL can lose the newest changelog records and leave the last input and
    hand-overs uncommitted: the restarted worker applies again exactly what was lost, so
    the state equals the one before the kill, and the same bytes sent once more are
    all duplicates."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    plan = Plan(sensors=20, count=1_500, speed=0, seed=5, envelope=10,
                start_us=int((time.time() - 3600) * 1e6))
    msgs = [(key, value) for _ts, key, value in messages(plan, Counter())]
    ref = reference(app_env, msgs)
    data_dir = tmp_path / "kept-data"
    first = make_worker(data_dir).start()
    await first.ready()
    await produce(bootstrap, topic, msgs)
    assert_counts(await settled(first, topic, ref["counts"]["in"]), ref["counts"])
    sensors = sorted({row[0] for row in ref["seen"]})
    before = first.get("/sensors")[1], minute_windows(first, sensors, plan.start_us)

    first.kill()  # SIGKILL: no clean shutdown, no final commit
    second = make_worker(data_dir).start()
    await second.ready()

    def restored():  # what the kill lost is applied again, once
        return (second.get("/sensors")[1],
                minute_windows(second, sensors, plan.start_us)) == before
    await eventually(restored, "the restarted worker holds the state before the kill", 90,
                     interval=0.5)
    start = accounting(second.metrics(), topic)

    await produce(bootstrap, topic, msgs)  # the same bytes again

    def resend_counted():
        now = accounting(second.metrics(), topic)
        delta = {kind: now[kind] - start[kind] for kind in now}
        done = (delta["in"] >= ref["counts"]["in"]
                and delta["in"] == delta["duplicate"] + delta["dead_lettered"]
                + delta["accepted"] + delta["late"])
        return delta if done else None
    delta = await eventually(resend_counted, "re-sent readings counted", 90)
    assert (delta["accepted"], delta["late"]) == (0, 0), delta
    assert delta["duplicate"] >= ref["counts"]["in"] - ref["counts"]["dead_lettered"]
    assert (second.get("/sensors")[1], minute_windows(second, sensors, plan.start_us)) == before


def minute_windows(worker, sensors: list[str], since_us: int) -> dict[str, list]:
    """Every sensor's 1-minute windows as the worker serves them."""
    found = {}
    for sensor in sensors:
        status, body = worker.get(f"/sensors/{sensor}/aggregates?window=1m"
                                  f"&since={since_us - 60_000_000}&until={time.time()}")
        assert status == 200, body
        found[sensor] = body["windows"]
    assert sum(len(w) for w in found.values()) > len(sensors)
    return found


async def test_ready_health_and_metrics(make_worker):
    worker = make_worker().start()
    answers = []

    def check():
        try:
            status, body = worker.get("/ready")
        except OSError:
            return False
        answers.append((status, body))
        return status == 200
    await eventually(check, "ready", 90, interval=0.05)
    not_ready = [body for status, body in answers if status == 503]
    assert not_ready, "expected 503 while the worker joins its group and recovers"
    assert all(body["ready"] is False and body["reason"] for body in not_ready)
    assert answers[-1][1]["ready"] is True and answers[-1][1]["partitions"] > 0
    assert worker.get("/health") == (200, {"status": "ok"})
    text = worker.get("/metrics")[1]
    assert "faust_messages_received" in text  # Faust's own sensor metrics
    assert "# TYPE sensorstream_readings_in_total counter" in text


async def test_dedup_horizon_bounds_the_state(make_worker, app_env, bootstrap):
    """Windows (and the evidence in them) older than their retention behind the
    partition's newest reading are deleted (tombstones in the changelog); a reading
    older than the dedup horizon goes to the late topic, counted."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    worker = make_worker(SENSORSTREAM_DEDUP_HORIZON="1h", SENSORSTREAM_PARTITIONS="1",
                         SENSORSTREAM_WINDOWS="1m:1h,5m:1h,1h:1h,1d:3d").start()
    t0 = int((time.time() - 5 * 3600) * 1e6)
    old = [(None, orjson.dumps({"sensor_id": "a", "ts": t0, "temperature": 20.0, "light": 1}))]
    new = [(None, orjson.dumps({"sensor_id": "b", "ts": t0 + 2 * 3600 * 10**6,
                                "temperature": 21.0}))]
    await worker.ready()
    await produce(bootstrap, topic, old)
    await settled(worker, topic, 2)
    await produce(bootstrap, topic, new)
    await settled(worker, topic, 3)
    await produce(bootstrap, topic, old + new)
    counts = await settled(worker, topic, 6)
    assert (counts["accepted"], counts["duplicate"], counts["late"]) == (3, 1, 2)

    late = await read_all(bootstrap, app_env["SENSORSTREAM_LATE_TOPIC"], expected=1)
    assert len(late) == 1
    record = orjson.loads(late[0].value)
    assert record["reason"] == "beyond_dedup_horizon" and record["sensor_id"] == "a"
    assert dict(late[0].headers)["sensorstream-reason"] == b"beyond_dedup_horizon"

    changelog = await read_all(bootstrap, f"{app_env['SENSORSTREAM_APP_ID']}-state-changelog")
    tombstones = sorted(r.key.decode() for r in changelog
                        if r.value is None and not r.key.startswith(b"~"))  # not markers
    t0_s = t0 // 1_000_000
    assert tombstones == sorted(f"{label}|{t0_s // size * size:010d}|a"
                                for label, size in (("1m", 60), ("5m", 300), ("1h", 3600)))


async def test_any_worker_of_the_group_answers_for_every_sensor(make_worker, app_env,
                                                                 bootstrap):
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    one, two = make_worker().start(), make_worker().start()
    await one.ready()
    await two.ready()

    async def both_own_partitions():
        return all(w.get("/ready")[1].get("partitions", 0) > 0 for w in (one, two))
    await eventually(both_own_partitions, "both workers own partitions", 60)
    now = time.time()
    ids = [f"sensor-{i}" for i in range(40)]
    await produce(bootstrap, topic, [
        (None, orjson.dumps({"sensor_id": s, "ts": now - 30, "temperature": float(i)}))
        for i, s in enumerate(ids)])

    def all_accepted():
        return sum(accounting(w.metrics(), topic)["accepted"] for w in (one, two)) == len(ids)
    await eventually(all_accepted, "every reading accepted by one of the two workers", 60)
    per_worker = [len(w.get("/sensors?scope=local")[1]["sensors"]) for w in (one, two)]
    assert sum(per_worker) == len(ids) and min(per_worker) > 0, per_worker
    for worker in (one, two):
        listed = worker.get("/sensors")[1]
        assert [s["sensor_id"] for s in listed["sensors"]] == sorted(ids)
    for i, sensor_id in enumerate(ids):
        answers = [w.get(f"/sensors/{sensor_id}") for w in (one, two)]
        assert answers[0] == answers[1]
        status, body = answers[0]
        assert status == 200 and body["metrics"]["temperature"]["value"] == float(i)


@pytest.mark.parametrize("mode", ["list", "pattern"])
async def test_several_input_topics_by_list_or_pattern(make_worker, app_env, bootstrap, mode):
    base = app_env["SENSORSTREAM_INPUT_TOPICS"]
    topics = [f"{base}-east", f"{base}-west"]
    for topic in topics:
        await create_topic(bootstrap, topic, 2)
    if mode == "list":
        worker = make_worker(SENSORSTREAM_INPUT_TOPICS=",".join(topics))
    else:
        worker = make_worker(SENSORSTREAM_INPUT_PATTERN=f"{base}-(east|west)")
    worker.start()
    await worker.ready()
    now = time.time()
    for n, topic in enumerate(topics, start=1):
        await produce(bootstrap, topic, [
            (None, orjson.dumps({"sensor_id": f"{topic}-{i}", "ts": now - 10, "t": i}))
            for i in range(n * 5)] + [(None, b"garbage")])

    per_topic = {topic: await settled(worker, topic, 5 * n + 1)
                 for n, topic in enumerate(topics, start=1)}
    for n, topic in enumerate(topics, start=1):
        assert per_topic[topic]["accepted"] == 5 * n
        assert per_topic[topic]["dead_lettered"] == 1


async def test_pattern_picks_up_topics_created_later(make_worker, app_env, bootstrap):
    base = app_env["SENSORSTREAM_INPUT_TOPICS"]
    await create_topic(bootstrap, f"{base}-a", 2)
    worker = make_worker(SENSORSTREAM_INPUT_PATTERN=f"{base}-.*",
                         SENSORSTREAM_INPUT_PATTERN_REFRESH="1s").start()
    await worker.ready()
    later = f"{base}-b"
    await create_topic(bootstrap, later, 2)
    await produce(bootstrap, later, [
        (None, orjson.dumps({"sensor_id": "late-topic", "ts": time.time() - 5, "t": 1.0}))])
    # Faust resubscribes about 45 s after a change (its conductor's lock), plus a rebalance.
    counts = await settled(worker, later, 1)
    assert counts["accepted"] == 1


def test_pattern_matching_nothing_stops_startup(app_env, tmp_path):
    env = {**app_env, "SENSORSTREAM_INPUT_PATTERN": "no-such-topic-.*",
           "SENSORSTREAM_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "faust", "-A", "app", "worker"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    line = orjson.loads(result.stderr.strip().splitlines()[-1])
    assert line["setting"] == "SENSORSTREAM_INPUT_PATTERN"
    assert "matches no existing topic" in line["msg"]
    assert "Traceback" not in result.stderr


async def test_a_large_bad_message_is_dead_lettered_whole(make_worker, app_env, bootstrap):
    """A 1.2 MB binary message grows by a third in base64; its dead letter still fits."""
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    worker = make_worker().start()
    await worker.ready()
    blob = bytes(range(256)) * 4800  # 1,228,800 bytes, not UTF-8
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(topic, blob)
    finally:
        await producer.stop()
    counts = await settled(worker, topic, 1)
    assert counts["dead_lettered"] == 1
    (record,) = await read_all(bootstrap, app_env["SENSORSTREAM_DLQ_TOPIC"], expected=1)
    body = orjson.loads(record.value)
    assert body["original_truncated"] is False
    assert base64.b64decode(body["original"]) == blob
