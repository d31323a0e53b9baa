"""The sinks against the real services: PostgreSQL and the S3 lake hold every distinct
valid reading exactly once, through SIGKILLs, a PostgreSQL outage and an S3 outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from app.contract import Contract, format_ts
from app.settings import load
from sinks.objectstore import S3Store

from .harness import accounting, eventually, produce, read_all
from .test_windows import (
    WINDOW_ENV,
    assert_matches,
    dataset,
    duckdb_windows,
    produce_paced,
    reference_rows,
    sentinels,
)

pytestmark = pytest.mark.integration

SINK_ENV = {**WINDOW_ENV, "SENSORSTREAM_LAKE_SEAL_IDLE": "3s",
            "SENSORSTREAM_SINK_BATCH_WINDOW": "500ms", "SENSORSTREAM_SINK_RETRY_MAX": "2s",
            "SENSORSTREAM_SINK_BREAKER_COOLDOWN": "2s"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def distinct_readings(env: dict[str, str], msgs) -> dict[tuple, float | None]:
    """Every distinct valid reading (sensor, metric, ts) -> value of its first copy,
    late ones included: late for a window is still history."""
    contract = Contract.from_settings(load({k: v for k, v in env.items()
                                            if k.startswith("SENSORSTREAM_")}))
    found: dict[tuple, float | None] = {}
    for _key, value in msgs:
        for reading in contract.parse(value).readings:
            for metric, metric_value in reading.metrics.items():
                found.setdefault((reading.sensor_id, metric, reading.ts), metric_value)
    return found


async def pg_readings(env: dict[str, str]) -> dict[tuple, float | None]:
    conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"])
    try:
        rows = await conn.fetch(f"SELECT sensor_id, metric, time, value FROM "
                                f"{env['SENSORSTREAM_PG_SCHEMA']}.readings "
                                "WHERE sensor_id NOT LIKE 'sentinel-%'")
    finally:
        await conn.close()
    return {(r["sensor_id"], r["metric"], us(r["time"])): r["value"] for r in rows}


async def pg_count(env: dict[str, str]) -> int:
    try:
        conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"], timeout=3)
    except (OSError, asyncpg.PostgresError):
        return -1
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {env['SENSORSTREAM_PG_SCHEMA']}"
                                   ".readings WHERE sensor_id NOT LIKE 'sentinel-%'")
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def pg_aggregates(env: dict[str, str]) -> dict:
    conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"])
    try:
        rows = await conn.fetch(f"SELECT * FROM {env['SENSORSTREAM_PG_SCHEMA']}.aggregates "
                                "WHERE sensor_id NOT LIKE 'sentinel-%' AND window_size IN "
                                "('1m', '5m', '1h', '1d')")
    finally:
        await conn.close()
    found = {}
    for r in rows:
        body = dict(r)
        body["first"] = format_ts(us(r["first"])) if r["first"] else None
        body["last"] = format_ts(us(r["last"])) if r["last"] else None
        found[(r["window_size"], format_ts(us(r["window_start"])), r["sensor_id"],
               r["metric"])] = body
    return found


async def emitted_windows(bootstrap: str, topic: str) -> dict[tuple, tuple[int, int]]:
    """Every window key in the aggregates topic -> the partition and offset it is at."""
    found = {}
    for record in await read_all(bootstrap, topic, deadline=30):
        body = orjson.loads(record.value)
        found[(body["window"], body["window_start"], body["sensor_id"],
               body["metric"])] = (record.partition, record.offset)
    return found


def offset_ranges(places: list[tuple[int, int]]) -> dict[int, str]:
    """Partition -> 'first..last' of the offsets (diagnostics of a failure)."""
    by_partition: dict[int, list[int]] = {}
    for partition, offset in places:
        by_partition.setdefault(partition, []).append(offset)
    return {p: f"{min(o)}..{max(o)} ({len(o)})" for p, o in sorted(by_partition.items())}


def lake_store(env: dict[str, str], endpoint: str | None = None) -> S3Store:
    bucket, prefix = env["SENSORSTREAM_LAKE_URL"][len("s3://"):].split("/", 1)
    return S3Store(bucket, prefix, endpoint or env["SENSORSTREAM_S3_ENDPOINT"],
                   credentials={k: v for k, v in env.items() if k.startswith("AWS_")})


async def sealed_lake(env: dict[str, str], target: Path, deadline: float = 120) -> Path:
    """Wait until every raw period is sealed (no part files, no open markers), then
    download the lake to ``target``."""
    store = lake_store(env)
    await store.start()
    try:
        async def sealed() -> bool:
            keys = await store.list("")
            return bool(keys) and not any(
                k.rsplit("/", 1)[1].startswith("part-") or k.startswith("_sensorstream/open/")
                for k in keys)
        await eventually(sealed, "the lake sealed", deadline, interval=1)
        for key in await store.list(""):
            path = target / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(await store.get(key))
    finally:
        await store.stop()
    return target


def lake_readings(root: Path) -> list[tuple]:
    """(sensor, metric, ts, value) of every raw row, read by DuckDB with hive partitioning,
    as users read the lake."""
    rows = duckdb.sql(
        f"SELECT sensor_id, metric, epoch_us(time), value, dt, hour FROM read_parquet("
        f"'{root}/raw/**/*.parquet', hive_partitioning = true) "
        "WHERE sensor_id NOT LIKE 'sentinel-%'").fetchall()
    for _s, _m, ts, _v, dt, hour in rows:  # each row sits in its own hour's directory
        moment = datetime.fromtimestamp(ts / 1e6, UTC)
        assert (str(dt), int(hour)) == (f"{moment:%Y-%m-%d}", moment.hour)
    return [row[:4] for row in rows]


def assert_exactly(got_rows: list[tuple], expected: dict[tuple, float | None],
                   what: str) -> None:
    got = {row[:3]: row[3] for row in got_rows}
    assert len(got_rows) == len(got), f"{what}: {len(got_rows) - len(got)} rows twice"
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, (f"{what}: {len(missing)} missing {missing[:3]}, "
                                       f"{len(extra)} extra {extra[:3]}")
    differ = [k for k, v in expected.items() if got[k] != v]
    assert not differ, f"{what}: values differ for {differ[:3]}"


async def wait_for_pg(env, expected: dict, deadline: float = 180) -> None:
    async def complete() -> bool:
        return await pg_count(env) >= len(expected)
    with contextlib.suppress(AssertionError):  # the comparison names what is missing
        await eventually(complete, f"{len(expected)} readings in PostgreSQL", deadline,
                         interval=1)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- 1. SIGKILL three times ---------------------------------------------------------------


async def test_three_sigkills_lose_nothing_and_duplicate_nothing_in_postgres_and_the_lake(
        make_worker, app_env, bootstrap, tmp_path):
    env = {**app_env, **SINK_ENV}
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    msgs, late_values = dataset(25_000, seed=33)
    expected = distinct_readings(env, msgs)
    assert len(expected) >= 100_000
    reference = duckdb_windows(reference_rows(env, msgs, late_values)[0])

    worker = make_worker(**SINK_ENV).start()
    data_dir = worker.env["SENSORSTREAM_DATA_DIR"]
    await worker.ready()
    producing = asyncio.create_task(produce_paced(bootstrap, topic, msgs, seconds=50.0))
    for n in range(3):
        def progressed(w=worker):
            return accounting(w.metrics(), topic)["accepted"] >= len(expected) // 10
        await eventually(progressed, f"progress before kill {n + 1}", 180, interval=0.05)
        worker.kill()
        worker = make_worker(data_dir, **SINK_ENV).start()
        await worker.ready(120)
    await producing
    await produce(bootstrap, topic, sentinels(int(env["SENSORSTREAM_PARTITIONS"])))

    await wait_for_pg(env, expected)
    assert_exactly([(*k, v) for k, v in (await pg_readings(env)).items()], expected,
                   "PostgreSQL readings")
    aggregates: dict = {}

    async def all_windows() -> bool:
        aggregates.update(await pg_aggregates(env))
        return len(aggregates) >= len(reference)
    with contextlib.suppress(AssertionError):
        await eventually(all_windows, "every sealed window in PostgreSQL", 120, interval=2)
    stored = await pg_aggregates(env)
    missing = set(reference) - set(stored)
    if missing:  # say which stage lost them: never emitted, or emitted and not stored
        in_topic = await emitted_windows(bootstrap, env["SENSORSTREAM_AGGREGATES_TOPIC"])
        sunk = missing & set(in_topic)
        partitions = sorted({p for k, (p, _o) in in_topic.items() if k in sunk})
        raise AssertionError(
            f"{len(missing)} sealed windows missing from PostgreSQL: {len(sunk)} of them "
            f"are in the aggregates topic (partitions {partitions}: the sink lost them; "
            f"offsets {offset_ranges([in_topic[k] for k in sunk])}), "
            f"{len(missing) - len(sunk)} were never emitted; e.g. {sorted(missing)[:5]}")
    assert_matches(stored, reference)

    lake = await sealed_lake(env, tmp_path / "lake")
    assert_exactly(lake_readings(lake), expected, "the sealed lake")
    names = [p.name for p in (lake / "raw").rglob("*.parquet")]
    assert names and all(n.startswith("sealed-p") for n in names)


# -- 2. PostgreSQL down for 30 s ----------------------------------------------------------


async def test_postgres_outage_pauses_the_worker_and_loses_nothing(
        make_worker, app_env, bootstrap, stack):
    env = {**app_env, **SINK_ENV}
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    msgs, _late = dataset(12_000, seed=34)
    expected = distinct_readings(env, msgs)
    worker = make_worker(**SINK_ENV).start()
    await worker.ready()
    producing = asyncio.create_task(produce_paced(bootstrap, topic, msgs, seconds=60.0))
    async def some_rows() -> bool:
        return await pg_count(env) >= len(expected) // 8
    await eventually(some_rows, "an eighth of the readings in PostgreSQL", 120)
    pid = worker.process.pid
    rss_before = rss_bytes(pid)
    stack.stop_service("postgres")
    down_at = time.monotonic()
    try:
        def degraded():
            status, body = worker.get("/ready")
            return status == 503 and "postgres" in body["reason"] and (
                body["sinks"]["postgres"]["ok"] is False)
        await eventually(degraded, "/ready names the degraded PostgreSQL sink", 20)
        rss_peak = rss_before
        while time.monotonic() - down_at < 30:
            assert worker.process.poll() is None, worker.log_tail()
            rss_peak = max(rss_peak, rss_bytes(pid))
            await asyncio.sleep(0.5)
        samples = worker.metrics()
        paused = samples[("sensorstream_sink_paused", frozenset())]
        assert paused == 1
        assert samples[("sensorstream_sink_paused_seconds_total", frozenset())] > 15
    finally:
        await asyncio.to_thread(stack.up)
    assert rss_peak - rss_before < 150 * 2**20, (
        f"memory grew by {(rss_peak - rss_before) / 2**20:.0f} MiB while PostgreSQL was down")
    await producing
    await wait_for_pg(env, expected)
    assert_exactly([(*k, v) for k, v in (await pg_readings(env)).items()], expected,
                   "PostgreSQL readings after the outage")
    await eventually(lambda: worker.get("/ready")[0] == 200, "ready again", 30)
    errors = sum(v for (name, labels), v in worker.metrics().items()
                 if name == "sensorstream_sink_errors_total"
                 and ("sink", "postgres") in labels)
    assert errors > 0


# -- 3. The S3 endpoint down for 30 s -----------------------------------------------------


class Outage:
    """A TCP proxy in front of the S3 endpoint that can refuse connections: the endpoint
    as the worker sees it goes down and comes back, with the objects it held."""

    def __init__(self, target: str) -> None:
        host, port = target.split("://", 1)[1].split(":")
        self.target = (host, int(port))
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


async def test_s3_outage_grows_staging_then_uploads_everything(
        make_worker, app_env, bootstrap, tmp_path):
    proxy = Outage(app_env["SENSORSTREAM_S3_ENDPOINT"])
    await proxy.up()
    extra = {**SINK_ENV, "SENSORSTREAM_S3_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
             "SENSORSTREAM_SINKS": "lake", "SENSORSTREAM_LAKE_STAGING_ALARM_AGE": "10s"}
    env = {**app_env, **extra}
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    msgs, _late = dataset(12_000, seed=35)
    expected = distinct_readings(env, msgs)
    worker = make_worker(**extra).start()
    await worker.ready()
    staging = Path(worker.env["SENSORSTREAM_DATA_DIR"]) / "lake-staging" / "pending"
    producing = asyncio.create_task(produce_paced(bootstrap, topic, msgs, seconds=60.0))

    def gauge(name: str) -> float:
        return worker.metrics().get((name, frozenset()), 0.0)

    def uploaded() -> bool:
        return worker.metrics().get(("sensorstream_lake_uploads_total",
                                     frozenset({("kind", "part")})), 0) >= 3
    await eventually(uploaded, "parts uploaded before the outage", 120)
    await proxy.down()
    down_at = time.monotonic()
    seen: set[Path] = set()
    try:
        while time.monotonic() - down_at < 30:
            seen |= set(staging.rglob("*.parquet"))
            assert worker.process.poll() is None, worker.log_tail()
            await asyncio.sleep(0.5)
        still = {p for p in seen if p.exists()}
        assert still == seen, f"{len(seen - still)} staged files deleted while S3 was down"
        assert len(seen) >= 5 and gauge("sensorstream_lake_staging_files") >= len(seen) // 2
        assert gauge("sensorstream_lake_staging_bytes") > 0
        assert gauge("sensorstream_lake_staging_alarm") == 1
        assert gauge("sensorstream_lake_upload_errors_total") > 0
    finally:
        await proxy.up()
    await producing
    await produce(bootstrap, topic, sentinels(int(env["SENSORSTREAM_PARTITIONS"])))
    await eventually(lambda: gauge("sensorstream_lake_staging_files") == 0 and not any(
        staging.rglob("*.parquet")), "staging drained", 120)
    assert not any(p.exists() for p in seen)
    lake = await sealed_lake(env, tmp_path / "lake")
    assert_exactly(lake_readings(lake), expected, "the sealed lake after the S3 outage")
    # The lake reads as plain Parquet too: pyarrow with hive partitioning, no arguments.
    table = pq.read_table(lake / "raw")
    assert {"dt", "hour", "sensor_id", "time"} <= set(table.column_names)
