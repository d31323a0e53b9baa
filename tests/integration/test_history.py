"""The history API against the real PostgreSQL and S3 (moto) of the stack: rows written
by the real sinks (PostgresSink, LakeSink with its own S3 uploads and seals) from the
test process, read through a real worker's HTTP views.

The sinks run in the test process, not in the worker, so the test decides which lake
periods are sealed and which still hold a key twice when the worker reads them (a
worker's own sinks would seal on their own clock); the worker runs with
``SINKS=none``: the history views only read.
"""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import duckdb
import pyarrow.parquet as pq
import pytest

from app.contract import format_ts, parse_time
from app.history.merge import retention_cut
from sinks.base import Batch
from sinks.lake import MARKERS, LakeSink
from sinks.postgres import PostgresSink
from sinks.records import AGGREGATES, DAY_US, HOUR_US, READINGS

from .harness import eventually, http_get
from .test_sinks import lake_store

pytestmark = pytest.mark.integration

RETENTION_S = 2 * 86400
STEP_US = 10 * 60 * 1_000_000
SENSORS = ("s0", "s1", "s2")
METRICS = ("humidity", "temperature")
HISTORY_ENV = {"SENSORSTREAM_SINKS": "none", "SENSORSTREAM_PG_RAW_RETENTION": "2d",
               "SENSORSTREAM_PG_AGGREGATE_RETENTION": "2d",
               "SENSORSTREAM_HISTORY_MAX_PAGE": "500"}


def postgres_sink(env: dict[str, str]) -> PostgresSink:
    return PostgresSink(env["SENSORSTREAM_PG_DSN"], env["SENSORSTREAM_PG_SCHEMA"],
                        {"readings": RETENTION_S, "aggregates": RETENTION_S, "anomalies": 0},
                        partitions_ahead=1, compress_after=0)


def lake_sink(env: dict[str, str], staging: Path) -> LakeSink:
    # Sealing only when the test says so: no idle seal, a lateness past every period.
    return LakeSink(lake_store(env), staging, max_bytes=1 << 30, alarm_age=3600,
                    concurrency=2, seal_idle=86400, lateness=30 * 86400)


def readings(start: int, end: int, rng: random.Random) -> list[tuple]:
    """Every sensor and metric each 10 minutes of [start, end); some values null."""
    rows = []
    for ts in range(start, end, STEP_US):
        for p, sensor in enumerate(SENSORS):
            for metric in METRICS:
                value = None if rng.random() < 0.05 else round(rng.uniform(0, 40), 3)
                rows.append((ts, sensor, metric, value, None, "in", p, 0))
    return rows


