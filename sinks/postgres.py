"""The PostgreSQL / TimescaleDB sink (asyncpg): the hot history dashboards query.

A batch is copied (binary ``COPY``) into a per-connection temporary staging table and
moved with one ``INSERT ... SELECT ... ON CONFLICT`` in the same transaction, so a batch
is stored whole or not at all, and a batch delivered again changes nothing: readings
and anomalies keep the first copy of their key (``DO NOTHING``), aggregates take the
newest version of a window (``DO UPDATE``, a correction replaces what it corrects).

Rows older than their table's retention are not written (they would be dropped at
once; the lake keeps them) and are counted. Without TimescaleDB the sink keeps each
table's daily partitions: created before rows need them and ``PG_PARTITIONS_AHEAD``
days ahead, dropped once past the retention.

A row PostgreSQL refuses for its content (``refuses``: a data exception, SQLSTATE
class 22, such as ``\u0000`` in ``jsonb``; an integrity violation, class 23, other
than a missing partition; a program limit, class 54; or a value asyncpg cannot encode,
a time no daily partition can be named for) is dead-lettered by the delivery
(sinks.base); connection errors, timeouts and every other error are outages, retried.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter

from sinks import schema as schema_mod
from sinks.base import Batch, ContentError, Sink
from sinks.records import DAY_US, READINGS, Dataset

log = logging.getLogger(__name__)

ROWS_INSERTED = Counter("sensorstream_pg_rows_inserted",
                        "Rows new to PostgreSQL (inserted or, for aggregates, updated)",
                        ["table"])
ROWS_SKIPPED = Counter("sensorstream_pg_rows_skipped",
                       "Rows not written to PostgreSQL because they are past the table's "
                       "retention (the lake keeps them)", ["table"])
PARTITIONS_DROPPED = Counter("sensorstream_pg_partitions_dropped",
                             "Daily partitions dropped by the retention", ["table"])

#: Staging columns (all plain types, times in microseconds) and the move into the table.
_STAGE = {
    "readings": ("ord bigint, time_us bigint, sensor_id text, metric text, "
                 "value double precision, attributes text"),
    "aggregates": ("ord bigint, window_size text, start_us bigint, end_us bigint, "
                   "sensor_id text, metric text, location text, count bigint, missing bigint, "
                   "mean double precision, min double precision, max double precision, "
                   "stddev double precision, p50 double precision, p95 double precision, "
                   "p99 double precision, first_us bigint, last_us bigint, "
                   "health double precision, correction boolean"),
    "anomalies": ("ord bigint, time_us bigint, sensor_id text, metric text, detector text, "
                  "severity text, value double precision, reason text, "
                  "expected_low double precision, expected_high double precision, "
                  "z double precision, suppressed bigint, summary boolean"),
}


def _ts(column: str) -> str:
    return f"(timestamptz 'epoch' + {column} * interval '1 microsecond')"


_AGG_STATS = ("count", "missing", "mean", "min", "max", "stddev", "p50", "p95", "p99")


def _move_sql(schema: str, table: str) -> str:
    if table == "readings":
        return (f"INSERT INTO {schema}.readings (time, sensor_id, metric, value, attributes) "
                f"SELECT {_ts('time_us')}, sensor_id, metric, value, attributes::jsonb "
                "FROM stage_readings ORDER BY ord ON CONFLICT DO NOTHING")
    if table == "aggregates":
        updated = ", ".join(f"{c} = excluded.{c}" for c in (
            "window_end", "location", *_AGG_STATS, "first", "last", "health", "correction"))
        return (
            f"INSERT INTO {schema}.aggregates (window_size, window_start, window_end, "
            f"sensor_id, metric, location, {', '.join(_AGG_STATS)}, first, last, health, "
            "correction) "
            f"SELECT DISTINCT ON (window_size, sensor_id, metric, start_us) window_size, "
            f"{_ts('start_us')}, {_ts('end_us')}, sensor_id, metric, location, "
            f"{', '.join(_AGG_STATS)}, {_ts('first_us')}, {_ts('last_us')}, health, "
            "correction FROM stage_aggregates "
            "ORDER BY window_size, sensor_id, metric, start_us, ord DESC "
            "ON CONFLICT (window_size, sensor_id, metric, window_start) "
            f"DO UPDATE SET {updated}")
    return (f"INSERT INTO {schema}.anomalies (time, sensor_id, metric, detector, severity, "
            "value, reason, expected_low, expected_high, z, suppressed, summary) "
            f"SELECT {_ts('time_us')}, sensor_id, metric, detector, severity, value, reason, "
            "expected_low, expected_high, z, suppressed, summary FROM stage_anomalies "
            "ORDER BY ord ON CONFLICT DO NOTHING")


def _stage_records(dataset: Dataset, rows: list[tuple]) -> list[tuple]:
    """Rows as staging records: an order column first, times as microseconds."""
    if dataset is READINGS:
        return [(i, *row[:5]) for i, row in enumerate(rows)]
    return [(i, *row[:-2]) for i, row in enumerate(rows)]  # without the lineage


def _stage_columns(table: str) -> list[str]:
    return [part.strip().split()[0] for part in _STAGE[table].split(",")]


def _inserted(status: str) -> int:
    match = re.search(r"(\d+)$", status)
    return int(match.group(1)) if match else 0


class PostgresSink(Sink):
    name = "postgres"

    def __init__(self, dsn: str, schema: str, retention: dict[str, float],
                 partitions_ahead: int, compress_after: float, pool_size: int = 4) -> None:
        self.dsn = dsn
        self.schema = schema
        self.retention = retention  #: seconds per table; 0 keeps everything
        self.partitions_ahead = partitions_ahead
        self.compress_after = compress_after
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None
        self.timescale = False
        self.migrations: list[int] = []
        self._partitions: dict[str, set[int]] = {t: set() for t in schema_mod.TIME_COLUMNS}

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self.pool_size, init=self._init_connection,
            server_settings={"timezone": "UTC", "application_name": "sensorstream"})
        async with self.pool.acquire() as conn:
            self.migrations, self.timescale = await schema_mod.migrate(conn, self.schema)
            if self.migrations:
                log.info("PostgreSQL schema migrated", extra={
                    "schema": self.schema, "applied": self.migrations,
                    "flavour": "timescaledb" if self.timescale else "partitioned"})
            if self.timescale:
                await self._timescale_policies(conn)
        await self.maintain()

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        for table, columns in _STAGE.items():
            await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} ({columns}) "
                               "ON COMMIT DELETE ROWS")

    async def _timescale_policies(self, conn: asyncpg.Connection) -> None:
        """Compression and retention policies from the settings (re-applied each start)."""
        s = self.schema
        await conn.execute(f"ALTER TABLE {s}.readings SET (timescaledb.compress, "
                           "timescaledb.compress_segmentby = 'sensor_id, metric', "
                           "timescaledb.compress_orderby = 'time')")
        await conn.execute("SELECT remove_compression_policy($1, if_exists => TRUE)",
                           f"{s}.readings")
        if self.compress_after:
            await conn.execute("SELECT add_compression_policy($1, $2::interval)",
                               f"{s}.readings", f"{int(self.compress_after)} seconds")
        for table, seconds in self.retention.items():
            await conn.execute("SELECT remove_retention_policy($1, if_exists => TRUE)",
                               f"{s}.{table}")
            if seconds:
                await conn.execute("SELECT add_retention_policy($1, $2::interval)",
                                   f"{s}.{table}", f"{int(seconds)} seconds")

    # -- partitions (plain PostgreSQL) -------------------------------------------------

    def _cutoff_us(self, table: str, now_s: float | None = None) -> int | None:
        """Rows before this (a day boundary) are past the retention."""
        seconds = self.retention.get(table, 0)
        if not seconds:
            return None
        now_s = time.time() if now_s is None else now_s
        return int((now_s - seconds) * 1_000_000) // DAY_US * DAY_US

    async def maintain(self, now_s: float | None = None) -> None:
        """Create partitions ahead, drop those past the retention (hourly, and at start)."""
        if self.timescale or self.pool is None:
            return
        now_s = time.time() if now_s is None else now_s
        today = int(now_s * 1_000_000) // DAY_US * DAY_US
        ahead = [today + i * DAY_US for i in range(self.partitions_ahead + 1)]
        async with self.pool.acquire() as conn:
            for table in schema_mod.TIME_COLUMNS:
                await self._load_partitions(conn, table)
                await self._create_partitions(conn, table, ahead)
                cutoff = self._cutoff_us(table, now_s)
                if cutoff is None:
                    continue
                for day in sorted(d for d in self._partitions[table] if d + DAY_US <= cutoff):
                    await conn.execute(f"DROP TABLE IF EXISTS {self.schema}."
                                       f"{_partition_name(table, day)}")
                    self._partitions[table].discard(day)
                    PARTITIONS_DROPPED.labels(table).inc()
                    log.info("dropped a partition past the retention",
                             extra={"table": table, "day": _day_text(day)})

    async def _load_partitions(self, conn: asyncpg.Connection, table: str) -> None:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n "
            "ON n.oid = p.relnamespace WHERE n.nspname = $1 AND p.relname = $2",
            self.schema, table)
        self._partitions[table] = {
            int(datetime.strptime(r["relname"].rsplit("_p", 1)[1], "%Y%m%d")
                .replace(tzinfo=UTC).timestamp()) * 1_000_000 for r in names}

    async def _create_partitions(self, conn: asyncpg.Connection, table: str,
                                 days: list[int]) -> None:
        missing = sorted(set(days) - self._partitions[table])
        if not missing:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               f"partitions:{self.schema}.{table}")
            for day in missing:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.schema}.{_partition_name(table, day)} "
                    f"PARTITION OF {self.schema}.{table} FOR VALUES FROM "
                    f"('{_day_text(day)} 00:00+00') TO ('{_day_text(day + DAY_US)} 00:00+00')")
        self._partitions[table].update(missing)

    # -- writing ---------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        assert self.pool is not None, "the PostgreSQL sink is not started"
        dataset = batch.dataset
        table = dataset.name
        rows = batch.rows
        time_at = dataset.index(dataset.time)
        cutoff = self._cutoff_us(table)
        try:  # pure work on the rows: what fails here fails for what they hold
            if cutoff is not None:
                kept = [row for row in rows if row[time_at] >= cutoff]
                if len(kept) < len(rows):
                    ROWS_SKIPPED.labels(table).inc(len(rows) - len(kept))
                rows = kept
            days = sorted({row[time_at] // DAY_US * DAY_US for row in rows})
            if not self.timescale:
                for day in days:
                    _partition_name(table, day)  # a time no partition can be named for
            records = _stage_records(dataset, rows)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ContentError(f"{type(exc).__name__}: {exc}") from exc
        if not rows:
            return
        async with self.pool.acquire() as conn:
            if not self.timescale:
                await self._create_partitions(conn, table, days)
            try:
                async with conn.transaction():
                    try:
                        await conn.copy_records_to_table(
                            f"stage_{table}", records=records,
                            columns=_stage_columns(table))
                    except (TypeError, ValueError, OverflowError) as exc:
                        # asyncpg's encoders refused a value (a type, a range, UTF-8)
                        raise ContentError(f"{type(exc).__name__}: {exc}") from exc
                    status = await conn.execute(_move_sql(self.schema, table))
            except asyncpg.CheckViolationError:
                # "no partition ... for row": another worker dropped or never made one
                # this worker thought was there. Learn the partitions again; the retry
                # creates what is missing.
                await self._load_partitions(conn, table)
                raise
        ROWS_INSERTED.labels(table).inc(_inserted(status))

    def refuses(self, exc: BaseException) -> bool:
        """Content errors by class: data exceptions (SQLSTATE 22), integrity violations
        (23) but a missing partition (a check violation: retried once the partitions
        are learnt again), program limits (54, such as an index row too large), and
        what ``write`` found in the rows itself (``ContentError``)."""
        if isinstance(exc, asyncpg.CheckViolationError):
            return False
        return isinstance(exc, (ContentError, asyncpg.DataError,
                                asyncpg.IntegrityConstraintViolationError,
                                asyncpg.ProgramLimitExceededError))

    def status(self) -> dict[str, Any]:
        return {"flavour": "timescaledb" if self.timescale else "partitioned",
                "schema": self.schema}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _day(day_us: int) -> datetime:
    """The day as a datetime; OverflowError outside years 1-9999 (exact integer
    arithmetic, no platform ``gmtime`` limits)."""
    return _EPOCH + timedelta(microseconds=day_us)


def _partition_name(table: str, day_us: int) -> str:
    day = _day(day_us)
    return f"{table}_p{day.year:04d}{day.month:02d}{day.day:02d}"


def _day_text(day_us: int) -> str:
    day = _day(day_us)
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"

