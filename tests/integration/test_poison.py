"""Issue 18, findings 1 and 5, through the real stack: one poison message never stops the
pipeline or loses a reading.

One worker with both sinks (PostgreSQL and the S3 lake) serves every case of the module.
Each case produces its poison message, then good readings of the same sensor with the
same key (so the same input partition and the same hand-over partition), and checks
within 30 s: every good reading is in PostgreSQL and in the lake, the poison is in the
dead-letter topic with its reason and original bytes, the accounting identity holds with
the poison counted, and no agent crashed or restarted.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from app.contract import MAX_RECORD_BYTES, Contract
from app.settings import load

from .harness import Worker, accounting, commits_and_ends, counter, deployment_env, eventually
from .test_pipeline import reference
from .test_sinks import lake_store

pytestmark = pytest.mark.integration

DEADLINE = 30.0
GOOD = 20
#: Large enough for the 5 MB poison messages (the worker's own topics keep their limit).
BIG = 16 * 1024 * 1024
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Faust's and mode's words when an agent or service crashes or is restarted.
CRASH_WORDS = ("Crashed reason", "Restarting dead", "Agent error", "stage stopped")


def _now() -> float:
    return time.time() - 120


def deep(sensor: str) -> bytes:
    return (f'{{"sensor_id":"{sensor}","ts":{_now()},"temperature":21,"x":'
            + "[" * 300 + "]" * 300 + "}").encode()


def surrogate(sensor: str) -> bytes:  # the JSON escape, as a client could send it
    return (f'{{"sensor_id":"{sensor}","ts":{_now()},"temperature":21,'
            '"note":"\\ud800"}').encode()


def long_ts(sensor: str) -> bytes:
    return f'{{"sensor_id":"{sensor}","ts":"{"7" * 5000}","temperature":21}}'.encode()


def big_attribute(sensor: str) -> bytes:
    return orjson.dumps({"sensor_id": sensor, "ts": _now(), "temperature": 21,
                         "blob": "a" * (5 * 1024 * 1024)})


def booleans(sensor: str) -> bytes:
    return orjson.dumps({"sensor_id": sensor, "ts": _now(), "on": True, "off": False})


def long_integer(sensor: str) -> bytes:  # its other metric is good and goes on
    return (f'{{"sensor_id":"{sensor}","ts":{_now()},"temperature":21,"big":'
            + "9" * 5000 + "}").encode()


def big_not_json(_sensor: str) -> bytes:
    return b"\xff" + b"x" * (5 * 1024 * 1024)


def nul(sensor: str) -> bytes:
    return (f'{{"sensor_id":"{sensor}","ts":{_now()},"temperature":21,'
            '"note":"bad\\u0000byte"}').encode()


#: case -> (poison bytes of a sensor, the reason of each of its dead letters)
CASES = {
    "deep-nesting": (deep, "too_deep"),
    "lone-surrogate": (surrogate, "invalid_text"),
    "5000-digit-ts": (long_ts, "invalid_time"),
    "5mb-attribute": (big_attribute, "too_large"),
    "boolean-values": (booleans, "value_not_number"),
    "5000-digit-metric": (long_integer, "value_not_finite"),
    "5mb-not-json": (big_not_json, "not_json"),
    "nul-attribute": (nul, "invalid_text"),
}


@pytest.fixture(scope="module")
async def env(stack_env) -> dict[str, str]:
    name = f"poison-{uuid.uuid4().hex[:6]}"
    env = {
        **deployment_env(stack_env, name),
        "SENSORSTREAM_SINKS": "postgres,lake",
        "SENSORSTREAM_SINK_BATCH_WINDOW": "300ms",
        "SENSORSTREAM_LAKE_SEAL_IDLE": "3s",
    }
    await create_big_topic(env["SENSORSTREAM_BROKER"].split("://", 1)[1],
                           env["SENSORSTREAM_INPUT_TOPICS"])
    return env


async def create_big_topic(bootstrap: str, topic: str) -> None:
    """The input topic, before a worker sees it: room for 5 MB messages."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1, topic_configs={
            "retention.ms": "604800000", "max.message.bytes": str(BIG)})])
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def worker(env, tmp_path_factory):
    directory = tmp_path_factory.mktemp("poison-worker")
    worker = Worker(env, directory / "data", directory / "worker.log").start()
    try:
        await worker.ready()
        yield worker
    finally:
        worker.stop()


