"""The rows the sinks store, one definition for PostgreSQL and the Parquet lake.

Plain Python and pyarrow, no Faust: the agents turn topic records into rows here,
the tests and the loader can too. A row is a tuple in the order of its dataset's
``columns``; times are microseconds since the epoch, UTC. Each dataset names the
key that makes a row unique (the sinks' idempotency) and which copy of a key wins
when it arrives more than once: the first for readings and anomalies (as the
per-sensor stage's deduplication), the newest for aggregates (a correction
replaces the window it corrects).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from app.contract import Handover, decode_batch, parse_time

TS = pa.timestamp("us", tz="UTC")
HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US


@dataclass(frozen=True)
class Dataset:
    """One kind of row: its columns (and Arrow types), key, and lake layout."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    time: str  #: the column that decides the row's lake period and PostgreSQL partition
    period_us: int  #: the lake's partition period: an hour for raw readings, else a day
    keep: str  #: "first" or "last" copy of a key, by (source_partition, source_offset)
    path_column: str | None = None  #: a column that becomes a hive directory, not a column
    #: The column holding the row's event time (default ``time``): the reading's time, a
    #: window's end. ``sensorstream_event_to_sink_seconds`` measures from it.
    event_time: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    def index(self, column: str) -> int:
        return self.schema.get_field_index(column)

    @property
    def event_time_index(self) -> int:
        return self.index(self.event_time or self.time)

    def file_schema(self) -> pa.Schema:
        """The schema of the Parquet files: without the column the path carries."""
        if self.path_column is None:
            return self.schema
        return self.schema.remove(self.index(self.path_column))

    def lake_dir(self, row: tuple) -> str:
        """``raw/dt=2026-11-22/hour=05``, ``aggregates/window=1m/dt=2026-11-22``, ..."""
        start = period_start(row[self.index(self.time)], self.period_us)
        moment = datetime.fromtimestamp(start / 1e6, UTC)
        parts = [self.lake_root]
        if self.path_column is not None:
            parts.append(f"{self.path_column}={row[self.index(self.path_column)]}")
        parts.append(f"dt={moment:%Y-%m-%d}")
        if self.period_us == HOUR_US:
            parts.append(f"hour={moment:%H}")
        return "/".join(parts)

    @property
    def lake_root(self) -> str:
        return "raw" if self.name == "readings" else self.name


def period_start(ts_us: int, period_us: int) -> int:
    return ts_us // period_us * period_us


def period_of_dir(directory: str) -> int:
    """The start (us) of the period a lake directory holds."""
    fields = dict(part.split("=", 1) for part in directory.split("/") if "=" in part)
    day = datetime.strptime(fields["dt"], "%Y-%m-%d").replace(tzinfo=UTC)
    start = int(day.timestamp()) * 1_000_000
    return start + int(fields.get("hour", 0)) * HOUR_US


_SOURCE = [pa.field("source_partition", pa.int32()), pa.field("source_offset", pa.int64())]

