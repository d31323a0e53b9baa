"""Rows a store refuses for their content, against the real stack with both sinks: each
is dead-lettered by the sink that refused it, with the store's error, every good row
around it is stored in PostgreSQL and the lake once, and the worker never pauses
(issue 18, finding 2). Poison is produced straight onto the topics the sink stage
reads (hand-overs, aggregates, anomalies), bypassing the contract: any producer can
write them.

A PostgreSQL outage still pauses the worker and loses nothing:
``test_sinks.py::test_postgres_outage_pauses_the_worker_and_loses_nothing`` (and the
sink outage tests in ``test_admin.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg
import duckdb
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from app.contract import Reading, Source, encode_batch, format_ts

from .harness import counter, eventually, read_all
from .test_sinks import SINK_ENV, sealed_lake, us

pytestmark = pytest.mark.integration

PARTITION = 1  #: every message of the test goes to this partition of its topic
MINUTE_US = 60_000_000


def on_partition(prefix: str, n: int, partitions: int) -> list[str]:
    """``n`` sensor ids that Kafka's default partitioner puts on ``PARTITION``."""
    found, i = [], 0
    while len(found) < n:
        name = f"{prefix}-{i}"
        if (murmur2(name.encode()) & 0x7FFFFFFF) % partitions == PARTITION:
            found.append(name)
        i += 1
    return found


