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

A write can also fail for what the rows hold, not for the store's health: a value the
store refuses (``Sink.refuses`` tells the two apart by the error's class). Retrying
that would stall the stream for ever, so the batch is split in halves, recursively,
until every good row is stored and each refused row is alone; a refused row goes to
the dead-letter topic (reason ``sink_refused``, with the store's error) and the
messages are acknowledged as usual. A refusal never makes a sink degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from app.contract import Handover, Rejection, dead_letter, decode_batch
from app.contract import Source as Lineage
from app.logs import Throttle
from app.metrics import BulkHistogram
from sinks.records import READINGS, Dataset, reading_rows

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
DEAD_LETTERED = Counter(
    "sensorstream_sink_rows_dead_lettered",
    "Rows a sink refused for their content, written to the dead-letter topic instead",
    ["sink", "dataset"])
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

    def refuses(self, exc: BaseException) -> bool:
        """Whether ``exc`` from ``write`` is about the rows' content (retrying cannot help:
        the rows are isolated and dead-lettered) rather than the store's health (an
        outage: retried). A sink says so by raising ``ContentError``; a store's own
        error classes may say it too (a sink overrides this)."""
        return isinstance(exc, ContentError)


class ContentError(Exception):
    """A sink cannot store these rows because of what they hold (a value its format or
    column type cannot carry), as opposed to an outage."""


#: The reason code of a row a sink refused, in the dead-letter record and its headers.
SINK_REFUSED = "sink_refused"
#: The reason code of a message of the sink stage's topics no rows can be made of.
SINK_UNREADABLE = "sink_unreadable"
#: Longest store error kept in a dead-letter record and a log line.
ERROR_CHARS = 500
#: What making rows of a message raises when the message is not what the stage reads
#: (not JSON, a field missing or of the wrong type, a value no encoder carries).
UNREADABLE = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


@dataclass(frozen=True)
class Refusal:
    """One row a sink refused for its content, alone, with the store's error."""

    sink: str
    batch: Batch  #: the one-row batch the sink refused
    error: str

    @property
    def row(self) -> tuple:
        return self.batch.rows[0]


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

    async def write(self, batch: Batch, stopping: Callable[[], bool]) -> list[Refusal] | None:
        """Store ``batch``; None only when the worker stops first.

        An outage is retried until the sink recovers. Rows the sink refuses for their
        content are isolated by splitting the batch in halves, written in order (so the
        copy of a key that wins is the same as in one write), and returned, each alone.
        """
        refused: list[Refusal] = []
        pending = [batch]
        while pending:
            part = pending.pop()
            error = await self._write_until_stored(part, stopping)
            if error is _STOPPED:
                return None
            if error is None:
                continue
            if len(part.rows) == 1:
                refused.append(Refusal(self.name, part, str(error)))
                continue
            half = len(part.rows) // 2
            pending += [replace(part, rows=part.rows[half:]),
                        replace(part, rows=part.rows[:half])]
            log.debug("sink %s refused a batch for its content: splitting it", self.name,
                      extra={"sink": self.name, "rows": len(part.rows), **part.where()})
        return refused

    async def _write_until_stored(self, batch: Batch,
                                  stopping: Callable[[], bool]) -> str | object | None:
        """None once stored; the store's error when it refuses the rows' content;
        ``_STOPPED`` when the worker stops while the sink is down."""
        attempt = 0
        labels = (self.name, batch.dataset.name)
        while True:
            while (reason := self.sink.full()) is not None:
                SINK_UP.labels(self.name).set(0)
                if stopping():
                    return _STOPPED
                log.debug("sink %s is full: %s", self.name, reason)
                await asyncio.sleep(0.5)
            wait = self.breaker.wait_time()
            if wait:
                await asyncio.sleep(min(wait, 1.0))
                if stopping():
                    return _STOPPED
                continue
            started = time.monotonic()
            try:
                await self.sink.write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.sink.refuses(exc):
                    self._answered(batch)  # the store is up: it judged the rows
                    return error_text(exc)
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
                    return _STOPPED
                RETRIES.labels(*labels).inc()
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1
                continue
            EVENT_TO_SINK.observe_ages(labels, event_times(batch), now_us())
            WRITE_SECONDS.labels(*labels).observe(time.monotonic() - started)
            BATCH_ROWS.labels(*labels).observe(len(batch.rows))
            ROWS_WRITTEN.labels(*labels).inc(len(batch.rows))
            self._answered(batch)
            return None

    def _answered(self, batch: Batch) -> None:
        """The store answered (stored, or judged the rows): it is healthy."""
        self.breaker.success()
        BREAKER_OPEN.labels(self.name).set(0)
        SINK_UP.labels(self.name).set(1)
        if self.failing_since is not None:
            log.info("sink %s recovered after %.1f s", self.name,
                     time.monotonic() - self.failing_since,
                     extra={"sink": self.name, **batch.where()})
            self.failing_since = None
            self.last_error = None


_STOPPED = object()


def error_text(exc: BaseException) -> str:
    """``Type: message`` of a store's error (a ``ContentError`` names the error it
    wraps), bounded and always encodable."""
    text = str(exc) if isinstance(exc, ContentError) else f"{type(exc).__name__}: {exc}"
    return clean_text(text, ERROR_CHARS)


def clean_text(value: Any, limit: int) -> str:
    """``value`` as text of at most ``limit`` characters that UTF-8 can carry (a lone
    surrogate becomes ``?``)."""
    text = value if isinstance(value, str) else str(value)
    return text[:limit].encode("utf-8", "replace").decode("utf-8")


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN or infinity
    if isinstance(value, str):  # a lone surrogate as the text ``\ud800``: strict
        # JSON parsers refuse the escape
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def row_json(dataset: Dataset, row: tuple) -> bytes:
    """A row as a JSON object of its columns (times in microseconds since the epoch).
    Always serialises, and strict parsers read it: a value JSON cannot carry becomes
    its ``repr`` (NaN as ``"nan"``), a lone surrogate the text ``\\ud800``; NUL stays
    (escaped)."""
    doc = {name: _json_value(value) for name, value in zip(dataset.columns, row,
                                                            strict=False)}
    if len(row) > len(dataset.columns):
        doc["_extra"] = [_json_value(value) for value in row[len(dataset.columns):]]
    return json.dumps(doc, ensure_ascii=True, default=repr).encode("ascii")


def _small_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63:
        return value
    return None


def refusal_record(refusal: Refusal) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """The dead-letter record of a refused row: key (its sensor), JSON value, headers.

    The shape of ``app.contract.dead_letter`` (reason ``sink_refused``, message, source,
    original, ...) plus ``sink``, ``dataset`` and ``error``. ``source`` is the row's
    lineage: a reading's input message, or the aggregates/anomalies message it came
    from; ``original`` is the row itself as JSON (``row_json``).
    """
    batch, row = refusal.batch, refusal.row
    dataset = batch.dataset
    if dataset is READINGS:
        topic, partition, offset = row[-3], row[-2], row[-1]
    else:
        topic, partition, offset = batch.topic, row[-2], row[-1]
    source = Lineage(clean_text(topic if topic is not None else "", 300),
                    _small_int(partition), _small_int(offset))  # type: ignore[arg-type]
    sensor_id = row[dataset.index("sensor_id")]
    metric = row[dataset.index("metric")]
    sensor_id = None if sensor_id is None else clean_text(sensor_id, 300)
    metric = None if metric is None else clean_text(metric, 300)
    error = clean_text(refusal.error, ERROR_CHARS)
    message = f"the {refusal.sink} sink refused this {dataset.name} row: {error}"
    value, headers = dead_letter(
        Rejection(SINK_REFUSED, message, sensor_id=sensor_id, metric=metric),  # type: ignore[arg-type]
        row_json(dataset, row), source)
    record = json.loads(value)
    record.update(sink=refusal.sink, dataset=dataset.name, error=error)
    headers += [("sensorstream-sink", refusal.sink.encode()),
                ("sensorstream-dataset", dataset.name.encode())]
    key = None if sensor_id is None else sensor_id.encode("utf-8")
    return key, json.dumps(record).encode("utf-8"), headers


def readable_rows(dataset: Dataset, rows_of: Callable[[bytes, int, int], Any], value: bytes,
                  partition: int, offset: int) -> tuple[list[tuple], list[Rejection]]:
    """The rows of one message of the sink stage's topics, and what could not be made
    rows: the whole message, or, in a hand-over that decodes, each reading alone (its
    ``index``), so the other readings are stored."""
    try:
        return list(rows_of(value, partition, offset)), []
    except UNREADABLE as exc:
        whole = Rejection(SINK_UNREADABLE,  # type: ignore[arg-type]
                          f"no {dataset.name} rows can be made of this message: "
                          f"{error_text(exc)}")
        if dataset is not READINGS:
            return [], [whole]
    try:
        handover = decode_batch(value)
    except UNREADABLE:
        return [], [whole]
    rows: list[tuple] = []
    rejected: list[Rejection] = []
    for index, item in enumerate(handover.rows):
        try:
            rows += reading_rows(Handover([item], {}, {}))
        except UNREADABLE as exc:
            sensor_id = getattr(item[0], "sensor_id", None)
            rejected.append(Rejection(
                SINK_UNREADABLE, f"no readings rows can be made of reading {index} of "  # type: ignore[arg-type]
                f"this hand-over: {error_text(exc)}", index=index,
                sensor_id=None if sensor_id is None else clean_text(sensor_id, 300)))
    return rows, rejected


def event_times(batch: Batch) -> list[int | None]:
    """The event time (µs) of every row of ``batch``."""
    at = batch.dataset.event_time_index
    return [row[at] for row in batch.rows]


def now_us() -> int:
    return time.time_ns() // 1000


Ack = Callable[[], Any]
Source = tuple[str | None, tuple[int, int]]  #: a topic, and the (first, last) offsets
#: Sends refused rows' dead-letter records (``refusal_record``) durably; raises if not.
DeadLetter = Callable[[list[Refusal]], Awaitable[None]]
#: One log line per sink and dataset every 10 s shows an example refused row.
_refusal_lines = Throttle(10.0)


class Delivery:
    """Batches one dataset's rows and writes them to every sink before acknowledging.

    ``add`` takes the rows of one message and its ack. A batch is written when it
    holds ``max_rows`` rows or its oldest row waited ``max_wait`` seconds. One batch
    is written at a time while the next fills; when the next is full too, ``add``
    waits, which holds the stream (and Faust stops fetching once its buffer fills).
    Rows a sink refuses go to ``dead_letter`` before the batch's messages are
    acknowledged (without one, as in unit tests, they are only counted and logged).
    """

    def __init__(self, dataset: Dataset, sinks: Sequence[Guarded], max_rows: int,
                 max_wait: float, dead_letter: DeadLetter | None = None) -> None:
        self.dataset = dataset
        self.dead_letter = dead_letter
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
                refused = await self._write_all(rows, sources)
                if refused is not None and await self._dead_letter_all(refused):
                    for ack in acks:
                        ack()
            finally:
                self._idle.set()
                self._room.set()

    def _is_stopping(self) -> bool:
        return self._stopping

    async def _write_all(self, rows: dict[int, list[tuple]],
                         sources: dict[int, Source]) -> list[Refusal] | None:
        """Every sink's refused rows once all stored the rest; None if stopped first."""
        refused: list[Refusal] = []
        for partition, part_rows in rows.items():
            topic, offsets = sources.get(partition, (None, None))
            batch = Batch(self.dataset, partition, part_rows, topic, offsets)
            results = await asyncio.gather(*(g.write(batch, self._is_stopping)
                                             for g in self.sinks))
            if any(result is None for result in results):
                return None
            refused += [refusal for result in results for refusal in result or ()]
        return refused

    async def _dead_letter_all(self, refused: list[Refusal]) -> bool:
        """Send the refused rows' dead letters (retried until sent); False if stopped
        first (the messages are then not acknowledged, and delivered again)."""
        if not refused:
            return True
        attempt = 0
        backoff = Backoff(base=0.2, cap=5.0)
        while self.dead_letter is not None:
            try:
                await self.dead_letter(refused)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot send refused rows to the dead-letter topic; retrying: "
                            "%s", error_text(exc), extra={"rows": len(refused)})
                if self._stopping:
                    return False
                await asyncio.sleep(backoff.delay(attempt))
                attempt += 1
        for refusal in refused:
            DEAD_LETTERED.labels(refusal.sink, self.dataset.name).inc()
            held = _refusal_lines.allow((refusal.sink, self.dataset.name))
            log.log(logging.DEBUG if held is None else logging.WARNING,
                    "the %s sink refused a %s row: dead-lettered: %s", refusal.sink,
                    self.dataset.name, refusal.error, extra={
                        "sink": refusal.sink, **refusal.batch.where(),
                        "sent": self.dead_letter is not None,
                        "similar_since_last_line": held})
        return True

