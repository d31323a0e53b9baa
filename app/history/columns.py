"""The columns the history API answers with (JSON, CSV and Parquet alike), taken from
the sink's datasets (``sinks.records``) so the API, the lake and PostgreSQL agree."""

from __future__ import annotations

import pyarrow as pa

from sinks.records import AGGREGATES, READINGS

READINGS_COLUMNS = ("time", "sensor_id", "metric", "value", "attributes")
AGGREGATES_COLUMNS = ("window", "window_start", "window_end", "sensor_id", "metric",
                      "location", "count", "missing", "mean", "min", "max", "stddev", "p50",
                      "p95", "p99", "first", "last", "health", "correction")
COLUMNS = {"readings": READINGS_COLUMNS, "aggregates": AGGREGATES_COLUMNS}
SCHEMAS = {
    "readings": pa.schema([READINGS.schema.field(c) for c in READINGS_COLUMNS]),
    "aggregates": pa.schema([AGGREGATES.schema.field(c) for c in AGGREGATES_COLUMNS]),
}
#: The column a selection's range and sort order use.
TIME_COLUMN = {"readings": "time", "aggregates": "window_start"}
TIME_COLUMNS = frozenset({"time", "window_start", "window_end", "first", "last"})
