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

import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from faust.types import AppT, CollectionT, TableT


class Ledger:
    """Whether every write this process made to a table's local store directly is in its
    changelog: only then may a stop leave the local stores for the next start
    (``app.main.prepare_tables``). Counted: stores holding writes not yet handed to the
    client (``wrote``/``handed``), changelog batches handed but not acknowledged, and
    batches the broker refused or that were cancelled."""

    def __init__(self) -> None:
        self.unsent = 0
        self.in_flight = 0
        self.failed = 0

    def wrote(self) -> None:
        """A store's first write not yet in the changelog."""
        self.unsent += 1

    def handed(self) -> None:
        """That store's writes are handed to the client."""
        self.unsent -= 1

    def track(self, sent: Any) -> None:
        """Follow one changelog batch's future until the broker acknowledges it."""
        self.in_flight += 1
        sent.add_done_callback(self._settled)

    def _settled(self, done: Any) -> None:
        self.in_flight -= 1
        if done.cancelled() or done.exception() is not None:
            self.failed += 1

    def all_stored(self) -> bool:
        return self.unsent == 0 and self.in_flight == 0 and self.failed == 0


#: The process's ledger of direct table writes (``send_changelog``).
LEDGER = Ledger()


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
            LEDGER.track(await client.send_batch(batch, topic, partition=partition))
            batch = client.create_batch()
            batch.append(key=key, value=value, timestamp=None)  # a first always fits
    batch.close()
    last = await client.send_batch(batch, topic, partition=partition)
    LEDGER.track(last)
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


#: Written in the table directory at the end of a clean stop: the tables whose local
#: stores the next start keeps.
CLEAN_STOP = "clean-stop.json"


def prepare_tables(tabledir: Path, keepable: Sequence[str]) -> dict[str, Any]:
    """Keep the local stores of ``keepable`` tables a clean stop vouched for
    (``record_clean_stop``); drop every other one, so Faust recovers it from its
    changelog. Returns what was kept and dropped.

    After a crash the local RocksDB files can hold writes that never reached the
    changelog (they were still in the producer's buffer). The window state is
    recoverable from any prefix of its changelog (docs/windows.md), not from a store
    that is ahead of it, so such a store is dropped. After a clean stop whose every
    direct write was acknowledged by the broker (``LEDGER``), a store equals its
    changelog up to its persisted offset: kept, Faust replays only the changelog past
    it (writes another worker made meanwhile included). The mark is removed before
    anything is written, so a crash after this start drops the stores again.
    """
    marker = tabledir / CLEAN_STOP
    kept: list[str] = []
    if marker.exists():
        try:
            kept = [t for t in orjson.loads(marker.read_bytes())["tables"] if t in keepable]
        except (ValueError, KeyError, TypeError):
            kept = []
        marker.unlink()
        _fsync_dir(tabledir)
    patterns = [re.compile(rf"{re.escape(table)}-\d+\.db") for table in kept]
    dropped, held = [], []
    if tabledir.exists():
        for entry in sorted(tabledir.iterdir()):
            if any(p.fullmatch(entry.name) for p in patterns):
                held.append(entry.name)
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            dropped.append(entry.name)
    return {"tabledir": str(tabledir), "kept": held, "dropped": dropped}


def record_clean_stop(tabledir: Path, tables: Sequence[str], ledger: Ledger = LEDGER,
                      ) -> bool:
    """Mark the local stores of ``tables`` as the next start's to keep, when every direct
    write of this process is in the changelogs (``ledger``); returns whether it did."""
    if not ledger.all_stored() or not tabledir.exists():
        return False
    with open(tabledir / CLEAN_STOP, "wb") as out:
        out.write(orjson.dumps({"tables": list(tables)}))
        out.flush()
        os.fsync(out.fileno())
    _fsync_dir(tabledir)
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
