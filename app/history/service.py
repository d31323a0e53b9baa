"""The history API's stores put together: which store answers which part of a
selection (``merge``), pages, exports and daily summaries over both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from app.history import merge
from app.history.columns import SCHEMAS, TIME_COLUMN
from app.history.lake import Lake
from app.history.postgres import HistoryPostgres, Unavailable
from app.history.query import Day, Key, Page, Selection

EXPORT_BATCH_ROWS = 10_000  #: rows per chunk of an export (a Parquet row group)


@dataclass
class PageResult:
    table: pa.Table
    next_key: Key | None
    plan: merge.Plan


class History:
    """PostgreSQL (``postgres``) and the lake (``lake``), either may be None."""

    def __init__(self, postgres: HistoryPostgres | None, lake: Lake | None,
                 retention: dict[str, float]) -> None:
        self.postgres = postgres
        self.lake = lake
        self.retention = retention  #: seconds per dataset; 0: PostgreSQL keeps all

    @classmethod
    def from_settings(cls, settings: Any) -> History:
        postgres = HistoryPostgres(settings.pg_dsn, settings.pg_schema) \
            if settings.pg_dsn else None
        lake = Lake.open(settings.lake_url, settings.s3_endpoint or None) \
            if settings.lake_url else None
        return cls(postgres, lake, {"readings": settings.pg_raw_retention,
                                    "aggregates": settings.pg_aggregate_retention})

    def plan(self, selection: Selection) -> merge.Plan:
        if self.postgres is None and self.lake is None:
            raise Unavailable("the history needs SENSORSTREAM_PG_DSN and/or "
                              "SENSORSTREAM_LAKE_URL; neither is set")
        return merge.plan(selection.since, selection.until, postgres=self.postgres is not None,
                          lake=self.lake is not None,
                          cut=merge.retention_cut(self.retention[selection.dataset]))

    async def _lake(self, function: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except OSError as exc:
            raise Unavailable(f"the lake (SENSORSTREAM_LAKE_URL) cannot be read: "
                              f"{exc}") from None

    async def page(self, page: Page) -> PageResult:
        """A page in key order: the lake's part first (older), then PostgreSQL's."""
        selection = page.selection
        plan = self.plan(selection)
        after_time = page.after[0] if page.after else None
        want = page.limit + 1  # one more tells whether there is a next page
        tables = []
        got = 0
        if plan.lake is not None and self.lake is not None:
            rng = merge.after_range(plan.lake, after_time)
            if rng is not None:
                tables.append(await self._lake(self.lake.page, selection, rng, page.after,
                                               want))
                got = tables[-1].num_rows
        if got < want and plan.postgres is not None and self.postgres is not None:
            rng = merge.after_range(plan.postgres, after_time)
            if rng is not None:
                tables.append(await self.postgres.page(selection, rng, page.after,
                                                       want - got))
        table = pa.concat_tables(tables) if tables else SCHEMAS[selection.dataset].empty_table()
        next_key = None
        if table.num_rows > page.limit:
            table = table.slice(0, page.limit)
            last = table.slice(page.limit - 1, 1)
            next_key = (last.column(TIME_COLUMN[selection.dataset]).cast(pa.int64())[0].as_py(),
                        last.column("sensor_id")[0].as_py(), last.column("metric")[0].as_py())
        return PageResult(table, next_key, plan)

    async def batches(self, selection: Selection,
                      batch_rows: int = EXPORT_BATCH_ROWS) -> AsyncIterator[pa.RecordBatch]:
        """Every row of a selection, a record batch at a time: the lake's part, then
        PostgreSQL's (a server-side cursor)."""
        plan = self.plan(selection)
        if plan.lake is not None and self.lake is not None:
            batches: Iterator[pa.RecordBatch] = self.lake.batches(selection, plan.lake,
                                                                  batch_rows)
            while True:
                batch = await self._lake(next, batches, None)
                if batch is None:
                    break
                yield batch
        if plan.postgres is not None and self.postgres is not None:
            async for batch in self.postgres.batches(selection, plan.postgres, batch_rows):
                yield batch

    async def daily(self, day: Day) -> tuple[list[dict[str, Any]], list[str]]:
        """count (readings with a value), min, max and mean per sensor and metric of one
        UTC day, from the readings; and the stores that answered."""
        selection = Selection("readings", None, day.sensor_id, day.metric, day.start, day.end)
        plan = self.plan(selection)
        parts: list[tuple] = []
        stores = []
        if plan.lake is not None and self.lake is not None:
            table = await self._lake(self.lake.daily, selection, plan.lake)
            parts.extend(zip(*(table.column(c).to_pylist() for c in (
                "sensor_id", "metric", "value_count", "value_min", "value_max",
                "value_mean")), strict=True))
            stores.append("lake")
        if plan.postgres is not None and self.postgres is not None:
            parts.extend(await self.postgres.daily(selection, plan.postgres))
            stores.append("postgresql")
        return combine_daily(parts), stores


def combine_daily(parts: list[tuple]) -> list[dict[str, Any]]:
    """Per-store (sensor_id, metric, count, min, max, mean) rows as one summary per key
    (the stores hold disjoint times, so counts add and means weigh by count)."""
    found: dict[tuple[str, str], list] = {}
    for sensor_id, metric, count, low, high, mean in parts:
        count = int(count or 0)
        entry = found.setdefault((sensor_id, metric), [0, None, None, 0.0])
        if count:
            entry[1] = low if entry[1] is None else min(entry[1], low)
            entry[2] = high if entry[2] is None else max(entry[2], high)
            entry[3] += float(mean) * count
        entry[0] += count
    return [{"sensor_id": s, "metric": m, "count": c, "min": lo, "max": hi,
             "mean": (total / c) if c else None}
            for (s, m), (c, lo, hi, total) in sorted(
                found.items(), key=lambda kv: (kv[0][0].encode(), kv[0][1].encode()))]
