"""``faust -A app replay`` and ``reprocess`` against the real stack, run as operators run
them (subprocesses): the plan's numbers, offsets by time, the refusal while a worker
runs, a replay from the earliest offsets that changes no aggregate and no stored row,
and a reprocess that puts deleted rows back once without moving the live group."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import duckdb
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.contract import format_ts

from .harness import ROOT, accounting, create_topic, eventually, produce, read_all
from .test_sinks import (
    SINK_ENV,
    distinct_readings,
    lake_readings,
    pg_readings,
    sealed_lake,
)
from .test_windows import dataset, sentinels

pytestmark = pytest.mark.integration

HOUR_US = 3_600_000_000


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``faust -A app ARGS`` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "faust", "-A", "app", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-3000:])
    return result


def command_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**env, "SENSORSTREAM_DATA_DIR": str(tmp_path / "cli-data")}


async def commits_and_ends(bootstrap: str, group: str, topic: str,
                           ) -> dict[int, tuple[int | None, int]]:
    """Per partition: what ``group`` committed (None: nothing) and the log end, taken
    from a fetch's high watermark (the broker's listed end offsets are wrong here)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = await eventually(lambda: consumer.partitions_for_topic(topic),
                                      f"topic {topic} exists", deadline=30)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        listed = await consumer.end_offsets(tps)
        ends = {tp: 0 for tp in tps}
        pending = [tp for tp in tps if listed[tp] > 0]
        consumer.assign(tps)
        for tp in pending:
            consumer.seek(tp, listed[tp] - 1)
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            await consumer.getmany(*pending, timeout_ms=300, max_records=1)
            for tp in list(pending):
                if consumer.highwater(tp) is not None:
                    ends[tp] = consumer.highwater(tp)
                    pending.remove(tp)
        assert not pending, f"no high watermark for {pending}"
        return {tp.partition: (await consumer.committed(tp), ends[tp]) for tp in tps}
    finally:
        await consumer.stop()


def group_topics(env: dict[str, str]) -> list[str]:
    app_id = env["SENSORSTREAM_APP_ID"]
    return [env["SENSORSTREAM_INPUT_TOPICS"], f"{app_id}-readings-by-sensor",
            env["SENSORSTREAM_AGGREGATES_TOPIC"], env["SENSORSTREAM_ANOMALIES_TOPIC"],
            f"{app_id}-windows-by-location"]


async def group_offsets(env: dict[str, str], bootstrap: str, group: str | None = None,
                        ) -> dict[tuple[str, int], int | None]:
    group = group or env["SENSORSTREAM_APP_ID"]
    found = {}
    for topic in group_topics(env):
        for partition, (committed, _end) in (await commits_and_ends(bootstrap, group,
                                                                    topic)).items():
            found[topic, partition] = committed
    return found


async def settled(env: dict[str, str], bootstrap: str, deadline: float = 180) -> None:
    """Until the worker group committed every topic it reads up to the log end, twice in
    a row (a hand-over read late appends to the next topic)."""
    streak = 0

    async def check() -> bool:
        nonlocal streak
        lagging = []
        for topic in group_topics(env):
            for partition, (committed, end) in (await commits_and_ends(
                    bootstrap, env["SENSORSTREAM_APP_ID"], topic)).items():
                if end and committed != end:
                    lagging.append((topic, partition, committed, end))
        streak = 0 if lagging else streak + 1
        assert streak >= 2, lagging
        return True
    await eventually(check, "the worker group committed up to every log end", deadline,
                     interval=1)


