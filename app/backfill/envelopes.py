"""Readings into Kafka messages: the partition of a sensor, envelopes of many readings
per message, and chunks (the unit that is sent, acknowledged and checkpointed).

Readings are grouped per input partition in file order, so event time moves forward in
each partition as in the file and the worker's watermarks do not make readings late;
each envelope goes to the partition of its sensors and stays below Kafka's default
message size limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.backfill.formats import Record, Skip
from app.backfill.lines import LineStream, Position
from app.contract import ENVELOPE_FIELD
from stream.partitioner import partition_for

#: An envelope stays below Kafka's default message size limit (1 MB), whatever the topic.
MAX_ENVELOPE_BYTES = 900 * 1024


def kafka_partition(sensor_id: str, partitions: int) -> int:
    """Kafka's default partitioner on the sensor id, as ``app.topics.sensor_partition``
    and the simulator's keyed messages place a sensor."""
    return partition_for(sensor_id.encode(), partitions)


def envelopes(readings: list[dict[str, Any]], size: int,
              max_bytes: int = MAX_ENVELOPE_BYTES) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of envelopes ``{"readings": [...]}`` of at most ``size`` readings
    and ``max_bytes`` each (halved until they fit), in order. The key is the first
    reading's sensor id: every sensor in an envelope hashes to the same partition."""
    pending = [readings[i:i + size] for i in range(0, len(readings), size)]
    pending.reverse()  # a stack: the next envelope is on top
    while pending:
        part = pending.pop()
        value = orjson.dumps({ENVELOPE_FIELD: part})
        if len(value) > max_bytes and len(part) > 1:
            half = len(part) // 2
            pending.extend([part[half:], part[:half]])
            continue
        first = part[0]
        yield str(first.get("sensor_id", first.get("mote_id"))).encode(), value


@dataclass
class Chunk:
    """Consecutive records, ready to send: envelopes per partition, the position after
    the last record, and what it counts."""

    end: Position
    messages: list[tuple[int, bytes, bytes]]  #: (partition, key, value)
    counts: Counter[str]
    raw_end: int = 0  #: bytes of the file on disk consumed (progress)


def chunks(records: Iterable[Record], lines: LineStream, partitions: int, *,
           envelope: int = 1000, chunk_records: int = 10_000,
           partition_of: Callable[[str, int], int] = kafka_partition,
           on_skip: Callable[[Skip, int], None] | None = None,
           raw: Callable[[], int] | None = None) -> Iterator[Chunk]:
    """``records`` in chunks of ``chunk_records``: each partition's readings in file order."""
    cache: dict[Any, int] = {}
    groups: dict[int, list[dict[str, Any]]] = {}
    counts: Counter[str] = Counter()
    start_line = lines.line
    n = 0
    for item in records:
        n += 1
        if type(item) is tuple:
            key, reading = item
            p = cache.get(key)
            if p is None:
                if len(cache) > 1_000_000:
                    cache.clear()
                p = cache[key] = partition_of(str(key), partitions)
            group = groups.get(p)
            if group is None:
                group = groups[p] = []
            group.append(reading)
        else:
            counts[f"skipped:{item}"] += 1
            if on_skip is not None:
                on_skip(item, lines.line)
        if n == chunk_records:
            yield _chunk(groups, counts, n, lines, start_line, envelope, raw)
            groups, counts, n, start_line = {}, Counter(), 0, lines.line
    if lines.damage is not None:
        n += 1  # the unreadable rest counts as one record, skipped
        counts[f"skipped:{Skip.DAMAGED_GZIP}"] += 1
    if n or lines.line != start_line or counts:
        yield _chunk(groups, counts, n, lines, start_line, envelope, raw)


def _chunk(groups: dict[int, list[dict[str, Any]]], counts: Counter[str], n: int,
           lines: LineStream, start_line: int, envelope: int,
           raw: Callable[[], int] | None) -> Chunk:
    messages = [(p, key, value) for p in sorted(groups)
                for key, value in envelopes(groups[p], envelope)]
    counts["records"] = n
    counts["lines_read"] = lines.line - start_line
    counts["readings"] = sum(len(g) for g in groups.values())
    counts["messages"] = len(messages)
    return Chunk(lines.position, messages, counts, raw() if raw else 0)
