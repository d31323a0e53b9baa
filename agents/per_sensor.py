"""The per-sensor stage: deduplicate accepted readings and keep each sensor's latest values.

All state of a sensor lives in the partition its readings arrive on, so any number
of workers can share the work. Every table write happens inside the event that
carried the batch, so it lands in that partition's changelog.

A batch that meets duplicates writes back every record it touched, changed or not.
After a crash the local store can hold writes whose changelog records were never
sent; their readings are delivered again, found as duplicates, and the rewrite
brings the changelog level with the store (tables.dedup.Evidence does the same).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import orjson

from app import metrics
from app.contract import decode_batch, format_ts
from app.main import app, settings
from app.topics import by_sensor, late
from tables import latest
from tables.dedup import BUCKET_US, Evidence, Expiry, bucket_of, expired
from tables.sensor_state import dedup, local_keys, sensors, stream_time

log = logging.getLogger(__name__)

HORIZON_US = int(settings.dedup_horizon * 1_000_000)
_expiry = Expiry()


@app.agent(by_sensor, name="per-sensor")
async def per_sensor(stream):
    await late.maybe_declare()
    async for event in stream.events():
        await apply_batch(event.message.partition, event.value)


async def apply_batch(partition: int, value: bytes) -> None:
    part_key = str(partition).encode()
    raw_time = stream_time.get(part_key)
    newest = int(raw_time) if raw_time is not None else 0
    evidence = Evidence(dedup)
    latest_records: dict[str, dict[str, Any]] = {}
    late_records: list[tuple[str, bytes]] = []
    counts: defaultdict[tuple[str, str], int] = defaultdict(int)
    oldest_written: int | None = None

    for reading, source, _ingested_at in decode_batch(value):
        topic = source.topic
        counts[topic, "in"] += len(reading.metrics)
        if reading.ts < newest - HORIZON_US:
            counts[topic, "late"] += len(reading.metrics)
            late_records.append((reading.sensor_id, _late_record(reading, source, newest)))
            continue
        newest = max(newest, reading.ts)
        fresh = {}
        for metric, metric_value in reading.metrics.items():
            if evidence.accept(reading.sensor_id, metric, reading.ts):
                fresh[metric] = metric_value
        duplicates = len(reading.metrics) - len(fresh)
        counts[topic, "accepted"] += len(fresh)
        counts[topic, "duplicate"] += duplicates
        counts[topic, "missing"] += sum(1 for v in fresh.values() if v is None)
        record = latest_records.get(reading.sensor_id)
        if record is None:
            raw = sensors.get(reading.sensor_id.encode())
            record = orjson.loads(raw) if raw is not None else None
        if fresh:
            bucket = bucket_of(reading.ts)
            oldest_written = bucket if oldest_written is None else min(oldest_written, bucket)
            record = latest.merge(record, reading.ts, fresh, reading.attributes)
        if record is not None:
            latest_records[reading.sensor_id] = record

    evidence.flush()
    scope = (partition, app.consumer_generation_id)
    if oldest_written is not None:
        _expiry.wrote(scope, oldest_written)
    for sensor_id, record in latest_records.items():
        sensors[sensor_id.encode()] = orjson.dumps(record)
    met_duplicates = any(n for (_topic, kind), n in counts.items() if kind == "duplicate")
    if raw_time is None or newest > int(raw_time) or met_duplicates:
        stream_time[part_key] = str(newest).encode()
    _expire(partition, scope, newest)
    for sensor_id, record in late_records:
        await late.send(key=sensor_id.encode(), value=record,
                        headers=[("sensorstream-reason", b"beyond_dedup_horizon")])
    for (topic, kind), n in counts.items():
        if n:
            _COUNTERS[kind](topic).inc(n)


_COUNTERS = {
    "in": metrics.READINGS_IN.labels,
    "accepted": metrics.ACCEPTED.labels,
    "duplicate": metrics.DUPLICATES.labels,
    "missing": metrics.MISSING.labels,
    "late": lambda topic: metrics.LATE.labels(topic, "beyond_dedup_horizon"),
}


def _late_record(reading, source, newest: int) -> bytes:
    return orjson.dumps({
        "reason": "beyond_dedup_horizon",
        "message": f"reading at {format_ts(reading.ts)} is more than "
                   f"{settings.dedup_horizon:g} s behind the partition's newest reading "
                   f"({format_ts(newest)}), so it cannot be checked for duplicates",
        "sensor_id": reading.sensor_id,
        "ts": format_ts(reading.ts),
        "metrics": reading.metrics,
        "attributes": reading.attributes,
        "source": {"topic": source.topic, "partition": source.partition,
                   "offset": source.offset},
    })


def _expire(partition: int, scope: tuple[int, int], newest: int) -> None:
    """Drop dedup evidence older than the horizon (scope: partition and rebalance
    generation, so a partition that moved is scanned afresh)."""
    cutoff = bucket_of(newest - HORIZON_US)
    if not _expiry.due(scope, cutoff):
        return
    keys, oldest_kept = expired(local_keys(dedup, partition), cutoff)
    _expiry.scanned(scope, oldest_kept)
    for key in keys:
        del dedup[key.encode()]
    if keys:
        log.info("expired %d dedup records", len(keys), extra={
            "partition": partition, "before": format_ts(cutoff * BUCKET_US)})
