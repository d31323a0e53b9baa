"""Metrics and logs without services: the batch histogram counts exactly what
prometheus-client's own histogram counts, faster; the table key count is exact; log
lines about a message carry its topic, partition and offset, and no secret."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from types import SimpleNamespace

import orjson
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from rocksdict import Rdict

from app.logs import JsonFormatter, Throttle
from app.metrics import BulkHistogram
from sinks.base import EVENT_TO_SINK, Backoff, Batch, CircuitBreaker, Delivery, Guarded, Sink
from sinks.records import AGGREGATES, READINGS

BUCKETS = (0.1, 0.5, 1, 10, 60, 3600)
NOW = 1_800_000_000_000_000


def ages_us(n: int, seed: int = 1) -> list[int | None]:
    rng = random.Random(seed)
    times: list[int | None] = [NOW - rng.randint(-2_000_000, 7_200_000_000) for _ in range(n)]
    times += [NOW - 1_000_000, NOW - 100_000, NOW, None]  # on the bounds, now, missing
    return times


def reference(times: list[int | None], registry: CollectorRegistry) -> Histogram:
    histogram = Histogram("ref_seconds", "per row", buckets=BUCKETS, registry=registry)
    for t in times:
        if t is not None:
            histogram.observe(max(0, NOW - t) / 1e6)
    return histogram


def samples(registry: CollectorRegistry, name: str) -> dict[tuple, float]:
    found = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.startswith(name):
                found[(s.name[len(name):], s.labels.get("le"))] = s.value
    return found


def test_bulk_histogram_counts_exactly_what_observe_counts():
    times = ages_us(5_000)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("bulk_seconds", "per batch", ["sink"], BUCKETS, registry=ours)
    assert bulk.observe_ages(["pg"], times[:3_000], NOW) == 3_000
    assert bulk.observe_ages(["pg"], times[3_000:], NOW) == len(times) - 3_000 - 1
    reference(times, theirs)
    got, want = samples(ours, "bulk_seconds"), samples(theirs, "ref_seconds")
    assert {k: v for k, v in got.items() if k[0] != "_sum"} == {
        k: v for k, v in want.items() if k[0] in ("_bucket", "_count")}
    assert abs(got[("_sum", None)] - want[("_sum", None)]) < 1e-6 * want[("_sum", None)]
    text = generate_latest(ours).decode()
    assert 'bulk_seconds_bucket{le="0.1",sink="pg"}' in text
    assert "# TYPE bulk_seconds histogram" in text


def test_bulk_histogram_is_much_cheaper_than_one_observe_per_row():
    """The sink observes every row of a batch: 100,000 rows take ~90 ms through
    ``Histogram.observe``; the bulk count must be far below that."""
    times = [NOW - i * 37 for i in range(100_000)]
    registry = CollectorRegistry()
    bulk = BulkHistogram("cost_seconds", "x", ["sink"], EVENT_TO_SINK.bounds,
                         registry=registry)
    histogram = Histogram("cost_ref_seconds", "x", buckets=EVENT_TO_SINK.bounds,
                          registry=registry)

    def per_row() -> None:
        for t in times:
            histogram.observe((NOW - t) / 1e6)

    bulk_s = best_of(3, lambda: bulk.observe_ages(["pg"], times, NOW))
    per_row_s = best_of(3, per_row)
    print(f"100,000 rows: bulk {bulk_s * 1e3:.1f} ms, observe per row {per_row_s * 1e3:.1f} ms")
    assert bulk_s * 4 < per_row_s


def best_of(n: int, run) -> float:
    """The shortest of ``n`` runs (the machine is shared: the others are noise)."""
    best = float("inf")
    for _ in range(n):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best


class FlakySink(Sink):
    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.stored: list[Batch] = []

    async def write(self, batch: Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("cannot reach postgresql://app:hunter2@db:5432/x")
        self.stored.append(batch)


async def test_a_sink_failure_is_logged_with_topic_partition_and_offsets(caplog):
    sink = FlakySink(failures=2)
    delivery = Delivery(AGGREGATES, [Guarded(sink, CircuitBreaker(100, 1.0),
                                             Backoff(base=0.01, cap=0.02))],
                        max_rows=100, max_wait=0.05)
    end = NOW - 5_000_000
    row = ("1m", end - 60_000_000, end, "s1", "t", None, 3, 0, *(1.0,) * 7, end, end, 100.0,
           False, 2, 40)
    before = _count(EVENT_TO_SINK, ("flaky", "aggregates"))
    acked: list[int] = []
    delivery.start()
    with caplog.at_level(logging.INFO, logger="sinks.base"):
        await delivery.add(2, [row], lambda: acked.append(40), "agg-topic", (40, 40))
        await delivery.add(2, [row], lambda: acked.append(41), "agg-topic", (41, 43))
        for _ in range(400):
            if acked:
                break
            await asyncio.sleep(0.005)
    await delivery.stop()
    assert acked == [40, 41] and len(sink.stored) == 1
    failed = next(r for r in caplog.records if "failed" in r.getMessage())
    recovered = next(r for r in caplog.records if "recovered" in r.getMessage())
    for record in (failed, recovered):
        line = orjson.loads(JsonFormatter().format(record))
        assert (line["topic"], line["partition"], line["offset"], line["last_offset"]) == (
            "agg-topic", 2, 40, 43), line
        assert line["sink"] == "flaky" and line["dataset"] == "aggregates"
    failed_line = JsonFormatter().format(failed)
    assert "hunter2" not in failed_line and "postgresql://app:***@db" in failed_line
    # Stored 2 rows whose event time (the window's end) was 5 s before: le=5 and above.
    assert _count(EVENT_TO_SINK, ("flaky", "aggregates")) - before == 2


def _count(histogram: BulkHistogram, labels: tuple[str, ...]) -> int:
    for family in histogram.collect():
        for s in family.samples:
            if s.name.endswith("_count") and tuple(s.labels.values()) == labels:
                return int(s.value)
    return 0


def test_event_time_is_the_readings_time_and_the_windows_end():
    assert READINGS.columns[READINGS.event_time_index] == "time"
    assert AGGREGATES.columns[AGGREGATES.event_time_index] == "window_end"


def test_extra_context_is_masked_too():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "sink degraded", (), None)
    record.sinks = {"postgres": "failing: cannot connect to postgresql://u:s3cret@h/db"}
    record.config = {"aws_secret_access_key": "AKIAxyz", "region": "eu", "token_name": "ci"}
    line = JsonFormatter().format(record)
    assert "s3cret" not in line and "AKIAxyz" not in line
    entry = orjson.loads(line)
    assert entry["sinks"]["postgres"].endswith("postgresql://u:***@h/db")
    assert entry["config"] == {"aws_secret_access_key": "***", "region": "eu",
                               "token_name": "ci"}


def test_throttle_lets_one_line_per_key_through_and_counts_the_rest():
    clock = [0.0]
    throttle = Throttle(10.0, clock=lambda: clock[0])
    assert throttle.allow("a") == 0
    assert throttle.allow("a") is None and throttle.allow("a") is None
    assert throttle.allow("b") == 0
    clock[0] = 10.0
    assert throttle.allow("a") == 2 and throttle.allow("a") is None


async def test_table_keys_are_counted_exactly_a_step_at_a_time(tmp_path, monkeypatch):
    """A delete-heavy store: RocksDB's ``estimate-num-keys`` is off by a third here,
    the count is exact."""
    from web import metrics

    monkeypatch.setattr(metrics, "COUNT_STEP", 1_000)
    db = Rdict(str(tmp_path / "state-0.db"))
    try:
        for i in range(10_000):
            db[f"k{i:05}".encode()] = b"v" * 40
        for i in range(5_000):
            db[f"k{i:05}".encode()] = b"w" * 40
        for i in range(0, 10_000, 4):
            del db[f"k{i:05}".encode()]
        db.flush()
        estimate = db.property_int_value("rocksdb.estimate-num-keys")
        table = SimpleNamespace(data=SimpleNamespace(_dbs={0: db}))
        assert await metrics.count_keys(table, 0) == 7_500
        assert estimate != 7_500  # why the estimate is not used
        assert await metrics.count_keys(table, 1) is None
    finally:
        db.close()