def aggregates(start: int, end: int, rng: random.Random) -> list[tuple]:
    rows = []
    for ts in range(start // HOUR_US * HOUR_US, end, HOUR_US):
        for p, sensor in enumerate(SENSORS):
            for metric in METRICS:
                mean = round(rng.uniform(0, 40), 3)
                rows.append(("1h", ts, ts + HOUR_US, sensor, metric, "lab", 6, 0, mean,
                             mean - 1, mean + 1, 0.5, mean, mean + 0.5, mean + 0.9,
                             ts, ts + HOUR_US - STEP_US, 1.0, False, p, 0))
    return rows


async def write_both(pg: PostgresSink, lake: LakeSink, dataset, rows: list[tuple],
                     offset: int) -> None:
    """As the worker's sink stage: every row to both sinks, per source partition, with
    increasing source offsets (the lake's copies are told apart by them)."""
    p_at, o_at = dataset.index("source_partition"), dataset.index("source_offset")
    by_partition: dict[int, list[tuple]] = {}
    for i, row in enumerate(rows):
        row = (*row[:o_at], offset + i)
        by_partition.setdefault(row[p_at], []).append(row)
    for partition, part_rows in by_partition.items():
        batch = Batch(dataset, partition, part_rows)
        await pg.write(batch)
        await lake.write(batch)


def written_db(written: list[tuple]) -> duckdb.DuckDBPyConnection:
    """DuckDB over what was written: table ``w`` (ts, sensor_id, metric, value, seq)."""
    db = duckdb.connect()
    db.execute("CREATE TABLE w (ts BIGINT, sensor_id TEXT, metric TEXT, value DOUBLE, "
               "seq BIGINT)")
    db.executemany("INSERT INTO w VALUES (?, ?, ?, ?, ?)",
                   [(r[0], r[1], r[2], r[3], r[7]) for r in written])
    return db


def expected_readings(written: list[tuple], since: int, until: int) -> dict[tuple, float]:
    """Each key once, its first copy (by source offset), by DuckDB over what was written."""
    rows = written_db(written).execute(
        "SELECT ts, sensor_id, metric, value FROM (SELECT *, row_number() OVER "
        "(PARTITION BY sensor_id, metric, ts ORDER BY seq) AS n FROM w) "
        "WHERE n = 1 AND ts >= ? AND ts < ?", [since, until]).fetchall()
    return {(ts, s, m): v for ts, s, m, v in rows}


def duckdb_daily(written: list[tuple], day: int) -> list[dict]:
    rows = written_db(written).execute(
        "SELECT sensor_id, metric, count(value), min(value), max(value), avg(value) FROM "
        "(SELECT *, row_number() OVER (PARTITION BY sensor_id, metric, ts ORDER BY seq) "
        "AS n FROM w) WHERE n = 1 AND ts >= ? AND ts < ? GROUP BY 1, 2 ORDER BY 1, 2",
        [day, day + DAY_US]).fetchall()
    return [{"sensor_id": s, "metric": m, "count": c, "min": lo, "max": hi, "mean": mean}
            for s, m, c, lo, hi, mean in rows]


def all_pages(url: str, path: str, params: dict) -> tuple[list[dict], int, dict]:
    rows: list[dict] = []
    pages = 0
    link: str | None = f"{path}?{urlencode(params)}"
    first = None
    while link is not None:
        status, body = http_get(url + link)
        assert status == 200, body
        first = first or body
        rows.extend(body[path.rsplit("/", 1)[1]])
        pages += 1
        assert body["count"] <= params["limit"]
        link = body["next"]
    return rows, pages, first["sources"]


async def test_history_spans_postgres_and_the_lake_each_row_once(make_worker, app_env,
                                                                 tmp_path):
    env = {**app_env, **HISTORY_ENV}
    now_us = time.time_ns() // 1000
    cut = retention_cut(RETENTION_S, now_us / 1e6)
    start = cut - 2 * DAY_US
    end = now_us - HOUR_US
    rng = random.Random(8)
    worker = make_worker(**HISTORY_ENV).start()

    pg, lake = postgres_sink(env), lake_sink(env, tmp_path / "staging")
    await pg.start()
    await lake.start()
    written = readings(start, end, rng)
    agg_written = aggregates(start, end, rng)
    try:
        await write_both(pg, lake, READINGS, written, 0)
        await write_both(pg, lake, AGGREGATES, agg_written, 0)
        # Copies of keys with other values, later: in an unsealed lake period (older than
        # the cut) and after the cut (PostgreSQL kept the first copy). First copy wins
        # for readings; the newest copy (a correction) wins for aggregates.
        unsealed_hour = cut - DAY_US + 5 * HOUR_US
        copies = [(r[0], r[1], r[2], -1.0, *r[4:]) for r in written
                  if unsealed_hour <= r[0] < unsealed_hour + HOUR_US
                  or cut + HOUR_US <= r[0] < cut + 2 * HOUR_US]
        await write_both(pg, lake, READINGS, copies, len(written))
        written += [(*c[:7], len(written) + i) for i, c in enumerate(copies)]
        corrected = [(*r[:8], r[8] + 100, *r[9:18], True, *r[19:]) for r in agg_written
                     if cut - DAY_US <= r[1] < cut - DAY_US + 3 * HOUR_US]
        await write_both(pg, lake, AGGREGATES, corrected, len(agg_written))
        await eventually(lambda: lake.staged_bytes() == 0, "lake uploads done", 60)
        # Seal the oldest day (the seal removes its copies); leave the day before the cut
        # open, holding keys twice.
        sealed = 0
        for marker in await lake.store.list(MARKERS):
            directory, _, part = marker[len(MARKERS):].rpartition("/")
            if f"dt={datetime.fromtimestamp(start / 1e6, UTC):%Y-%m-%d}" in directory:
                await lake.seal((directory, int(part[1:])))
                sealed += 1
        assert sealed >= 24
    finally:
        await lake.stop()
        await pg.stop()

    # The stores really overlap and really differ: PostgreSQL has nothing before the
    # cut, the lake has rows after it too (the API must take those from PostgreSQL).
    conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"])
    try:
        oldest = await conn.fetchval(
            f"SELECT min(time) FROM {env['SENSORSTREAM_PG_SCHEMA']}.readings")
    finally:
        await conn.close()
    assert parse_time(oldest.isoformat()) == cut
    store = lake_store(env)
    await store.start()
    try:
        lake_keys = await store.list("raw/")
    finally:
        await store.stop()
    assert any(f"dt={datetime.fromtimestamp(cut / 1e6, UTC):%Y-%m-%d}" in k for k in lake_keys)
    assert any("/part-p" in k for k in lake_keys)  # unsealed copies are there

    await worker.ready()
    since, until = start + 30 * 60 * 1_000_000, end
    expected = expected_readings(written, since, until)
    rows, pages, sources = all_pages(worker.url, "/history/readings", {
        "since": format_ts(since), "until": format_ts(until), "limit": 500})
    assert sources["lake"] == {"since": format_ts(since), "until": format_ts(cut)}
    assert sources["postgresql"] == {"since": format_ts(cut), "until": format_ts(until)}
    got = [(parse_time(r["time"]), r["sensor_id"], r["metric"]) for r in rows]
    assert pages >= 4 and len(rows) == len(expected)
    assert len(set(got)) == len(got), "a reading on two pages"
    assert got == sorted(got), "pages are not in key order"
    assert {k: r["value"] for k, r in zip(got, rows, strict=True)} == expected
    print(f"\nreadings: {len(rows)} rows over {pages} pages, lake + PostgreSQL")

    one, _, _ = all_pages(worker.url, "/history/readings", {
        "sensor_id": "s1", "metric": "temperature", "since": format_ts(since), "limit": 100})
    assert [(parse_time(r["time"]), r["value"]) for r in one] == sorted(
        (k[0], v) for k, v in expected.items() if k[1:] == ("s1", "temperature"))

    newest = {}
    for r in agg_written + corrected:
        newest[(r[1], r[3], r[4])] = r[8]
    aggs, agg_pages, _ = all_pages(worker.url, "/history/aggregates",
                                   {"window": "1h", "limit": 500})
    assert agg_pages >= 2
    assert {(parse_time(a["window_start"]), a["sensor_id"], a["metric"]): a["mean"]
            for a in aggs} == newest
    assert len(aggs) == len(newest)

    for day in (start, cut - DAY_US, cut):  # sealed lake, unsealed lake, PostgreSQL
        status, body = http_get(worker.url + "/analytics/daily-summary?date="
                                + f"{datetime.fromtimestamp(day / 1e6, UTC):%Y-%m-%d}")
        assert status == 200, body
        assert body["stores"] == (["lake"] if day < cut else ["postgresql"])
        want = duckdb_daily(written, day)
        assert [(s["sensor_id"], s["metric"], s["count"], s["min"], s["max"]) for s in
                body["summaries"]] == [(w["sensor_id"], w["metric"], w["count"], w["min"],
                                        w["max"]) for w in want]
        for s, w in zip(body["summaries"], want, strict=True):
            assert s["mean"] == pytest.approx(w["mean"], rel=1e-12)

    status, data = await asyncio.to_thread(_download, worker.url + "/export?" + urlencode(
        {"format": "parquet", "since": format_ts(since), "until": format_ts(until)}))
    assert status == 200
    table = pq.read_table(io.BytesIO(data))
    exported = {(parse_time(format_ts(t)), s, m): v for t, s, m, v in zip(
        table.column("time").cast("int64").to_pylist(), table.column("sensor_id").to_pylist(),
        table.column("metric").to_pylist(), table.column("value").to_pylist(), strict=True)}
    assert table.num_rows == len(exported) == len(expected) and exported == expected
    status, data = await asyncio.to_thread(_download, worker.url + "/export?" + urlencode(
        {"format": "csv", "dataset": "aggregates", "window": "1h"}))
    assert status == 200
    assert data.count(b"\n") == len(newest) + 1

    bad = {
        "/history/readings?limit=100000": "/export",
        "/history/readings?since=soon": "is not a time",
        "/history/readings?sensor=s1": "unknown parameter 'sensor'",
        "/history/readings?cursor=abc": "cursor",
        "/history/aggregates?window=7m": "not kept",
        "/export?format=xml": "csv or parquet",
        "/analytics/daily-summary?date=22-11-2026": "is not a day",
    }
    for path, message in bad.items():
        status, body = http_get(worker.url + path)
        assert status == 400 and message in body["error"], (path, body)


def _download(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read()


def _stream_lines(url: str) -> int:
    """Count the lines of a download without keeping it (1 MiB at a time)."""
    lines = 0
    with urllib.request.urlopen(url, timeout=120) as response:
        assert response.status == 200
        while chunk := response.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def _export_measured(worker, params: dict) -> tuple[int, int, int, int]:
    """Lines streamed, the worker's highest VmRSS seen while streaming (KiB, sampled every
    20 ms), its VmHWM after, and how many samples were taken."""
    pid = worker.process.pid
    peak = [_status_kib(pid, "VmRSS")]
    samples = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _status_kib(pid, "VmRSS"))
            samples[0] += 1
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        lines = await asyncio.to_thread(_stream_lines,
                                        f"{worker.url}/export?{urlencode(params)}")
    finally:
        done.set()
        sampler.join()
    return lines, peak[0], _status_kib(pid, "VmHWM"), samples[0]


async def test_a_million_row_csv_export_streams_in_constant_memory(make_worker, app_env):
    env = app_env
    pg = postgres_sink(env)
    await pg.start()  # the sink's own migration and today's partition
    await pg.stop()
    today = time.time_ns() // 1000 // DAY_US * DAY_US
    schema = env["SENSORSTREAM_PG_SCHEMA"]
    small, total = 100_000, 1_000_000
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    from datetime import timedelta

    def records():
        for i in range(total):
            sensor = "small" if i < small else f"big-{i % 50}"
            yield (epoch + timedelta(microseconds=today + i * 1000), sensor, "temperature",
                   float(i % 997))

    conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"])
    try:
        started = time.monotonic()
        await conn.copy_records_to_table("readings", schema_name=schema, records=records(),
                                         columns=["time", "sensor_id", "metric", "value"])
        loaded = time.monotonic() - started
        assert await conn.fetchval(f"SELECT count(*) FROM {schema}.readings") == total
    finally:
        await conn.close()

    worker = make_worker(SENSORSTREAM_SINKS="none").start()
    await worker.ready()
    baseline = _status_kib(worker.process.pid, "VmRSS")
    started = time.monotonic()
    lines_small, peak_small, hwm_small, _ = await _export_measured(
        worker, {"format": "csv", "sensor_id": "small"})
    small_s = time.monotonic() - started
    started = time.monotonic()
    lines_all, peak_all, hwm_all, samples = await _export_measured(worker, {"format": "csv"})
    all_s = time.monotonic() - started
    assert lines_small == small + 1 and lines_all == total + 1  # with the header line
    assert samples >= 20, "the export ended before memory was sampled while streaming"
    print(f"\nCOPY of {total} rows: {loaded:.1f} s; worker VmRSS before exports "
          f"{baseline / 1024:.1f} MiB; export of {small} rows: {small_s:.1f} s, "
          f"peak VmRSS {peak_small / 1024:.1f} MiB, VmHWM {hwm_small / 1024:.1f} MiB; "
          f"export of {total} rows: {all_s:.1f} s ({samples} samples), peak VmRSS "
          f"{peak_all / 1024:.1f} MiB, VmHWM {hwm_all / 1024:.1f} MiB; growth "
          f"{(hwm_all - hwm_small) / 1024:.1f} MiB (VmHWM), "
          f"{(peak_all - peak_small) / 1024:.1f} MiB (peak VmRSS)")
    # Ten times the rows: the worker's peak grows by less than 32 MiB (the CSV of the
    # million rows is ~60 MiB; holding it, or its rows as Python objects, would not fit).
    assert hwm_all - hwm_small < 32 * 1024
    assert peak_all - peak_small < 32 * 1024
