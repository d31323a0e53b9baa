"""Validate and normalise raw messages from the input topics.

Rejections go to the dead-letter topic; readings go on to ``readings-by-sensor``,
partitioned by sensor, many readings per message, so the per-sensor stage pays
Faust's per-message cost once per batch instead of once per reading. A batch's
input messages are acknowledged only after its output is handed to the producer,
and offsets are committed only after the producer flushed: at-least-once.

Every message is classified, whatever it holds: what the contract accepts but the
hand-over cannot carry (a reading orjson cannot encode, a hand-over over the record
limit or refused by the producer) is dead-lettered reading by reading, never taking
the batch's other readings with it. Any other exception is a bug: it stops the worker
without acknowledging the batch (``_stop_stage``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import orjson
from faust.types import EventT

from app import metrics
from app.contract import (
    MAX_RECORD_BYTES,
    Contract,
    Handover,
    Reading,
    Reason,
    Rejection,
    Source,
    dead_letter,
    decode_batch,
    encode_batch,
    encode_batches,
    now_us,
)
from app.logs import Throttle
from app.main import app, settings
from app.topics import KAFKA, by_sensor, dead_letters, readings, sensor_partition
from stream.consumer import drop_ack
from stream.guard import SkipGuard
from stream.kafka import RecordTooLarge
from stream.transport import records_of
from tables.daily import UNATTRIBUTED

log = logging.getLogger(__name__)

contract = Contract.from_settings(settings)
#: Newest reading time per input partition seen by this process, and what each
#: partition of the per-sensor stage was told of it (watermarks, tables.windows).
_newest: dict[str, int] = {}
_told: defaultdict[int, dict[str, int]] = defaultdict(dict)
#: One info line per input topic and reason every 10 s shows an example dead letter
#: (the rest go to the debug level; the counters count every one).
_dead_letter_lines = Throttle(10.0)


#: The input message being classified (None while a batch is handed over): where a
#: bug struck, for its log line.
_classifying: Source | None = None
STAGE = "ingest"
metrics.STAGE_FAILURES.labels(STAGE)  # shown as 0 until it happens


@app.agent(readings, name="ingest")
async def ingest(stream):
    await dead_letters.maybe_declare()
    async for events in stream.take_events(settings.batch_size, within=settings.batch_window):
        try:
            messages = await _with_skipped([m for event in events for m in _messages(event)])
            await forward(messages)
        except Exception as exc:
            await _stop_stage(events, exc)
        _advance(messages)  # only once forwarded


async def _stop_stage(events: Sequence[EventT], exc: Exception) -> NoReturn:
    """Stop the worker for an exception that is not about the data (a bug, an outage the
    producer does not ride out), without committing past the batch.

    Letting it propagate would be worse: Faust restarts the agent, and ``take_events``
    acknowledges the batch's events in its ``finally`` when the generator is closed, so
    the commit moves past messages whose output was never sent (issue 18: readings
    lost, the same batch dead-lettered again by the read-back). So the batch's events
    are marked done without acknowledging their offsets (the transport's ``_drop_ack``),
    the failure is logged at critical with the input position, counted
    (``sensorstream_stage_failures_total``) and shown by ``/ready``, and the app crashes:
    the worker stops (a non-zero exit for its supervisor to see and restart), and the
    next worker of the group reads the batch again from the committed offset. Staying
    alive with the stage stuck would hold the partitions in a worker that does nothing.
    """
    source = _classifying
    if source is not None:
        where = {"topic": source.topic, "partition": source.partition, "offset": source.offset}
    else:  # not while a message was classified: the batch's offsets
        where = {"batch": ", ".join(
            f"{e.message.topic}:{e.message.partition}@"
            f"{getattr(e.message, 'first', e.message.offset)}-{e.message.offset}"
            for e in events)[:1000]}
    log.critical("the ingest stage stopped on an unexpected error (not about the data): "
                 "the worker stops without committing the batch; it is read again after "
                 "the restart", exc_info=exc, extra={"stage": STAGE, **where})
    metrics.stage_failed(STAGE, exc)
    for event in events:  # done, offsets not acknowledged (stream.transport.Consumer)
        drop_ack(app.consumer, event.message)
    await app.crash(exc)
    await asyncio.Event().wait()  # never continue the batch: the worker is stopping
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Message:
    source: Source
    key: bytes | None
    value: bytes | None


def _messages(event: EventT) -> list[Message]:
    """The input messages an event carries (a bundle of a fetch, stream.transport)."""
    m = event.message
    topic, partition = m.topic, m.partition
    return [Message(Source(topic, partition, r.offset, r.timestamp_ms), r.key, r.value)
            for r in records_of(m)]


#: The next input offset this process expects per input partition: a message past it
#: shows that the consumer skipped some (docs/windows.md, invariant 6).
_guard = SkipGuard.for_stage(app, KAFKA, settings.app_id, settings.offset_reset)


async def _with_skipped(messages: list[Message]) -> list[Message]:
    """``messages`` with any input the consumer skipped read back in front of them."""
    firsts: dict[tuple[str, int], int] = {}
    for message in messages:
        firsts.setdefault((message.source.topic, message.source.partition),
                          message.source.offset)
    skipped: list[Message] = []
    async for topic, partition, offset, key, value, ts in _guard.skipped(firsts):
        skipped.append(Message(Source(topic, partition, offset, ts), key, value))
    if skipped:
        runs: dict[tuple[str, int], list[int]] = {}
        for message in skipped:
            metrics.INPUT_REFETCHED.labels(message.source.topic).inc()
            runs.setdefault((message.source.topic, message.source.partition), []).append(
                message.source.offset)
        for (topic, partition), offsets in runs.items():
            log.warning("the consumer skipped %d input messages: read them back",
                        len(offsets), extra={"topic": topic, "partition": partition,
                                             "offset": min(offsets),
                                             "last_offset": max(offsets)})
    return skipped + messages if skipped else messages


def _advance(messages: list[Message]) -> None:
    for message in messages:
        _guard.advance(message.source.topic, message.source.partition,
                       message.source.offset)


Item = tuple[Reading, Source, int]
#: Dead letters per sensor, by the sensor's partition: the hand-overs carry them to the
#: per-sensor stage for its data-quality figures.
DeadCounts = defaultdict[int, defaultdict[str, int]]


async def forward(messages: list[Message]) -> None:
    global _classifying
    now = now_us()
    routed: defaultdict[int, list[Item]] = defaultdict(list)
    dead: DeadCounts = defaultdict(lambda: defaultdict(int))
    for message in messages:
        source = message.source
        topic = source.topic
        _classifying = source
        parsed = contract.parse(message.value, now)
        metrics.MESSAGES_IN.labels(topic).inc()
        # Readings are counted in where they are classified: rejections here, the rest
        # in the per-sensor stage, which may run in another worker or, after a crash,
        # see a hand-over again. So the accounting holds in every process at any time.
        metrics.READINGS_IN.labels(topic).inc(len(parsed.rejections))
        for rejection in parsed.rejections:
            await _dead_letter(message, rejection, dead, now)
        for reading in parsed.readings:
            routed[sensor_partition(reading.sensor_id)].append((reading, source, now))
            if reading.ts > _newest.get(source.input_partition, -1):
                _newest[source.input_partition] = reading.ts
    _classifying = None
    by_source: dict[tuple[str, int, int], Message] = {}
    for partition in range(settings.partitions):
        told = _told[partition]
        news = {src: ts for src, ts in _newest.items() if ts > told.get(src, -1)}
        items = routed.get(partition, [])
        try:
            values = list(encode_batches(items, watermarks=news,
                                         dead_letters=dead.get(partition)))
            unfit = any(len(v) > MAX_RECORD_BYTES for v in values)
        except orjson.JSONEncodeError:
            unfit = True
        if unfit:  # rare: find the readings the hand-over cannot carry, one by one
            by_source = by_source or _by_source(messages)
            items = await _carriable(items, by_source, dead, now)
            values = list(encode_batches(items, watermarks=news,
                                         dead_letters=dead.get(partition)))
        for value in values:
            try:
                await by_sensor.send(partition=partition, value=value)
            except RecordTooLarge:
                by_source = by_source or _by_source(messages)
                await _send_one_by_one(partition, decode_batch(value), by_source, now)
        told.update(news)


def _by_source(messages: list[Message]) -> dict[tuple[str, int, int], Message]:
    return {(m.source.topic, m.source.partition, m.source.offset): m for m in messages}


async def _send_one_by_one(partition: int, handover: Handover,
                           by_source: dict[tuple[str, int, int], Message], now: int) -> None:
    """A hand-over the producer refused (its limit is above ``MAX_RECORD_BYTES``, so this
    should not happen): its readings one per hand-over, each refused one dead-lettered,
    then its watermarks and dead-letter counts on their own."""
    dead: DeadCounts = defaultdict(lambda: defaultdict(int))
    for item in handover.rows:
        try:
            await by_sensor.send(partition=partition, value=encode_batch([item]))
        except RecordTooLarge as exc:
            await _reject_reading(item, Reason.TOO_LARGE, "the producer refused the "
                                  f"reading's hand-over: {exc}", by_source, dead, now)
    counts = dict(handover.dead_letters)
    for sensor_id, n in dead.get(partition, {}).items():
        counts[sensor_id] = counts.get(sensor_id, 0) + n
    if counts or handover.watermarks:
        await by_sensor.send(partition=partition,
                             value=encode_batch([], handover.watermarks, counts))


async def _dead_letter(message: Message, rejection: Rejection, dead: DeadCounts,
                       now: int) -> None:
    source, topic = message.source, message.source.topic
    value, headers = dead_letter(rejection, message.value, source, now)
    await dead_letters.send(key=message.key, value=value, headers=headers)
    metrics.DEAD_LETTERED.labels(topic, rejection.reason).inc()
    sensor_id = rejection.sensor_id or UNATTRIBUTED
    dead[sensor_partition(sensor_id)][sensor_id] += 1
    held = _dead_letter_lines.allow((topic, rejection.reason))
    log.log(logging.DEBUG if held is None else logging.INFO,
            "dead-lettered: %s", rejection.message, extra={
                "topic": topic, "partition": source.partition, "offset": source.offset,
                "reason": str(rejection.reason), "sensor_id": rejection.sensor_id,
                "similar_since_last_line": held})


def _unencodable_reason(exc: orjson.JSONEncodeError) -> Reason:
    """The contract's reason for what orjson refused: text (a lone surrogate), nesting
    (past 254 levels), or else a number it cannot carry (an integer past 64 bits)."""
    text = str(exc)
    if "str" in text or "surrogate" in text or "UTF-8" in text:
        return Reason.INVALID_TEXT
    if "Recursion" in text or "recursion" in text:
        return Reason.TOO_DEEP
    return Reason.INVALID_NUMBER


async def _carriable(items: list[Item], by_source: dict[tuple[str, int, int], Message],
                     dead: DeadCounts, now: int) -> list[Item]:
    """``items`` without the readings whose hand-over cannot be encoded or exceeds the
    record limit; those are dead-lettered. The contract rejects such readings first
    (``invalid_text``, ``too_deep``, ``too_large``): this is the stage's safety net, so
    that a reading the contract lets through by mistake never stops the pipeline."""
    kept = []
    for item in items:
        try:
            size = len(encode_batch([item]))
        except orjson.JSONEncodeError as exc:
            await _reject_reading(item, _unencodable_reason(exc), "the reading's hand-over "
                                  f"cannot be encoded: {exc}", by_source, dead, now)
            continue
        if size > MAX_RECORD_BYTES:
            await _reject_reading(item, Reason.TOO_LARGE, f"the reading's hand-over is {size} "
                                  f"bytes, over the record limit of {MAX_RECORD_BYTES}",
                                  by_source, dead, now)
            continue
        kept.append(item)
    return kept


async def _reject_reading(item: Item, reason: Reason, text: str,
                          by_source: dict[tuple[str, int, int], Message], dead: DeadCounts,
                          now: int) -> None:
    """Dead-letter every row (metric) of one reading, counted in and dead-lettered, with
    its message's original bytes: rows are the accounting's unit."""
    reading, source, _ingested = item
    message = by_source[source.topic, source.partition, source.offset]
    metrics.READINGS_IN.labels(source.topic).inc(len(reading.metrics))
    for metric in reading.metrics:
        await _dead_letter(message, Rejection(reason, text, None, reading.sensor_id, metric),
                           dead, now)