async def producer_with_timestamps(bootstrap: str, topic: str,
                                   batches: dict[int, list[int]]) -> None:
    """``batches``: partition -> record timestamps (ms); each partition's records sent
    together, so that they share record batches."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    await producer.start()
    try:
        futures = [await producer.send(topic, b"x%d" % i, partition=partition, timestamp_ms=ts)
                   for partition, stamps in batches.items() for i, ts in enumerate(stamps)]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def plan_of(result: subprocess.CompletedProcess) -> dict[int, dict]:
    return {row["partition"]: row for row in orjson.loads(ok(result).stdout)["partitions"]}


# -- 1. the plan, offsets by time, arguments ----------------------------------------------


async def test_plan_numbers_offsets_by_time_and_bad_arguments(app_env, bootstrap, tmp_path):
    env = command_env(app_env, tmp_path)
    topic, group = env["SENSORSTREAM_INPUT_TOPICS"], env["SENSORSTREAM_APP_ID"]
    await create_topic(bootstrap, topic)
    base = int(time.time() * 1000) - 3_600_000
    # 30, 50, 0 and 20 records, a second apart; each partition's in one record batch
    await producer_with_timestamps(bootstrap, topic, {
        0: [base + i * 1000 for i in range(30)], 1: [base + i * 1000 for i in range(50)],
        3: [base + i * 1000 for i in range(20)]})
    tp = [TopicPartition(topic, p) for p in range(4)]
    await commit(bootstrap, group, {tp[0]: 30, tp[1]: 10})

    rows = plan_of(cli(env, "replay", "--to-earliest", "--dry-run", "--json"))
    assert [(r["committed"], r["earliest"], r["end"], r["target"], r["again"], r["skipped"])
            for _p, r in sorted(rows.items())] == [
        (30, 0, 30, 0, 30, 0), (10, 0, 50, 0, 10, 0), (None, 0, 0, 0, 0, 0),
        (None, 0, 20, 0, 0, 0)]  # no commit yet: it starts at the earliest (OFFSET_RESET)

    # "latest" is the true log end: the broker's own end offsets say less here
    rows = plan_of(cli(env, "replay", "--to-latest", "--dry-run", "--json"))
    assert [(r["target"], r["again"], r["skipped"]) for _p, r in sorted(rows.items())] == [
        (30, 0, 0), (50, 0, 40), (0, 0, 0), (20, 0, 20)]

    table = ok(cli(env, "replay", "--to-offset", "4", "--partitions", "0-1",
                   "--dry-run")).stdout
    lines = {line.split()[1]: line.split() for line in table.splitlines()
             if line.startswith(topic)}
    assert lines["0"] == [topic, "0", "30", "0", "30", "4", "26", "0"]
    assert lines["1"] == [topic, "1", "10", "0", "50", "4", "6", "0"]
    assert set(lines) == {"0", "1"}
    assert table.splitlines()[-1].split() == ["total", "32", "0"]
    assert await commits_and_ends(bootstrap, group, topic) == {
        0: (30, 30), 1: (10, 50), 2: (None, 0), 3: (None, 20)}, "a dry run moved offsets"

    # by time: the first record at or after it, exactly, though the broker answers per
    # record batch (all records of a partition share one here)
    at = base + 12_500
    iso = format_ts(at * 1000)
    rows = plan_of(cli(env, "replay", "--to-time", iso, "--dry-run", "--json"))
    assert {p: r["target"] for p, r in rows.items()} == {0: 13, 1: 13, 2: 0, 3: 13}
    rows = plan_of(cli(env, "replay", "--to-time", str(at / 1000), "--dry-run", "--json"))
    assert {p: r["target"] for p, r in rows.items()} == {0: 13, 1: 13, 2: 0, 3: 13}
    rows = plan_of(cli(env, "replay", "--to-time", format_ts((base + 25_000) * 1000),
                       "--dry-run", "--json"))
    assert {p: r["target"] for p, r in rows.items()} == {0: 25, 1: 25, 2: 0, 3: 20}
    future = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    rows = plan_of(cli(env, "replay", "--to-time", future, "--dry-run", "--json"))
    assert {p: r["target"] for p, r in rows.items()} == {0: 30, 1: 50, 2: 0, 3: 20}

    moved = ok(cli(env, "replay", "--to-time", iso, "--partitions", "1"))
    assert "moved: 1 partition(s)" in moved.stdout
    ok(cli(env, "replay", "--to-offset", "5", "--partitions", "0"))
    assert await commits_and_ends(bootstrap, group, topic) == {
        0: (5, 30), 1: (13, 50), 2: (None, 0), 3: (None, 20)}

    for args, status, named in (
            (["--to-offset", "31", "--partitions", "0"], 2, "--to-offset 31"),
            (["--to-offset", "-1"], 2, "--to-offset"),
            (["--to-time", "soon"], 2, "--to-time"),
            (["--to-earliest", "--to-latest"], 2, "exactly one"),
            ([], 2, "exactly one"),
            (["--to-earliest", "--partitions", "7"], 2, "no partition 7"),
            (["--to-earliest", "--partitions", "x"], 2, "--partitions"),
            (["--to-earliest", "--wait", "later"], 2, "--wait"),
            (["--to-earliest", "--topic", f"{group}-state-changelog"], 2, "changelog"),
            (["--to-earliest", "--topic", env["SENSORSTREAM_DLQ_TOPIC"]], 2,
             "does not consume")):
        result = cli(env, "replay", *args)
        assert result.returncode == status, (args, result.returncode, result.stderr)
        assert named in result.stderr, (args, result.stderr)
    assert await commits_and_ends(bootstrap, group, topic) == {
        0: (5, 30), 1: (13, 50), 2: (None, 0), 3: (None, 20)}, "a refused call moved offsets"


# -- 2. refused while a worker runs -----------------------------------------------------------


async def test_refused_while_a_worker_runs_and_what_force_does(make_worker, app_env, bootstrap,
                                                               tmp_path):
    env = command_env(app_env, tmp_path)
    topic, group = env["SENSORSTREAM_INPUT_TOPICS"], env["SENSORSTREAM_APP_ID"]
    worker = make_worker().start()
    await worker.ready()
    now = time.time()
    await produce(bootstrap, topic, [(f"s{i}".encode(), orjson.dumps(
        {"sensor_id": f"s{i}", "ts": now - 60, "temperature": 20.0})) for i in range(40)])

    async def committed_all() -> dict:
        found = await commits_and_ends(bootstrap, group, topic)
        assert all(c == e for c, e in found.values()), found
        return found
    before = await eventually(committed_all, "the worker committed its input", 60)

    refused = cli(env, "replay", "--to-earliest")
    assert refused.returncode == 3, (refused.stdout, refused.stderr)
    assert "1 active member" in refused.stderr and "Stop the workers first" in refused.stderr
    assert "faust-" in refused.stderr  # the member is named
    # a dry run shows the plan, and that moving would be refused
    dry = ok(cli(env, "replay", "--to-earliest", "--dry-run"))
    assert "moving would be refused" in dry.stderr and topic in dry.stdout
    # --force skips the refusal and tries the commit; with a member in the group the
    # broker refuses it (UNKNOWN_MEMBER_ID, as Apache Kafka does) and nothing moves
    forced = cli(env, "replay", "--to-earliest", "--force")
    assert forced.returncode == 4, (forced.stdout, forced.stderr)
    assert "--force: trying the commit anyway" in forced.stderr
    assert "the broker refused the commit" in forced.stderr and "Nothing was moved" in (
        forced.stderr)
    assert await commits_and_ends(bootstrap, group, topic) == before

    worker.stop()  # a clean stop leaves the group, so the replay goes ahead
    moved = ok(cli(env, "replay", "--to-earliest", "--wait", "20s"))
    assert "moved: 4 partition(s)" in moved.stdout
    assert {p: c for p, (c, _e) in (await commits_and_ends(bootstrap, group,
                                                           topic)).items()} == dict.fromkeys(
        range(4), 0)


# -- 3. a replay from the earliest offsets changes nothing ------------------------------------


async def pg_table(env: dict[str, str], table: str) -> list[tuple]:
    conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"])
    try:
        rows = await conn.fetch(f"SELECT * FROM {env['SENSORSTREAM_PG_SCHEMA']}.{table} "
                                "WHERE sensor_id NOT LIKE 'sentinel-%'")
    finally:
        await conn.close()
    return sorted(tuple(r) for r in rows)


def lake_rows(root: Path, dataset: str) -> list[tuple]:
    """Every row of a lake dataset, read by DuckDB with hive partitioning, sorted (a row
    stored twice shows up twice)."""
    files = list((root / dataset).rglob("*.parquet")) if (root / dataset).exists() else []
    if not files:
        return []
    rows = duckdb.sql(f"SELECT * EXCLUDE (source_partition, source_offset) FROM read_parquet("
                      f"'{root}/{dataset}/**/*.parquet', hive_partitioning = true) "
                      "WHERE sensor_id NOT LIKE 'sentinel-%'").fetchall()
    return sorted(rows, key=repr)


async def staged_nothing(worker) -> bool:
    return worker.metrics().get(("sensorstream_lake_staging_files", frozenset()), 1) == 0


async def snapshot(env, bootstrap, worker, sensors: list[str], lake_dir: Path,
                   span: tuple[int, int]) -> dict:
    """Everything a replay must leave as it is; ``span``: the data's times (us)."""
    await eventually(lambda: staged_nothing(worker), "lake staging drained", 120)
    lake = await sealed_lake(env, lake_dir)
    views = {}
    since, until = (format_ts(t + d) for t, d in zip(span, (-HOUR_US, HOUR_US), strict=True))
    for sensor in sensors:
        for window in ("1m", "1h"):
            status, body = worker.get(f"/sensors/{sensor}/aggregates?window={window}"
                                      f"&since={since}&until={until}")
            assert status == 200, body
            views[sensor, window] = body
    latest: dict[tuple, bytes] = {}
    records = await read_all(bootstrap, env["SENSORSTREAM_AGGREGATES_TOPIC"])
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        body = orjson.loads(record.value)
        latest[(body["window"], body["window_start"], body["sensor_id"], body["metric"])] = (
            record.value)
    return {"views": views, "topic": latest, "topic_records": len(records),
            "pg_readings": await pg_table(env, "readings"),
            "pg_aggregates": await pg_table(env, "aggregates"),
            "pg_anomalies": await pg_table(env, "anomalies"),
            "lake_raw": lake_readings(lake), "lake_aggregates": lake_rows(lake, "aggregates"),
            "lake_anomalies": lake_rows(lake, "anomalies"),
            "lake_files": sorted(p.relative_to(lake).as_posix() for p in lake.rglob("*.parquet"))}


