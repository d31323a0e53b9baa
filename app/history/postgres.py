"""Reading the sink's PostgreSQL tables: a small read-only asyncpg pool of the history
API's own (opened at the first request), keyset pages, server-side cursors for exports.

Text columns are compared and sorted ``COLLATE "C"`` (byte order), the order pyarrow
sorts the lake's rows in, so one key order holds across both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pyarrow as pa

from app.history.columns import SCHEMAS
from app.history.merge import Range
from app.history.query import Key, Selection

POOL_SIZE = 2  #: the history API's connections; the sink has its own pool


class Unavailable(RuntimeError):
    """The store cannot answer (not configured, unreachable, no tables yet): a 503."""


def _ts(placeholder: str) -> str:
    return f"(timestamptz 'epoch' + {placeholder}::bigint * interval '1 microsecond')"


def _us(column: str) -> str:
    return f"(extract(epoch FROM {column}) * 1000000)::bigint"


_SELECT = {
    "readings": (f"{_us('time')}, sensor_id, metric, value, attributes::text", "readings",
                 "time"),
    "aggregates": (f"window_size, {_us('window_start')}, {_us('window_end')}, sensor_id, "
                   "metric, location, count, missing, mean, min, max, stddev, p50, p95, p99, "
                   f"{_us('first')}, {_us('last')}, health, correction", "aggregates",
                   "window_start"),
}


def select_sql(schema: str, selection: Selection, rng: Range, after: Key | None,
               limit: int | None) -> tuple[str, list[Any]]:
    """The query of a selection's rows in ``rng`` after ``after``, in key order."""
    columns, table, time_column = _SELECT[selection.dataset]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = []
    if selection.dataset == "aggregates":
        where.append(f"window_size = {arg(selection.window)}")
    if rng[0] is not None:
        where.append(f"{time_column} >= {_ts(arg(rng[0]))}")
    if rng[1] is not None:
        where.append(f"{time_column} < {_ts(arg(rng[1]))}")
    if selection.sensor_id is not None:
        where.append(f"sensor_id = {arg(selection.sensor_id)}")
    if selection.metric is not None:
        where.append(f"metric = {arg(selection.metric)}")
    if after is not None:
        where.append(f"({time_column}, sensor_id COLLATE \"C\", metric COLLATE \"C\") > "
                     f"({_ts(arg(after[0]))}, {arg(after[1])}::text COLLATE \"C\", "
                     f"{arg(after[2])}::text COLLATE \"C\")")
    sql = (f"SELECT {columns} FROM {schema}.{table}"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + f" ORDER BY {time_column}, sensor_id COLLATE \"C\", metric COLLATE \"C\"")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, args


def to_table(dataset: str, rows: list) -> pa.Table:
    """asyncpg rows (times as microseconds) as an Arrow table of the API's schema."""
    schema = SCHEMAS[dataset]
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    arrays = []
    for values, field in zip(columns, schema, strict=True):
        if pa.types.is_timestamp(field.type):
            arrays.append(pa.array(values, pa.int64()).cast(field.type))
        else:
            arrays.append(pa.array(values, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class HistoryPostgres:
    """The sink's schema, read only."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, min_size=0, max_size=POOL_SIZE, timeout=10,
                        server_settings={"default_transaction_read_only": "on",
                                         "timezone": "UTC",
                                         "application_name": "sensorstream-history"})
                except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                    raise Unavailable(f"PostgreSQL (SENSORSTREAM_PG_DSN) cannot be "
                                      f"reached: {type(exc).__name__}") from None
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Errors of the store as Unavailable: unreachable, or no tables yet."""
        try:
            yield
        except asyncpg.UndefinedTableError as exc:
            raise self._missing(exc) from None
        except (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError) as exc:
            raise Unavailable(f"PostgreSQL (SENSORSTREAM_PG_DSN) cannot be read: "
                              f"{type(exc).__name__}: {exc}") from None

    def _missing(self, exc: Exception) -> Unavailable:
        return Unavailable(f"PostgreSQL schema {self.schema!r} (SENSORSTREAM_PG_SCHEMA) has "
                           f"no such table yet: {exc}")

    async def page(self, selection: Selection, rng: Range, after: Key | None,
                   limit: int) -> pa.Table:
        sql, args = select_sql(self.schema, selection, rng, after, limit)
        pool = await self.pool()
        async with self._guard():
            rows = await pool.fetch(sql, *args)
        return to_table(selection.dataset, rows)

    async def batches(self, selection: Selection, rng: Range,
                      batch_rows: int) -> AsyncIterator[pa.RecordBatch]:
        """Every row of ``rng`` in key order from a server-side cursor, ``batch_rows`` at
        a time: memory holds one batch whatever the selection's size."""
        sql, args = select_sql(self.schema, selection, rng, None, None)
        pool = await self.pool()
        async with self._guard():
            conn = await pool.acquire()
        try:
            async with conn.transaction(readonly=True):
                async with self._guard():
                    cursor = await conn.cursor(sql, *args)
                while True:
                    rows = await cursor.fetch(batch_rows)
                    if rows:
                        for batch in to_table(selection.dataset, rows).to_batches():
                            yield batch
                    if len(rows) < batch_rows:
                        return
        finally:
            await pool.release(conn)

    async def daily(self, selection: Selection, rng: Range) -> list[tuple]:
        """(sensor_id, metric, count, min, max, mean) of the readings in ``rng``."""
        where = [f"time >= {_ts('$1')}", f"time < {_ts('$2')}"]
        args: list[Any] = [rng[0], rng[1]]
        if selection.sensor_id is not None:
            args.append(selection.sensor_id)
            where.append(f"sensor_id = ${len(args)}")
        if selection.metric is not None:
            args.append(selection.metric)
            where.append(f"metric = ${len(args)}")
        sql = (f"SELECT sensor_id, metric, count(value), min(value), max(value), avg(value) "
               f"FROM {self.schema}.readings WHERE {' AND '.join(where)} "
               "GROUP BY 1, 2 ORDER BY sensor_id COLLATE \"C\", metric COLLATE \"C\"")
        pool = await self.pool()
        async with self._guard():
            return [tuple(r) for r in await pool.fetch(sql, *args)]