async def produce_big(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]],
                      ) -> list[tuple[int, int]]:
    """Send in order, one at a time (acknowledged before the next): partition and offset
    of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=BIG)
    await producer.start()
    try:
        sent = []
        for key, value in messages:
            meta = await producer.send_and_wait(topic, value, key=key)
            sent.append((meta.partition, meta.offset))
        return sent
    finally:
        await producer.stop()


async def dead_letters_of(bootstrap: str, topic: str, source: tuple[int, int], count: int,
                          deadline: float) -> list:
    """The dead-letter records of the input message at ``source`` (partition, offset):
    the whole topic is read from its start until ``count`` are found (end offsets are
    not trusted on this broker: FIELD-NOTES)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_bytes=BIG,
                                max_partition_fetch_bytes=BIG)
    await consumer.start()
    found = []
    try:
        partitions = await eventually(lambda: consumer.partitions_for_topic(topic),
                                      f"topic {topic} exists", deadline)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = time.monotonic() + deadline
        extra_round = True  # after the count is reached: a copy would show up here
        while time.monotonic() < end and (len(found) < count or extra_round):
            if len(found) >= count:
                extra_round = False
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    headers = dict(record.headers)
                    if (int(headers["sensorstream-source-partition"]),
                            int(headers["sensorstream-source-offset"])) == source:
                        found.append(record)
    finally:
        await consumer.stop()
    return found


def _us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


async def pg_rows(env: dict[str, str], sensor: str) -> set[tuple]:
    conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"])
    try:
        rows = await conn.fetch(f"SELECT metric, time, value FROM "
                                f"{env['SENSORSTREAM_PG_SCHEMA']}.readings "
                                "WHERE sensor_id = $1", sensor)
    except asyncpg.UndefinedTableError:
        return set()
    finally:
        await conn.close()
    return {(r["metric"], _us(r["time"]), r["value"]) for r in rows}


async def lake_rows(env: dict[str, str], sensor: str) -> set[tuple]:
    """The sensor's raw rows in every Parquet file of the lake, part or sealed (a file a
    seal removes between the listing and the read is read again at the next poll)."""
    store = lake_store(env)
    await store.start()
    found = set()
    try:
        for key in await store.list("raw/"):
            if key.endswith(".parquet"):
                table = pq.read_table(io.BytesIO(await store.get(key)),
                                      columns=["sensor_id", "metric", "time", "value"])
                for row in table.to_pylist():
                    if row["sensor_id"] == sensor:
                        found.add((row["metric"], _us(row["time"]), row["value"]))
    finally:
        await store.stop()
    return found


def expected_rows(env: dict[str, str], msgs: list[tuple[bytes, bytes]]) -> set[tuple]:
    """(metric, ts, value) of every row the contract accepts in ``msgs``."""
    contract = Contract.from_settings(load({k: v for k, v in env.items()
                                            if k.startswith("SENSORSTREAM_")}))
    rows = set()
    for _key, value in msgs:
        for reading in contract.parse(value).readings:
            rows.update((metric, reading.ts, number)
                        for metric, number in reading.metrics.items())
    return rows


_serial = itertools.count()


