"""Deduplication evidence: the (metric, ts) pairs of a sensor already accepted.

Evidence is kept per sensor and event-time minute, in one table record
``b"<minute>|<sensor_id>"`` -> ``{metric: [ts, ...]}``. The minute comes first and is
zero-padded, so a partition's records sort by time and expire by a prefix scan.
Plain logic over a mutable mapping: the per-sensor agent hands it a Faust table.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping

import orjson

BUCKET_US = 60_000_000


def bucket_of(ts: int) -> int:
    return ts // BUCKET_US


def bucket_key(sensor_id: str, ts: int) -> str:
    return f"{ts // BUCKET_US:010d}|{sensor_id}"


def bucket_prefix(bucket: int) -> str:
    return f"{bucket:010d}|"


def expired(sorted_keys: Iterable[str], cutoff_bucket: int) -> tuple[list[str], int | None]:
    """Keys of buckets before ``cutoff_bucket`` and the oldest bucket that stays (None when
    none does), from a partition's keys in sorted order."""
    cutoff = bucket_prefix(cutoff_bucket)
    old = []
    for key in sorted_keys:
        if not key[:10].isdigit():
            continue
        if key >= cutoff:
            return old, int(key[:10])
        old.append(key)
    return old, None


class Expiry:
    """When a partition's evidence needs a scan: only once the cutoff passes the oldest
    bucket it may hold. Every bucket written after a scan is at or after that scan's
    cutoff, so the oldest bucket is known without reading the store again."""

    def __init__(self) -> None:
        self._oldest: dict[object, int | None] = {}

    def due(self, scope: object, cutoff_bucket: int) -> bool:
        if scope not in self._oldest:
            return True
        oldest = self._oldest[scope]
        return oldest is not None and oldest < cutoff_bucket

    def scanned(self, scope: object, oldest_kept: int | None) -> None:
        self._oldest[scope] = oldest_kept

    def wrote(self, scope: object, bucket: int) -> None:
        if scope in self._oldest:
            oldest = self._oldest[scope]
            self._oldest[scope] = bucket if oldest is None else min(oldest, bucket)


class Evidence:
    """Dedup evidence for one batch: records are read on first touch and every touched
    record is written back once, at ``flush``.

    A record touched by a duplicate is written back too. After a crash the local
    store can hold writes whose changelog records were never sent; the readings
    behind them are delivered again, found as duplicates, and the rewrite brings
    the changelog level with the store.
    """

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
        self._table = table
        self._records: dict[str, dict[str, set[int]]] = {}

    def _record(self, key: str) -> dict[str, set[int]]:
        record = self._records.get(key)
        if record is None:
            raw = self._table.get(key.encode())
            record = {} if raw is None else {m: set(ts) for m, ts in orjson.loads(raw).items()}
            self._records[key] = record
        return record

    def accept(self, sensor_id: str, metric: str, ts: int) -> bool:
        """True the first time (sensor_id, metric, ts) is seen; records it."""
        seen = self._record(bucket_key(sensor_id, ts)).setdefault(metric, set())
        if ts in seen:
            return False
        seen.add(ts)
        return True

    def flush(self) -> int:
        for key, record in self._records.items():
            self._table[key.encode()] = orjson.dumps({m: sorted(ts) for m, ts in record.items()})
        written = len(self._records)
        self._records.clear()
        return written
