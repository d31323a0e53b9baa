"""The worker's tables: RocksDB-backed, changelogged, partitioned like the topics that
feed them. ``state`` holds everything of the per-sensor stage (tables.windows lists
its keys) in one table, so its changelog keeps the order of the writes."""

from __future__ import annotations

from collections.abc import Iterator

from faust.types import TableT

from app.main import app, settings
from stream.store import LEDGER, active_dbs, partition_db, send_changelog
from stream.store import local_partitions as _local_partitions

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
    thousands. Sent as record batches (``stream.store.send_changelog``), in the order
    written, through the same client, within the event that made them: Faust flushes
    that client before it commits the event's offset, so a change is in the changelog
    before its input is committed, as with Faust's writes."""

    def __init__(self, table: TableT, partition: int) -> None:
        self.table = table
        self.partition = partition
        self._db = partition_db(table, partition)
        self.changes: list[tuple[bytes, bytes | None]] = []

    def get(self, key: str) -> bytes | None:
        return self._db.get(key.encode())

    def put(self, key: str, value: bytes) -> None:
        raw = key.encode()
        if not self.changes:
            LEDGER.wrote()
        self._db.put(raw, value)
        self.changes.append((raw, value))

    def delete(self, key: str) -> None:
        raw = key.encode()
        if not self.changes:
            LEDGER.wrote()
        self._db.delete(raw)
        self.changes.append((raw, None))  # a tombstone: recovery deletes the key

    def scan(self, start: str) -> Iterator[str]:
        return local_keys(self.table, self.partition, start)

    async def send_changes(self) -> None:
        """Append the changes to the changelog partition (the client sends them on)."""
        if not self.changes:
            return
        await send_changelog(app, self.table, self.partition, self.changes)
        self.changes = []
        LEDGER.handed()


def local_keys(table: TableT, partition: int, start: str = "") -> Iterator[str]:
    """Keys of one partition of a RocksDB table from ``start`` on, in sorted order."""
    db = partition_db(table, partition)
    for key in db.keys(from_key=start.encode()):
        yield key.decode() if isinstance(key, bytes) else key


def local_get(table: TableT, partition: int, key: str) -> bytes | None:
    """A key of one partition, read without an event (HTTP views)."""
    return partition_db(table, partition).get(key.encode())


def local_prefixed(table: TableT, prefix: str, partitions: list[int] | None = None,
                   ) -> Iterator[tuple[str, bytes]]:
    """``(key, value)`` of the keys starting with ``prefix`` in ``partitions`` (default:
    the partitions this worker serves, actives), partition by partition."""
    dbs = (active_dbs(table) if partitions is None
           else [partition_db(table, p) for p in partitions])
    for db in dbs:
        for key, value in db.items(from_key=prefix.encode()):
            text = key.decode() if isinstance(key, bytes) else key
            if not text.startswith(prefix):
                break
            yield text, value


def local_partitions(table: TableT) -> list[int]:
    """The partitions of ``table`` this worker serves (actives)."""
    return _local_partitions(app, table)
