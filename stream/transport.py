"""The Kafka transport: Faust's aiokafka driver with true log-end offsets and bulk delivery.

Some brokers (Tansu, the local stack's) answer ``ListOffsets(latest)`` with the
last batch's base offset + 1 instead of the log end. Faust's table recovery reads
each changelog up to that answer, so it stops short (a store that already holds
the tail even refuses to start: "persisted offset is higher than highwater").
A Fetch response's high watermark is right on every broker, so this transport
takes the high watermark from one fetch at the listed end - 1. Selected by the
``sensorstream://`` scheme (entry point ``faust.transports``); ``app.main`` maps
the user's ``kafka://`` URL to it.

Bulk delivery: Faust spends ~100 µs of asyncio machinery on every message it hands
to an agent (FIELD-NOTES), a ceiling near 8,600 messages/s. For the topics named in
``BULK_TOPICS`` the consumer hands over each partition's share of one fetch as one
message, a ``Bundle`` whose ``records`` are the fetched records, so that cost is paid
per fetch. A bundle's offset is its last record's; acknowledging it acknowledges every
offset it covers, so commits move exactly as if each record had been acked.

Group membership and committed offsets, for ``replay`` (app/replay.py): a worker leaves
its group on a clean stop in generation 0 too (Tansu's first), and a committed offset
of 0 is sought like any other (aiokafka skips it).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, Message
from faust.types.tuples import ConsumerMessage, ack_lock
from mode.utils.futures import notify

log = logging.getLogger(__name__)

SCHEME = "sensorstream"
FETCH_DEADLINE_S = 15.0


async def log_end_offsets(bootstrap: str | list[str], listed: Mapping[TopicPartition, int],
                          deadline: float = FETCH_DEADLINE_S, **security: Any,
                          ) -> dict[TopicPartition, int]:
    """The log end of each partition: a fetch's high watermark, never below ``listed``.
    ``security``: the connection's aiokafka options (``security_protocol``, SASL, TLS)."""
    if not any(end and end > 0 for end in listed.values()):
        return dict(listed)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=1024,
                                **security)
    await consumer.start()
    try:
        result, pending = await fetched_ends(consumer, listed, deadline)
        if pending:
            log.warning("no high watermark fetched for %s; using the listed end offsets",
                        sorted(map(str, pending)))
    finally:
        await consumer.stop()
    return result


async def fetched_ends(consumer: AIOKafkaConsumer, listed: Mapping[TopicPartition, int],
                       deadline: float) -> tuple[dict[TopicPartition, int], set[TopicPartition]]:
    """With ``consumer`` (a client of its own, outside any group): each non-empty
    partition's high watermark from one fetch at its listed end - 1, never below
    ``listed``; and the partitions whose fetch did not answer within ``deadline`` s (left
    at ``listed``). The consumer is left assigned to the non-empty partitions."""
    result = dict(listed)
    nonempty = [tp for tp, end in listed.items() if end and end > 0]
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
    return result, pending


async def _leave_group(coordinator: GroupCoordinator) -> None:
    """Leave the group on a clean stop in generation 0 too. aiokafka leaves only from a
    generation above 0, but Tansu numbers a group's first generation 0: a worker stopped
    there stayed listed as a member until the group's next join, and ``replay`` refused
    to move the offsets of a group whose workers were all stopped."""
    if (coordinator.generation == 0 and coordinator._group_instance_id is None
            and coordinator.member_id):
        try:
            await coordinator._send_req(LeaveGroupRequest(coordinator.group_id,
                                                          coordinator.member_id))
        except KafkaError as exc:
            log.warning("could not leave the consumer group: %s", exc)
        coordinator.reset_generation()
        return
    await GroupCoordinator._maybe_leave_group(coordinator)


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per partition: the offset of the first record fetched in a rebalance generation
        #: (where the consumer started), and that generation.
        self._fetch_start: dict[TP, tuple[int, int | None]] = {}

    async def on_start(self) -> None:
        await super().on_start()
        coordinator = getattr(self._consumer, "_coordinator", None)
        if isinstance(coordinator, GroupCoordinator):
            coordinator._maybe_leave_group = functools.partial(_leave_group, coordinator)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed)

    async def _seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every partition back to where processing must resume, including the two
        cases aiokafka leaves at the position its fetcher reached, past records fetched
        and dropped meanwhile (while the tables recovered, Faust resumes the partitions
        and fetches before this seek), which were then never processed:

        - a committed offset of 0 (``replay --to-earliest``): aiokafka seeks only above 0;
        - no committed offset at all (a worker killed before its first commit of the
          partition): back to where this generation's first fetch started (the reset
          position, ``OFFSET_RESET``). Faust then committed the next records' offsets
          with nothing to compare them with, so the dropped ones were lost for good:
          the SIGKILL x3 sink test's lost aggregates.
        """
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        generation = self.app.consumer_generation_id
        changelogs = self.app.tables.changelog_topics
        for tp, offset in committed.items():
            if offset == 0:
                consumer.seek(tp, 0)
            elif offset is None and tp.topic not in changelogs:
                start, then = self._fetch_start.get(tp, (None, None))
                if start is not None and then == generation:
                    log.info("no committed offset: back to where this generation started "
                             "fetching", extra={"topic": tp.topic, "partition": tp.partition,
                                                "offset": start})
                    consumer.seek(tp, start)
        return committed

    async def _fetch_records(self, consumer: AIOKafkaConsumer, active_partitions: Any,
                             timeout: float | None = None, max_records: int | None = None,
                             ) -> Any:
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                               max_records=max_records)
        generation = self.app.consumer_generation_id
        for tp, batch in records.items():
            if batch:
                known = self._fetch_start.get(tp)
                if known is None or known[1] != generation:
                    self._fetch_start[tp] = (batch[0].offset, generation)
        return records

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        listed = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return listed
        conf = self.app.conf
        ends = await log_end_offsets(self._ensure_consumer()._client._bootstrap_servers,
                                     {TopicPartition(tp.topic, tp.partition): offset
                                      for tp, offset in listed.items()},
                                     **driver.credentials_to_aiokafka_auth(
                                         conf.broker_credentials, conf.ssl_context))
        return {tp: ends[TopicPartition(tp.topic, tp.partition)] for tp in listed}


#: Topics delivered in bundles (app.topics fills it; agents over them read ``records_of``).
BULK_TOPICS: set[str] = set()


class Record(NamedTuple):
    """One Kafka record as the agents see it, from a bundle or a single message."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


