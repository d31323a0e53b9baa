"""The worker's tables: RocksDB-backed, changelogged, partitioned like the topics that
feed them. ``state`` holds everything of the per-sensor stage (tables.windows lists
its keys) in one table, so its changelog keeps the order of the writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from faust.tables.base import Collection

from app.main import app, settings

# Raw UTF-8 keys: a table key equal to a sensor id (or a location) is partitioned by
# Kafka's default partitioner, as app.topics routes them, so app.table_route finds it.
# RocksDB memory per partition bounded (SENSORSTREAM_ROCKSDB_MEMORY): Faust's defaults
# (3 x 64 MiB write buffers and a 2 GiB block cache, per partition) let 100,000
# sensors take several GiB.
_ROCKSDB = {"write_buffer_size": settings.rocksdb_memory // 4, "max_write_buffer_number": 2,
            "block_cache_size": settings.rocksdb_memory // 2,
            "block_cache_compressed_size": 1 << 20}
_TABLE = {"partitions": settings.partitions, "key_type": bytes, "value_type": bytes,
          "options": _ROCKSDB}

#: Windows, dedup evidence, watermarks, intervals and latest values per sensor.
state = app.Table("state", help="Per-sensor windows, evidence, watermarks", **_TABLE)
#: Hourly aggregates per location (tables.locations).
locations = app.Table("locations", help="Hourly aggregates per location", **_TABLE)


class TableStore:
    """One partition of a table as a ``tables.windows.Store``: reads and writes go to the
    partition's RocksDB store directly, and the changes are kept, in order, until
    ``send_changes`` puts them in the changelog.

    Faust's own table writes hand each change to the client one at a time through its
    producer buffer (~100 µs each, docs/performance.md); a batch of readings writes
    thousands. Sent here as record batches, in the order written, through the same
    client, within the event that made them: Faust flushes that client before it commits
    the event's offset, so a change is in the changelog before its input is committed,
    as with Faust's writes."""

    def __init__(self, table: Collection, partition: int) -> None:
        self.table = table
        self.partition = partition
        self._db = table.data._db_for_partition(partition)  # type: ignore[attr-defined]
        self.changes: list[tuple[bytes, bytes | None]] = []

    def get(self, key: str) -> bytes | None:
        return self._db.get(key.encode())

    def put(self, key: str, value: bytes) -> None:
        raw = key.encode()
        self._db.put(raw, value)
        self.changes.append((raw, value))

    def delete(self, key: str) -> None:
        raw = key.encode()
        self._db.delete(raw)
        self.changes.append((raw, None))  # a tombstone: recovery deletes the key

    def scan(self, start: str) -> Iterator[str]:
        return local_keys(self.table, self.partition, start)

    async def send_changes(self) -> None:
        """Append the changes to the changelog partition (the client sends them on)."""
        if not self.changes:
            return
        client = app.producer._ensure_producer()  # type: ignore[attr-defined]
        topic = self.table.changelog_topic.get_topic_name()
        batch = client.create_batch()
        for key, value in self.changes:
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                await client.send_batch(batch, topic, partition=self.partition)
                batch = client.create_batch()
                batch.append(key=key, value=value, timestamp=None)  # a first always fits
        batch.close()
        last = await client.send_batch(batch, topic, partition=self.partition)
        count = batch.record_count()
        self.changes = []
        last.add_done_callback(lambda done: self._persisted(done, count))

    def _persisted(self, done: Any, count: int) -> None:
        # As Faust's own changelog callback: the store remembers how far the changelog
        # holds it, so recovering this partition again starts from there.
        if done.cancelled() or done.exception() is not None or done.result() is None:
            return
        meta = done.result()
        self.table.data.set_persisted_offset(  # type: ignore[attr-defined]
            meta.topic_partition, meta.offset + count - 1)


def local_keys(table: Collection, partition: int, start: str = "") -> Iterator[str]:
    """Keys of one partition of a RocksDB table from ``start`` on, in sorted order."""
    db = table.data._db_for_partition(partition)  # type: ignore[attr-defined]
    for key in db.keys(from_key=start.encode()):
        yield key.decode() if isinstance(key, bytes) else key


def local_get(table: Collection, partition: int, key: str) -> bytes | None:
    """A key of one partition, read without an event (HTTP views)."""
    return table.data._db_for_partition(partition).get(key.encode())  # type: ignore[attr-defined]


def local_prefixed(table: Collection, prefix: str, partitions: list[int] | None = None,
                   ) -> Iterator[tuple[str, bytes]]:
    """``(key, value)`` of the keys starting with ``prefix`` in ``partitions`` (default:
    the partitions this worker serves, actives), partition by partition."""
    dbs = (table.data._dbs_for_actives() if partitions is None  # type: ignore[attr-defined]
           else [table.data._db_for_partition(p) for p in partitions])  # type: ignore[attr-defined]
    for db in dbs:
        for key, value in db.items(from_key=prefix.encode()):
            text = key.decode() if isinstance(key, bytes) else key
            if not text.startswith(prefix):
                break
            yield text, value


def local_partitions(table: Collection) -> list[int]:
    """The partitions of ``table`` this worker serves (actives)."""
    topic = table.changelog_topic_name  # type: ignore[attr-defined]
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)
