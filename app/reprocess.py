"""Reprocess: rebuild the sinks for a time range, in a consumer group of its own. No Faust.

``faust -A app reprocess`` (app/commands/reprocess.py) is the command. It reads the
topics the sinks are fed from (the readings-by-sensor hand-overs, the aggregates topic,
the anomalies topic) from the first record at or after ``since`` up to the first one
after ``until`` (or the log end when it starts), turns them into rows with the sink
stage's own row functions (sinks.records) and writes them through the sink classes
themselves, whose writes are idempotent: a row already stored stays as it is, a
missing one comes back, once. The live worker group's offsets are never touched: this
reads with a group of its own (``<app_id>-reprocess-<UTC stamp>``), commits its own
progress there, and ``--group`` resumes it.

Times are the records' Kafka timestamps on those topics: when the worker handed the rows
to the sinks, which for a live stream is seconds after the readings' own time, and for
a backfill or a replay, when it was processed.

Aggregates: PostgreSQL takes the newest *delivered* version of a window (``DO
UPDATE``), so stopping at ``until`` would put back a window's version from the range
over a correction sent after it. After ``until``, the aggregates partitions are read on
to the log end and only the windows met in the range are written again (the lake keeps
the highest offset of a key anyway).

The lake: this process has a staging directory of its own (under
``LAKE_STAGING_DIR/reprocess/<group>``), so the live worker's staged files are never
touched, and its part files have names of their own (``part-p{P}-{ns}-{random}``, as
every writer's). Its parts land in the periods they belong to; once all are uploaded it
seals each period it wrote itself, which merges its parts with the period's sealed file
and any parts of the live worker, each key once. A DuckDB reader sees a row twice only
between an upload and that period's seal. If the live worker seals the same period in
the same moment (it is still writing to it), two sealed files can overlap; the period
is listed again after each seal and sealed again while it holds more than one file.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.contract import format_ts
from app.progress import Progress
from app.replay import ReplayError, committed_offsets, log_ends, offsets_at, topic_partitions
from sinks.base import Backoff, Batch, Sink
from sinks.configured import make_sink
from sinks.records import (
    AGGREGATES,
    ANOMALIES,
    DATASETS,
    READINGS,
    ROWS_OF,
    period_start,
)

log = logging.getLogger("sensorstream.reprocess")

#: Attempts per batch and sink before the run stops (each waits a jittered backoff).
WRITE_ATTEMPTS = 6
#: How long a full sink (the lake's staging) may hold the run, and the uploads may take.
FULL_WAIT_S = 600.0
#: No progress on a partition for this long stops the run.
STALL_S = 120.0

_AGG_KEY = [AGGREGATES.index(name) for name in AGGREGATES.key]


def source_topics(app_id: str, aggregates_topic: str, anomalies_topic: str) -> dict[str, str]:
    """Dataset -> the topic the sink stage reads it from."""
    return {READINGS.name: f"{app_id}-readings-by-sensor", AGGREGATES.name: aggregates_topic,
            ANOMALIES.name: anomalies_topic}


def build_sinks(settings: Any, names: Iterable[str], staging: Path) -> list[Sink]:
    """The sinks ``names`` as the worker builds them, except that the lake stages under
    ``staging`` and never seals on its own (``owns``: nothing)."""
    return [make_sink(name, settings, staging, owns=lambda _dataset, _partition: False)
            for name in names]


@dataclass
class Span:
    """One partition to read: ``start`` up to ``stop`` (the first record after ``until``),
    ``end`` the log end when the run started. ``resumed``: ``start`` is where an earlier
    run of the same group got to."""

    dataset: str
    topic: str
    partition: int
    start: int
    stop: int
    end: int
    resumed: bool = False

    @property
    def messages(self) -> int:
        return max(0, self.stop - self.start)

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


async def plan(client: Mapping[str, Any], group: str, topics: Mapping[str, str],
               since_ms: int, until_ms: int | None, chosen: set[int] | None) -> list[Span]:
    """The spans of every partition of ``topics`` (dataset -> topic) for the range."""
    tps = await topic_partitions(client, list(topics.values()), chosen)
    dataset_of = {topic: name for name, topic in topics.items()}
    consumer = AIOKafkaConsumer(**client, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        earliest = await consumer.beginning_offsets(tps)
        ends = await log_ends(client, consumer, tps)
        starts = await offsets_at(consumer, tps, since_ms, ends)
        stops = (ends if until_ms is None
                 else await offsets_at(consumer, tps, until_ms + 1, ends))
    finally:
        await consumer.stop()
    committed = await committed_offsets(client, group, tps)
    spans = []
    for tp in tps:
        start, stop = max(starts[tp], earliest[tp]), stops[tp]
        done = committed[tp]
        resumed = done is not None and start < done <= stop
        spans.append(Span(dataset_of[tp.topic], tp.topic, tp.partition,
                          done if resumed else start, max(stop, start), ends[tp], resumed))
    return spans


@dataclass
class Summary:
    group: str
    since: str
    until: str
    sinks: list[str]
    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    followed: int = 0  #: aggregates after ``until`` written again (newer versions)
    undecodable: int = 0
    periods_sealed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["messages"], found["rows"] = dict(self.messages), dict(self.rows)
        return found


def render_plan(spans: list[Span]) -> str:
    header = ("dataset", "topic", "partition", "from", "to", "messages", "log end")
    lines = [(s.dataset, s.topic, str(s.partition),
              f"{s.start}{' (resumed)' if s.resumed else ''}", str(s.stop), str(s.messages),
              str(s.end)) for s in spans]
    lines.append(("total", "", "", "", "", str(sum(s.messages for s in spans)), ""))
    return _table(header, lines)


def render_summary(summary: Summary) -> str:
    header = ("dataset", "messages", "rows written")
    lines = [(name, str(summary.messages.get(name, 0)), str(summary.rows.get(name, 0)))
             for name in DATASETS if name in summary.messages or name in summary.rows]
    text = [f"reprocessed {summary.since} .. {summary.until} into "
            f"{', '.join(summary.sinks)} with consumer group {summary.group} in "
            f"{summary.seconds:.1f} s", _table(header, lines)]
    if summary.followed:
        text.append(f"{summary.followed} newer versions of those windows (sent after the "
                    "range) written again after them")
    if summary.periods_sealed:
        text.append(f"lake: {summary.periods_sealed} period(s) sealed (each key once)")
    if summary.undecodable:
        text.append(f"{summary.undecodable} record(s) could not be decoded (see the log)")
    return "\n".join(text)


def _table(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if not c.replace(" (resumed)", "").isdigit() else c.rjust(w)
                         for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *map(fmt, lines), ""]).rstrip()


class Rebuild:
    """One run: reads the spans, writes their rows to ``sinks``, commits to ``group``."""

    def __init__(self, client: Mapping[str, Any], group: str, sinks: list[Sink],
                 batch_rows: int, summary: Summary) -> None:
        self.client = client
        self.group = group
        self.sinks = sinks
        self.batch_rows = batch_rows
        self.summary = summary
        self.lake = next((s for s in sinks if s.name == "lake"), None)
        self.periods: set[tuple[str, int]] = set()
        self._pending: dict[tuple[str, int], list[tuple]] = defaultdict(list)
        self._size = 0
        self._done: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._dirs: dict[tuple[str, Any, int], str] = {}

    async def run(self, spans: list[Span], progress: Progress) -> Summary:
        started = time.monotonic()
        for sink in self.sinks:
            await sink.start()
        try:
            await self._read(spans, progress)
            if self.lake is not None:
                await self._seal_lake()
        finally:
            for sink in self.sinks:
                await sink.stop()
        self.summary.seconds = time.monotonic() - started
        return self.summary

    async def _read(self, spans: list[Span], progress: Progress) -> None:
        by_tp = {s.tp: s for s in spans}
        # Aggregates read on to the log end for corrections of the range's windows.
        limit = {s.tp: s.end if s.dataset == AGGREGATES.name and s.messages else s.stop
                 for s in spans}
        active = {tp for tp, s in by_tp.items() if s.start < limit[tp]}
        seen: dict[TopicPartition, set[tuple]] = defaultdict(set)
        if not active:
            return
        consumer = AIOKafkaConsumer(**self.client, group_id=self.group,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign(sorted(active))
            for tp in active:
                consumer.seek(tp, by_tp[tp].start)
            moved = time.monotonic()
            while active:
                batch = await consumer.getmany(*active, timeout_ms=1000)
                for tp, records in batch.items():
                    span = by_tp[tp]
                    for record in records:
                        if record.offset >= limit[tp]:
                            break
                        self._take(span, record, seen[tp], progress)
                for tp in list(active):
                    if await consumer.position(tp) >= limit[tp]:
                        active.discard(tp)
                if batch:
                    moved = time.monotonic()
                elif time.monotonic() - moved > STALL_S:
                    raise ReplayError(f"no record read for {STALL_S:g} s from "
                                      f"{', '.join(f'{t.topic}[{t.partition}]' for t in active)}")
                if self._size >= self.batch_rows:
                    await self._flush(consumer)
            await self._flush(consumer)
        finally:
            await consumer.stop()

    def _take(self, span: Span, record: Any, seen: set[tuple], progress: Progress) -> None:
        in_range = record.offset < span.stop
        try:
            rows = list(ROWS_OF[span.dataset](record.value, span.partition, record.offset))
        except Exception as exc:
            self.summary.undecodable += 1
            log.warning("a record cannot be turned into rows: %s", exc, extra={
                "topic": span.topic, "partition": span.partition, "offset": record.offset})
            rows = []
        if span.dataset == AGGREGATES.name:
            if in_range:
                seen.update(tuple(row[i] for i in _AGG_KEY) for row in rows)
            else:
                rows = [row for row in rows if tuple(row[i] for i in _AGG_KEY) in seen]
                self.summary.followed += len(rows)
        if in_range:
            self.summary.messages[span.dataset] += 1
            progress.advance(1)
            self._done[span.tp] = record.offset + 1
        if rows:
            self._pending[span.dataset, span.partition].extend(rows)
            self._size += len(rows)

    async def _flush(self, consumer: AIOKafkaConsumer) -> None:
        pending, self._pending, self._size = self._pending, defaultdict(list), 0
        for (name, partition), rows in pending.items():
            dataset = DATASETS[name]
            for sink in self.sinks:
                await self._write(sink, Batch(dataset, partition, rows))
            self.summary.rows[name] += len(rows)
            if self.lake is not None:
                self.periods.update((self._lake_dir(name, row), partition) for row in rows)
        offsets = {tp: offset for tp, offset in self._done.items()
                   if self._committed.get(tp) != offset}
        if offsets:
            await consumer.commit(offsets)  # the rows up to here are stored
            self._committed.update(offsets)

    def _lake_dir(self, name: str, row: tuple) -> str:
        dataset = DATASETS[name]
        start = period_start(row[dataset.index(dataset.time)], dataset.period_us)
        path = row[dataset.index(dataset.path_column)] if dataset.path_column else None
        key = (name, path, start)
        found = self._dirs.get(key)
        if found is None:
            found = self._dirs[key] = dataset.lake_dir(row)
        return found

    async def _write(self, sink: Sink, batch: Batch) -> None:
        backoff = Backoff(base=0.5, cap=10.0)
        deadline = time.monotonic() + FULL_WAIT_S
        for attempt in range(WRITE_ATTEMPTS):
            while (reason := sink.full()) is not None:
                if time.monotonic() > deadline:
                    raise ReplayError(f"the {sink.name} sink stayed full: {reason}")
                await asyncio.sleep(0.5)
            try:
                await sink.write(batch)
                return
            except Exception as exc:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise ReplayError(f"the {sink.name} sink failed {WRITE_ATTEMPTS} times to "
                                      f"store {len(batch.rows)} {batch.dataset.name} rows of "
                                      f"partition {batch.partition}: {exc}") from exc
                log.warning("sink %s failed; retrying: %s", sink.name, exc,
                            extra={"sink": sink.name, "dataset": batch.dataset.name})
                await asyncio.sleep(backoff.delay(attempt))

    async def _seal_lake(self) -> None:
        """Wait for every staged part to be uploaded, then seal the periods written."""
        from sinks.lake import PART, SEALED

        lake = self.lake
        assert lake is not None
        deadline = time.monotonic() + FULL_WAIT_S
        while lake.status()["staged_files"]:
            if time.monotonic() > deadline:
                raise ReplayError(f"lake uploads did not finish within {FULL_WAIT_S:g} s: "
                                  f"{lake.status()['upload_error'] or 'still uploading'}")
            await asyncio.sleep(0.2)
        for directory, partition in sorted(self.periods):
            for _attempt in range(3):
                await lake.seal((directory, partition))  # type: ignore[attr-defined]
                names = [key.rsplit("/", 1)[1]
                         for key in await lake.store.list(f"{directory}/")]  # type: ignore
                mine = [n for n in names if n.startswith((f"{PART}{partition}-",
                                                          f"{SEALED}{partition}-"))]
                if len(mine) <= 1:
                    break
            self.summary.periods_sealed += 1


def default_group(app_id: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{app_id}-reprocess-{stamp}"


def describe_range(since_ms: int, until_ms: int | None) -> tuple[str, str]:
    return (format_ts(since_ms * 1000),
            "the log end" if until_ms is None else format_ts(until_ms * 1000))


def remove_staging(staging: Path) -> None:
    """Drop the run's staging directory once nothing is left in it to upload."""
    if staging.exists() and not any(staging.rglob("*.parquet")):
        shutil.rmtree(staging, ignore_errors=True)
