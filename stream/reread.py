"""Read a range of one partition straight from the broker, outside the consumer group.

The stages use it, through ``stream.guard.SkipGuard``, to process messages that Faust's
consumer skipped: its bookkeeping can commit past messages it dropped around recovery
and rebalances. The per-sensor stage notices because it stores the next offset it
expects (tables.windows); the other stages compare with the group's committed offsets
and their own position. ``app.replay`` reads committed offsets through it too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def read_range(kafka: Mapping[str, Any], topic: str, partition: int, start: int,
                     end: int, deadline: float = 60.0,
                     ) -> AsyncIterator[tuple[int, bytes | None, bytes | None, int | None]]:
    """``(offset, key, value, timestamp_ms)`` of the records from ``start`` up to ``end``
    (exclusive), in order. Offsets that no longer exist (retention) are skipped; the
    caller sees them missing. Raises TimeoutError when the range is not read within ``deadline``.
    ``kafka``: the clients' connection options (``stream.kafka.client_kwargs``)."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        stop = time.monotonic() + deadline
        while await consumer.position(tp) < end:
            if time.monotonic() > stop:
                raise TimeoutError(f"{topic}[{partition}] {start}..{end} not read in "
                                   f"{deadline:g} s")
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    return
                if record.offset >= start:
                    yield record.offset, record.key, record.value, record.timestamp
    finally:
        await consumer.stop()


async def committed_offsets(kafka: Mapping[str, Any], group: str, tps: list[tuple[str, int]],
                            log_start: bool = False) -> dict[tuple[str, int], int]:
    """The offsets ``group`` has committed for ``tps`` (without joining the group);
    partitions it never committed are left out, or with ``log_start`` given their log
    start (the first offset still in the log)."""
    consumer = AIOKafkaConsumer(**kafka, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {}
        for topic, partition in tps:
            offset = await consumer.committed(TopicPartition(topic, partition))
            if offset is not None and offset >= 0:
                found[topic, partition] = offset
        never = [TopicPartition(t, p) for t, p in tps if (t, p) not in found]
        if log_start and never:
            for tp, offset in (await consumer.beginning_offsets(never)).items():
                found[tp.topic, tp.partition] = offset
        return found
    finally:
        await consumer.stop()