READINGS = Dataset(
    "readings",
    pa.schema([
        pa.field("time", TS, nullable=False),
        pa.field("sensor_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("attributes", pa.string()),  # JSON object, null when there are none
        pa.field("source_topic", pa.string()),
        *_SOURCE,
    ]),
    key=("sensor_id", "metric", "time"), time="time", period_us=HOUR_US, keep="first")

AGGREGATES = Dataset(
    "aggregates",
    pa.schema([
        pa.field("window", pa.string(), nullable=False),
        pa.field("window_start", TS, nullable=False),
        pa.field("window_end", TS, nullable=False),
        pa.field("sensor_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("location", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("missing", pa.int64()),
        *(pa.field(name, pa.float64()) for name in
          ("mean", "min", "max", "stddev", "p50", "p95", "p99")),
        pa.field("first", TS),
        pa.field("last", TS),
        pa.field("health", pa.float64()),
        pa.field("correction", pa.bool_()),
        *_SOURCE,
    ]),
    key=("window", "sensor_id", "metric", "window_start"), time="window_start",
    period_us=DAY_US, keep="last", path_column="window", event_time="window_end")

ANOMALIES = Dataset(
    "anomalies",
    pa.schema([
        pa.field("time", TS, nullable=False),
        pa.field("sensor_id", pa.string(), nullable=False),
        pa.field("metric", pa.string()),  # null: about the whole sensor (silence)
        pa.field("detector", pa.string(), nullable=False),
        pa.field("severity", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("reason", pa.string()),
        pa.field("expected_low", pa.float64()),
        pa.field("expected_high", pa.float64()),
        pa.field("z", pa.float64()),
        pa.field("suppressed", pa.int64()),
        pa.field("summary", pa.bool_()),
        *_SOURCE,
    ]),
    key=("sensor_id", "metric", "time", "detector"), time="time", period_us=DAY_US,
    keep="first")

DATASETS = {d.name: d for d in (READINGS, AGGREGATES, ANOMALIES)}


def reading_rows(handover: Handover) -> Iterator[tuple]:
    """One row per metric of every reading in a hand-over (nulls included: an accepted
    reading whose sensor sent no value)."""
    for reading, source, _at in handover.rows:
        attributes = orjson.dumps(reading.attributes).decode() if reading.attributes else None
        for metric, value in reading.metrics.items():
            yield (reading.ts, reading.sensor_id, metric, value, attributes,
                   source.topic, source.partition, source.offset)


def aggregate_row(body: dict[str, Any], partition: int, offset: int) -> tuple:
    """A sealed window from the aggregates topic."""
    return (body["window"], parse_time(body["window_start"]), parse_time(body["window_end"]),
            body["sensor_id"], body["metric"], body.get("location"), body["count"],
            body["missing"], body["mean"], body["min"], body["max"], body["stddev"],
            body["p50"], body["p95"], body["p99"], _time(body["first"]), _time(body["last"]),
            body.get("health"), bool(body.get("correction")), partition, offset)


def anomaly_row(body: dict[str, Any], partition: int, offset: int) -> tuple:
    """An anomaly event from the anomalies topic."""
    expected = body.get("expected") or (None, None)
    return (parse_time(body["ts"]), body["sensor_id"], body.get("metric"), body["detector"],
            body.get("severity"), body.get("value"), body.get("reason"), expected[0],
            expected[1], body.get("z"), body.get("suppressed") or 0, bool(body.get("summary")),
            partition, offset)


def _readings(value: bytes, _partition: int, _offset: int) -> Iterable[tuple]:
    return reading_rows(decode_batch(value))


def _aggregate(value: bytes, partition: int, offset: int) -> Iterable[tuple]:
    return [aggregate_row(orjson.loads(value), partition, offset)]


def _anomaly(value: bytes, partition: int, offset: int) -> Iterable[tuple]:
    return [anomaly_row(orjson.loads(value), partition, offset)]


#: A record of the dataset's source topic (value, partition, offset) -> its rows.
ROWS_OF: dict[str, Callable[[bytes, int, int], Iterable[tuple]]] = {
    READINGS.name: _readings, AGGREGATES.name: _aggregate, ANOMALIES.name: _anomaly}


def _time(value: str | None) -> int | None:
    return None if value is None else parse_time(value)


def to_table(dataset: Dataset, rows: list[tuple]) -> pa.Table:
    """Rows as an Arrow table in the dataset's schema, sorted by sensor and time."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in dataset.columns]
    table = pa.Table.from_arrays(
        [pa.array(col, type=field.type) for col, field in zip(columns, dataset.schema,
                                                               strict=True)],
        schema=dataset.schema)
    return table.sort_by(sort_keys(dataset))


def sort_keys(dataset: Dataset) -> list[tuple[str, str]]:
    """Sensor, then time, then the rest of the key; the kept copy first."""
    keys = ["sensor_id", dataset.time, *(k for k in dataset.key
                                         if k not in ("sensor_id", dataset.time))]
    if dataset.path_column in keys:
        keys.remove(dataset.path_column)
    order = "ascending" if dataset.keep == "first" else "descending"
    return [(k, "ascending") for k in keys] + [("source_partition", order),
                                               ("source_offset", order)]


def deduplicate(dataset: Dataset, table: pa.Table) -> pa.Table:
    """Each key once, the kept copy (``dataset.keep``), sorted as ``sort_keys``."""
    import pyarrow.compute as pc

    table = table.sort_by(sort_keys(dataset))
    if table.num_rows < 2:
        return table
    changed = None
    for name in dataset.key:
        if name not in table.column_names:  # the path column: one value per file
            continue
        column = table.column(name)
        if column.null_count:
            # Nulls compare as equal to each other and unequal to every value.
            valid = pc.is_valid(column)
            filled = pc.fill_null(column.cast(pa.string()) if not pa.types.is_string(
                column.type) else column, "")
            differs = pc.or_(pc.not_equal(filled[1:], filled[:-1]),
                             pc.not_equal(valid[1:], valid[:-1]))
        else:
            differs = pc.not_equal(column[1:], column[:-1])
        changed = differs if changed is None else pc.or_(changed, differs)
    keep = pa.concat_arrays([pa.array([True]), changed.combine_chunks()])
    return table.filter(keep)
