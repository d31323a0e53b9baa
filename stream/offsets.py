"""A consumer group's position against the log ends, read from outside the group."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.transport import log_end_offsets


class GroupLag:
    """One long-lived client that measures how far a group is behind on some topics,
    without joining it (the input alerts ask every few seconds)."""

    def __init__(self, kafka: Mapping[str, Any], group: str, offset_reset: str) -> None:
        self.kafka = dict(kafka)
        self.group = group
        self.offset_reset = offset_reset
        self._consumer: AIOKafkaConsumer | None = None

    async def measure(self, topics: Iterable[str]) -> tuple[int, int]:
        """The sum of the topics' log ends (true ends: ``log_end_offsets``), and the
        group's lag over them. A partition the group never committed counts from where
        the group would start (``offset_reset``)."""
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(**self.kafka, group_id=self.group,
                                              enable_auto_commit=False)
            await self._consumer.start()
        consumer = self._consumer
        await consumer.topics()  # fresh metadata: partitions added meanwhile count too
        tps = [TopicPartition(topic, p) for topic in sorted(topics)
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        security = {k: v for k, v in self.kafka.items() if k != "bootstrap_servers"}
        ends = await log_end_offsets(self.kafka["bootstrap_servers"],
                                     await consumer.end_offsets(tps), **security)
        starts = await consumer.beginning_offsets(tps)
        lag = 0
        for tp in tps:
            done = await consumer.committed(tp)
            if done is None:
                done = starts[tp] if self.offset_reset == "earliest" else ends[tp]
            lag += max(0, ends[tp] - done)
        return sum(ends.values()), lag

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