@pytest.mark.parametrize("case", list(CASES))
async def test_poison_is_dead_lettered_and_later_readings_are_stored(case, env, worker):
    make, reason = CASES[case]
    bootstrap = env["SENSORSTREAM_BROKER"].split("://", 1)[1]
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    sensor = f"{case}-{next(_serial)}"
    key = sensor.encode()
    start = time.time() - 60
    good = [(key, orjson.dumps({"sensor_id": sensor, "ts": start + i, "temperature": 20 + i,
                                "humidity": 40.5}))
            for i in range(GOOD)]
    msgs = [(key, make(sensor)), *good]
    ref = reference(env, msgs)
    before = accounting(worker.metrics(), topic)

    (poison_partition, poison_offset), *later = await produce_big(bootstrap, topic, msgs)
    assert {p for p, _o in later} == {poison_partition}
    began = time.monotonic()
    want = expected_rows(env, msgs)
    assert len(want) >= 2 * GOOD

    async def stored() -> bool:
        return await pg_rows(env, sensor) == want
    await eventually(stored, f"{case}: every good reading in PostgreSQL", DEADLINE)

    async def in_lake() -> bool:
        try:
            return await lake_rows(env, sensor) == want
        except Exception as exc:  # a part file sealed away meanwhile: read again
            raise AssertionError(f"lake read: {exc}") from exc
    await eventually(in_lake, f"{case}: every good reading in the lake",
                     max(1.0, DEADLINE - (time.monotonic() - began)), interval=0.5)

    dead = await dead_letters_of(bootstrap, env["SENSORSTREAM_DLQ_TOPIC"],
                                 (poison_partition, poison_offset),
                                 ref["counts"]["dead_lettered"], DEADLINE)
    bodies = [orjson.loads(r.value) for r in dead]
    assert bodies and all(b["source"]["topic"] == topic for b in bodies), bodies
    assert Counter(b["reason"] for b in bodies) == Counter({reason: len(bodies)})
    assert len(bodies) == ref["counts"]["dead_lettered"] == sum(ref["reasons"].values())
    poison = msgs[0][1]
    for record, body in zip(dead, bodies, strict=True):
        assert dict(record.headers)["sensorstream-reason"].decode() == reason
        original = (base64.b64decode(body["original"])
                    if body["original_encoding"] == "base64" else body["original"].encode())
        if body["original_truncated"]:  # only what cannot fit a record is cut, and it says so
            assert len(poison) > MAX_RECORD_BYTES and poison.startswith(original)
            assert body["original_size"] == len(poison)
            assert str(MAX_RECORD_BYTES) in body["message"], body["message"]
        else:
            assert original == poison

    def balanced():
        now = accounting(worker.metrics(), topic)
        delta = {kind: now[kind] - before[kind] for kind in now}
        total = delta["accepted"] + delta["dead_lettered"] + delta["duplicate"] + delta["late"]
        return delta if delta["in"] == ref["counts"]["in"] == total else None
    delta = await eventually(balanced, f"{case}: the accounting with the poison counted", 10)
    assert delta["dead_lettered"] == len(bodies) and delta["accepted"] == len(want)

    samples = worker.metrics()
    assert counter(samples, "sensorstream_stage_failures_total", stage="ingest") == 0
    assert ("sensorstream_stage_failures_total", frozenset({("stage", "ingest")})) in samples
    assert worker.process.poll() is None
    log = worker.log.read_text(errors="replace")
    assert not [w for w in CRASH_WORDS if w in log], worker.log_tail()
    status, ready = worker.get("/ready")
    assert status == 200, ready