def assert_same(before: dict, after: dict) -> None:
    for name in ("pg_readings", "pg_aggregates", "pg_anomalies", "lake_raw",
                 "lake_aggregates", "lake_anomalies"):
        b, a = before[name], after[name]
        assert len(a) == len(set(a)), f"{name}: {len(a) - len(set(a))} rows twice"
        missing, extra = set(b) - set(a), set(a) - set(b)
        assert not missing and not extra, (f"{name}: {len(missing)} missing, e.g. "
                                           f"{sorted(missing, key=repr)[:2]}; {len(extra)} "
                                           f"extra, e.g. {sorted(extra, key=repr)[:2]}")
    assert after["topic"] == before["topic"], "the aggregates topic's windows changed"
    for key, view in before["views"].items():
        assert after["views"][key] == view, f"/sensors/{key[0]}/aggregates?window={key[1]}"


async def test_replay_from_earliest_double_counts_nothing(make_worker, app_env, bootstrap,
                                                          tmp_path):
    env = command_env({**app_env, **SINK_ENV}, tmp_path)
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    msgs, _late = dataset(6_000, seed=51)
    expected = distinct_readings(env, msgs)
    sensors = sorted({key[0] for key in expected})[:6]
    span = (min(key[2] for key in expected), max(key[2] for key in expected))
    worker = make_worker(**SINK_ENV).start()
    data_dir = Path(worker.env["SENSORSTREAM_DATA_DIR"])
    await worker.ready()
    await produce(bootstrap, topic, msgs)
    await produce(bootstrap, topic, sentinels(int(env["SENSORSTREAM_PARTITIONS"])))

    async def stored() -> bool:
        return len(await pg_readings(env)) >= len(expected)
    await eventually(stored, f"{len(expected)} readings in PostgreSQL", 240, interval=1)
    await settled(env, bootstrap)
    before = await snapshot(env, bootstrap, worker, sensors, tmp_path / "lake-before", span)
    assert {k[:3] for k in before["pg_readings"]} and len(before["pg_readings"]) == len(
        expected)
    assert before["pg_aggregates"] and before["lake_raw"] and before["lake_aggregates"]

    assert all(view["windows"] for view in before["views"].values())
    handovers = f"{env['SENSORSTREAM_APP_ID']}-readings-by-sensor"
    handed_before = sum(e for _c, e in (await commits_and_ends(
        bootstrap, env["SENSORSTREAM_APP_ID"], handovers)).values())

    worker.stop()
    agg_topic = env["SENSORSTREAM_AGGREGATES_TOPIC"]
    dry = plan_of(cli(env, "replay", "--topic", topic, "--to-earliest", "--dry-run", "--json"))
    assert sum(r["again"] for r in dry.values()) == sum(r["end"] for r in dry.values()) > 0
    result = ok(cli(env, "replay", "--topic", topic, "--topic", agg_topic, "--to-earliest",
                    "--wait", "30s"))
    assert "moved: 8 partition(s)" in result.stdout
    for name in (topic, agg_topic):
        assert all(c == 0 for c, _e in (await commits_and_ends(
            bootstrap, env["SENSORSTREAM_APP_ID"], name)).values()), name

    worker = make_worker(data_dir, **SINK_ENV).start()
    await worker.ready(120)
    await settled(env, bootstrap, deadline=300)
    after = await snapshot(env, bootstrap, worker, sensors, tmp_path / "lake-after", span)
    assert_same(before, after)
    assert after["topic_records"] == before["topic_records"], "windows were emitted again"
    # the input was processed again: handed over again, every reading a duplicate now
    handed_after = sum(e for _c, e in (await commits_and_ends(
        bootstrap, env["SENSORSTREAM_APP_ID"], handovers)).values())
    assert handed_after > handed_before
    counts = accounting(worker.metrics(), topic)
    assert counts["accepted"] == 0 and counts["duplicate"] > 0, counts
    assert counts["in"] == counts["duplicate"] + counts["late"] + counts["dead_lettered"], counts


