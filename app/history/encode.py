"""Rows out: a page as JSON-ready dicts; an export as CSV or Parquet bytes, one chunk
per record batch, so a download never holds more than one batch."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.contract import format_ts
from app.history.columns import TIME_COLUMNS

CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def as_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """A page's rows: times as ISO 8601 UTC (microseconds), attributes as JSON objects."""
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if name in TIME_COLUMNS:
            columns[name] = [None if v is None else format_ts(v)
                             for v in column.cast(pa.int64()).to_pylist()]
        elif name == "attributes":
            columns[name] = [None if v is None else orjson.loads(v) for v in column.to_pylist()]
        else:
            columns[name] = column.to_pylist()
    names = table.column_names
    return [dict(zip(names, values, strict=True))
            for values in zip(*(columns[n] for n in names), strict=True)]


class _Buffer(io.RawIOBase):
    """A write-only file whose bytes are taken out after each chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


class Encoder:
    """``feed`` a record batch, get the bytes to send; ``close`` for the tail."""

    def __init__(self, fmt: str, schema: pa.Schema) -> None:
        self.format = fmt
        self.schema = schema
        self.rows = 0
        self._buffer = _Buffer()
        self._header = True
        self._writer: pq.ParquetWriter | None = None
        if fmt == "parquet":
            # One row group per fed batch, written (and so sent) as it comes.
            self._writer = pq.ParquetWriter(self._buffer, schema, compression="zstd")

    def feed(self, batch: pa.RecordBatch) -> bytes:
        self.rows += batch.num_rows
        if self._writer is not None:
            self._writer.write_batch(batch, row_group_size=max(1, batch.num_rows))
        else:
            pacsv.write_csv(_csv_ready(batch), self._buffer, pacsv.WriteOptions(
                include_header=self._header, quoting_style="needed"))
            self._header = False
        return self._buffer.take()

    def close(self) -> bytes:
        if self._writer is not None:
            self._writer.close()
        elif self._header:  # nothing fed: still the header line
            pacsv.write_csv(_csv_ready(self.schema.empty_table()), self._buffer)
        return self._buffer.take()


def _csv_ready(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch | pa.Table:
    """Times as ISO 8601 with a ``Z`` (pyarrow writes ``2026-11-22 10:00:00.000000Z``
    otherwise, which not every reader takes)."""
    import pyarrow.compute as pc

    arrays = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if name in TIME_COLUMNS:
            column = pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ") if len(column) \
                else column.cast(pa.string())
        arrays.append(column)
    if isinstance(batch, pa.Table):
        return pa.table(arrays, names=batch.schema.names)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