async def test_an_unreadable_hand_over_is_dead_lettered_by_the_per_sensor_stage(env, worker):
    """Records another producer wrote to the hand-over topic: dead-lettered by the
    per-sensor stage with their bytes (``not_json``, ``bad_shape``; a reading of the
    wrong types alone, with its index, the other reading of its record applied); the
    readings handed over after them are stored. (The sink stage, reading the same
    topic, dead-letters what it cannot store on its own: not checked here.)"""
    bootstrap = env["SENSORSTREAM_BROKER"].split("://", 1)[1]
    handovers = f"{env['SENSORSTREAM_APP_ID']}-readings-by-sensor"
    sensor = f"after-foreign-{next(_serial)}"
    partition = (murmur2(sensor.encode()) & 0x7FFFFFFF) % int(env["SENSORSTREAM_PARTITIONS"])
    start = time.time() - 60
    ts_us = int((start - 5) * 1e6)
    foreign = [b"\x00 not a hand-over", orjson.dumps({"rows": [["s", "not a time", {}]]}),
               orjson.dumps({"rows": [["s", 1, {"t": "warm"}, {}, "in", 0, 0, 0],
                                      [sensor, ts_us, {"temperature": 19.0}, {}, "foreign",
                                       0, 0, ts_us]], "wm": {}})]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        placed = [await producer.send_and_wait(handovers, value, partition=partition)
                  for value in foreign]
    finally:
        await producer.stop()
    before = accounting(worker.metrics(), env["SENSORSTREAM_INPUT_TOPICS"])
    good = [(sensor.encode(), orjson.dumps({"sensor_id": sensor, "ts": start + i,
                                            "temperature": 20 + i})) for i in range(GOOD)]
    await produce_big(bootstrap, env["SENSORSTREAM_INPUT_TOPICS"], good)
    want = expected_rows(env, good)
    assert len(want) == GOOD

    async def stored() -> bool:
        return await pg_rows(env, sensor) == want | {("temperature", ts_us, 19.0)}
    await eventually(stored, "the readings after the foreign records in PostgreSQL", DEADLINE)
    found = []
    for meta, value in zip(placed, foreign, strict=True):
        dead = await dead_letters_of(bootstrap, env["SENSORSTREAM_DLQ_TOPIC"],
                                     (meta.partition, meta.offset), 1, DEADLINE)
        bodies = [orjson.loads(r.value) for r in dead
                  if dict(r.headers)["sensorstream-source-topic"].decode() == handovers]
        bodies = [b for b in bodies if b["reason"] in ("not_json", "bad_shape")]
        assert len(bodies) == 1, bodies
        original = (base64.b64decode(bodies[0]["original"])
                    if bodies[0]["original_encoding"] == "base64"
                    else bodies[0]["original"].encode())
        assert original == value and bodies[0]["message"]
        found.append((bodies[0]["reason"], bodies[0]["reading_index"]))
    assert found == [("not_json", None), ("bad_shape", None), ("bad_shape", 0)]
    samples = worker.metrics()
    assert accounting(samples, handovers)["in"] == accounting(
        samples, handovers)["dead_lettered"] == len(foreign)
    delta = accounting(samples, env["SENSORSTREAM_INPUT_TOPICS"])
    assert delta["accepted"] - before["accepted"] == len(want)
    assert counter(samples, "sensorstream_stage_failures_total") == 0
    log = worker.log.read_text(errors="replace")
    assert not [w for w in CRASH_WORDS if w in log], worker.log_tail()


def test_no_crash_after_every_case(worker):
    """After the shared worker's cases: it is still the first process, never restarted,
    and logged no traceback."""
    assert worker.process.poll() is None
    log = worker.log.read_text(errors="replace")
    assert "Traceback" not in log, worker.log_tail()


#: A plugin that makes the ingest stage meet what no correct contract lets through: a
#: contract that accepts unencodable readings (as before issue 18) and a bug.
INJECTOR = '''\
"""Test plugin: readings the contract should have rejected, and an injected bug."""

import json

import agents.ingest as ingest
from app.contract import Parsed, Reading, parse_time


class Careless(type(ingest.contract)):
    def parse(self, value, now=None):
        if value and b"INJECTED-BUG" in value and b"bug" in value:
            raise RuntimeError("an injected bug")
        if value and b"UNCHECKED" in value:
            doc = json.loads(value)
            return Parsed([Reading(doc["sensor_id"], parse_time(doc["ts"]),
                                   {"temperature": 21.0, "humidity": 40.0},
                                   {"note": doc["note"]})], [])
        return super().parse(value, now)


old = ingest.contract
ingest.contract = Careless(old.limits, old.max_future_us, old.attribute_fields)
'''