class _Fetched:
    """One partition's records of one fetch, before they become a ``Bundle``."""

    __slots__ = ("records",)

    def __init__(self, records: list[Any]) -> None:
        self.records = records


class Bundle(ConsumerMessage):
    """Many records of one partition as one Faust message (offset: the last record's)."""

    def __init__(self, tp: TP, records: list[Any], first: int, generation_id: int | None,
                 ) -> None:
        last = records[-1]
        super().__init__(tp.topic, tp.partition, last.offset,
                         last.timestamp / 1000.0 if last.timestamp is not None else None,
                         last.timestamp_type, None, None, b"", None, 0,
                         sum(r.serialized_value_size for r in records), tp,
                         generation_id=generation_id)
        #: The first offset this bundle acknowledges: its first record's, or the end of
        #: the previous bundle when the log has a gap (transaction markers, compaction).
        self.first = first
        self.records = records


def records_of(message: Message) -> list[Record]:
    """The records a Faust message carries: a bundle's, or the message itself."""
    if isinstance(message, Bundle):
        return [Record(r.offset, r.key, r.value, r.timestamp) for r in message.records]
    ts = message.timestamp
    return [Record(message.offset, message.key, message.value,
                   int(ts * 1000) if ts else None)]


class Consumer(driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Per bulk partition: the offset after the last bundle handed over, and the
        #: rebalance generation it was handed over in.
        self._bundle_end: dict[TP, tuple[int, int | None]] = {}
        #: Of the fetch being handed over: per partition, its first and last offsets, and
        #: the last offset handed over (see ``getmany``).
        self._fetched: dict[TP, tuple[int, int]] = {}
        self._handed: dict[TP, int] = {}

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def getmany(self, timeout: float) -> Any:
        """Faust's, then a seek back for each partition paused while its records were
        being handed over: Faust drops the rest of a fetch of a partition no longer active
        (an operator's pause, the sink watcher's), and the consumer's position is already
        past them, so they would be fetched only after the partition's next message
        arrives (skip checks) or never (commits stop at the hole). When every partition
        is paused while a fetch waits, the active set it was given is empty, which
        aiokafka reads as "all": that fetch returns (and Faust drops) records of
        partitions paused long before, an operator's included."""
        self._fetched, self._handed = {}, {}
        generation = self.app.consumer_generation_id
        async for item in super().getmany(timeout):
            yield item
        app = self.app
        if (not self.flow_active or app.in_recovery
                or app.consumer_generation_id != generation):
            return  # the rebalance seeks every partition to its committed offset
        assigned, changelogs = self.assignment(), app.tables.changelog_topics
        for tp, offset in dropped(self._fetched, self._handed).items():
            if tp in assigned and tp.topic not in changelogs:
                log.info("records of a partition paused while handed over: fetched again "
                         "on resume", extra={"topic": tp.topic, "partition": tp.partition,
                                             "offset": offset})
                await self.seek(tp, offset)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)
        self._fetched = {tp: (batch[0].offset, batch[-1].offset)
                         for tp, batch in (records or {}).items() if batch}
        if not BULK_TOPICS or not records:
            return records
        bundled = {}
        for tp, batch in records.items():
            if tp.topic in BULK_TOPICS and batch:
                bundled[tp] = [_Fetched(batch)]
            else:
                bundled[tp] = batch
        return bundled

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        if not isinstance(record, _Fetched):
            self._handed[tp] = record.offset
            return super()._to_message(tp, record)
        self._handed[tp] = record.records[-1].offset
        generation = self.app.consumer_generation_id
        first = record.records[0].offset
        end, then = self._bundle_end.get(tp, (None, None))
        if end is not None and end < first and then == generation:
            first = end  # a gap in the log: nothing there to process, ack it with these
        self._bundle_end[tp] = (record.records[-1].offset + 1, generation)
        return Bundle(tp, record.records, first, generation)

    async def seek(self, partition: TP, offset: int) -> None:
        self._bundle_end.pop(partition, None)
        await super().seek(partition, offset)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Bundles skip offsets by design; each one acknowledges its own range instead.
        if tp.topic not in BULK_TOPICS:
            await super()._add_gap(tp, offset_from, offset_to)

    def ack(self, message: Message) -> bool:
        if self._stale(message) or self._never_delivered(message):
            return False
        if not isinstance(message, Bundle):
            return super().ack(message)
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            tp = message.tp
            committed = self._committed_offset[tp]
            offsets = range(message.first if committed is None else
                            max(message.first, committed), message.offset + 1)
            acked_index = self._acked_index[tp]
            self._unacked_messages.discard(message)
            new = [offset for offset in offsets if offset not in acked_index]
            try:
                if not new:
                    return False
                acked_index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
                return True
            finally:
                notify(self._waiting_for_ack)

    def _stale(self, message: Message) -> bool:
        """Whether ``message`` was fetched in an earlier rebalance generation; its ack is
        then dropped. Faust commits the first run of consecutive acked offsets even when
        it does not start at the committed offset, so an ack that arrives after a
        rebalance (a sink batch written late) could move the commit past records that
        were fetched but never delivered, and the stages' skip checks, reset at the
        assignment, would no longer see them. The new generation starts again from the
        committed offset, so the message is delivered (and acknowledged) again."""
        generation = getattr(message, "generation_id", None)
        if generation is None or generation == self.app.consumer_generation_id:
            return False
        self._drop_ack(message)
        return True

    def _never_delivered(self, message: Message) -> bool:
        """Whether ``message`` is acknowledged without a stream ever having handed it to
        an agent (a stream marks it ``tracked`` when it does); its ack is then dropped.
        Faust acks the events a stream skips, "so that the lag does not grow": one taken
        from its queue just as a rebalance stopped the flow, in the generation still
        current. Committed, a bundle's ack would skip a whole fetch no agent saw; dropped,
        it is delivered again from the committed offset. (A topic with two agents is
        covered only when neither got it.)"""
        if getattr(message, "tracked", True) or not self.app.topics.acks_enabled_for(
                message.topic):
            return False
        log.debug("an ack of a message no agent was given, dropped", extra={
            "topic": message.topic, "partition": message.partition, "offset": message.offset})
        self._drop_ack(message)
        return True

    def _drop_ack(self, message: Message) -> None:
        """Mark ``message`` done without acknowledging its offsets (``wait_empty`` ends)."""
        with ack_lock:
            if not message.acked:
                message.acked = True
                self._unacked_messages.discard(message)
                notify(self._waiting_for_ack)