# -- 4. reprocess a time range ----------------------------------------------------------------


def phase(sensors: int, start_s: int, minutes: int) -> list[tuple[bytes, bytes]]:
    """A reading every 30 s per sensor from ``start_s`` on, in time order."""
    msgs = []
    for step in range(minutes * 2):
        for i in range(sensors):
            ts = start_s + step * 30
            msgs.append((f"rp-{i}".encode(), orjson.dumps({
                "sensor_id": f"rp-{i}", "ts": ts, "temperature": 20 + (i + step) % 7 * 0.5,
                "humidity": 40 + (i * step) % 11})))
    return msgs


async def test_reprocess_puts_deleted_rows_back_once_and_leaves_the_live_group(
        make_worker, app_env, bootstrap, tmp_path):
    env = command_env({**app_env, **SINK_ENV}, tmp_path)
    topic, schema = env["SENSORSTREAM_INPUT_TOPICS"], env["SENSORSTREAM_PG_SCHEMA"]
    day = (int(time.time()) // 86400 - 2) * 86400
    phases = [phase(12, day + 3600 + k * 1200, 20) for k in range(3)]
    span = ((day + 3600) * 1_000_000, (day + 3600 + 3600) * 1_000_000)
    worker = make_worker(**SINK_ENV).start()
    await worker.ready()
    stamps = []
    stored_rows = 0
    for msgs in phases:
        stamps.append(int(time.time() * 1000))
        await produce(bootstrap, topic, msgs)
        stored_rows += len(distinct_readings(env, msgs))

        async def stored(n=stored_rows) -> bool:
            return len(await pg_readings(env)) >= n
        await eventually(stored, f"{stored_rows} readings in PostgreSQL", 120, interval=0.5)
        await settled(env, bootstrap)
    await produce(bootstrap, topic, sentinels(int(env["SENSORSTREAM_PARTITIONS"])))
    await settled(env, bootstrap)
    since, until = stamps[1], stamps[2] - 1  # phase 2 was handed to the sinks in between
    before = await snapshot(env, bootstrap, worker, ["rp-0"], tmp_path / "lake-before",
                            span)
    live_before = await group_offsets(env, bootstrap)

    # what the sinks were fed in that range, read from the topics themselves
    by_sensor = [r for r in await read_all(bootstrap, f"{env['SENSORSTREAM_APP_ID']}"
                                           "-readings-by-sensor")
                 if since <= r.timestamp <= until]
    windows = {(b["window"], b["window_start"], b["sensor_id"], b["metric"])
               for r in await read_all(bootstrap, env["SENSORSTREAM_AGGREGATES_TOPIC"])
               if since <= r.timestamp <= until and not (b := orjson.loads(r.value))[
                   "sensor_id"].startswith("sentinel-")}
    assert by_sensor and windows
    dry = orjson.loads(ok(cli(env, "reprocess", "--since", format_ts(since * 1000), "--until",
                              format_ts(until * 1000), "--dry-run", "--json")).stdout)
    per_dataset: dict[str, int] = {}
    for part in dry["plan"]["partitions"]:
        per_dataset[part["dataset"]] = per_dataset.get(part["dataset"], 0) + part["messages"]
    assert per_dataset["readings"] == len(by_sensor)

    first, last = day + 3600 + 1200, day + 3600 + 2400
    conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"])
    try:
        deleted = int((await conn.execute(
            f"DELETE FROM {schema}.readings WHERE time >= to_timestamp($1) "
            "AND time < to_timestamp($2)", float(first), float(last))).split()[-1])
        removed = 0
        for window, start, sensor, metric in windows:
            status = await conn.execute(
                f"DELETE FROM {schema}.aggregates WHERE window_size = $1 AND window_start = "
                "$2::timestamptz AND sensor_id = $3 AND metric = $4", window,
                datetime.fromisoformat(start), sensor, metric)
            removed += int(status.split()[-1])
    finally:
        await conn.close()
    assert deleted == len(distinct_readings(env, phases[1])) and removed == len(windows)

    result = ok(cli(env, "reprocess", "--since", str(since), "--until",
                    format_ts(until * 1000)))
    group = next(word for word in result.stdout.split()
                 if word.startswith(f"{env['SENSORSTREAM_APP_ID']}-reprocess-"))
    summary = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
               if line.split() and line.split()[0] in ("readings", "aggregates")}
    assert summary["readings"][-1] == str(deleted)  # rows written: the deleted ones
    assert int(summary["aggregates"][-1]) >= removed

    after = await snapshot(env, bootstrap, worker, ["rp-0"], tmp_path / "lake-after", span)
    assert_same(before, after)
    # the lake was written too: its periods were sealed again, one file per partition
    assert "into postgres, lake" in result.stdout
    sealed = int(result.stdout.split("lake: ")[1].split()[0])
    assert sealed > 0
    changed = set(after["lake_files"]) - set(before["lake_files"])
    assert changed and all(name.rsplit("/", 1)[1].startswith("sealed-p") for name in changed)
    per_period = Counter((name.rsplit("/", 1)[0], name.rsplit("/", 1)[1].split("-")[1])
                         for name in after["lake_files"])
    assert set(per_period.values()) == {1}, per_period
    assert await group_offsets(env, bootstrap) == live_before, "the live group moved"
    reprocess_offsets = await commits_and_ends(
        bootstrap, group, f"{env['SENSORSTREAM_APP_ID']}-readings-by-sensor")
    assert any(c for c, _e in reprocess_offsets.values()), reprocess_offsets
    assert not list((Path(env["SENSORSTREAM_DATA_DIR"]) / "lake-staging" / "reprocess").glob(
        "*/**/*.parquet"))
