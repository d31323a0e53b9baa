"""The PostgreSQL schema: versioned migrations, applied once each, in order, at start-up.

Two flavours of the same tables. With the TimescaleDB extension the time-series
tables are hypertables (1-day chunks) with compression and retention policies.
Without it they are declaratively range-partitioned by day; the sink creates the
partitions ahead of time and drops the old ones (``sinks.postgres``). The flavour is
chosen when the schema is first created and recorded with migration 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

#: Every table of the sink, with the column it is partitioned (or chunked) by.
TIME_COLUMNS = {"readings": "time", "aggregates": "window_start", "anomalies": "time"}


def _tables(schema: str, partitioned: bool) -> str:
    def by(column: str) -> str:
        return f" PARTITION BY RANGE ({column})" if partitioned else ""

    return f"""
    CREATE TABLE {schema}.readings (
        time        timestamptz NOT NULL,
        sensor_id   text NOT NULL,
        metric      text NOT NULL,
        value       double precision,
        attributes  jsonb,
        PRIMARY KEY (sensor_id, metric, time)
    ){by("time")};
    CREATE TABLE {schema}.aggregates (
        window_size  text NOT NULL,
        window_start timestamptz NOT NULL,
        window_end   timestamptz NOT NULL,
        sensor_id    text NOT NULL,
        metric       text NOT NULL,
        location     text,
        count        bigint NOT NULL,
        missing      bigint NOT NULL,
        mean double precision, min double precision, max double precision,
        stddev double precision, p50 double precision, p95 double precision,
        p99 double precision,
        first        timestamptz,
        last         timestamptz,
        health       double precision,
        correction   boolean NOT NULL DEFAULT false,
        PRIMARY KEY (window_size, sensor_id, metric, window_start)
    ){by("window_start")};
    CREATE TABLE {schema}.anomalies (
        time          timestamptz NOT NULL,
        sensor_id     text NOT NULL,
        metric        text,
        detector      text NOT NULL,
        severity      text NOT NULL,
        value         double precision,
        reason        text,
        expected_low  double precision,
        expected_high double precision,
        z             double precision,
        suppressed    bigint NOT NULL DEFAULT 0,
        summary       boolean NOT NULL DEFAULT false,
        CONSTRAINT anomalies_key UNIQUE NULLS NOT DISTINCT (sensor_id, metric, time, detector)
    ){by("time")};
    """


async def _v1_tables(conn: asyncpg.Connection, schema: str, timescale: bool) -> None:
    await conn.execute(_tables(schema, partitioned=not timescale))
    if timescale:
        for table, column in TIME_COLUMNS.items():
            await conn.execute(
                "SELECT create_hypertable($1, $2, chunk_time_interval => INTERVAL '1 day', "
                "if_not_exists => TRUE)", f"{schema}.{table}", column)


async def _v2_indexes(conn: asyncpg.Connection, schema: str, timescale: bool) -> None:
    # Dashboards ask "the fleet over a time range": the keys lead with the sensor.
    await conn.execute(f"""
        CREATE INDEX IF NOT EXISTS readings_time ON {schema}.readings (time);
        CREATE INDEX IF NOT EXISTS anomalies_time ON {schema}.anomalies (time);
        CREATE INDEX IF NOT EXISTS aggregates_window_time
            ON {schema}.aggregates (window_size, window_start);
    """)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[asyncpg.Connection, str, bool], object]


MIGRATIONS = (
    Migration(1, "tables", _v1_tables),
    Migration(2, "time indexes", _v2_indexes),
)


async def timescale_available(conn: asyncpg.Connection) -> bool:
    """Whether the TimescaleDB extension is installed, or can be (then it is created)."""
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        return True
    if not await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"):
        return False
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError:
        return False  # available but not loadable (shared_preload_libraries): plain tables
    return True


async def migrate(conn: asyncpg.Connection, schema: str) -> tuple[list[int], bool]:
    """Apply the migrations not applied yet; return them and whether the schema uses
    TimescaleDB. Safe to run from many workers at once (an advisory lock)."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(f"""
            CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                flavour    text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())""")
        done = {r["version"]: r["flavour"] for r in await conn.fetch(
            f"SELECT version, flavour FROM {schema}.schema_migrations")}
        if 1 in done:
            timescale = done[1] == "timescaledb"
        else:
            timescale = await timescale_available(conn)
        flavour = "timescaledb" if timescale else "partitioned"
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            await migration.apply(conn, schema, timescale)
            await conn.execute(
                f"INSERT INTO {schema}.schema_migrations (version, name, flavour) "
                "VALUES ($1, $2, $3)", migration.version, migration.name, flavour)
            applied.append(migration.version)
    return applied, timescale
