"""Reading the Parquet lake with pyarrow (no DuckDB at run time): S3 through
``pyarrow.fs.S3FileSystem`` at the sink's endpoint and credentials, or a local directory.

The lake is read one UTC day directory at a time, in time order, so a page or an export
holds at most one day of the selected rows (an export: one period, see ``batches``).
Keys are deduplicated as the sink's seal does (``sinks.records.deduplicate``): a period
not sealed yet may hold a key twice. A file deleted by a seal between the listing and
the read makes the day read again from a fresh listing.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from app.history.columns import COLUMNS, SCHEMAS, TIME_COLUMN
from app.history.merge import Range
from app.history.query import Key, Selection
from sinks.records import DATASETS, DAY_US, TS, deduplicate

log = logging.getLogger(__name__)

_SOURCE = ("source_partition", "source_offset")
_ATTEMPTS = 3


def _day_text(ts_us: int) -> str:
    import datetime as dt

    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
            + dt.timedelta(microseconds=ts_us // DAY_US * DAY_US)).strftime("%Y-%m-%d")


def key_after(table: pa.Table, time_column: str, after: Key) -> pa.Array:
    """Mask of rows whose key ``(time, sensor_id, metric)`` sorts after ``after``."""
    t = pa.scalar(after[0], type=TS)
    times, sensors, metrics = (table.column(time_column), table.column("sensor_id"),
                               table.column("metric"))
    same_time = pc.equal(times, t)
    later_sensor = pc.greater(sensors, after[1])
    same_sensor_later_metric = pc.and_(pc.equal(sensors, after[1]),
                                       pc.greater(metrics, after[2]))
    return pc.or_(pc.greater(times, t),
                  pc.and_(same_time, pc.or_(later_sensor, same_sensor_later_metric)))


class Lake:
    """The lake under ``root`` (``bucket/prefix`` on S3, a directory otherwise)."""

    def __init__(self, fs: pafs.FileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    @classmethod
    def open(cls, lake_url: str, endpoint: str | None,
             environ: Mapping[str, str] | None = None) -> Lake:
        """The lake of ``SENSORSTREAM_LAKE_URL``, reached as the lake sink reaches it."""
        env = os.environ if environ is None else environ
        parts = urlsplit(lake_url)
        if parts.scheme == "file":
            return cls(pafs.LocalFileSystem(), parts.path, lake_url)
        options: dict = {"region": env.get("AWS_DEFAULT_REGION", "us-east-1")}
        if env.get("AWS_ACCESS_KEY_ID"):
            options.update(access_key=env["AWS_ACCESS_KEY_ID"],
                           secret_key=env.get("AWS_SECRET_ACCESS_KEY", ""))
        if endpoint:
            endpoint_parts = urlsplit(endpoint)
            options.update(endpoint_override=endpoint_parts.netloc,
                           scheme=endpoint_parts.scheme)
        fs = pafs.S3FileSystem(**options)
        return cls(fs, f"{parts.netloc}{parts.path}", lake_url)

    # -- listing ---------------------------------------------------------------------

    def _base(self, selection: Selection) -> str:
        if selection.dataset == "readings":
            return f"{self.root}/raw"
        return f"{self.root}/aggregates/window={selection.window}"

    def days(self, selection: Selection, rng: Range) -> list[str]:
        """The ``dt=`` directories (paths) of a range, oldest first."""
        since, until = rng
        first = None if since is None else _day_text(since)
        last = None if until is None else _day_text(until - 1)
        infos = self.fs.get_file_info(pafs.FileSelector(self._base(selection),
                                                        allow_not_found=True))
        found = []
        for info in infos:
            name = info.base_name
            if info.type != pafs.FileType.Directory or not name.startswith("dt="):
                continue
            day = name[3:]
            if (first is None or day >= first) and (last is None or day <= last):
                found.append((day, info.path))
        return [path for _, path in sorted(found)]

    def files(self, day_path: str) -> dict[str, list[str]]:
        """Parquet files of a day by period directory; ``_`` and ``.`` entries skipped."""
        periods: defaultdict[str, list[str]] = defaultdict(list)
        for info in self.fs.get_file_info(pafs.FileSelector(day_path, recursive=True,
                                                            allow_not_found=True)):
            relative = info.path[len(day_path):].strip("/")
            if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet") \
                    or any(part.startswith(("_", ".")) for part in relative.split("/")):
                continue
            periods[info.path.rsplit("/", 1)[0]].append(info.path)
        return dict(sorted(periods.items()))

    # -- reading ---------------------------------------------------------------------

    def _filter(self, selection: Selection, rng: Range) -> ds.Expression | None:
        column = TIME_COLUMN[selection.dataset]
        conditions = []
        if rng[0] is not None:
            conditions.append(ds.field(column) >= pa.scalar(rng[0], type=TS))
        if rng[1] is not None:
            conditions.append(ds.field(column) < pa.scalar(rng[1], type=TS))
        if selection.sensor_id is not None:
            conditions.append(ds.field("sensor_id") == selection.sensor_id)
        if selection.metric is not None:
            conditions.append(ds.field("metric") == selection.metric)
        expression = None
        for condition in conditions:
            expression = condition if expression is None else expression & condition
        return expression

    def _dataset(self, selection: Selection, paths: list[str]) -> ds.Dataset:
        schema = DATASETS[selection.dataset].file_schema()
        return ds.dataset(paths, schema=schema, format="parquet", filesystem=self.fs)

    def _columns(self, selection: Selection) -> list[str]:
        return [c for c in COLUMNS[selection.dataset] if c != "window"] + list(_SOURCE)

    def _finish(self, selection: Selection, table: pa.Table, dedupe: bool) -> pa.Table:
        """Each key once (when asked), in the API's columns and sort order."""
        dataset = DATASETS[selection.dataset]
        if dedupe:
            table = deduplicate(dataset, table)
        if selection.dataset == "aggregates":
            table = table.append_column(
                "window", pa.array([selection.window] * table.num_rows, pa.string()))
        table = table.sort_by([(TIME_COLUMN[selection.dataset], "ascending"),
                               ("sensor_id", "ascending"), ("metric", "ascending")])
        return table.select(list(COLUMNS[selection.dataset])).cast(SCHEMAS[selection.dataset])

    def _read_period(self, selection: Selection, rng: Range, paths: list[str]) -> pa.Table:
        table = self._dataset(selection, paths).to_table(
            columns=self._columns(selection), filter=self._filter(selection, rng))
        return self._finish(selection, table, dedupe=True)

    def _read_day(self, selection: Selection, rng: Range, day_path: str) -> pa.Table:
        for attempt in range(_ATTEMPTS):
            paths = [p for files in self.files(day_path).values() for p in files]
            if not paths:
                return SCHEMAS[selection.dataset].empty_table()
            try:
                return self._read_period(selection, rng, paths)
            except FileNotFoundError:
                if attempt == _ATTEMPTS - 1:
                    raise
                log.info("a lake file went away while reading (a seal); listing again",
                         extra={"directory": day_path})
        raise AssertionError("unreachable")

    def page(self, selection: Selection, rng: Range, after: Key | None,
             limit: int) -> pa.Table:
        """Up to ``limit`` rows of ``rng`` after the key ``after``, in key order."""
        tables: list[pa.Table] = []
        rows = 0
        for day_path in self.days(selection, rng):
            table = self._read_day(selection, rng, day_path)
            if after is not None:
                table = table.filter(key_after(table, TIME_COLUMN[selection.dataset], after))
            tables.append(table.slice(0, limit - rows))
            rows += tables[-1].num_rows
            if rows >= limit:
                break
        if not tables:
            return SCHEMAS[selection.dataset].empty_table()
        return pa.concat_tables(tables)

    def batches(self, selection: Selection, rng: Range,
                batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Every row of ``rng``, record batch by record batch, period by period.

        A period whose files are one sealed file per source partition holds each key
        once and is streamed straight from the scanner; a period with part files (not
        sealed yet, at most an hour of raw readings or a day of aggregates) is read whole
        and deduplicated first.
        """
        for day_path in self.days(selection, rng):
            for period, paths in self.files(day_path).items():
                yield from self._period_batches(selection, rng, day_path, period, paths,
                                                batch_rows)

    def _period_batches(self, selection: Selection, rng: Range, day_path: str, period: str,
                        paths: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        names = [p.rsplit("/", 1)[1] for p in paths]
        partitions = [n.split("-", 2)[1] for n in names]
        clean = all(n.startswith("sealed-") for n in names) and \
            len(set(partitions)) == len(partitions)
        yielded = 0
        try:
            if clean:
                scanner = self._dataset(selection, paths).scanner(
                    columns=self._columns(selection), filter=self._filter(selection, rng),
                    batch_size=batch_rows)
                for batch in scanner.to_batches():
                    if batch.num_rows:
                        table = self._finish(selection, pa.Table.from_batches([batch]),
                                             dedupe=False)
                        yielded += 1
                        yield from table.combine_chunks().to_batches()
            else:
                table = self._read_period(selection, rng, paths)
                yielded += 1
                yield from table.to_batches(max_chunksize=batch_rows)
        except FileNotFoundError:
            if yielded:
                # Part of the period is out already; reading the re-sealed file would
                # send those rows twice. Fail the download loudly instead.
                raise RuntimeError(f"the lake period {period} was re-sealed during the "
                                   "export; export again") from None
            log.info("a lake file went away before reading (a seal); listing again",
                     extra={"directory": period})
            fresh = self.files(day_path).get(period, [])
            if fresh:
                yield from self._read_period(selection, rng, fresh).to_batches(
                    max_chunksize=batch_rows)

    def daily(self, selection: Selection, rng: Range) -> pa.Table:
        """count (values present), min, max, mean per sensor and metric of a range."""
        table = pa.concat_tables([self._read_day(selection, rng, day_path)
                                  for day_path in self.days(selection, rng)]
                                 or [SCHEMAS["readings"].empty_table()])
        return table.group_by(["sensor_id", "metric"]).aggregate(
            [("value", "count"), ("value", "min"), ("value", "max"), ("value", "mean")])

