"""The sink machinery without services: rows, deduplication, backoff, the breaker,
acknowledgement only after every sink, and the lake on a local directory (its staging,
uploads that fail and resume, sealing). The services are in tests/integration."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from app.contract import Handover, Reading, Source, decode_batch, encode_batch
from sinks.base import Backoff, Batch, CircuitBreaker, Delivery, Guarded, Sink
from sinks.lake import MARKERS, LakeSink
from sinks.objectstore import FileStore
from sinks.records import (
    AGGREGATES,
    ANOMALIES,
    READINGS,
    deduplicate,
    reading_rows,
    to_table,
)

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z


def reading(i: int, sensor: str = "s1", value: float = 1.0, offset: int = 0) -> tuple:
    return (T0 + i * 1_000_000, sensor, "temperature", value, None, "in", 0, offset)


def test_handover_rows_one_per_metric_nulls_kept():
    handover = decode_batch(encode_batch([(Reading("m1", T0, {"t": 1.5, "h": None},
                                                   {"unit": "C"}), Source("in", 2, 7), 0)]))
    assert isinstance(handover, Handover)
    assert sorted(reading_rows(handover)) == [
        (T0, "m1", "h", None, '{"unit":"C"}', "in", 2, 7),
        (T0, "m1", "t", 1.5, '{"unit":"C"}', "in", 2, 7)]


def test_deduplicate_keeps_the_first_reading_and_the_newest_aggregate():
    rows = [reading(1, value=2.0, offset=5), reading(1, value=1.0, offset=3), reading(0),
            reading(1, sensor="s0", offset=9)]
    kept = deduplicate(READINGS, to_table(READINGS, rows)).to_pylist()
    assert [(r["sensor_id"], r["value"], r["source_offset"]) for r in kept] == [
        ("s0", 1.0, 9), ("s1", 1.0, 0), ("s1", 1.0, 3)]
    window = ("1m", T0, T0 + 60_000_000, "s1", "t", None, 3, 0, *(1.0,) * 7, T0, T0, 100.0,
              False, 0, 1)
    corrected = (*window[:6], 4, *window[7:-1], 8)
    kept = deduplicate(AGGREGATES, to_table(AGGREGATES, [corrected, window])).to_pylist()
    assert [r["count"] for r in kept] == [4]


def test_deduplicate_tells_a_null_metric_from_a_named_one():
    silent = (T0, "s1", None, "silent", "medium", None, "r", None, None, None, 0, False, 0, 1)
    named = (T0, "s1", "t", "silent", "medium", None, "r", None, None, None, 0, False, 0, 2)
    kept = deduplicate(ANOMALIES, to_table(ANOMALIES, [silent, named, silent]))
    assert kept.num_rows == 2


def test_backoff_has_full_jitter_under_a_cap():
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    delays = [backoff.delay(n) for n in range(12) for _ in range(50)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(backoff.delay(0) for _ in range(200)) <= 0.5
    assert max(delays) > 3.0 and min(delays) < 0.1


def test_breaker_opens_after_consecutive_failures_and_waits_the_cooldown():
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown=10.0, clock=lambda: now[0])
    breaker.failure()
    breaker.failure()
    assert not breaker.open and breaker.wait_time() == 0
    breaker.failure()
    assert breaker.open and breaker.wait_time() == 10.0
    now[0] = 7.0
    assert breaker.wait_time() == 3.0
    now[0] = 11.0
    assert breaker.wait_time() == 0  # half-open: one trial
    breaker.failure()
    assert breaker.wait_time() == 10.0  # the trial failed: a new cooldown
    breaker.success()
    assert not breaker.open and breaker.consecutive == 0


class FlakySink(Sink):
    def __init__(self, name: str, failures: int) -> None:
        self.name = name
        self.failures = failures
        self.rows: list[tuple] = []

    async def write(self, batch: Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("down")
        self.rows.extend(batch.rows)


async def test_messages_are_acked_only_once_every_sink_has_their_rows():
    good, flaky = FlakySink("good", 0), FlakySink("flaky", 3)
    guarded = [Guarded(s, CircuitBreaker(100, 1.0), Backoff(base=0.01, cap=0.02))
               for s in (good, flaky)]
    delivery = Delivery(READINGS, guarded, max_rows=10, max_wait=0.05)
    delivery.start()
    acked: list[int] = []
    for i in range(5):
        await delivery.add(0, [reading(i)], lambda i=i: acked.append(i))
    assert acked == []
    saw_degraded = False
    for _ in range(200):
        saw_degraded = saw_degraded or "flaky" in delivery.degraded()
        if acked:
            break
        await asyncio.sleep(0.005)
    assert acked == [0, 1, 2, 3, 4]
    assert saw_degraded and delivery.degraded() == {}
    assert len(good.rows) == len(flaky.rows) == 5  # the good sink was not written twice
    await delivery.stop()


async def test_add_waits_while_a_full_batch_is_in_flight():
    class Slow(Sink):
        name = "slow"
        release = asyncio.Event()

        async def write(self, batch: Batch) -> None:
            await self.release.wait()

    delivery = Delivery(READINGS, [Guarded(Slow(), CircuitBreaker(5, 1), Backoff())],
                        max_rows=2, max_wait=10)
    delivery.start()
    await delivery.add(0, [reading(0), reading(1)], None)  # full: written at once
    await asyncio.sleep(0.01)
    await delivery.add(0, [reading(2), reading(3)], None)  # fills the next batch
    blocked = asyncio.create_task(delivery.add(0, [reading(4)], None))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # backpressure: two batches at most
    Slow.release.set()
    await asyncio.wait_for(blocked, 1)
    await delivery.stop()


class BrokenStore(FileStore):
    """A local lake whose uploads fail while ``down``."""

    down = False

    async def put_file(self, key, path, md5):
        if self.down:
            raise ConnectionError("the store is down")
        await super().put_file(key, path, md5)


def lake(tmp_path: Path, store: FileStore, **kw) -> LakeSink:
    options = {"max_bytes": 1 << 30, "alarm_age": 60, "concurrency": 2, "seal_idle": 0.3,
               "lateness": 600, "backoff": Backoff(base=0.01, cap=0.05)}
    return LakeSink(store, tmp_path / "staging", **{**options, **kw})


async def until(check, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


def sealed_rows(root: Path, prefix: str = "raw") -> list[dict]:
    files = sorted((root / prefix).rglob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


async def test_lake_stages_uploads_and_seals_each_reading_once(tmp_path):
    store = FileStore(tmp_path / "lake")
    sink = lake(tmp_path, store)
    await sink.start()
    rows = [reading(i) for i in range(100)]
    await sink.write(Batch(READINGS, 0, rows[:60]))
    await sink.write(Batch(READINGS, 0, rows[40:]))  # 20 delivered twice
    staged = list((tmp_path / "staging" / "pending").rglob("*.parquet"))
    assert staged, "a write returns once its rows are on disk"
    await until(lambda: not sink._open and not sink._staged)
    names = [p.name for p in (tmp_path / "lake" / "raw").rglob("*.parquet")]
    assert names and all(n.startswith("sealed-p0-") for n in names)
    got = sealed_rows(tmp_path / "lake")
    assert sorted(r["time"].timestamp() for r in got) == sorted(
        (T0 + i * 1_000_000) / 1e6 for i in range(100))
    assert not [p for p in (tmp_path / "lake").rglob(f"{MARKERS}*") if p.is_file()]
    await sink.stop()


async def test_lake_keeps_staged_files_while_the_store_is_down(tmp_path):
    store = BrokenStore(tmp_path / "lake")
    store.down = True
    sink = lake(tmp_path, store, max_bytes=1)
    await sink.start()
    await sink.write(Batch(READINGS, 0, [reading(i) for i in range(10)]))
    staged = list((tmp_path / "staging" / "pending").rglob("*.parquet"))
    await asyncio.sleep(0.3)  # uploads fail and are retried meanwhile
    assert staged and all(p.exists() for p in staged), "an unconfirmed file was deleted"
    assert sink.full() is not None and "not yet uploaded" in sink.full()
    await sink.stop()

    store.down = False  # a restart finds the staged files and uploads them
    sink = lake(tmp_path, store)
    await sink.start()
    await until(lambda: not sink._staged and not sink._open)
    assert not any(p.exists() for p in staged)
    assert len(sealed_rows(tmp_path / "lake")) == 10
    await sink.stop()


async def test_a_crash_between_seal_upload_and_delete_leaves_copies_the_next_seal_removes(
        tmp_path):
    store = FileStore(tmp_path / "lake")
    sink = lake(tmp_path, store, seal_idle=3600)
    await sink.start()
    await sink.write(Batch(READINGS, 1, [reading(i) for i in range(5)]))
    await until(lambda: not sink._staged)
    original_delete = store.delete
    store.delete = _failing  # the merged file is stored, deleting its inputs fails
    period = next(iter(sink._open))
    with pytest.raises(ConnectionError):
        await sink.seal(period)
    assert len(sealed_rows(tmp_path / "lake")) == 10  # twice, never zero times
    store.delete = original_delete
    assert await sink.seal(period) == 5
    assert len(sealed_rows(tmp_path / "lake")) == 5
    await sink.stop()


async def _failing(_keys):
    raise ConnectionError("gone")
