"""Validate and normalise raw messages from the input topics.

Rejections go to the dead-letter topic; readings go on to ``readings-by-sensor``,
partitioned by sensor, many readings per message, so the per-sensor stage pays
Faust's per-message cost once per batch instead of once per reading. A batch's
input messages are acknowledged only after its output is handed to the producer,
and offsets are committed only after the producer flushed: at-least-once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from faust.types import EventT

from app import metrics
from app.contract import Contract, Reading, Source, dead_letter, encode_batches, now_us
from app.logs import Throttle
from app.main import app, settings
from app.reread import Positions
from app.topics import KAFKA, by_sensor, dead_letters, readings, sensor_partition
from app.transport import records_of
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


@app.agent(readings, name="ingest")
async def ingest(stream):
    await dead_letters.maybe_declare()
    async for events in stream.take_events(settings.batch_size, within=settings.batch_window):
        messages = await _with_skipped([m for event in events for m in _messages(event)])
        await forward(messages)
        _advance(messages)  # only once forwarded: a batch that raised is read back


@dataclass(frozen=True)
class Message:
    source: Source
    key: bytes | None
    value: bytes | None


def _messages(event: EventT) -> list[Message]:
    """The input messages an event carries (a bundle of a fetch, app.transport)."""
    m = event.message
    topic, partition = m.topic, m.partition
    return [Message(Source(topic, partition, r.offset, r.timestamp_ms), r.key, r.value)
            for r in records_of(m)]


#: The next input offset this process expects per input partition: a message past it
#: shows that the consumer skipped some (docs/windows.md, invariant 6).
_positions = Positions(KAFKA, settings.app_id, settings.offset_reset)


@app.on_partitions_assigned.connect
async def _positions_reset(_app: object, *_args: object, **_kwargs: object) -> None:
    """After a rebalance the consumer starts again from the committed offsets."""
    _positions.reset()


async def _with_skipped(messages: list[Message]) -> list[Message]:
    """``messages`` with any input the consumer skipped read back in front of them."""
    firsts: dict[tuple[str, int], int] = {}
    for message in messages:
        firsts.setdefault((message.source.topic, message.source.partition),
                          message.source.offset)
    skipped: list[Message] = []
    async for topic, partition, offset, key, value, ts in _positions.skipped(firsts):
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
        _positions.advance(message.source.topic, message.source.partition,
                           message.source.offset)


async def forward(messages: list[Message]) -> None:
    now = now_us()
    routed: defaultdict[int, list[tuple[Reading, Source, int]]] = defaultdict(list)
    #: Dead letters per sensor go to its partition too, for its data-quality figures.
    dead: defaultdict[int, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    for message in messages:
        source = message.source
        topic = source.topic
        parsed = contract.parse(message.value, now)
        metrics.MESSAGES_IN.labels(topic).inc()
        # Readings are counted in where they are classified: rejections here, the rest
        # in the per-sensor stage, which may run in another worker or, after a crash,
        # see a hand-over again. So the accounting holds in every process at any time.
        metrics.READINGS_IN.labels(topic).inc(len(parsed.rejections))
        for rejection in parsed.rejections:
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
        for reading in parsed.readings:
            routed[sensor_partition(reading.sensor_id)].append((reading, source, now))
            if reading.ts > _newest.get(source.input_partition, -1):
                _newest[source.input_partition] = reading.ts
    for partition in range(settings.partitions):
        told = _told[partition]
        news = {src: ts for src, ts in _newest.items() if ts > told.get(src, -1)}
        for value in encode_batches(routed.get(partition, []), watermarks=news,
                                    dead_letters=dead.get(partition)):
            await by_sensor.send(partition=partition, value=value)
        told.update(news)
