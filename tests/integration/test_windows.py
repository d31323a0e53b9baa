"""Live windowed aggregates through the real stack, checked against DuckDB computing the
same over the raw readings: after a clean pass, after SIGKILLs, across a group."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import zlib
from collections import Counter

import duckdb
import orjson
import pytest
from aiokafka.partitioner import murmur2

from app.contract import Contract, format_ts
from app.settings import load
from app.simulator import Plan, messages

from .harness import accounting, eventually, produce, read_all

pytestmark = pytest.mark.integration

ACCURACY = 0.01
SIZES = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
WINDOW_ENV = {"SENSORSTREAM_WINDOWS": "1m:7d,5m:14d,1h:14d,1d:90d",
              "SENSORSTREAM_SKETCH_ACCURACY": str(ACCURACY)}
LATE_BY_S = 45 * 60


def dataset(readings: int, seed: int) -> tuple[list[tuple[bytes, bytes]], set]:
    """Simulated motes two days ago, keyed by mote (so one input partition each), in
    mixed shapes with duplicates; produced out of order by up to two minutes, and 1 %
    of messages 45 minutes after their time: their windows are sealed by then."""
    day = (int(time.time()) // 86400 - 2) * 86400
    plan = Plan(sensors=54, count=readings, speed=0, seed=seed, duplicates=0.02,
                shape="mixed", start_us=(day + 1800) * 1_000_000)
    rng = random.Random(seed)
    produced = list(messages(plan, Counter()))
    last_late = produced[-1][0] - (LATE_BY_S + 15 * 60) * 1_000_000  # still late at the end
    timed, late = [], set()
    for i, (ts, key, value) in enumerate(produced):
        if i > 2000 and ts < last_late and zlib.crc32(value) % 100 == 0:  # copies alike
            timed.append((ts + LATE_BY_S * 1_000_000, i, key, value))
            late.add(value)
        else:
            timed.append((ts + rng.uniform(0, 120e6), i, key, value))
    timed.sort()
    return [(key, value) for _t, _i, key, value in timed], late


async def produce_paced(bootstrap: str, topic: str, msgs: list, seconds: float,
                        slices: int = 40) -> None:
    """``msgs`` in order, spread over about ``seconds`` (a rate, not a wait)."""
    step = math.ceil(len(msgs) / slices)
    for i in range(0, len(msgs), step):
        await produce(bootstrap, topic, msgs[i:i + step])
        if seconds:
            await asyncio.sleep(seconds / slices)


def sentinels(partitions: int) -> list[tuple[bytes, bytes]]:
    """A reading now on every input partition: each watermark passes every test window."""
    found: dict[int, bytes] = {}
    i = 0
    while len(found) < partitions:
        key = f"sentinel-{i}".encode()
        found.setdefault((murmur2(key) & 0x7FFFFFFF) % partitions, key)
        i += 1
    now = time.time() - 60
    return [(key, orjson.dumps({"sensor_id": key.decode(), "ts": now, "temperature": 1.0}))
            for key in found.values()]


def reference_rows(env: dict[str, str], msgs, late_values: set) -> tuple[list, int]:
    """(sensor, metric, ts, value) of every reading that belongs in a window: first
    copies only, none of the late ones. Also the number of late rows."""
    contract = Contract.from_settings(load({k: v for k, v in env.items()
                                            if k.startswith("SENSORSTREAM_")}))
    seen, rows, late_rows = set(), [], set()
    for _key, value in msgs:
        for reading in contract.parse(value).readings:
            for metric, metric_value in reading.metrics.items():
                row = (reading.sensor_id, metric, reading.ts)
                if value in late_values:
                    late_rows.add(row)
                elif row not in seen:
                    seen.add(row)
                    rows.append((*row, metric_value))
    return [r for r in rows if r[:3] not in late_rows], len(late_rows - seen)


def duckdb_windows(rows: list) -> dict:
    """Per (window, start, sensor, metric): the statistics, computed by DuckDB."""
    db = duckdb.connect()
    db.execute("CREATE TABLE r (sensor VARCHAR, metric VARCHAR, ts BIGINT, value DOUBLE)")
    db.executemany("INSERT INTO r VALUES (?, ?, ?, ?)", rows)
    found = {}
    for label, size in SIZES.items():
        result = db.execute(f"""
            SELECT sensor, metric, ts // {size * 1_000_000} * {size} AS start,
                   count(value), count(*) - count(value), min(value), max(value),
                   avg(value), stddev_samp(value), min(ts), max(ts),
                   list_sort(list(value) FILTER (WHERE value IS NOT NULL))
            FROM r GROUP BY ALL""").fetchall()
        for sensor, metric, start, *values in result:
            found[(label, format_ts(start * 1_000_000), sensor, metric)] = values
    return found


def assert_matches(emitted: dict, reference: dict) -> None:
    # Compared as differences: pytest's own diff of two sets of ~100,000 windows runs
    # for longer than the test's timeout and hides the answer.
    missing, extra = set(reference) - set(emitted), set(emitted) - set(reference)
    assert not missing and not extra, (
        f"{len(missing)} windows missing, e.g. {sorted(missing)[:5]}; "
        f"{len(extra)} extra, e.g. {sorted(extra)[:5]}")
    for key, (count, missing, lo, hi, mean, stddev, first, last, ordered) in reference.items():
        got = emitted[key]
        assert (got["count"], got["missing"]) == (count, missing), key
        assert (got["min"], got["max"]) == (lo, hi), key
        assert (got["first"], got["last"]) == (format_ts(first), format_ts(last)), key
        for name, want in (("mean", mean), ("stddev", stddev)):
            if want is None:
                assert got[name] is None, (key, name)
            else:
                assert math.isclose(got[name], want, rel_tol=1e-9, abs_tol=1e-12), (key, name)
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            if not ordered:
                assert got[name] is None
                continue
            rank = q * (len(ordered) - 1)
            candidates = (ordered[math.floor(rank)], ordered[math.ceil(rank)])
            assert any(abs(got[name] - x) <= ACCURACY * abs(x) + 1e-9 for x in candidates), (
                key, name, got[name], candidates)
        assert got["health"] is None or 0 < got["health"] <= 100


async def sealed_aggregates(bootstrap: str, topic: str, expected: int) -> dict:
    """The last emission of every sealed window, once ``expected`` distinct ones are in."""
    latest: dict = {}

    async def complete():
        latest.clear()
        for record in await read_all(bootstrap, topic, deadline=10):
            body = orjson.loads(record.value)
            if not body["sensor_id"].startswith("sentinel-"):
                latest[(body["window"], body["window_start"], body["sensor_id"],
                        body["metric"])] = body
        return len(latest) >= expected
    with contextlib.suppress(AssertionError):  # the comparison names what is missing
        await eventually(complete, f"{expected} sealed windows emitted", 180, interval=2)
    return latest


async def run_and_compare(make_worker, app_env, bootstrap, kills: int) -> None:
    env = {**app_env, **WINDOW_ENV}
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    msgs, late_values = dataset(13_000, seed=21)
    rows, late_rows = reference_rows(env, msgs, late_values)
    assert len(rows) >= 50_000 and late_rows > 100
    reference = duckdb_windows(rows)

    worker = make_worker(**WINDOW_ENV).start()
    data_dir = worker.env["SENSORSTREAM_DATA_DIR"]
    await worker.ready()
    producing = asyncio.create_task(produce_paced(bootstrap, topic, msgs,
                                                  seconds=40.0 if kills else 0.0))
    for n in range(kills):
        # Kill once this process has accepted an eighth of the readings, while the data
        # set is still arriving: input, hand-overs, changelog records, seals and
        # emissions in flight.
        def progressed(w=worker):
            return accounting(w.metrics(), topic)["accepted"] >= len(rows) // 8
        await eventually(progressed, f"progress before kill {n + 1}", 180, interval=0.05)
        worker.kill()
        worker = make_worker(data_dir, **WINDOW_ENV).start()
        await worker.ready(120)
    await producing
    await produce(bootstrap, topic, sentinels(int(env["SENSORSTREAM_PARTITIONS"])))
    emitted = await sealed_aggregates(bootstrap, env["SENSORSTREAM_AGGREGATES_TOPIC"],
                                      len(reference))
    assert_matches(emitted, reference)

    late = await read_all(bootstrap, env["SENSORSTREAM_LATE_TOPIC"], deadline=10)
    late_seen = {(b["sensor_id"], m, b["ts"]) for b in map(orjson.loads, (r.value for r in late))
                 for m in b["metrics"]}
    assert {orjson.loads(r.value)["reason"] for r in late} == {"window_sealed"}
    assert len(late_seen) == late_rows

    # The HTTP view serves the same sealed windows (routed to the owner).
    for sensor in ("1", "17", "54"):
        status, body = worker.get(f"/sensors/{sensor}/aggregates?window=1h&metric=humidity"
                                  f"&since={rows[0][2] - 86400_000_000}&until={time.time()}")
        assert status == 200, body
        assert body["windows"] and not any(w["open"] for w in body["windows"])
        for window in body["windows"]:
            want = emitted[("1h", window["start"], sensor, "humidity")]
            assert window["metrics"]["humidity"] == {
                k: v for k, v in want.items() if k in window["metrics"]["humidity"]}


async def test_sealed_windows_equal_duckdb_over_the_raw_readings(make_worker, app_env,
                                                                  bootstrap):
    await run_and_compare(make_worker, app_env, bootstrap, kills=0)


async def test_windows_stay_exact_through_three_sigkills(make_worker, app_env, bootstrap):
    await run_and_compare(make_worker, app_env, bootstrap, kills=3)


async def test_the_survivor_answers_the_killed_workers_windows(make_worker, app_env,
                                                               bootstrap):
    env = {**app_env, **WINDOW_ENV}
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    one, two = make_worker(**WINDOW_ENV).start(), make_worker(**WINDOW_ENV).start()
    await one.ready()
    await two.ready()

    def both_own_partitions():
        return all(w.get("/ready")[1].get("partitions", 0) > 0 for w in (one, two))
    await eventually(both_own_partitions, "both workers own partitions", 60)
    msgs, _late = dataset(3_000, seed=5)
    await produce(bootstrap, topic, msgs + sentinels(int(env["SENSORSTREAM_PARTITIONS"])))
    total = len(reference_rows(env, msgs, set())[0])

    def all_accepted():
        return sum(accounting(w.metrics(), topic)["accepted"] for w in (one, two)) >= total
    await eventually(all_accepted, "every reading accepted", 120)
    owned_by_two = {s["sensor_id"] for s in two.get("/sensors?scope=local")[1]["sensors"]}
    sensors = sorted(owned_by_two - {f"sentinel-{i}" for i in range(100)})[:5]
    assert sensors, "the second worker owns some motes"

    since = int(time.time()) - 3 * 86400

    def windows_of(worker, sensor):
        status, body = worker.get(f"/sensors/{sensor}/aggregates?window=5m&since={since}"
                                  f"&until={time.time()}")
        assert status == 200, body
        return body["windows"]

    def sealed_everywhere():
        views = {s: windows_of(one, s) for s in sensors}  # routed from one to two
        return views if all(v and not any(w["open"] for w in v) for v in views.values()) else None
    before = await eventually(sealed_everywhere, "sealed windows readable through one", 120)
    assert before == {s: windows_of(two, s) for s in sensors}

    two.kill()

    def survivor_answers():
        try:
            views = {s: windows_of(one, s) for s in sensors}
        except (AssertionError, OSError):
            return None
        return views if views == before else None
    await eventually(survivor_answers, "the survivor answers with identical windows", 120)
    # The per-location stage is downstream of the per-sensor one: after the takeover it
    # replays the killed worker's uncommitted location hand-overs, so poll (as above).
    def location_answers():
        status, body = one.get(f"/locations/lab-a1/aggregates?window=1h&since={since}")
        ok = status == 200 and body["windows"] and body["windows"][0]["sensors"] > 0
        return body if ok else None
    await eventually(location_answers, "the survivor answers for lab-a1", 60)
    assert one.get("/locations/lab-a1/aggregates?window=5m")[0] == 400
    assert one.get("/locations/nowhere/aggregates")[0] == 404
    assert one.get(f"/sensors/{sensors[0]}/aggregates?window=7m")[0] == 400
    assert one.get(f"/sensors/{sensors[0]}/aggregates?metric=pressure")[0] == 400
    assert one.get(f"/sensors/{sensors[0]}/aggregates?since=yesterday")[0] == 400
    assert one.get("/sensors/no-such-mote/aggregates")[0] == 404