async def produce_to(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]],
                     ) -> list[int]:
    """The offsets ``messages`` got in ``PARTITION`` (the worker may write there too)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        return [(await producer.send_and_wait(topic, value, key=key,
                                              partition=PARTITION)).offset
                for key, value in messages]
    finally:
        await producer.stop()


def window(sensor: str, start_us: int, count: int) -> bytes:
    return orjson.dumps({
        "window": "1m", "window_start": format_ts(start_us),
        "window_end": format_ts(start_us + MINUTE_US), "sensor_id": sensor,
        "metric": "temperature", "location": "lab", "count": count, "missing": 0,
        "mean": 21.0, "min": 20.0, "max": 22.0, "stddev": 0.5, "p50": 21.0, "p95": 22.0,
        "p99": 22.0, "first": format_ts(start_us), "last": format_ts(start_us + 1000),
        "health": 100.0, "correction": False})


def anomaly(sensor: str | None, ts_us: int) -> bytes:
    return orjson.dumps({
        "ts": format_ts(ts_us), "sensor_id": sensor, "metric": "temperature",
        "detector": "zscore", "severity": "high", "value": 99.0, "reason": "a spike",
        "expected": [20.0, 22.0], "z": 8.5})


async def pg_rows(env: dict[str, str], sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"])
    try:
        return await conn.fetch(sql.format(schema=env["SENSORSTREAM_PG_SCHEMA"]))
    finally:
        await conn.close()


async def test_rows_a_store_refuses_are_dead_lettered_and_the_rest_stored_without_a_pause(
        make_worker, app_env, bootstrap, tmp_path):
    env = {**app_env, **SINK_ENV}
    app_id = env["SENSORSTREAM_APP_ID"]
    partitions = int(env["SENSORSTREAM_PARTITIONS"])
    worker = make_worker(**SINK_ENV).start()
    await worker.ready()
    now = time.time_ns() // 1000 // MINUTE_US * MINUTE_US - 10 * MINUTE_US

    # (a) hand-overs: good readings, then a message where a reading whose attribute
    # holds NUL sits between good ones (jsonb refuses it; Parquet holds it), then more.
    sensors = on_partition("poison-r", 6, partitions)
    readings = {s: [Reading(s, now + i * 1_000_000, {"temperature": 20.0 + i}, {"room": "a"})
                    for i in range(3)] for s in sensors}
    poison = Reading(sensors[0], now + 30_000_000, {"temperature": 25.0},
                     {"note": "bad\u0000byte"})
    offsets = iter(range(1000, 2000))

    def handover(items: list[Reading]) -> tuple[bytes, bytes]:
        return b"", encode_batch([(r, Source("poison-in", 3, next(offsets)), now)
                                  for r in items])
    middle = [r for s in sensors[2:4] for r in readings[s]]
    await produce_to(bootstrap, f"{app_id}-readings-by-sensor", [
        handover([r for s in sensors[:2] for r in readings[s]]),
        handover([*middle[:3], poison, *middle[3:]]),
        handover([r for s in sensors[4:] for r in readings[s]])])
    poison_offset = 1000 + 6 + 3  # a hand-over of 6 readings, then 3 before it
    good_readings = {(r.sensor_id, r.ts): r.metrics["temperature"]
                     for rs in readings.values() for r in rs}

    # (b) aggregates: a count past bigint's range between good windows (asyncpg cannot
    # encode it, Arrow's int64 neither); anomalies: one without a sensor between good
    # ones (PostgreSQL's NOT NULL refuses it, and the lake's non-nullable column).
    agg_sensors = on_partition("poison-a", 3, partitions)
    # (c) and a message no rows can be made of on each: not JSON, a field missing.
    agg_offsets = await produce_to(bootstrap, env["SENSORSTREAM_AGGREGATES_TOPIC"], [
        (agg_sensors[0].encode(), window(agg_sensors[0], now, 10)),
        (agg_sensors[1].encode(), window(agg_sensors[1], now, 2**63)),
        (None, b"not json"),
        (agg_sensors[2].encode(), window(agg_sensors[2], now, 12))])
    anomaly_sensors = on_partition("poison-n", 2, partitions)
    anomaly_offsets = await produce_to(bootstrap, env["SENSORSTREAM_ANOMALIES_TOPIC"], [
        (anomaly_sensors[0].encode(), anomaly(anomaly_sensors[0], now)),
        (None, anomaly(None, now + 1_000_000)),
        (b"x", b'{"ts": 1700000000, "sensor_id": "poison-n-x"}'),
        (anomaly_sensors[1].encode(), anomaly(anomaly_sensors[1], now + 2_000_000))])

    expected_refusals = {("postgres", "readings"), ("postgres", "aggregates"),
                         ("lake", "aggregates"), ("postgres", "anomalies"),
                         ("lake", "anomalies"), ("all", "aggregates"), ("all", "anomalies")}

    def refused_counts() -> dict[tuple[str, str], float]:
        samples = worker.metrics()
        return {(sink, dataset): counter(samples, "sensorstream_sink_rows_dead_lettered_total",
                                         sink=sink, dataset=dataset)
                for sink in ("postgres", "lake", "all")
                for dataset in ("readings", "aggregates", "anomalies")}
    await eventually(lambda: {k for k, v in refused_counts().items() if v} >=
                     expected_refusals, "every poison row refused", 90, interval=0.5)

    async def stored() -> bool:
        rows = await pg_rows(env, "SELECT count(*) AS n FROM {schema}.readings "
                                  "WHERE sensor_id LIKE 'poison-%'")
        return rows[0]["n"] >= len(good_readings)
    await eventually(stored, "the good readings in PostgreSQL", 60, interval=0.5)

    # The dead letters: each poison row once per sink that refused it, with its error.
    dead = [orjson.loads(r.value) for r in await read_all(
        bootstrap, env["SENSORSTREAM_DLQ_TOPIC"], deadline=30)]
    unreadable = sorted((d["source"]["offset"], d["original"]) for d in dead
                        if d["reason"] == "sink_unreadable")
    # Each at the offset the producer got: the worker's own anomalies of the readings
    # above can land in the same partition first (CI: the message at 6, not 2).
    assert unreadable == sorted([
        (agg_offsets[2], "not json"),
        (anomaly_offsets[2], '{"ts": 1700000000, "sensor_id": "poison-n-x"}')]), unreadable
    dead = [d for d in dead if d["reason"] == "sink_refused"]
    assert sorted((d["sink"], d["dataset"]) for d in dead) == sorted(
        k for k in expected_refusals if k[0] != "all"), dead
    by = {(d["sink"], d["dataset"]): d for d in dead}
    nul = by[("postgres", "readings")]
    assert nul["error"].startswith("UntranslatableCharacterError: "), nul["error"]
    assert nul["source"]["topic"] == "poison-in" and nul["source"]["partition"] == 3
    assert nul["source"]["offset"] == poison_offset
    assert nul["sensor_id"] == sensors[0] and nul["metric"] == "temperature"
    row = orjson.loads(nul["original"])
    assert row["time"] == poison.ts and orjson.loads(row["attributes"]) == {
        "note": "bad\u0000byte"}
    assert "int64" in by[("postgres", "aggregates")]["error"]
    assert orjson.loads(by[("postgres", "aggregates")]["original"])["count"] == 2**63
    assert by[("lake", "aggregates")]["error"].startswith(("OverflowError", "ArrowInvalid"))
    assert by[("postgres", "anomalies")]["error"].startswith("NotNullViolationError: ")
    assert "sensor_id" in by[("postgres", "anomalies")]["error"]
    assert by[("lake", "anomalies")]["error"].startswith("ArrowInvalid: ")
    for d, offset in ((by[("postgres", "aggregates")], agg_offsets[1]),
                      (by[("postgres", "anomalies")], anomaly_offsets[1])):
        assert d["source"]["partition"] == PARTITION and d["source"]["offset"] == offset

    # Every good row in PostgreSQL, once (the keys are primary keys), and nothing else.
    got = await pg_rows(env, "SELECT sensor_id, time, value, attributes FROM "
                             "{schema}.readings WHERE sensor_id LIKE 'poison-%'")
    assert {(r["sensor_id"], us(r["time"])): r["value"] for r in got} == good_readings
    aggs = await pg_rows(env, "SELECT sensor_id, \"count\" FROM {schema}.aggregates "
                              "WHERE sensor_id LIKE 'poison-a-%'")
    assert sorted((r["sensor_id"], r["count"]) for r in aggs) == [
        (agg_sensors[0], 10), (agg_sensors[2], 12)]
    anomalies = await pg_rows(env, "SELECT sensor_id FROM {schema}.anomalies WHERE "
                                   "sensor_id LIKE 'poison-n-%' OR sensor_id IS NULL")
    assert sorted(r["sensor_id"] for r in anomalies) == sorted(anomaly_sensors)

    # The lake holds every good row once, and the reading PostgreSQL refused: each
    # store holds what it can.
    lake = await sealed_lake(env, tmp_path / "lake", deadline=90)

    def lake_rows(root: str, columns: str, prefix: str) -> list[tuple]:
        return duckdb.sql(f"SELECT {columns} FROM read_parquet('{lake}/{root}/**/*.parquet',"
                          f" hive_partitioning = true) WHERE sensor_id LIKE '{prefix}-%' "
                          "ORDER BY ALL").fetchall()
    raw = lake_rows("raw", "sensor_id, epoch_us(time), value, attributes", "poison-r")
    assert sorted((s, ts, v) for s, ts, v, _a in raw) == sorted(
        [(s, ts, v) for (s, ts), v in good_readings.items()]
        + [(poison.sensor_id, poison.ts, 25.0)])
    assert [orjson.loads(a) for s, ts, _v, a in raw if ts == poison.ts] == [
        {"note": "bad\u0000byte"}]
    assert lake_rows("aggregates", 'sensor_id, "count"', "poison-a") == [(agg_sensors[0], 10),
                                                           (agg_sensors[2], 12)]
    assert lake_rows("anomalies", "sensor_id", "poison-n") == sorted((s,) for s in anomaly_sensors)
    assert not any(Path(lake, "anomalies").rglob("*.tmp"))

    # Never paused, never degraded, never restarted an agent.
    samples = worker.metrics()
    assert samples[("sensorstream_sink_paused", frozenset())] == 0
    assert samples[("sensorstream_sink_paused_seconds_total", frozenset())] == 0
    assert counter(samples, "sensorstream_sink_errors_total") == 0
    assert refused_counts() == {**{k: 0.0 for k in refused_counts()},
                                **{k: 1.0 for k in expected_refusals}}
    assert worker.get("/ready")[0] == 200
    log_text = Path(worker.log).read_text(errors="replace")
    assert "pausing the worker's partitions" not in log_text
    assert "Traceback" not in log_text, worker.log_tail()
    assert worker.process.poll() is None
