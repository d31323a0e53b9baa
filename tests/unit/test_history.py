"""The history API's plain logic: parameters, the cursor, the store split, the lake
reader (over a local lake written as the sink writes it), the encoders."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from app.history import merge
from app.history.columns import SCHEMAS
from app.history.encode import Encoder, as_dicts
from app.history.lake import Lake
from app.history.postgres import select_sql
from app.history.query import (
    QueryError,
    Selection,
    day_of,
    decode_cursor,
    encode_cursor,
    export_of,
    page_of,
)
from app.history.service import combine_daily
from sinks.lake import write_parquet
from sinks.records import DAY_US, HOUR_US, READINGS, to_table

WINDOWS = ("1m", "5m", "1h", "1d")
T0 = 1_700_000_000 * 1_000_000 // DAY_US * DAY_US  # a UTC midnight


@pytest.mark.parametrize(("query", "message"), [
    ({"limit": "x"}, "limit='x' is not an integer"),
    ({"limit": "0"}, "limit must be at least 1"),
    ({"limit": "501"}, "/export"),
    ({"since": "yesterday"}, "since='yesterday' is not a time"),
    ({"since": "2026-11-22T10:00:00Z", "until": "2026-11-22T09:00:00Z"},
     "since must be before until"),
    ({"sensor": "a"}, "unknown parameter 'sensor'"),
    ({"cursor": "!!!"}, "cursor is not a cursor"),
    ({"window": "1m"}, "unknown parameter 'window'"),
])
def test_bad_page_parameters_are_refused_with_a_message(query, message):
    with pytest.raises(QueryError, match=None) as info:
        page_of(query, "readings", WINDOWS, 500)
    assert message in str(info.value)


def test_aggregates_need_a_kept_window():
    with pytest.raises(QueryError, match="window is required"):
        page_of({}, "aggregates", WINDOWS, 500)
    with pytest.raises(QueryError, match="window='2m' is not kept"):
        page_of({"window": "2m"}, "aggregates", WINDOWS, 500)
    assert page_of({"window": "5m"}, "aggregates", WINDOWS, 500).selection.window == "5m"


def test_export_and_day_parameters():
    with pytest.raises(QueryError, match="format='xml'"):
        export_of({"format": "xml"}, WINDOWS)
    with pytest.raises(QueryError, match="dataset='anomaly'"):
        export_of({"dataset": "anomaly"}, WINDOWS)
    job = export_of({"format": "parquet", "dataset": "aggregates", "window": "1h",
                     "metric": " Temperature "}, WINDOWS)
    assert (job.format, job.selection.window, job.selection.metric) == (
        "parquet", "1h", "temperature")
    with pytest.raises(QueryError, match="date is required"):
        day_of({})
    with pytest.raises(QueryError, match="date='2026-13-01' is not a day"):
        day_of({"date": "2026-13-01"})
    day = day_of({"date": "2023-11-14"})
    assert (day.start, day.end - day.start, day.text) == (T0, DAY_US, "2023-11-14")


def test_cursor_round_trip_and_refusals():
    selection = Selection("readings", sensor_id="s1", since=T0)
    key = (T0 + 5, "s1", "humidity")
    text = encode_cursor(selection, key)
    assert decode_cursor(selection, text) == key
    page = page_of({"sensor_id": "s1", "since": str(T0), "cursor": text}, "readings",
                   WINDOWS, 500)
    assert page.after == key
    with pytest.raises(QueryError, match="different selection"):
        decode_cursor(Selection("readings", sensor_id="s2", since=T0), text)
    with pytest.raises(QueryError, match="not a cursor"):
        decode_cursor(selection, text[:-3])


def test_plan_splits_at_the_cut_and_reads_each_time_once():
    cut = T0
    both = merge.plan(T0 - DAY_US, T0 + DAY_US, postgres=True, lake=True, cut=cut)
    assert both == merge.Plan((T0 - DAY_US, cut), (cut, T0 + DAY_US))
    assert merge.plan(None, None, postgres=True, lake=True, cut=cut) == merge.Plan(
        (None, cut), (cut, None))
    assert merge.plan(T0 + 1, T0 + 2, postgres=True, lake=True, cut=cut).lake is None
    assert merge.plan(T0 - 2, T0 - 1, postgres=True, lake=True, cut=cut).postgres is None
    assert merge.plan(1, 2, postgres=True, lake=True, cut=None) == merge.Plan(None, (1, 2))
    assert merge.plan(1, 2, postgres=False, lake=True, cut=cut) == merge.Plan((1, 2), None)
    assert merge.plan(1, 2, postgres=True, lake=False, cut=cut) == merge.Plan(None, (1, 2))
    assert merge.after_range((1, 10), 5) == (5, 10)
    assert merge.after_range((1, 10), 10) is None


def test_retention_cut_is_the_sinks_day_boundary():
    now = (T0 + 5 * DAY_US + 3 * HOUR_US) / 1e6
    assert merge.retention_cut(2 * 86400, now) == T0 + 3 * DAY_US
    assert merge.retention_cut(0, now) is None


def test_select_sql_keyset_and_filters():
    sql, args = select_sql("s", Selection("aggregates", "1m", "a", "t", 1, 2), (1, 2),
                           (1, "a", "t"), 11)
    assert "window_size = $1" in sql and sql.endswith("LIMIT 11")
    assert '(window_start, sensor_id COLLATE "C", metric COLLATE "C") >' in sql
    assert args == ["1m", 1, 2, "a", "t", 1, "a", "t"]


def _write(root: Path, name: str, rows: list[tuple]) -> None:
    directory = root / READINGS.lake_dir(rows[0])
    directory.mkdir(parents=True, exist_ok=True)
    write_parquet(to_table(READINGS, rows), directory / name)


def _row(ts: int, sensor: str, metric: str, value: float, offset: int) -> tuple:
    return (ts, sensor, metric, value, None, "in", 0, offset)


def test_lake_pages_dedupe_unsealed_copies_and_follow_the_cursor(tmp_path):
    # Hour 0 sealed; hour 1 still in parts, one key twice (first copy wins); day 2 sealed.
    _write(tmp_path, "sealed-p0-1-a.parquet",
           [_row(T0 + i, "b", "t", i, i) for i in range(3)])
    _write(tmp_path, "sealed-p1-1-b.parquet", [_row(T0 + 1, "a", "t", 10.0, 0)])
    hour1 = T0 + HOUR_US
    _write(tmp_path, "part-p0-1-c.parquet", [_row(hour1, "b", "t", 1.0, 10)])
    _write(tmp_path, "part-p0-2-d.parquet", [_row(hour1, "b", "t", 2.0, 11),
                                            _row(hour1 + 1, "b", "t", 3.0, 12)])
    _write(tmp_path, "sealed-p0-3-e.parquet", [_row(T0 + DAY_US, "b", "h", 5.0, 0)])
    (tmp_path / "_sensorstream/open/raw").mkdir(parents=True)
    lake = Lake.open(f"file://{tmp_path}", None)
    selection = Selection("readings")
    everything = as_dicts(lake.page(selection, (None, None), None, 100))
    keys = [(r["time"], r["sensor_id"], r["metric"], r["value"]) for r in everything]
    assert len(keys) == 7 and len({k[:3] for k in keys}) == 7
    assert [k[1] for k in keys[:3]] == ["b", "a", "b"]  # (time, sensor, metric) order
    assert keys[4][3] == 1.0  # the first copy of the key written twice
    pages, after = [], None
    while True:
        table = lake.page(selection, (None, None), after, 2)
        pages.extend(as_dicts(table))
        if table.num_rows < 2:
            break
        last = table.slice(1, 1)
        after = (last.column("time").cast(pa.int64())[0].as_py(),
                 last.column("sensor_id")[0].as_py(), last.column("metric")[0].as_py())
    assert pages == everything
    exported = pa.Table.from_batches(list(lake.batches(selection, (None, None), 2)))
    assert sorted(as_dicts(exported), key=lambda r: (r["time"], r["sensor_id"])) == everything
    only_b = lake.page(Selection("readings", sensor_id="b", metric="t"), (T0 + 1, hour1 + 1),
                       None, 100)
    assert only_b.column("value").to_pylist() == [1.0, 2.0, 1.0]
    daily = lake.daily(Selection("readings"), (T0, T0 + DAY_US)).to_pylist()
    assert {(d["sensor_id"], d["metric"]): d["value_count"] for d in daily} == {
        ("a", "t"): 1, ("b", "t"): 5}


def test_combine_daily_weighs_means_by_count():
    found = combine_daily([("s", "t", 2, 1.0, 3.0, 2.0), ("s", "t", 1, 5.0, 5.0, 5.0),
                           ("s", "h", 0, None, None, None)])
    assert found == [{"sensor_id": "s", "metric": "h", "count": 0, "min": None,
                      "max": None, "mean": None},
                     {"sensor_id": "s", "metric": "t", "count": 3, "min": 1.0, "max": 5.0,
                      "mean": 3.0}]


def test_encoders_stream_chunks_that_read_back_whole():
    schema = SCHEMAS["readings"]
    rows = pa.table({"time": pa.array([T0, T0 + 1], pa.int64()), "sensor_id": ["a", "b,c"],
                     "metric": ["t", "t"], "value": [1.5, None],
                     "attributes": ['{"x": 1}', None]}).cast(schema)
    for fmt in ("csv", "parquet"):
        encoder = Encoder(fmt, schema)
        chunks = [encoder.feed(batch) for batch in rows.to_batches(max_chunksize=1)]
        chunks.append(encoder.close())
        data = b"".join(chunks)
        assert encoder.rows == 2
        if fmt == "csv":
            assert all(chunks[:2])  # each batch is sent as it comes
            back = pacsv.read_csv(io.BytesIO(data))
            assert back.column("time").cast(pa.string()).to_pylist()[0].startswith(
                "2023-11-14 00:00:00")
            assert back.column("sensor_id").to_pylist() == ["a", "b,c"]
        else:
            back = pq.read_table(io.BytesIO(data))
            assert back.equals(rows)
            assert pq.ParquetFile(io.BytesIO(data)).num_row_groups == 2


async def test_no_store_configured_is_unavailable_naming_the_settings():
    from app.history.postgres import Unavailable
    from app.history.service import History

    history = History(None, None, {"readings": 0, "aggregates": 0})
    with pytest.raises(Unavailable, match="SENSORSTREAM_PG_DSN and/or SENSORSTREAM_LAKE_URL"):
        await history.page(page_of({}, "readings", WINDOWS, 10))


async def test_service_pages_a_lake_only_history_with_cursors(tmp_path):
    from app.history.query import Page
    from app.history.service import History

    _write(tmp_path, "sealed-p0-1-a.parquet", [_row(T0 + i, "s", "t", i, i) for i in range(5)])
    history = History(None, Lake.open(f"file://{tmp_path}", None),
                      {"readings": 86400, "aggregates": 86400})
    selection = Selection("readings")
    seen, after = [], None
    for _ in range(5):
        result = await history.page(Page(selection, 2, after))
        assert result.plan.postgres is None and result.plan.lake == (None, None)
        seen.extend(result.table.column("value").to_pylist())
        after = result.next_key
        if after is None:
            break
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    exported = [b async for b in history.batches(selection, batch_rows=2)]
    assert sum(b.num_rows for b in exported) == 5


async def test_an_unreachable_postgres_is_unavailable_for_pages_exports_and_summaries():
    import socket

    from app.history.postgres import HistoryPostgres, Unavailable

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pg = HistoryPostgres(f"postgresql://u@127.0.0.1:{port}/db", "s")
    selection = Selection("readings")
    try:
        with pytest.raises(Unavailable, match="SENSORSTREAM_PG_DSN"):
            await pg.page(selection, (None, None), None, 10)
        with pytest.raises(Unavailable, match="SENSORSTREAM_PG_DSN"):
            await anext(pg.batches(selection, (None, None), 10))
        with pytest.raises(Unavailable, match="SENSORSTREAM_PG_DSN"):
            await pg.daily(selection, (T0, T0 + DAY_US))
    finally:
        await pg.close()
