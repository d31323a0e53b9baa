"""The worker's tables: RocksDB-backed, changelogged, partitioned like the topics that
feed them. ``state`` holds everything of the per-sensor stage (tables.windows lists
its keys) in one table, so its changelog keeps the order of the writes."""

from __future__ import annotations

from collections.abc import Iterator

from faust.tables.base import Collection

from app.main import app, settings

# Raw UTF-8 keys: a table key equal to a sensor id (or a location) is partitioned by
# Kafka's default partitioner, as app.topics routes them, so app.table_route finds it.
_TABLE = {"partitions": settings.partitions, "key_type": bytes, "value_type": bytes}

#: Windows, dedup evidence, watermarks, intervals and latest values per sensor.
state = app.Table("state", help="Per-sensor windows, evidence, watermarks", **_TABLE)
#: Hourly aggregates per location (tables.locations).
locations = app.Table("locations", help="Hourly aggregates per location", **_TABLE)


class TableStore:
    """One partition of a table as a ``tables.windows.Store``. Writes need the current
    event of that partition (Faust files them under it)."""

    def __init__(self, table: Collection, partition: int) -> None:
        self.table = table
        self.partition = partition

    def get(self, key: str) -> bytes | None:
        return self.table.get(key.encode())

    def put(self, key: str, value: bytes) -> None:
        self.table[key.encode()] = value

    def delete(self, key: str) -> None:
        del self.table[key.encode()]

    def scan(self, start: str) -> Iterator[str]:
        return local_keys(self.table, self.partition, start)


def local_keys(table: Collection, partition: int, start: str = "") -> Iterator[str]:
    """Keys of one partition of a RocksDB table from ``start`` on, in sorted order."""
    db = table.data._db_for_partition(partition)  # type: ignore[attr-defined]
    for key in db.keys(from_key=start.encode()):
        yield key.decode() if isinstance(key, bytes) else key


def local_get(table: Collection, partition: int, key: str) -> bytes | None:
    """A key of one partition, read without an event (HTTP views)."""
    return table.data._db_for_partition(partition).get(key.encode())  # type: ignore[attr-defined]


def local_prefixed(table: Collection, prefix: str) -> Iterator[tuple[str, bytes]]:
    """``(key, value)`` of the keys starting with ``prefix`` in the partitions this worker
    serves (actives), partition by partition."""
    for db in table.data._dbs_for_actives():  # type: ignore[attr-defined]
        for key, value in db.items(from_key=prefix.encode()):
            text = key.decode() if isinstance(key, bytes) else key
            if not text.startswith(prefix):
                break
            yield text, value


def local_partitions(table: Collection) -> list[int]:
    """The partitions of ``table`` this worker serves (actives)."""
    topic = table.changelog_topic_name  # type: ignore[attr-defined]
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)
