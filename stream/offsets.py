"""Log ends and a consumer group's position against them, read from outside the group."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from stream.transport import fetched_ends, log_end_offsets


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


class LogEnds:
    """The log end of each partition this worker consumes, fetched in the background.

    The consumer's own high watermark is only as new as its last fetch of the partition:
    a partition paused (by the sink watcher, an operator) or held back by a full stream
    buffer is not fetched, so its high watermark stops while producers go on (the lag
    showed 12 messages where 1,231 waited). A client of its own fetches every partition
    at its listed end - 1 and takes the fetch's high watermark, which is right on every
    broker where ``end_offsets()`` is not (Tansu, FIELD-NOTES).
    """

    def __init__(self, kafka: Mapping[str, Any]) -> None:
        self.kafka = dict(kafka)
        self.ends: dict[TP, int] = {}
        self._client: AIOKafkaConsumer | None = None

    async def refresh(self, partitions: set[TP]) -> None:
        """Fetch the log end of every partition of ``partitions`` (forgetting others)."""
        tps = sorted(TopicPartition(tp.topic, tp.partition) for tp in partitions)
        if not tps:
            self.ends = {}
            return
        if self._client is None:
            self._client = AIOKafkaConsumer(**self.kafka, enable_auto_commit=False,
                                            max_partition_fetch_bytes=1024)
            await self._client.start()
        client = self._client
        fetched, _late = await fetched_ends(client, await client.end_offsets(tps), 5.0)
        client.pause(*client.assignment())  # no fetching in the background until the next round
        self.ends = {TP(tp.topic, tp.partition): end for tp, end in fetched.items()}

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.stop()
