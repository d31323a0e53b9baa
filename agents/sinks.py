"""The sink stage: readings, sealed aggregates and anomalies into PostgreSQL and the lake.

Three agents, one per topic: the hand-overs (validated readings, partitioned by
sensor), the aggregates topic and the anomalies topic. Each turns its messages into
rows (sinks.records) and gives them to a ``Delivery``, which acknowledges a message
only once every enabled sink stored its rows, so Faust commits its offset only then.
While a sink is failing or full, a monitor pauses all of the worker's partitions
(the live stages too: their outputs would only pile up) and resumes them once the
sink recovers; ``/ready`` names the sink meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.types import TP

from app.contract import Source, dead_letter
from app.logs import Throttle
from app.main import app, settings, shutdown
from app.topics import KAFKA, aggregates, anomalies, by_sensor, dead_letters
from sinks.active import DELIVERIES, SINKS, SOURCES, degraded, start_errors, started
from sinks.base import (
    DEAD_LETTERED,
    PAUSED,
    PAUSED_SECONDS,
    SINK_UNREADABLE,
    Backoff,
    readable_rows,
)
from sinks.records import (
    AGGREGATES,
    ANOMALIES,
    READINGS,
    ROWS_OF,
    Dataset,
)
from stream.guard import SkipGuard
from stream.transport import records_of

log = logging.getLogger(__name__)

@app.service
class SinkService(faust.Service):
    """Starts the sinks (retrying until each can), watches them, stops them last."""

    async def on_start(self) -> None:
        if SINKS:
            self.add_future(self._start_sinks())

    async def _start_sinks(self) -> None:
        backoff = Backoff(base=0.5, cap=settings.sink_retry_max)
        for sink in SINKS:
            attempt = 0
            while True:
                try:
                    await sink.start()
                    start_errors.pop(sink.name, None)
                    break
                except Exception as exc:
                    start_errors[sink.name] = f"cannot start: {type(exc).__name__}: {exc}"[:300]
                    log.warning("sink %s cannot start yet: %s", sink.name, exc,
                                extra={"sink": sink.name})
                    await asyncio.sleep(backoff.delay(attempt))
                    attempt += 1
        for delivery in DELIVERIES.values():
            delivery.start()
        started.set()
        log.info("sinks started", extra={"sinks": [s.name for s in SINKS]})

    @faust.Service.task
    async def _watch(self) -> None:
        """Pause the worker's partitions while a sink is degraded; resume after."""
        paused: set[TP] = set()
        since = 0.0
        while not self.should_stop:
            await self.sleep(0.25)
            consumer = app.consumer
            if consumer is None or not SINKS or not started.is_set():
                continue
            reasons = degraded()
            if reasons:
                wanted = {tp for tp in consumer.assignment()
                          if tp.topic not in app.tables.changelog_topics}
                new = wanted - paused
                if new:
                    consumer.pause_partitions(new)
                    if not paused:
                        since = time.monotonic()
                        PAUSED.set(1)
                        log.warning("sink degraded: pausing the worker's partitions",
                                    extra={"sinks": reasons, "partitions": len(wanted)})
                    paused |= new
                now = time.monotonic()
                PAUSED_SECONDS.inc(now - since)
                since = now
            elif paused:
                consumer.resume_partitions(paused & consumer.assignment())
                PAUSED_SECONDS.inc(time.monotonic() - since)
                PAUSED.set(0)
                log.info("sinks recovered: partitions resumed",
                         extra={"partitions": len(paused)})
                paused = set()

    async def on_stop(self) -> None:
        """Write what the deliveries hold within the drain's budget (the stop's deadline,
        app.shutdown), then stop them and the sinks in what remains; rows not written
        were never acknowledged, so they are delivered again after the restart."""
        for delivery in DELIVERIES.values():
            try:
                await asyncio.wait_for(delivery.stop(flush=started.is_set()),
                                       shutdown.drain_budget())
            except (TimeoutError, Exception) as exc:
                log.warning("pending sink rows not written at shutdown (they are "
                            "delivered again): %s", f"{type(exc).__name__}: {exc}"[:300])
                await _stop_retrying()
        for sink in SINKS:
            try:
                await asyncio.wait_for(sink.stop(), max(0.5, shutdown.remaining() - 1.0))
            except (TimeoutError, Exception) as exc:
                log.warning("sink %s did not stop cleanly: %s", sink.name,
                            f"{type(exc).__name__}: {exc}"[:300])


