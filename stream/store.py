"""The partitions of a RocksDB-backed Faust table, and its changelog, reached directly.

Faust's public table API files every write under the current event's partition and
sends it to the changelog one record at a time through its producer buffer (~100 µs
each, docs/performance.md). The per-sensor stage writes thousands of keys per batch of
readings, reads partitions from HTTP views without an event, and lists the partitions
this worker serves. That needs the store's per-partition RocksDB handles
(``_db_for_partition``, ``_dbs_for_actives``), the producer's aiokafka client
(``_ensure_producer``) and the store's persisted-offset callback: all of it is here, so
``tables.sensor_state`` and the web views use only these names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faust.types import AppT, CollectionT, TableT


def partition_db(table: TableT, partition: int) -> Any:
    """The RocksDB handle (a ``rocksdict.Rdict``) of one partition of ``table``: ``get``,
    ``put``, ``delete``, ``keys``/``items(from_key=...)``, without a current event."""
    return table.data._db_for_partition(partition)  # type: ignore[attr-defined]


def active_dbs(table: TableT) -> Iterable[Any]:
    """The RocksDB handles of the partitions of ``table`` this worker serves (actives)."""
    return table.data._dbs_for_actives()  # type: ignore[attr-defined]


def open_dbs(table: CollectionT) -> dict[int, Any]:
    """partition -> RocksDB handle of every partition of ``table`` open on this worker
    (actives and standbys; the store's ``_dbs``), without opening any; empty for a table
    not kept in RocksDB. Faust may close and reopen a partition at a rebalance: look a
    handle up again rather than keep it across an ``await``."""
    return getattr(table.data, "_dbs", None) or {}


def local_partitions(app: AppT, table: TableT) -> list[int]:
    """The partitions of ``table`` this worker serves (actives), sorted."""
    topic = table.changelog_topic_name  # type: ignore[attr-defined]
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)


async def send_changelog(app: AppT, table: TableT, partition: int,
                         changes: list[tuple[bytes, bytes | None]]) -> None:
    """Append ``changes`` (``(key, value)``, value None a tombstone), in order, to the
    changelog partition of ``table`` as record batches, through the client of Faust's
    producer: Faust flushes that client before it commits an event's offset, so changes
    sent within the event are in the changelog before its input is committed. Once the
    last batch is stored, the store's persisted offset moves past it, as Faust's own
    changelog callback does, so recovering the partition again starts from there.
    Returns once the batches are handed to the client (not acknowledged)."""
    if not changes:
        return
    client = app.producer._ensure_producer()  # type: ignore[attr-defined]
    topic = table.changelog_topic.get_topic_name()
    batch = client.create_batch()
    for key, value in changes:
        if batch.append(key=key, value=value, timestamp=None) is None:
            batch.close()
            await client.send_batch(batch, topic, partition=partition)
            batch = client.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # a first always fits
    batch.close()
    last = await client.send_batch(batch, topic, partition=partition)
    count = batch.record_count()
    last.add_done_callback(lambda done: _persisted(table, done, count))


def _persisted(table: TableT, done: Any, count: int) -> None:
    # As Faust's own changelog callback: the store remembers how far the changelog
    # holds it, so recovering this partition again starts from there.
    if done.cancelled() or done.exception() is not None or done.result() is None:
        return
    meta = done.result()
    table.data.set_persisted_offset(  # type: ignore[attr-defined]
        meta.topic_partition, meta.offset + count - 1)
