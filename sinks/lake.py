"""The Parquet lake sink: staged on local disk first, uploaded, then sealed per period.

``write`` puts each batch in Parquet part files under the staging directory (written,
fsynced, renamed) and returns: the rows are durable on disk before their offsets are
committed. Uploaders send the staged files to the object store in parallel, verify
each one (size and MD5), and only then delete the staged copy. A staged file is never
deleted otherwise: when the store is down, staging grows (``sensorstream_lake_staging_*``
and an alarm), and once it holds ``LAKE_STAGING_MAX_SIZE`` the sink reports itself full
and the worker pauses its partitions until uploads drain it.

Layout (hive): ``raw/dt=YYYY-MM-DD/hour=HH/``, ``aggregates/window=1m/dt=YYYY-MM-DD/``,
``anomalies/dt=YYYY-MM-DD/``. A period (an hour of raw readings, a day otherwise) of
one source partition collects part files ``part-p{P}-*.parquet`` until it is sealed:
once the partition's newest time is ``ALLOWED_LATENESS`` past the period's end, or no
part was added for ``LAKE_SEAL_IDLE``. Sealing merges the period's files of that
partition into one ``sealed-p{P}-*.parquet`` with each key once, then deletes what it
merged. A file is deleted only after the file holding its rows is stored and verified,
so a crash anywhere leaves rows twice, never zero times, and the next seal removes the
copy. A sensor's rows always come from one partition, so a sealed period holds each
reading once. Periods awaiting a seal are marked under ``_sensorstream/open/`` (readers
skip ``_`` directories), so a restarted worker, or the next owner of a partition, seals
what was left open.

A row the lake cannot hold (a time outside years 1-9999, which names no directory; a
value its column's Arrow type cannot carry) is refused for its content: ``write``
raises ``ContentError`` before any file is written, and the delivery (sinks.base)
dead-letters it. A write that fails part-way (disk errors: an outage, retried) removes
the part files it had already written, so a retry or a split stores nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import Counter, Gauge

from sinks.base import Backoff, Batch, ContentError, Sink
from sinks.objectstore import ObjectStore, fsync_path, md5_of
from sinks.records import DATASETS, Dataset, deduplicate, period_of_dir, to_table

log = logging.getLogger(__name__)

STAGING_BYTES = Gauge("sensorstream_lake_staging_bytes",
                      "Bytes of Parquet staged locally and not yet confirmed uploaded")
STAGING_FILES = Gauge("sensorstream_lake_staging_files",
                      "Staged Parquet files not yet confirmed uploaded")
STAGING_OLDEST = Gauge("sensorstream_lake_staging_oldest_seconds",
                       "Age of the oldest staged file not yet confirmed uploaded")
STAGING_ALARM = Gauge("sensorstream_lake_staging_alarm",
                      "1 while staging grows: its oldest file is older than "
                      "LAKE_STAGING_ALARM_AGE or it holds half of LAKE_STAGING_MAX_SIZE")
UPLOADS = Counter("sensorstream_lake_uploads", "Files uploaded and verified", ["kind"])
UPLOAD_ERRORS = Counter("sensorstream_lake_upload_errors", "Failed uploads (retried)")
SEALS = Counter("sensorstream_lake_seals", "Periods sealed (merged, each key once)",
                ["dataset"])
SEAL_DUPLICATES = Counter("sensorstream_lake_seal_duplicates_removed",
                          "Copies of a key removed while sealing", ["dataset"])

MARKERS = "_sensorstream/open/"
PART = "part-p"
SEALED = "sealed-p"
#: Parquet settings for analytics: zstd (small, fast to read), large row groups (few
#: footers to read; sorted by sensor and time so min/max statistics prune well).
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3
ROW_GROUP_ROWS = 1_000_000


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL,
                   row_group_size=ROW_GROUP_ROWS)


def _fsync_file_and_dir(path: Path) -> None:
    fsync_path(path)
    fsync_path(path.parent)


Period = tuple[str, int]  #: (lake directory, source partition)


class LakeSink(Sink):
    name = "lake"

    def __init__(self, store: ObjectStore, staging: Path, max_bytes: int, alarm_age: float,
                 concurrency: int, seal_idle: float, lateness: float,
                 owns: Callable[[str, int], bool] = lambda _dataset, _partition: True,
                 backoff: Backoff | None = None) -> None:
        self.store = store
        self.staging = staging
        self.pending = staging / "pending"
        self.sealing = staging / "sealing"
        self.max_bytes = max_bytes
        self.alarm_age = alarm_age
        self.concurrency = concurrency
        self.seal_idle = seal_idle
        self.lateness_us = int(lateness * 1_000_000)
        self.owns = owns  #: whether this worker owns a dataset's source partition now
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self._queue: asyncio.Queue[Path] = asyncio.Queue()
        self._staged: dict[Path, tuple[int, float]] = {}  #: size, staged at (wall clock)
        self._staged_per_period: defaultdict[Period, int] = defaultdict(int)
        self._open: dict[Period, float] = {}  #: awaiting a seal: last part stored at
        self._newest: dict[tuple[str, int], int] = {}  #: (dataset, partition): newest time
        self._locks: defaultdict[Period, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: list[asyncio.Task] = []
        self._alarmed = False
        self._writing: set[Path] = set()  #: temporary files being written right now
        self._wake = asyncio.Event()  #: set to cut the uploaders' backoff short
        self.last_upload_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        for directory in (self.pending, self.sealing):
            directory.mkdir(parents=True, exist_ok=True)
        for temp in self.pending.rglob("*.tmp"):
            temp.unlink()  # a part cut short by a crash: its batch was never acknowledged
        for leftover in self.sealing.iterdir():
            leftover.unlink()  # a merge cut short: its inputs are still in the store
        for path in sorted(self.pending.rglob("*.parquet")):
            self._stage(path, path.stat().st_size, path.stat().st_mtime)
        if self._staged:
            log.info("staged lake files from before the restart will be uploaded",
                     extra={"files": len(self._staged)})
        await self.adopt_open_periods()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._uploader()) for _ in range(self.concurrency)]
        self._tasks.append(loop.create_task(self._sealer()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.store.stop()

    async def adopt_open_periods(self) -> None:
        """Learn the periods left open (by a crash, or a partition's previous owner)."""
        try:
            markers = await self.store.list(MARKERS)
        except Exception as exc:
            log.warning("cannot list the lake's open periods yet: %s", exc)
            return
        now = time.time()
        for marker in markers:
            directory, _, part = marker[len(MARKERS):].rpartition("/")
            if part.startswith("p") and part[1:].isdigit():
                self._open.setdefault((directory, int(part[1:])), now)

    # -- staging ---------------------------------------------------------------------

    def _stage(self, path: Path, size: int, at: float) -> None:
        self._staged[path] = (size, at)
        self._staged_per_period[self._period_of(path)] += 1
        self._queue.put_nowait(path)
        self._gauges()

    def _period_of(self, path: Path) -> Period:
        relative = path.relative_to(self.pending)
        partition = int(relative.name[len(PART):].split("-", 1)[0])
        return relative.parent.as_posix(), partition

    def _gauges(self) -> None:
        total = sum(size for size, _ in self._staged.values())
        oldest = min((at for _, at in self._staged.values()), default=None)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        STAGING_BYTES.set(total)
        STAGING_FILES.set(len(self._staged))
        STAGING_OLDEST.set(age)
        alarm = age > self.alarm_age or total >= self.max_bytes / 2
        STAGING_ALARM.set(int(alarm))
        if alarm and not self._alarmed:
            log.warning("lake staging is growing: uploads are not keeping up", extra={
                "staged_files": len(self._staged), "staged_bytes": total,
                "oldest_seconds": round(age), "upload_error": self.last_upload_error})
        self._alarmed = alarm

    def staged_bytes(self) -> int:
        return sum(size for size, _ in self._staged.values())

    def full(self) -> str | None:
        total = self.staged_bytes()
        if total >= self.max_bytes:
            return (f"staging holds {total} bytes (LAKE_STAGING_MAX_SIZE {self.max_bytes}) "
                    f"not yet uploaded: {self.last_upload_error or 'uploads are behind'}")
        return None

    async def write(self, batch: Batch) -> None:
        dataset = batch.dataset
        tables, newest = await asyncio.to_thread(_tables, dataset, batch.rows)
        written = await asyncio.to_thread(self._write_parts, batch.partition, tables)
        now = time.time()
        for path, size in written:
            self._stage(path, size, now)
        key = (dataset.name, batch.partition)
        self._newest[key] = max(self._newest.get(key, newest), newest)

    def _write_parts(self, partition: int,
                     tables: dict[str, pa.Table]) -> list[tuple[Path, int]]:
        """One part file per directory; all or none (a failure removes what it wrote)."""
        written: list[tuple[Path, int]] = []
        try:
            for directory, table in tables.items():
                folder = self.pending / directory
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{PART}{partition}-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                temp = folder / f"{name}.tmp"
                self._writing.add(temp)
                try:
                    try:
                        write_parquet(table, temp)
                    except _CONTENT_ERRORS as exc:
                        raise ContentError(f"{type(exc).__name__}: {exc}") from exc
                    _fsync_file_and_dir(temp)
                    path = folder / name
                    os.replace(temp, path)
                finally:
                    temp.unlink(missing_ok=True)
                    self._writing.discard(temp)
                written.append((path, 0))
                _fsync_file_and_dir(path)
                written[-1] = (path, path.stat().st_size)
        except BaseException:
            for path, _size in written:  # not staged: nothing else knows of them
                path.unlink(missing_ok=True)
            raise
        return written

    # -- uploading -------------------------------------------------------------------

    async def _uploader(self) -> None:
        while True:
            path = await self._queue.get()
            attempt = 0
            while not await self._upload(path):
                wake = self._wake
                try:
                    await asyncio.wait_for(wake.wait(), self.backoff.delay(attempt))
                    attempt = 0  # an operator's retry: back off from the start again
                except TimeoutError:
                    attempt += 1

    def retry_uploads(self) -> int:
        """Retry failed uploads now, not after the backoff; the files staged and not yet
        confirmed uploaded."""
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()
        return len(self._staged)

    async def _upload(self, path: Path) -> bool:
        if path not in self._staged:
            return True  # removed by cleanup_staging: the store has it, verified
        period = self._period_of(path)
        key = path.relative_to(self.pending).as_posix()
        try:
            async with self._locks[period]:
                md5 = await asyncio.to_thread(md5_of, path)
                await self.store.put_bytes(f"{MARKERS}{period[0]}/p{period[1]}", b"")
                await self.store.put_file(key, path, md5)
                self._open[period] = time.time()
                path.unlink()  # confirmed: the store has it, verified
                self._staged.pop(path, None)
                self._staged_per_period[period] -= 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            UPLOAD_ERRORS.inc()
            if self.last_upload_error is None:
                log.warning("lake upload failed; the staged file stays and is retried: %s",
                            exc, extra={"file": key})
            self.last_upload_error = f"{type(exc).__name__}: {exc}"[:300]
            self._gauges()
            return False
        UPLOADS.labels("part").inc()
        if self.last_upload_error is not None:
            log.info("lake uploads work again", extra={"file": key})
            self.last_upload_error = None
        self._gauges()
        return True

    # -- sealing ---------------------------------------------------------------------

    def _due(self, period: Period, last_part: float, now: float) -> bool:
        directory, partition = period
        dataset = _dataset_of(directory)
        if self._staged_per_period.get(period) or not self.owns(dataset.name, partition):
            return False
        end = period_of_dir(directory) + dataset.period_us
        newest = self._newest.get((dataset.name, partition))
        passed = newest is not None and newest - self.lateness_us >= end
        return passed or now - last_part >= self.seal_idle

    async def _sealer(self) -> None:
        interval = max(0.2, min(5.0, self.seal_idle / 4))
        while True:
            await asyncio.sleep(interval)
            self._gauges()
            now = time.time()
            for period, last_part in sorted(self._open.items()):
                if not self._due(period, last_part, now):
                    continue
                try:
                    await self.seal(period)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("sealing %s of partition %d failed; retried later: %s",
                                *period, exc, extra={"directory": period[0],
                                                     "partition": period[1]})
                    self._open[period] = now - self.seal_idle + interval * 4

    async def seal(self, period: Period) -> int:
        """Merge a period's files of one partition into one, each key once; return rows."""
        return (await self._seal(period))["rows"]

    async def seal_now(self, dataset: str, start_us: int) -> list[dict[str, Any]]:
        """Seal the open periods of ``dataset`` starting at ``start_us`` of the partitions
        this worker owns, without waiting for lateness or idleness (an operator's call).
        What each seal did; a staged file of a period not yet uploaded is uploaded later
        and reopens the period, which is then sealed as usual."""
        await self.adopt_open_periods()
        done = []
        for period in sorted(self._open):
            directory, partition = period
            if (_dataset_of(directory).name != dataset or period_of_dir(directory) != start_us
                    or not self.owns(dataset, partition)):
                continue
            staged = self._staged_per_period.get(period, 0)
            try:
                done.append({**await self._seal(period), "staged_not_uploaded": staged})
            except Exception as exc:
                done.append({"directory": directory, "partition": partition,
                             "error": f"{type(exc).__name__}: {exc}"[:300]})
        return done

    async def _seal(self, period: Period) -> dict[str, Any]:
        directory, partition = period
        dataset = _dataset_of(directory)
        async with self._locks[period]:
            mine = [key for key in await self.store.list(f"{directory}/")
                    if key.rsplit("/", 1)[1].startswith((f"{PART}{partition}-",
                                                         f"{SEALED}{partition}-"))]
            parts = [k for k in mine if k.rsplit("/", 1)[1].startswith(PART)]
            rows = removed = files = 0
            if parts or len(mine) > 1:
                tables = [pq.read_table(io.BytesIO(await self.store.get(k))) for k in mine]
                merged, removed, temp = await asyncio.to_thread(
                    self._merge, dataset, tables)
                try:
                    name = f"{SEALED}{partition}-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
                    await self.store.put_file(f"{directory}/{name}", temp, md5_of(temp))
                finally:
                    temp.unlink(missing_ok=True)
                    self._writing.discard(temp)
                UPLOADS.labels("sealed").inc()
                await self.store.delete(mine)  # only now: their rows are in the new file
                rows, files = merged, len(mine)
                SEALS.labels(dataset.name).inc()
                SEAL_DUPLICATES.labels(dataset.name).inc(removed)
                log.info("lake period sealed", extra={
                    "directory": directory, "partition": partition, "files": len(mine),
                    "rows": merged, "duplicates_removed": removed})
            await self.store.delete([f"{MARKERS}{directory}/p{partition}"])
            self._open.pop(period, None)
            return {"directory": directory, "partition": partition,
                    "files": files, "rows": rows,
                    "duplicates_removed": removed}

    def _merge(self, dataset: Dataset, tables: list[pa.Table]) -> tuple[int, int, Path]:
        schema = dataset.file_schema()
        combined = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
        unique = deduplicate(dataset, combined)  # it skips the path column: not in files
        temp = self.sealing / f"{uuid.uuid4().hex}.parquet"
        self._writing.add(temp)  # until the seal is done with it (it unlinks it)
        try:
            write_parquet(unique, temp)
        except BaseException:
            self._writing.discard(temp)
            raise
        return unique.num_rows, combined.num_rows - unique.num_rows, temp

    # -- an operator's clean-up -------------------------------------------------------

    async def cleanup_staging(self) -> dict[str, Any]:
        """Remove from staging what is safe to remove: temporary files of writes and merges
        cut short, and staged files the store already holds, verified (size and MD5).
        A staged file the store does not hold, verified, stays."""
        removed: list[str] = []
        for temp in [*self.pending.rglob("*.tmp"), *self.sealing.glob("*.parquet")]:
            if temp not in self._writing:
                temp.unlink(missing_ok=True)
                removed.append(temp.relative_to(self.staging).as_posix())
        kept = 0
        for path in sorted(self._staged):
            period = self._period_of(path)
            async with self._locks[period]:  # not while an uploader sends it
                if path not in self._staged:
                    continue
                if await self._stored(path):
                    path.unlink(missing_ok=True)
                    self._staged.pop(path, None)
                    self._staged_per_period[period] -= 1
                    removed.append(path.relative_to(self.staging).as_posix())
                else:
                    kept += 1
        self._gauges()
        return {"removed": removed, "kept_not_uploaded": kept}

    async def _stored(self, path: Path) -> bool:
        """Whether the store holds ``path``'s key with the same bytes."""
        key = path.relative_to(self.pending).as_posix()
        try:
            if key not in await self.store.list(key):
                return False
            stored = hashlib.md5(await self.store.get(key), usedforsecurity=False)
            return stored.hexdigest() == await asyncio.to_thread(md5_of, path)
        except Exception:
            return False  # cannot tell: keep it

    def status(self) -> dict[str, Any]:
        return {"url": self.store.url, "staged_files": len(self._staged),
                "staged_bytes": self.staged_bytes(), "open_periods": len(self._open),
                "upload_error": self.last_upload_error}


#: Errors of building Parquet from rows: about the rows' content, not the disk.
_CONTENT_ERRORS = (ValueError, TypeError, OverflowError, pa.ArrowNotImplementedError)


def _tables(dataset: Dataset, rows: list[tuple]) -> tuple[dict[str, pa.Table], int]:
    """The rows as one Arrow table per lake directory, and their newest time; raises
    ``ContentError`` for rows the lake cannot hold."""
    try:
        groups: defaultdict[str, list[tuple]] = defaultdict(list)
        for row in rows:
            groups[dataset.lake_dir(row)].append(row)
        tables = {}
        for directory, group in groups.items():
            table = to_table(dataset, group)
            if dataset.path_column is not None:
                table = table.drop_columns([dataset.path_column])
            tables[directory] = table
        time_at = dataset.index(dataset.time)
        newest = max(row[time_at] for row in rows)
    except (*_CONTENT_ERRORS, OSError) as exc:  # no I/O here: an OSError is a time's
        # (``datetime.fromtimestamp`` past the platform's limits)
        raise ContentError(f"{type(exc).__name__}: {exc}") from exc
    return tables, newest


def _dataset_of(directory: str) -> Dataset:
    root = directory.split("/", 1)[0]
    return DATASETS["readings" if root == "raw" else root]