async def _stop_retrying() -> None:
    """Stop every delivery now, without writing what it holds: its retries end, and the
    messages it holds stay unacknowledged (app.shutdown gives them up)."""
    for delivery in DELIVERIES.values():
        await delivery.stop(flush=False)


shutdown.on_give_up(_stop_retrying)


#: Per dataset, the guard against offsets its consumer skipped (docs/windows.md,
#: invariant 6).
_guards = {name: SkipGuard.for_stage(app, KAFKA, settings.app_id, settings.offset_reset)
           for name in SOURCES}


@app.on_partitions_assigned.connect
async def _on_assigned(_app: object, *_args: object, **_kwargs: object) -> None:
    for sink in SINKS:
        adopt = getattr(sink, "adopt_open_periods", None)
        if adopt is not None and started.is_set():
            asyncio.get_running_loop().create_task(adopt())


async def _rows(dataset: Dataset, rows_of: Callable[[bytes, int, int], Iterable[tuple]],
                source: Source, key: bytes | None, value: bytes) -> list[tuple]:
    """The rows of one message; what no rows can be made of (another producer's record)
    goes to the dead-letter topic, confirmed before the message can be acknowledged,
    instead of crashing the agent (issue 18)."""
    rows, rejected = readable_rows(dataset, rows_of, value, source.partition, source.offset)
    if rejected:
        sent = []
        for rejection in rejected:
            record, headers = dead_letter(rejection, value, source)
            headers.append(("sensorstream-dataset", dataset.name.encode()))
            sent.append(await dead_letters.send(key=key, value=record, headers=headers))
        await app.producer.flush()
        for confirmation in sent:
            await confirmation
        DEAD_LETTERED.labels("all", dataset.name).inc(len(rejected))
        held = _unreadable_lines.allow(dataset.name)
        log.log(logging.DEBUG if held is None else logging.WARNING,
                "dead-lettered: %s", rejected[0].message, extra={
                    "topic": source.topic, "partition": source.partition,
                    "offset": source.offset, "reason": SINK_UNREADABLE,
                    "dataset": dataset.name, "similar_since_last_line": held})
    return rows


#: One log line per dataset every 10 s shows an example unreadable message.
_unreadable_lines = Throttle(10.0)


async def _consume(stream: Any, dataset: Dataset,
                   rows_of: Callable[[bytes, int, int], Iterable[tuple]]) -> None:
    """Feed one topic's messages to its delivery; ack each once the sinks have it."""
    await started.wait()
    delivery = DELIVERIES[dataset.name]
    guard = _guards[dataset.name]
    async for event in stream.noack().events():
        message = event.message
        topic, partition = message.topic, message.partition
        records = records_of(message)
        async for _t, _p, offset, key, value, ts in guard.skipped(
                {(topic, partition): records[0].offset}):
            log.warning("the consumer skipped a message: read it back", extra={
                "topic": topic, "partition": partition, "offset": offset})
            rows = await _rows(dataset, rows_of, Source(topic, partition, offset, ts), key,
                               value)
            await delivery.add(partition, rows, None, topic, (offset, offset))
        rows = []
        for r in records:
            rows += await _rows(dataset, rows_of, Source(topic, partition, r.offset,
                                                         r.timestamp_ms), r.key, r.value)
        await delivery.add(partition, rows, event.ack, topic,
                           (records[0].offset, records[-1].offset))
        guard.advance(topic, partition, records[-1].offset)


if SINKS:

    @app.agent(by_sensor, name="sink-readings")
    async def sink_readings(stream):
        await _consume(stream, READINGS, ROWS_OF[READINGS.name])

    @app.agent(aggregates, name="sink-aggregates")
    async def sink_aggregates(stream):
        await _consume(stream, AGGREGATES, ROWS_OF[AGGREGATES.name])

    @app.agent(anomalies, name="sink-anomalies")
    async def sink_anomalies(stream):
        await _consume(stream, ANOMALIES, ROWS_OF[ANOMALIES.name])

    @app.timer(3600.0)
    async def maintain_partitions() -> None:
        """Daily partitions: create ahead, drop past the retention (plain PostgreSQL)."""
        for sink in SINKS:
            maintain = getattr(sink, "maintain", None)
            if maintain is not None and started.is_set():
                try:
                    await maintain()
                except Exception as exc:
                    log.warning("partition maintenance failed (retried in an hour): %s", exc)
