"""The seam's table-store access (stream.store) and Kafka's partitioner (stream.partitioner).

``send_changelog`` with aiokafka's own batch builder and a stand-in client: changes go
in order, split into batches that fit, and the store's persisted offset follows the
last record once (and only if) the last batch is stored.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import TopicPartition

from stream.partitioner import partition_for
from stream.store import (
    CLEAN_STOP,
    Ledger,
    active_dbs,
    local_partitions,
    open_dbs,
    partition_db,
    prepare_tables,
    record_clean_stop,
    send_changelog,
)

TOPIC = "app-state-changelog"


class Builder(BatchBuilder):
    """Keeps what it was given, to compare with what was appended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, *, key: bytes, value: bytes | None, timestamp: Any, **kw: Any) -> Any:
        meta = super().append(key=key, value=value, timestamp=timestamp, **kw)
        if meta is not None:
            self.records.append((key, value))
        return meta


class Client:
    """The producer's aiokafka client as send_changelog uses it; batches of 1 KiB."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes | None]]]] = []
        self.futures: list[asyncio.Future] = []

    def create_batch(self) -> Builder:
        return Builder(1024, 0)  # no compression

    async def send_batch(self, batch: Builder, topic: str, partition: int) -> asyncio.Future:
        self.sent.append((topic, partition, batch.records))
        fut = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut


class Data:
    def __init__(self) -> None:
        self.dbs = {0: {"p": 0}, 1: {"p": 1}, 2: {"p": 2}}
        self._dbs = self.dbs
        self.persisted: list[tuple[TopicPartition, int]] = []

    def _db_for_partition(self, partition: int) -> dict:
        return self.dbs[partition]

    def _dbs_for_actives(self) -> list[dict]:
        return [self.dbs[1], self.dbs[2]]

    def set_persisted_offset(self, tp: TopicPartition, offset: int) -> None:
        self.persisted.append((tp, offset))


def fakes() -> tuple[Any, Any, Client]:
    client = Client()
    table = SimpleNamespace(data=Data(), changelog_topic_name=TOPIC,
                            changelog_topic=SimpleNamespace(get_topic_name=lambda: TOPIC))
    actives = {TopicPartition(TOPIC, 2), TopicPartition("other", 0), TopicPartition(TOPIC, 0)}
    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: client),
                          assignor=SimpleNamespace(assigned_actives=lambda: actives))
    return app, table, client


def test_partition_dbs_and_local_partitions():
    app, table, _ = fakes()
    assert partition_db(table, 1) == {"p": 1}
    assert list(active_dbs(table)) == [{"p": 1}, {"p": 2}]
    assert local_partitions(app, table) == [0, 2]
    assert open_dbs(table) == table.data.dbs
    assert open_dbs(SimpleNamespace(data=SimpleNamespace())) == {}  # not a RocksDB store


async def test_send_changelog_in_order_in_batches_then_persisted_offset():
    app, table, client = fakes()
    changes = [(f"k{i:03}".encode(), b"v" * 100 if i % 5 else None) for i in range(40)]
    await send_changelog(app, table, 3, changes)
    assert len(client.sent) > 1  # 40 records of ~100 bytes do not fit one 1 KiB batch
    assert {(topic, p) for topic, p, _ in client.sent} == {(TOPIC, 3)}
    assert [r for _, _, records in client.sent for r in records] == changes
    last = len(client.sent[-1][2])
    client.futures[0].set_result(SimpleNamespace(topic_partition=TopicPartition(TOPIC, 3),
                                                 offset=0))
    await asyncio.sleep(0)
    assert table.data.persisted == []  # only the last batch moves the persisted offset
    client.futures[-1].set_result(SimpleNamespace(topic_partition=TopicPartition(TOPIC, 3),
                                                  offset=100))
    await asyncio.sleep(0)
    assert table.data.persisted == [(TopicPartition(TOPIC, 3), 100 + last - 1)]


async def test_send_changelog_nothing_to_send_or_failed_send():
    app, table, client = fakes()
    await send_changelog(app, table, 0, [])
    assert client.sent == []
    await send_changelog(app, table, 0, [(b"k", b"v")])
    client.futures[-1].set_exception(RuntimeError("not stored"))
    await asyncio.sleep(0)
    assert table.data.persisted == []
    await send_changelog(app, table, 0, [(b"k", b"v")])
    client.futures[-1].cancel()
    await asyncio.sleep(0)
    assert table.data.persisted == []


def test_partition_for_is_kafkas_default_partitioner():
    partitioner = DefaultPartitioner()
    for n in (1, 4, 8, 12):
        for key in [str(i).encode() for i in range(1, 60)] + [b"boiler-3", "é-1".encode()]:
            assert partition_for(key, n) == partitioner(key, list(range(n)), list(range(n)))


# -- keeping the local stores across a clean stop -----------------------------------------


def tabledir_with(tmp_path: Path) -> Path:
    tabledir = tmp_path / "tables"
    for name in ("state-0.db", "state-3.db", "locations-0.db", "statement-1.db"):
        (tabledir / name).mkdir(parents=True)
        (tabledir / name / "CURRENT").write_text("x")
    (tabledir / "stray.tmp").write_text("x")
    return tabledir


def test_a_clean_stop_keeps_the_named_stores_and_the_next_start_drops_the_rest(tmp_path):
    tabledir = tabledir_with(tmp_path)
    assert record_clean_stop(tabledir, ["state"], Ledger())
    assert (tabledir / CLEAN_STOP).exists()
    done = prepare_tables(tabledir, ["state"])
    assert done["kept"] == ["state-0.db", "state-3.db"]
    assert sorted(done["dropped"]) == ["locations-0.db", "statement-1.db", "stray.tmp"]
    assert sorted(p.name for p in tabledir.iterdir()) == ["state-0.db", "state-3.db"]
    assert not (tabledir / CLEAN_STOP).exists()  # one start only: a crash after it drops
    assert prepare_tables(tabledir, ["state"])["kept"] == []
    assert list(tabledir.iterdir()) == []


def test_without_the_mark_or_with_a_bad_one_every_store_is_dropped(tmp_path):
    tabledir = tabledir_with(tmp_path)
    assert prepare_tables(tabledir, ["state"])["kept"] == []
    assert list(tabledir.iterdir()) == []
    tabledir = tabledir_with(tmp_path / "bad")
    (tabledir / CLEAN_STOP).write_bytes(b"{not json")
    assert prepare_tables(tabledir, ["state"])["kept"] == []
    tabledir = tabledir_with(tmp_path / "other")
    (tabledir / CLEAN_STOP).write_bytes(b'{"tables": ["locations"]}')  # not keepable
    assert prepare_tables(tabledir, ["state"])["kept"] == []
    assert prepare_tables(tmp_path / "none", ["state"]) == {
        "tabledir": str(tmp_path / "none"), "kept": [], "dropped": []}


async def test_no_mark_while_a_write_is_unsent_unacknowledged_or_refused(tmp_path):
    tabledir = tabledir_with(tmp_path)
    ledger = Ledger()
    ledger.wrote()
    assert not record_clean_stop(tabledir, ["state"], ledger)
    ledger.handed()
    loop = asyncio.get_running_loop()
    sent = loop.create_future()
    ledger.track(sent)
    assert not record_clean_stop(tabledir, ["state"], ledger)
    sent.set_exception(KafkaError("refused"))
    await asyncio.sleep(0)  # the done callback runs
    assert ledger.in_flight == 0 and ledger.failed == 1
    assert not record_clean_stop(tabledir, ["state"], ledger)
    assert not (tabledir / CLEAN_STOP).exists()
    ok = Ledger()
    acked = loop.create_future()
    ok.track(acked)
    acked.set_result(None)
    await asyncio.sleep(0)
    assert record_clean_stop(tabledir, ["state"], ok)
