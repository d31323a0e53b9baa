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


# -- rows a sink refuses for their content (issue 18) ------------------------------------


def test_postgres_tells_content_errors_from_outages_by_their_class():
    import asyncpg
    from asyncpg.exceptions import _base as asyncpg_base

    from sinks.base import ContentError
    from sinks.postgres import PostgresSink

    sink = PostgresSink("postgresql://unused", "s", {}, 1, 0)
    content = [
        asyncpg.UntranslatableCharacterError("unsupported Unicode escape sequence"),
        asyncpg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8"'),
        asyncpg.NumericValueOutOfRangeError("value out of range"),
        asyncpg.DatetimeFieldOverflowError("timestamp out of range"),
        asyncpg.InvalidTextRepresentationError("invalid input syntax for type json"),
        asyncpg.NotNullViolationError('null value in column "sensor_id"'),
        asyncpg.ProgramLimitExceededError("index row size exceeds maximum"),
        ContentError("OverflowError: value out of int64 range"),
    ]
    outages = [
        asyncpg.CheckViolationError("no partition of relation found for row"),
        asyncpg.PostgresConnectionError("connection lost"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.AdminShutdownError("terminating connection"),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.UndefinedTableError('relation "readings" does not exist'),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        OSError(28, "No space left on device"),
        # Python errors not raised by the encoding of a row (the sink wraps those) are
        # bugs: retried and visible, never a reason to drop a row.
        asyncpg_base.DataError("invalid input for query argument"),
        ValueError("a bug"),
        AssertionError("the PostgreSQL sink is not started"),
    ]
    assert [e for e in content if not sink.refuses(e)] == []
    assert [e for e in outages if sink.refuses(e)] == []


@pytest.mark.parametrize(("dataset", "row"), [
    (READINGS, (-10**18, "s1", "t", 1.0, None, "in", 0, 1)),  # year -29719: no directory
    (READINGS, (10**23, "s1", "t", 1.0, None, "in", 0, 1)),  # past the platform's time_t
    (READINGS, (T0, "s1", "t", "warm", None, "in", 0, 1)),  # not a double
    (READINGS, (T0, "s\ud800", "t", 1.0, None, "in", 0, 1)),  # not UTF-8
    (AGGREGATES, ("1m", T0, T0 + 60_000_000, "s1", "t", None, 2**64, 0, *(1.0,) * 7, T0,
                  T0, 100.0, False, 0, 1)),  # count past int64
    (ANOMALIES, (T0, None, "t", "zscore", "high", 9.0, "r", None, None, None, 0, False, 0,
                 1)),  # no sensor: the column is not nullable
])
async def test_the_lake_refuses_rows_it_cannot_hold_before_writing_anything(
        tmp_path, dataset, row):
    sink = lake(tmp_path, FileStore(tmp_path / "lake"))
    await sink.start()
    good = reading(0) if dataset is READINGS else None
    rows = [good, row] if good else [row]
    with pytest.raises(Exception) as caught:
        await sink.write(Batch(dataset, 0, rows))
    assert sink.refuses(caught.value), caught.value
    assert not list((tmp_path / "staging" / "pending").rglob("*.parquet*"))
    assert not sink._staged
    await sink.stop()


async def test_a_lake_write_failing_part_way_for_the_disk_is_an_outage_and_leaves_nothing(
        tmp_path, monkeypatch):
    import sinks.lake as lake_mod

    sink = lake(tmp_path, FileStore(tmp_path / "lake"))
    await sink.start()
    real = lake_mod.write_parquet
    calls = []

    def second_fails(table, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(table, path)

    monkeypatch.setattr(lake_mod, "write_parquet", second_fails)
    two_hours = [reading(0), reading(3600)]  # two directories: two part files
    with pytest.raises(OSError) as caught:
        await sink.write(Batch(READINGS, 0, two_hours))
    assert not sink.refuses(caught.value)
    assert len(calls) == 2
    assert not list((tmp_path / "staging" / "pending").rglob("*.parquet*")), (
        "the first part stayed: a retry would store its rows twice")
    monkeypatch.setattr(lake_mod, "write_parquet", real)
    await sink.write(Batch(READINGS, 0, two_hours))
    assert len(list((tmp_path / "staging" / "pending").rglob("*.parquet"))) == 2
    await sink.stop()


class Picky(Sink):
    """Refuses (for content) any batch holding a row whose value is in ``bad``; fails
    like an outage ``outages`` times first."""

    def __init__(self, name: str, bad: set[float], outages: int = 0) -> None:
        self.name = name
        self.bad = bad
        self.outages = outages
        self.rows: list[tuple] = []
        self.attempts = 0

    async def write(self, batch: Batch) -> None:
        from sinks.base import ContentError

        self.attempts += 1
        if self.outages:
            self.outages -= 1
            raise ConnectionError("down")
        refused = [row for row in batch.rows if row[3] in self.bad]
        if refused:
            raise ContentError(f"cannot hold {refused[0][3]}")
        self.rows.extend(batch.rows)


async def test_refused_rows_are_isolated_dead_lettered_once_and_acked_after():
    bad = {7.0, 8.0, 30.0}
    picky, lenient = Picky("picky", bad, outages=2), Picky("lenient", set())
    guarded = [Guarded(s, CircuitBreaker(3, 0.05), Backoff(base=0.01, cap=0.02))
               for s in (picky, lenient)]
    events: list[tuple] = []

    async def dead_letter(refused):
        events.append(("dead-lettered", sorted((r.sink, r.row[3]) for r in refused)))

    delivery = Delivery(READINGS, guarded, max_rows=40, max_wait=0.05,
                        dead_letter=dead_letter)
    delivery.start()
    rows = [reading(i, value=float(i), offset=i) for i in range(40)]
    for i in range(0, 40, 4):  # ten messages of four rows
        await delivery.add(0, rows[i:i + 4], lambda i=i: events.append(("ack", i)), "in",
                           (i, i + 3))
    await until(lambda: len(events) == 11)
    assert events[0] == ("dead-lettered", [("picky", 7.0), ("picky", 8.0), ("picky", 30.0)])
    assert events[1:] == [("ack", i) for i in range(0, 40, 4)]  # only after
    assert picky.rows == [r for r in rows if r[3] not in bad]  # each once, in order
    assert lenient.rows == rows  # the other sink stores what it can
    assert delivery.degraded() == {}
    assert guarded[0].breaker.consecutive == 0 and not guarded[0].breaker.open
    # 2 outages retried, then the halving: far fewer writes than one per row
    assert picky.attempts < 30, picky.attempts
    await delivery.stop()


async def test_no_ack_while_the_dead_letters_cannot_be_sent():
    picky = Picky("picky", {1.0})
    failures = [2]
    sent: list[float] = []
    acked: list[int] = []

    async def dead_letter(refused):
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("broker down")
        sent.extend(r.row[3] for r in refused)

    delivery = Delivery(READINGS, [Guarded(picky, CircuitBreaker(5, 1), Backoff())],
                        max_rows=3, max_wait=0.01, dead_letter=dead_letter)
    delivery.start()
    await delivery.add(0, [reading(i, value=float(i)) for i in range(3)],
                       lambda: acked.append(len(sent)))
    await until(lambda: acked, deadline=20)
    assert sent == [1.0] and acked == [1] and failures == [0]
    await delivery.stop()


def test_a_refused_rows_dead_letter_record_always_serialises_with_its_lineage():
    import orjson

    from sinks.base import Refusal, refusal_record

    row = (T0, "s\x00\ud800", "temperature", float("nan"), '{"note":"bad\\u0000byte"}',
           "in-topic", 2, 41)
    key, value, headers = refusal_record(Refusal(
        "postgres", Batch(READINGS, 1, [row], "handovers", (5, 9)),
        "UntranslatableCharacterError: unsupported Unicode escape sequence\ud800"))
    record = orjson.loads(value)
    assert record["reason"] == "sink_refused" and record["sink"] == "postgres"
    assert record["dataset"] == "readings"
    assert record["error"].startswith("UntranslatableCharacterError: unsupported")
    assert "postgres sink refused" in record["message"]
    assert record["source"]["topic"] == "in-topic"
    assert (record["source"]["partition"], record["source"]["offset"]) == (2, 41)
    original = orjson.loads(record["original"])
    assert original["sensor_id"] == "s\x00\\ud800"
    assert original["time"] == T0 and original["value"] == "nan"
    assert original["attributes"] == '{"note":"bad\\u0000byte"}'
    assert record["original_encoding"] == "utf-8"
    assert dict(headers)["sensorstream-sink"] == b"postgres"
    assert dict(headers)["sensorstream-reason"] == b"sink_refused"
    assert key == b"s\x00?"

    window = ("1m", T0, T0 + 60_000_000, "s1", "t", None, 2**64, 0, *(1.0,) * 7, T0, T0,
              100.0, False, 3, 12)
    _key, value, _headers = refusal_record(Refusal(
        "lake", Batch(AGGREGATES, 3, [window], "aggregates-topic"), "OverflowError: x" * 100))
    record = orjson.loads(value)
    assert record["source"] == {"topic": "aggregates-topic", "partition": 3, "offset": 12,
                                "timestamp_ms": None}
    assert len(record["error"]) == 500
    assert '"count": 18446744073709551616' in record["original"]


def test_messages_no_rows_can_be_made_of_are_rejected_not_raised():
    import orjson

    from sinks.base import readable_rows
    from sinks.records import ROWS_OF

    for dataset, value in [(AGGREGATES, b"not json"), (AGGREGATES, b'{"window": "1m"}'),
                           (ANOMALIES, b'{"ts": 1700000000, "sensor_id": "s1"}'),
                           (ANOMALIES, b"[1, 2]")]:
        rows, rejected = readable_rows(dataset, ROWS_OF[dataset.name], value, 2, 9)
        assert rows == [] and len(rejected) == 1, value
        assert rejected[0].reason == "sink_unreadable" and rejected[0].index is None
        assert f"no {dataset.name} rows can be made of this message" in rejected[0].message

    # A hand-over that decodes, with one reading whose attribute nests 300 arrays deep:
    # no JSON encoder writes it back (orjson stops at 254).
    deep = b"[" * 300 + b"]" * 300
    value = orjson.dumps({"rows": [[f"s{i}", T0, {"t": 1.0}, {"x": i}, "in", 0, i, 0]
                                   for i in range(3)], "wm": {}})
    value = value.replace(b'{"x":1}', b'{"x":' + deep + b"}")
    rows, rejected = readable_rows(READINGS, ROWS_OF[READINGS.name], value, 0, 5)
    assert [row[1] for row in rows] == ["s0", "s2"]  # the other readings are kept
    assert [(r.index, r.sensor_id) for r in rejected] == [(1, "s1")]