def dropped(fetched: Mapping[TP, tuple[int, int]], handed: Mapping[TP, int]) -> dict[TP, int]:
    """Per partition whose fetched records (``fetched``: first and last offsets) were not
    all handed over (``handed``: the last offset handed over), the first one not."""
    back = {}
    for tp, (first, last) in fetched.items():
        done = handed.get(tp)
        if done is None:
            back[tp] = first
        elif done < last:
            back[tp] = done + 1
    return back


def keep_known_topics(client: AIOKafkaClient) -> None:
    """Make ``client`` keep tracking every topic it knows when a send names a new one.

    An aiokafka client that tracks no topic in particular asks the broker for all of them;
    a send to a topic missing from its metadata (one created after its last refresh: the
    operators' pauses topic) makes it track that topic alone, and the next refresh drops
    every other topic from its metadata. A batch waiting in the producer for such a topic
    (a table's changelog) then has no leader and waits until something sends to its
    topic again, and every commit waits for it (Faust flushes the producer first): the
    stall after a pause under load, where the paused input sent nothing more."""
    add_topic = client.add_topic

    def add_keeping_known(topic: str) -> Any:
        if not client._topics:
            client._topics.update(client.cluster.topics())
        return add_topic(topic)

    client.add_topic = add_keeping_known


class Producer(driver.Producer):
    def _new_producer(self, transactional_id: str | None = None) -> AIOKafkaProducer:
        producer = super()._new_producer(transactional_id)
        keep_known_topics(producer.client)
        return producer


class Transport(driver.Transport):
    Consumer = Consumer
    Producer = Producer


def faust_broker_url(url: str) -> str:
    """``kafka://host:port`` as the URL that selects this transport."""
    return f"{SCHEME}://{url.split('://', 1)[1]}"


