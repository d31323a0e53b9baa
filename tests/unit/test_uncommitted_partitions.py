"""A partition the group never committed, after a worker was killed: the records fetched
before Faust's seek to the committed offsets (dropped, never processed) are fetched and
processed again, and the skip check counts from the log start, not from the first record
delivered. Before, both missed them and Faust committed past them (the SIGKILL x3 sink
test lost 468 to 1736 sealed windows this way)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from stream import reread
from stream.guard import SkipGuard
from stream.transport import ConsumerThread

AGG = "aggregates"
CHANGELOG = "app-state-changelog"


def record(offset: int) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=b"k", value=b"v%d" % offset, timestamp=0)


class Fetcher:
    """aiokafka's fetcher as ``_fetch_records`` uses it: hands out prepared batches."""

    def __init__(self) -> None:
        self._closed = False
        self._subscriptions = SimpleNamespace(fetch_context=contextlib.nullcontext)
        self.batches: list[dict] = []

    async def fetched_records(self, partitions: Any, timeout: Any = None,
                              max_records: Any = None) -> dict:
        return self.batches.pop(0) if self.batches else {}


class KafkaConsumer:
    """The aiokafka consumer of one worker: committed offsets and the seeks made."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self._closed = False
        self._fetcher = Fetcher()
        self.committed = committed
        self.seeks: dict[TopicPartition, int] = {}

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        for tp, offset in self.committed.items():  # as aiokafka: only offsets above 0
            if offset and offset > 0:
                self.seeks[tp] = offset
        return dict(self.committed)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset


def consumer_thread(kafka: KafkaConsumer, generation: int) -> ConsumerThread:
    thread = object.__new__(ConsumerThread)  # no worker: only the seek bookkeeping runs
    thread._consumer = kafka
    thread._fetch_start = {}
    thread.app = SimpleNamespace(consumer_generation_id=generation,
                                 tables=SimpleNamespace(changelog_topics={CHANGELOG}))
    thread.consumer = SimpleNamespace(flow_active=True)
    return thread


async def test_a_never_committed_partition_goes_back_to_where_its_fetching_started():
    never, kept, zero = (TopicPartition(AGG, p) for p in (2, 0, 1))
    changelog = TopicPartition(CHANGELOG, 2)
    kafka = KafkaConsumer({never: None, kept: 120, zero: 0, changelog: None})
    thread = consumer_thread(kafka, generation=1)
    # Fetched while the tables recovered, before the seek; Faust drops these records.
    kafka._fetcher.batches.append({never: [record(o) for o in range(0, 936)],
                                   kept: [record(o) for o in range(120, 1080)],
                                   changelog: [record(o) for o in range(0, 50)]})
    kafka._fetcher.batches.append({never: [record(o) for o in range(936, 1352)]})
    for _ in range(2):
        await thread._fetch_records(kafka, {never, kept, changelog})

    committed = await thread._seek_to_committed()

    assert committed[never] is None
    assert kafka.seeks == {never: 0, kept: 120, zero: 0}  # the changelog is Faust's own


async def test_a_start_fetched_in_an_earlier_generation_is_not_sought():
    tp = TopicPartition(AGG, 3)
    kafka = KafkaConsumer({tp: None})
    thread = consumer_thread(kafka, generation=4)
    kafka._fetcher.batches.append({tp: [record(7), record(8)]})
    await thread._fetch_records(kafka, {tp})
    thread.app.consumer_generation_id = 5  # a rebalance since: aiokafka reset the position

    await thread._seek_to_committed()

    assert kafka.seeks == {}


class BrokerConsumer:
    """An aiokafka consumer outside the group over one partition holding offsets
    ``log_start`` .. ``log_end - 1``, which the group never committed."""

    log_start, log_end = 0, 1352

    def __init__(self, **_kwargs: Any) -> None:
        self.position_at = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict:
        return {tp: self.log_start for tp in tps}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.tp = tps[0]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position_at = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.position_at

    async def getmany(self, tp: TopicPartition, timeout_ms: int) -> dict:
        batch = [record(o) for o in range(self.position_at, min(self.position_at + 500,
                                                                  self.log_end))]
        self.position_at += len(batch)
        return {tp: batch}


@pytest.fixture
def broker(monkeypatch):
    monkeypatch.setattr(reread, "AIOKafkaConsumer", BrokerConsumer)


async def skipped(guard: SkipGuard, first: int) -> list[int]:
    return [offset async for _t, _p, offset, *_ in guard.skipped({(AGG, 2): first})]


async def test_the_skip_check_of_a_never_committed_partition_counts_from_the_log_start(broker):
    guard = SkipGuard({}, "group", offset_reset="earliest")
    assert await skipped(guard, 936) == list(range(0, 936))
    guard.advance(AGG, 2, 1351)
    assert await skipped(guard, 1352) == []


async def test_with_offset_reset_latest_it_counts_from_the_first_record_delivered(broker):
    assert await skipped(SkipGuard({}, "group", offset_reset="latest"), 936) == []