async def test_the_stage_dead_letters_what_the_contract_let_through_and_stops_on_a_bug(
        make_worker, app_env, bootstrap, tmp_path):
    """The ingest stage's own safety net, behind the contract: readings whose hand-over
    cannot be encoded or is too large are dead-lettered (each of their rows), the rest of
    the batch goes on. Then a bug (an exception not about the data) stops the worker,
    logged with the message's position, without committing past it: a worker without
    the bug stores that message and the ones after it."""
    from tests.unit.test_plugins import distribution

    env = {**app_env, "SENSORSTREAM_SINKS": "postgres", "SENSORSTREAM_SINK_BATCH_WINDOW": "300ms"}
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    await create_big_topic(bootstrap, topic)
    site = distribution(tmp_path / "site", "poison-injector", {"injector": "poison_injector"},
                        {"poison_injector.py": INJECTOR})
    careless = make_worker(PYTHONPATH=str(site), SENSORSTREAM_SINKS="postgres",
                           SENSORSTREAM_SINK_BATCH_WINDOW="300ms").start()
    await careless.ready()
    sensor, start = "careless", time.time() - 60
    key = sensor.encode()

    def unchecked(i: int, note: str) -> bytes:  # note: JSON text
        return (f'{{"sensor_id":"{sensor}","ts":{start - 10 - i},"UNCHECKED":1,'
                f'"note":{note}}}').encode()
    poison = {"invalid_text": unchecked(0, '"\\ud800"'),
              "too_deep": unchecked(1, "[" * 300 + "]" * 300),
              "invalid_number": unchecked(2, "1" + "0" * 30),
              "too_large": unchecked(3, '"' + "a" * (5 * 1024 * 1024) + '"')}
    good = [(key, orjson.dumps({"sensor_id": sensor, "ts": start + i, "temperature": 20 + i}))
            for i in range(GOOD)]
    msgs = [(key, value) for value in poison.values()] + good
    sent = await produce_big(bootstrap, topic, msgs)
    want = expected_rows(env, good)

    async def stored() -> bool:
        return await pg_rows(env, sensor) == want
    await eventually(stored, "the good readings in PostgreSQL", DEADLINE)
    for (reason, value), where in zip(poison.items(), sent[:len(poison)], strict=True):
        dead = await dead_letters_of(bootstrap, env["SENSORSTREAM_DLQ_TOPIC"], where, 2,
                                     DEADLINE)
        bodies = [orjson.loads(r.value) for r in dead]
        assert sorted((b["reason"], b["metric"]) for b in bodies) == [
            (reason, "humidity"), (reason, "temperature")], bodies
        assert all(b["sensor_id"] == sensor and b["message"] for b in bodies)
        if reason != "too_large":
            assert {b["original"].encode() for b in bodies} == {value}

    def balanced():
        counts = accounting(careless.metrics(), topic)
        return counts if counts["in"] == 2 * len(poison) + len(want) == (
            counts["accepted"] + counts["dead_lettered"]) else None
    counts = await eventually(balanced, "the accounting with the poison counted", 10)
    assert counts["dead_lettered"] == 2 * len(poison)
    assert not [w for w in CRASH_WORDS if w in careless.log.read_text(errors="replace")]

    # A bug: the worker stops, saying where, and commits nothing past the message.
    bug = orjson.dumps({"sensor_id": sensor, "ts": start + 100, "temperature": 1.5,
                        "tag": "INJECTED-BUG", "kind": "bug"})
    after = [(key, orjson.dumps({"sensor_id": sensor, "ts": start + 101 + i,
                                 "temperature": 2.5})) for i in range(5)]
    (partition, offset), *_ = await produce_big(bootstrap, topic, [(key, bug), *after])
    code = await asyncio.to_thread(careless.process.wait, 60)
    assert code != 0
    lines = [orjson.loads(line) for line in careless.log.read_text(errors="replace").splitlines()
             if line.startswith("{") and "ingest stage stopped" in line]
    assert lines, careless.log_tail()
    assert lines[0]["level"] == "critical" and "an injected bug" in str(lines[0])
    assert (lines[0]["topic"], lines[0]["partition"], lines[0]["offset"]) == (
        topic, partition, offset)
    committed, _end = (await commits_and_ends(bootstrap, env["SENSORSTREAM_APP_ID"],
                                              topic))[partition]
    assert committed is not None and committed <= offset, (committed, offset)

    fixed = make_worker(SENSORSTREAM_SINKS="postgres",
                        SENSORSTREAM_SINK_BATCH_WINDOW="300ms").start()
    await fixed.ready()
    want |= expected_rows(env, [(key, bug), *after])

    async def all_stored() -> bool:
        return await pg_rows(env, sensor) == want
    await eventually(all_stored, "the message of the bug and those after it stored", 60)
    assert counter(fixed.metrics(), "sensorstream_stage_failures_total") == 0
