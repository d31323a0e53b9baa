"""Log-end offsets: the broker's ListOffsets answer and the transport's fetched one."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.transport import log_end_offsets

from .harness import create_topic

pytestmark = pytest.mark.integration


async def test_log_end_offsets_are_right_where_list_offsets_is_not(bootstrap):
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:
        batch = producer.create_batch()
        for i in range(100):
            batch.append(key=None, value=b"%d" % i, timestamp=None)
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        listed = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    ends = await log_end_offsets(bootstrap, listed)
    assert ends == {TopicPartition(topic, 0): 100, TopicPartition(topic, 1): 0}
    # The broker's own answer. When this fails the broker was fixed or swapped; the
    # workaround in stream.transport is then harmless but may be retired.
    assert listed[TopicPartition(topic, 0)] == 1, (
        "ListOffsets now answers the true log end: Tansu's bug is gone")
