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

from app import metrics
from app.contract import Contract, Reading, Source, dead_letter, encode_batches, now_us
from app.main import app, settings
from app.topics import by_sensor, dead_letters, readings, sensor_partition

log = logging.getLogger(__name__)

contract = Contract.from_settings(settings)
#: Newest reading time per input partition seen by this process, and what each
#: partition of the per-sensor stage was told of it (watermarks, tables.windows).
_newest: dict[str, int] = {}
_told: defaultdict[int, dict[str, int]] = defaultdict(dict)


@app.agent(readings, name="ingest")
async def ingest(stream):
    await dead_letters.maybe_declare()
    async for events in stream.take_events(settings.batch_size, within=settings.batch_window):
        await forward(events)


async def forward(events) -> None:
    now = now_us()
    routed: defaultdict[int, list[tuple[Reading, Source, int]]] = defaultdict(list)
    for event in events:
        message = event.message
        topic = message.topic
        source = Source(topic, message.partition, message.offset,
                        int(message.timestamp * 1000) if message.timestamp else None)
        parsed = contract.parse(event.value, now)
        metrics.MESSAGES_IN.labels(topic).inc()
        # Readings are counted in where they are classified: rejections here, the rest
        # in the per-sensor stage, which may run in another worker or, after a crash,
        # see a hand-over again. So the accounting holds in every process at any time.
        metrics.READINGS_IN.labels(topic).inc(len(parsed.rejections))
        for rejection in parsed.rejections:
            value, headers = dead_letter(rejection, event.value, source, now)
            await dead_letters.send(key=message.key, value=value, headers=headers)
            metrics.DEAD_LETTERED.labels(topic, rejection.reason).inc()
            log.debug("dead-lettered: %s", rejection.message, extra={
                "topic": topic, "partition": message.partition, "offset": message.offset,
                "reason": str(rejection.reason)})
        for reading in parsed.readings:
            routed[sensor_partition(reading.sensor_id)].append((reading, source, now))
            if reading.ts > _newest.get(source.input_partition, -1):
                _newest[source.input_partition] = reading.ts
    for partition in range(settings.partitions):
        told = _told[partition]
        news = {src: ts for src, ts in _newest.items() if ts > told.get(src, -1)}
        for value in encode_batches(routed.get(partition, []), watermarks=news):
            await by_sensor.send(partition=partition, value=value)
        told.update(news)
