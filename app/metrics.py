"""Prometheus counters of the readings accounting (README: "Accounting"), and a
histogram observed a batch at a time.

Per input topic, in every worker process: ``readings_in == accepted + dead_lettered +
duplicates + late``. A reading is counted in where it is classified (rejections in the
ingest stage, the rest in the per-sensor stage), so the identity holds at any moment.
Rates (dead-lettered, late, duplicate readings per second) are Prometheus' ``rate()``
of these counters; the README's metrics table has the queries.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

disable_created_metrics()

MESSAGES_IN = Counter(
    "sensorstream_messages_in", "Kafka messages read from an input topic", ["topic"])
READINGS_IN = Counter(
    "sensorstream_readings_in", "Readings received (rows, or whole rejected units)", ["topic"])
ACCEPTED = Counter(
    "sensorstream_readings_accepted", "Readings accepted (first time seen)", ["topic"])
DEAD_LETTERED = Counter(
    "sensorstream_readings_dead_lettered", "Readings sent to the dead-letter topic",
    ["topic", "reason"])
DUPLICATES = Counter(
    "sensorstream_readings_duplicate", "Readings dropped as already accepted", ["topic"])
LATE = Counter(
    "sensorstream_readings_late", "Readings sent to the late topic", ["topic", "reason"])
MISSING = Counter(
    "sensorstream_readings_missing", "Accepted readings whose value is null", ["topic"])
WINDOWS_SEALED = Counter(
    "sensorstream_windows_sealed", "Windows sealed and emitted to the aggregates topic",
    ["window"])
HANDOVERS_REFETCHED = Counter(
    "sensorstream_handovers_refetched",
    "Hand-overs the consumer skipped (after a crash or rebalance), read back and applied",
    ["partition"])
HANDOVERS_UNRECOVERABLE = Counter(
    "sensorstream_handovers_unrecoverable",
    "Skipped hand-overs no longer in the by-sensor topic (past its retention)", ["partition"])
INPUT_REFETCHED = Counter(
    "sensorstream_input_refetched",
    "Input messages the consumer skipped (after a crash or rebalance), read back and processed",
    ["topic"])
ANOMALIES = Counter(
    "sensorstream_anomalies", "Anomaly events emitted (cooldown repeats not included)",
    ["detector", "severity"])
STAGE_FAILURES = Counter(
    "sensorstream_stage_failures",
    "Stages stopped by an error that is not about the data (a bug): the worker stops "
    "without committing past the message", ["stage"])
#: Stage -> the error that stopped it in this process (``/ready`` names it).
FAILED_STAGES: dict[str, str] = {}


def stage_failed(stage: str, exc: BaseException) -> None:
    """Count a stage stopped by a bug and remember why, for ``/ready`` until the exit."""
    STAGE_FAILURES.labels(stage).inc()
    FAILED_STAGES[stage] = f"{type(exc).__name__}: {exc}"[:300]


class BulkHistogram(Collector):
    """A histogram of ages observed a whole batch at a time, every value counted.

    prometheus-client's ``Histogram.observe`` costs 0.65-0.9 µs a value (it takes a
    lock per call): 65-90 ms for a sink batch of 100,000 rows. ``observe_ages`` counts
    each bucket with one vectorised pyarrow comparison instead, ~30 ns a row in all
    (``tests/unit/test_observability.py`` measures both), and ``/metrics`` serves the
    counts as a standard histogram (``_bucket``, ``_sum``, ``_count``).
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry | None = REGISTRY,
                 ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._lock = threading.Lock()
        #: label values -> (cumulative count per bound, count, sum in seconds)
        self._series: dict[tuple[str, ...], tuple[list[int], int, float]] = {}
        if registry is not None:
            registry.register(self)

    def observe_ages(self, labels: Sequence[str], times_us: Iterable[int | None],
                     now_us: int) -> int:
        """Observe ``now_us - t`` in seconds for every time ``t`` (µs since the epoch).
        A time in the future counts as 0 s; a missing one is left out. Returns how many
        values were observed."""
        times = pa.array(times_us, type=pa.int64())
        if times.null_count:
            times = times.drop_null()
        n = len(times)
        if not n:
            return 0
        # age <= bound  <=>  t >= now - bound: each bound's count is already cumulative.
        counts = [pc.sum(pc.greater_equal(times, now_us - round(bound * 1_000_000))).as_py()
                  or 0 for bound in self.bounds]
        total_us = n * now_us - pc.sum(times).as_py()
        future = pc.greater(times, now_us)
        if pc.any(future).as_py():  # negative ages count as 0
            total_us += pc.sum(pc.subtract(pc.filter(times, future), now_us)).as_py()
        key = tuple(str(v) for v in labels)
        with self._lock:
            cumulative, count, total = self._series.get(key, ([0] * len(self.bounds), 0, 0.0))
            self._series[key] = ([a + b for a, b in zip(cumulative, counts, strict=True)],
                                 count + n, total + total_us / 1e6)
        return n

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = list(self._series.items())
        for key, (cumulative, count, total) in series:
            buckets = [(floatToGoString(bound), n)
                       for bound, n in zip(self.bounds, cumulative, strict=True)]
            family.add_metric(list(key), [*buckets, ("+Inf", count)], total)
        yield family
