"""The common sink machinery: batching, retries, a circuit breaker, backpressure, acks.

A concrete sink only says how to store a batch durably and idempotently
(``Sink.write``). ``Delivery`` collects the rows of one topic's messages into
batches (by size and time, bounded), writes each batch to every enabled sink, and
only then acknowledges the messages, so their offsets are committed only once every
sink has the rows (at-least-once; re-delivery is harmless because writes are
idempotent). A write that fails is retried, forever, with exponential backoff and
full jitter: a sink that is down must not lose a reading, so it holds the stream
instead. While any sink is failing, or cannot take more (``Sink.full``), the
delivery reports itself degraded and the worker pauses its partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from app.metrics import BulkHistogram
from sinks.records import Dataset

log = logging.getLogger(__name__)

BATCH_ROWS = Histogram(
    "sensorstream_sink_batch_rows", "Rows per batch written to a sink", ["sink", "dataset"],
    buckets=(10, 100, 1_000, 5_000, 10_000, 20_000, 50_000, 100_000))
WRITE_SECONDS = Histogram(
    "sensorstream_sink_write_seconds", "Time to write one batch durably (successful attempts)",
    ["sink", "dataset"], buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ROWS_WRITTEN = Counter(
    "sensorstream_sink_rows", "Rows handed to a sink and stored durably (re-deliveries included)",
    ["sink", "dataset"])
ERRORS = Counter("sensorstream_sink_errors", "Failed batch writes", ["sink", "dataset"])
RETRIES = Counter("sensorstream_sink_retries", "Batch writes retried after a failure",
                  ["sink", "dataset"])
SINK_UP = Gauge("sensorstream_sink_up", "1 while the sink writes, 0 while it is failing "
                "(or full)", ["sink"])
BREAKER_OPEN = Gauge("sensorstream_sink_circuit_open", "1 while the sink's circuit breaker "
                     "is open (writes wait for the cooldown)", ["sink"])
PAUSED_SECONDS = Counter("sensorstream_sink_paused_seconds",
                         "Time the worker's partitions were paused for a degraded sink")
PAUSED = Gauge("sensorstream_sink_paused", "1 while the worker's partitions are paused "
               "because a sink is degraded")
EVENT_TO_SINK = BulkHistogram(
    "sensorstream_event_to_sink_seconds",
    "From a row's event time (a reading's time, a window's end) to the moment the sink "
    "stored its batch", ["sink", "dataset"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600,
             86400))


@dataclass(frozen=True)
class Batch:
    """Rows of one dataset from one source partition (a sink may lay them out by it);
    ``topic`` and the ``offsets`` (first, last) of the messages they came from, when
    known, say where they came from in the logs."""

    dataset: Dataset
    partition: int
    rows: list[tuple]
    topic: str | None = None
    offsets: tuple[int, int] | None = None

    def where(self) -> dict[str, Any]:
        """Log context: ``topic``, ``partition``, ``offset`` (the first), ``last_offset``."""
        first, last = self.offsets if self.offsets is not None else (None, None)
        return {"dataset": self.dataset.name, "topic": self.topic,
                "partition": self.partition, "offset": first, "last_offset": last}


class Sink(ABC):
    """A store of rows. ``write`` returns only once the batch is durable, and writing the
    same rows again changes nothing."""

    name: str = "sink"

    async def start(self) -> None:  # noqa: B027 - a sink may need no set-up
        """Connect, prepare (migrations, directories); raise when it cannot (retried)."""

    async def stop(self) -> None:  # noqa: B027
        """Release connections; pending background work stays safe for the next start."""

    @abstractmethod
    async def write(self, batch: Batch) -> None:
        """Store ``batch`` durably and idempotently; raise on failure (it is retried)."""

    def full(self) -> str | None:
        """Why the sink cannot take more now (backpressure), or None."""
        return None

    def status(self) -> dict[str, Any]:
        """Extra facts for ``/ready``."""
        return {}


@dataclass
class Backoff:
    """Exponential backoff with full jitter: wait uniformly in [0, min(cap, base * 2^n))."""

    base: float = 0.2
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.cap, self.base * 2 ** min(attempt, 30)))


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; while open, callers wait out the
    ``cooldown`` before one trial (half-open); a success closes it."""

    def __init__(self, failures: int, cooldown: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown = cooldown
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None

    @property
    def open(self) -> bool:
        return self.opened_at is not None

    def wait_time(self) -> float:
        """Seconds until a trial may run (0 when closed or the cooldown is over)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown - self.clock())

    def failure(self) -> None:
        self.consecutive += 1
        if self.consecutive >= self.threshold:
            self.opened_at = self.clock()  # (re)opened: a failed trial restarts the cooldown

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None


class Guarded:
    """A sink with its retry policy, breaker and health, as ``Delivery`` uses it."""

    def __init__(self, sink: Sink, breaker: CircuitBreaker, backoff: Backoff) -> None:
        self.sink = sink
        self.breaker = breaker
        self.backoff = backoff
        self.failing_since: float | None = None
        self.last_error: str | None = None
        SINK_UP.labels(sink.name).set(1)
        BREAKER_OPEN.labels(sink.name).set(0)

    @property
    def name(self) -> str:
        return self.sink.name

    def degraded(self) -> str | None:
        if self.failing_since is not None:
            return (f"failing for {time.monotonic() - self.failing_since:.0f} s: "
                    f"{self.last_error}")
        return self.sink.full()

    async def write(self, batch: Batch, stopping: Callable[[], bool]) -> bool:
        """Write until it succeeds; False only when the worker stops first."""
        attempt = 0
        labels = (self.name, batch.dataset.name)
        while True:
            while (reason := self.sink.full()) is not None:
                SINK_UP.labels(self.name).set(0)
                if stopping():
                    return False
                log.debug("sink %s is full: %s", self.name, reason)
                await asyncio.sleep(0.5)
            wait = self.breaker.wait_time()
            if wait:
                await asyncio.sleep(min(wait, 1.0))
                if stopping():
                    return False
                continue
            started = time.monotonic()
            try:
                await self.sink.write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ERRORS.labels(*labels).inc()
                self.breaker.failure()
                BREAKER_OPEN.labels(self.name).set(int(self.breaker.open))
                SINK_UP.labels(self.name).set(0)
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning("sink %s failed; retrying until it recovers: %s", self.name,
                                self.last_error, extra={"sink": self.name, **batch.where()})
                if stopping():
                    return False
                RETRIES.labels(*labels).inc()
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1
                continue
            EVENT_TO_SINK.observe_ages(labels, event_times(batch), now_us())
            WRITE_SECONDS.labels(*labels).observe(time.monotonic() - started)
            BATCH_ROWS.labels(*labels).observe(len(batch.rows))
            ROWS_WRITTEN.labels(*labels).inc(len(batch.rows))
            self.breaker.success()
            BREAKER_OPEN.labels(self.name).set(0)
            SINK_UP.labels(self.name).set(1)
            if self.failing_since is not None:
                log.info("sink %s recovered after %.1f s", self.name,
                         time.monotonic() - self.failing_since,
                         extra={"sink": self.name, **batch.where()})
                self.failing_since = None
                self.last_error = None
            return True


def event_times(batch: Batch) -> list[int | None]:
    """The event time (µs) of every row of ``batch``."""
    at = batch.dataset.event_time_index
    return [row[at] for row in batch.rows]


def now_us() -> int:
    return time.time_ns() // 1000


Ack = Callable[[], Any]
Source = tuple[str | None, tuple[int, int]]  #: a topic, and the (first, last) offsets


class Delivery:
    """Batches one dataset's rows and writes them to every sink before acknowledging.

    ``add`` takes the rows of one message and its ack. A batch is written when it
    holds ``max_rows`` rows or its oldest row waited ``max_wait`` seconds. One batch
    is written at a time while the next fills; when the next is full too, ``add``
    waits, which holds the stream (and Faust stops fetching once its buffer fills).
    """

    def __init__(self, dataset: Dataset, sinks: Sequence[Guarded], max_rows: int,
                 max_wait: float) -> None:
        self.dataset = dataset
        self.sinks = list(sinks)
        self.max_rows = max_rows
        self.max_wait = max_wait
        self._rows: dict[int, list[tuple]] = {}
        #: Per partition: the source topic and the (first, last) offsets of the batch.
        self._sources: dict[int, Source] = {}
        self._size = 0
        self._acks: list[Ack] = []
        self._oldest: float | None = None
        self._kick = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, flush: bool = True) -> None:
        """Write what is pending (unless told not to), then stop."""
        if flush and self._size:
            self._kick.set()
            await self._idle_and_empty()
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _idle_and_empty(self) -> None:
        while self._size and not self._stopping:
            self._kick.set()
            await asyncio.sleep(0.05)
        await self._idle.wait()

    async def add(self, partition: int, rows: list[tuple], ack: Ack | None,
                  topic: str | None = None, offsets: tuple[int, int] | None = None,
                  ) -> None:
        """Add the rows of the messages at ``offsets`` (first, last) of ``topic`` and
        ``partition``; the topic and offsets only tell the logs where a batch came from."""
        while self._size >= self.max_rows and not self._idle.is_set():
            self._room.clear()
            await self._room.wait()  # backpressure: the batch in flight must finish first
        if rows:
            self._rows.setdefault(partition, []).extend(rows)
            self._size += len(rows)
        if offsets is not None:
            known = self._sources.get(partition)
            if known is not None:
                offsets = min(offsets[0], known[1][0]), max(offsets[1], known[1][1])
            self._sources[partition] = (topic, offsets)
        if ack is not None:
            self._acks.append(ack)
        if self._oldest is None:
            self._oldest = time.monotonic()
            self._kick.set()  # the writer starts this batch's clock
        elif self._size >= self.max_rows:
            self._kick.set()

    def degraded(self) -> dict[str, str]:
        return {g.name: reason for g in self.sinks if (reason := g.degraded()) is not None}

    async def _run(self) -> None:
        while not self._stopping:
            if self._oldest is None:
                self._kick.clear()
                await self._kick.wait()
                continue
            left = self._oldest + self.max_wait - time.monotonic()
            if left > 0 and self._size < self.max_rows:
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), left)
                continue
            rows, acks, sources = self._rows, self._acks, self._sources
            self._rows, self._acks, self._size, self._oldest = {}, [], 0, None
            self._sources = {}
            self._idle.clear()
            try:
                if await self._write_all(rows, sources):
                    for ack in acks:
                        ack()
            finally:
                self._idle.set()
                self._room.set()

    async def _write_all(self, rows: dict[int, list[tuple]],
                         sources: dict[int, Source]) -> bool:
        def stopping() -> bool:
            return self._stopping

        for partition, part_rows in rows.items():
            topic, offsets = sources.get(partition, (None, None))
            batch = Batch(self.dataset, partition, part_rows, topic, offsets)
            results = await asyncio.gather(*(g.write(batch, stopping) for g in self.sinks))
            if not all(results):
                return False
        return True

