"""The Kafka transport: Faust's aiokafka driver with true log-end offsets.

Some brokers (Tansu, the local stack's) answer ``ListOffsets(latest)`` with the
last batch's base offset + 1 instead of the log end. Faust's table recovery reads
each changelog up to that answer, so it stops short (a store that already holds
the tail even refuses to start: "persisted offset is higher than highwater").
A Fetch response's high watermark is right on every broker, so this transport
takes the high watermark from one fetch at the listed end - 1. Selected by the
``sensorstream://`` scheme (entry point ``faust.transports``); ``app.main`` maps
the user's ``kafka://`` URL to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

log = logging.getLogger(__name__)

SCHEME = "sensorstream"
FETCH_DEADLINE_S = 15.0


async def log_end_offsets(bootstrap: str | list[str], listed: Mapping[TopicPartition, int],
                          deadline: float = FETCH_DEADLINE_S) -> dict[TopicPartition, int]:
    """The log end of each partition: a fetch's high watermark, never below ``listed``."""
    result = dict(listed)
    nonempty = [tp for tp, end in listed.items() if end and end > 0]
    if not nonempty:
        return result
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=1024)
    await consumer.start()
    try:
        consumer.assign(nonempty)
        for tp in nonempty:
            consumer.seek(tp, listed[tp] - 1)
        pending = set(nonempty)
        end = time.monotonic() + deadline
        while pending and time.monotonic() < end:
            await consumer.getmany(*pending, timeout_ms=200, max_records=1)
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    result[tp] = max(highwater, listed[tp])
                    pending.discard(tp)
        if pending:
            log.warning("no high watermark fetched for %s; using the listed end offsets",
                        sorted(map(str, pending)))
    finally:
        await consumer.stop()
    return result


class ConsumerThread(driver.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        listed = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return listed
        ends = await log_end_offsets(self._ensure_consumer()._client._bootstrap_servers,
                                     {TopicPartition(tp.topic, tp.partition): offset
                                      for tp, offset in listed.items()})
        return {tp: ends[TopicPartition(tp.topic, tp.partition)] for tp in listed}


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(driver.Transport):
    Consumer = Consumer


def faust_broker_url(url: str) -> str:
    """``kafka://host:port`` as the URL that selects this transport."""
    return f"{SCHEME}://{url.split('://', 1)[1]}"


