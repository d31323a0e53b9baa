"""The per-sensor stage's tables: RocksDB-backed, changelogged, partitioned like the
``readings-by-sensor`` topic that feeds them."""

from __future__ import annotations

from collections.abc import Iterator

from faust.tables.base import Collection

from app.main import app, settings

# Raw UTF-8 keys: the changelog key of a sensor is its id's bytes, so Kafka's default
# partitioner (app.table_route) finds the same partition as app.topics.sensor_partition.
_TABLE = {"partitions": settings.partitions, "key_type": bytes, "value_type": bytes}

#: ``b"<minute>|<sensor_id>"`` -> dedup evidence (tables.dedup).
dedup = app.Table("dedup", help="Accepted (metric, ts) per sensor and minute", **_TABLE)
#: ``b"<sensor_id>"`` -> latest values (tables.latest).
sensors = app.Table("sensors", help="Latest value of each metric per sensor", **_TABLE)
#: ``b"<partition>"`` -> the largest event time seen in that partition (microseconds).
stream_time = app.Table("stream-time", help="Newest event time per partition", **_TABLE)


def local_keys(table: Collection, partition: int) -> Iterator[str]:
    """Keys of one partition of a RocksDB table, in sorted order."""
    db = table.data._db_for_partition(partition)  # type: ignore[attr-defined]
    for key in db.keys():  # noqa: SIM118  (an Rdict iterates keys in order only this way)
        yield key.decode() if isinstance(key, bytes) else key
