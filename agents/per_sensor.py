"""The per-sensor stage: deduplicate readings, keep event-time windows, seal and emit them.

All state of a sensor lives in the partition its readings arrive on (tables.windows),
so any number of workers can share the work. Every table write happens inside the
event that carried the batch, so it lands in that partition's changelog, in order.
Sealed windows are sent and the producer flushed before their seal is written: after
a crash a seal is repeated (and emitted again), never stored without its output.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson

from app import metrics
from app.contract import (
    Handover,
    Reason,
    Rejection,
    Source,
    dead_letter,
    format_ts,
    now_us,
    parse_time,
)
from app.handover import BadHandover, decode_checked
from app.locations import location_of
from app.main import app, settings
from app.topics import (
    KAFKA,
    aggregates,
    anomalies,
    by_location,
    by_sensor,
    dead_letters,
    late,
)
from stream.guard import Gap, SkipGuard
from tables import fault_rules
from tables import locations as location_windows
from tables.anomalies import RECENT, RECENT_DIGITS, Judgement
from tables.baseline import Rules
from tables.daily import DAY, DAY_DIGITS, DAY_S, Days
from tables.sensor_state import TableStore, local_keys, local_partitions, state
from tables.stats import Sketching
from tables.windows import (
    LATEST,
    Batch,
    Expiry,
    Late,
    Windows,
    emitted,
    expired,
    older_than,
    open_key,
)

log = logging.getLogger(__name__)

windows = Windows(
    sizes=settings.windows,
    lateness_us=int(settings.allowed_lateness * 1_000_000),
    horizon_us=int(settings.dedup_horizon * 1_000_000),
    sketching=Sketching(settings.sketch_accuracy),
    location_of=location_of,
)
_expiry = Expiry()
#: How far a partition's event time moves on between checks of its sensors for
#: silence, and where it stood at the last check (event time: a replay checks as often).
SILENCE_SCAN_US = 30_000_000
_silence_scanned: dict[int, int] = {}
RULES = Rules.from_settings(settings)
aggregates_topic = aggregates.get_topic_name()
FAULTS = fault_rules.parse(settings.fault_rules)
#: Day records (tables.daily) are kept as long as the longest-kept windows.
DAY_RETENTION_S = max(size.retention for size in settings.windows)


def _next_offset(_topic: str, partition: int) -> int | None:
    """The hand-over offset the partition's state expects next (tables.windows)."""
    return windows.batch(TableStore(state, partition), partition).next_offset


#: Notices hand-overs the consumer skipped, against the offset stored with the state.
_guard = SkipGuard.for_stage(app, KAFKA, settings.app_id, settings.offset_reset,
                             expected=_next_offset)


@app.agent(by_sensor, name="per-sensor")
async def per_sensor(stream):
    for topic in (late, aggregates, anomalies, by_location, dead_letters):
        await topic.maybe_declare()
    async for event in stream.events():
        partition, offset = event.message.partition, event.message.offset
        for gap in await _guard.gaps({(by_sensor.get_topic_name(), partition): offset}):
            await _apply_skipped(gap)
        await apply_batch(partition, event.value, offset)


async def _apply_skipped(gap: Gap) -> None:
    """Apply the hand-overs the consumer skipped, read back from the topic. Faust's
    consumer can drop fetched messages around recovery and rebalances and then commit
    past them; without this their readings would be lost (stream/guard.py)."""
    partition, start, end = gap.partition, gap.start, gap.end
    where = {"topic": gap.topic, "partition": partition, "offset": start,
             "last_offset": end - 1}
    log.warning("the consumer skipped %d hand-overs: reading them back", end - start,
                extra=where)
    applied = 0
    async for skipped in _guard.read(gap):
        await apply_batch(partition, skipped.value, skipped.offset)
        applied += 1
    metrics.HANDOVERS_REFETCHED.labels(str(partition)).inc(applied)
    if applied < end - start:
        metrics.HANDOVERS_UNRECOVERABLE.labels(str(partition)).inc(end - start - applied)
        log.error("%d skipped hand-overs are no longer in the topic", end - start - applied,
                  extra=where)


#: One batch or silence check of a partition at a time: the wall clock's check
#: (``silence_by_wall_clock``) runs between the agent's awaits.
_locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)


async def apply_batch(partition: int, value: bytes, offset: int) -> None:
    async with _locks[partition]:
        await _apply_batch(partition, value, offset)


async def _apply_batch(partition: int, value: bytes, offset: int) -> None:
    store = TableStore(state, partition)
    days = Days(store, RULES.ranges)
    batch = windows.batch(store, partition, days)
    batch.delivered(offset)
    handover = await _decoded(partition, value, offset)
    judgement = Judgement(store, RULES, FAULTS, days, settings.silent_after,
                          batch.typical_interval)
    for reading, source, _ingested_at in handover.rows:
        previous = batch.last_seen(reading.sensor_id)
        batch.add(reading, source)
        judgement.observe(reading, batch.latest_values(reading.sensor_id), previous)
        _check_silence(batch, judgement, partition)  # a batch can span minutes
    batch.announce(handover.watermarks)
    if handover.dead_letters:
        at = min(batch.part["newest"], now_us()) or now_us()
        for sensor_id, n in handover.dead_letters.items():
            days.dead_letters(sensor_id, at, n)
    sealed = batch.seal()
    if sealed or judgement.events:
        await _emit(batch)
        for anomaly in judgement.events:
            await anomalies.send(key=anomaly["sensor_id"].encode(), value=orjson.dumps(anomaly))
            metrics.ANOMALIES.labels(anomaly["detector"], anomaly["severity"]).inc()
        await app.producer.flush()  # the output is durable before the state is stored
    judgement.write()
    days.write()
    batch.write()
    for entry in batch.late:
        await late.send(key=entry.reading.sensor_id.encode(), value=_late_record(entry),
                        headers=[("sensorstream-reason", entry.reason.encode())])
    for size, start in batch.created:
        _expiry.wrote((partition, app.consumer_generation_id, size.label), start)
    for anomaly in judgement.events:
        _expiry.wrote((partition, app.consumer_generation_id, RECENT), parse_time(anomaly["ts"]))
    for day_s in days.created:
        _expiry.wrote((partition, app.consumer_generation_id, DAY), day_s)
    _expire(store, partition, batch.part["newest"])
    _count(batch)
    await store.send_changes()
    _follow_liveness(partition, batch.part["newest"])


async def _decoded(partition: int, value: bytes | None, offset: int) -> Handover:
    """The hand-over at ``offset``, without what cannot be applied: a record another
    producer wrote to the topic is dead-lettered whole with its bytes and applied as an
    empty hand-over (its offset counts as applied), a reading of the wrong types alone
    (``reading_index``); the stage goes on. Counted in and dead-lettered under the
    hand-over topic's name: they hold no input reading. (The sink stage, reading the
    same topic, dead-letters what it cannot store on its own.)"""
    try:
        handover, bad = decode_checked(value)
    except BadHandover as exc:
        handover, bad = Handover([], {}, {}), [(None, exc.reason, str(exc))]
    else:
        bad = [(index, Reason.BAD_SHAPE, problem) for index, problem in bad]
    if not bad:
        return handover
    topic = by_sensor.get_topic_name()
    for index, reason, problem in bad:
        text = f"a hand-over the per-sensor stage cannot apply: {problem}"[:1000]
        record, headers = dead_letter(Rejection(reason, text, index), value,
                                      Source(topic, partition, offset))
        await dead_letters.send(key=None, value=record, headers=headers)
        metrics.READINGS_IN.labels(topic).inc()
        metrics.DEAD_LETTERED.labels(topic, reason).inc()
        log.error("dead-lettered from a hand-over: %s", text, extra={
            "topic": topic, "partition": partition, "offset": offset, "reason": str(reason),
            "reading_index": index})
    return handover


#: Per live partition (its newest reading within ``LIVE_US`` of the wall clock when a
#: batch brought it): that reading time and the wall clock then. A replay or a backlog
#: is not live: its silences are found in event time only.
_live: dict[int, tuple[int, int]] = {}
LIVE_US = 60_000_000


def _follow_liveness(partition: int, newest: int) -> None:
    wall = now_us()
    if newest and wall - newest <= LIVE_US:
        _live[partition] = (newest, wall)
    else:
        _live.pop(partition, None)


@app.timer(SILENCE_SCAN_US / 3e6)
async def silence_by_wall_clock() -> None:
    """While input is live, sensors are judged silent by the wall clock too: a partition
    whose every sensor went quiet gets no batch to move its event time on. Its event
    time is taken to move with the wall clock from its last live batch."""
    if app.in_recovery:
        return
    mine = set(local_partitions(state))
    for partition, (newest, at) in list(_live.items()):
        if partition not in mine:
            _live.pop(partition, None)
            continue
        now = newest + (now_us() - at)
        if now - _silence_scanned.get(partition, 0) < SILENCE_SCAN_US:
            continue
        async with _locks[partition]:
            try:
                await _check_quiet_partition(partition, now)
            except Exception as exc:  # revoked meanwhile, store closed: the next batch checks
                log.warning("silence check by the wall clock failed: %s", str(exc)[:300],
                            extra={"partition": partition})


async def _check_quiet_partition(partition: int, now: int) -> None:
    store = TableStore(state, partition)
    days = Days(store, RULES.ranges)
    batch = windows.batch(store, partition, days)
    judgement = Judgement(store, RULES, FAULTS, days)
    _silence_scanned[partition] = now
    judgement.check_silence(_sensors(batch, partition), now, settings.silent_after)
    if not judgement.events:
        return
    for anomaly in judgement.events:
        await anomalies.send(key=anomaly["sensor_id"].encode(), value=orjson.dumps(anomaly))
        metrics.ANOMALIES.labels(anomaly["detector"], anomaly["severity"]).inc()
    await app.producer.flush()  # the events are durable before the state says "reported"
    judgement.write()
    days.write()
    for anomaly in judgement.events:
        _expiry.wrote((partition, app.consumer_generation_id, RECENT), parse_time(anomaly["ts"]))
    await store.send_changes()


def _check_silence(batch: Batch, judgement: Judgement, partition: int) -> None:
    # Never past the wall clock: one sensor whose clock runs ahead (readings up to
    # SENSORSTREAM_MAX_FUTURE are accepted) must not make all the others look silent.
    newest = min(batch.part["newest"], now_us())
    if newest - _silence_scanned.get(partition, 0) >= SILENCE_SCAN_US:
        _silence_scanned[partition] = newest
        judgement.check_silence(_sensors(batch, partition), newest, settings.silent_after)


#: The sensors of each partition, per rebalance generation: read from the table once,
#: then kept up to date from the batches, so a silence check never scans the store.
_known: dict[int, tuple[int, set[str]]] = {}


def _known_sensors(partition: int) -> set[str]:
    generation = app.consumer_generation_id
    cached = _known.get(partition)
    if cached is None or cached[0] != generation:
        found: set[str] = set()
        for key in local_keys(state, partition, LATEST):
            if not key.startswith(LATEST):
                break
            found.add(key[len(LATEST):])
        cached = _known[partition] = (generation, found)
    return cached[1]


def _sensors(batch: Batch, partition: int) -> Iterator[tuple[str, int, int | None]]:
    """``(sensor, last seen, typical interval)`` of every sensor of the partition."""
    known = _known_sensors(partition)
    known.update(batch.sensors())
    for sensor_id in known:
        last_seen = batch.last_seen(sensor_id)
        if last_seen is not None:
            yield sensor_id, last_seen, batch.typical_interval(sensor_id)


async def _emit(batch: Batch) -> None:
    handed: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for window in batch.sealed:
        for key, aggregate in emitted(window, windows.sketching):
            # The producer itself, not Topic.send: Faust's per-message bookkeeping
            # (channel, future message, sensors) was a third of the cost of emitting.
            # Durable at the flush that follows, as before.
            await app.producer.send(aggregates_topic, key.encode(), orjson.dumps(aggregate),
                                    None, None, None)
        metrics.WINDOWS_SEALED.labels(window.size.label).inc()
        location = window.record.get("loc")
        if window.size is windows.base and location is not None and not window.correction:
            handed[location].append({"sensor_id": window.sensor_id, "start": window.start_s,
                                     "size": window.size.seconds, "s": window.record["s"]})
    for location, items in handed.items():
        await by_location.send(key=location.encode(),
                               value=location_windows.hand_over(location, items))


def _count(batch: Batch) -> None:
    for (topic, kind), n in batch.counts.items():
        if not n:
            continue
        if kind.startswith("late:"):
            metrics.LATE.labels(topic, kind[5:]).inc(n)
        else:
            _COUNTERS[kind](topic).inc(n)


_COUNTERS = {
    "in": metrics.READINGS_IN.labels,
    "accepted": metrics.ACCEPTED.labels,
    "duplicate": metrics.DUPLICATES.labels,
    "missing": metrics.MISSING.labels,
}


def _late_record(entry: Late) -> bytes:
    reading, source = entry.reading, entry.source
    return orjson.dumps({
        "reason": entry.reason,
        "message": entry.message,
        "sensor_id": reading.sensor_id,
        "ts": format_ts(reading.ts),
        "metrics": entry.metrics,
        "attributes": reading.attributes,
        "source": {"topic": source.topic, "partition": source.partition,
                   "offset": source.offset},
    })


def _expire(store: TableStore, partition: int, newest: int) -> None:
    """Drop windows past their size's retention, anomaly events and day records past
    theirs. Scans only when something can expire (scope: partition and rebalance
    generation, so a partition that moved is scanned afresh)."""
    for size in windows.sizes:
        scope = (partition, app.consumer_generation_id, size.label)
        cutoff = int((newest / 1e6 - size.retention) // size.seconds * size.seconds)
        if not _expiry.due(scope, cutoff):
            continue
        keys, oldest_kept = expired(local_keys(state, partition, f"{size.label}|"),
                                    size, cutoff)
        _expiry.scanned(scope, oldest_kept)
        for key in keys:
            raw = store.get(key)
            if raw is not None and not orjson.loads(raw)["sealed"]:
                start = int(key.split("|", 2)[1])
                store.delete(open_key(size, start, key))
            store.delete(key)
        if keys:
            log.info("expired %d %s windows", len(keys), size.label, extra={
                "partition": partition, "before": format_ts(cutoff * 1_000_000)})
    for prefix, digits, cutoff in (
            (RECENT, RECENT_DIGITS, newest - int(settings.anomaly_retention * 1_000_000)),
            (DAY, DAY_DIGITS, int((newest / 1e6 - DAY_RETENTION_S) // DAY_S * DAY_S))):
        scope = (partition, app.consumer_generation_id, prefix)
        if _expiry.due(scope, cutoff):
            old, oldest_kept = older_than(local_keys(state, partition, prefix), prefix,
                                          digits, cutoff)
            _expiry.scanned(scope, oldest_kept)
            for key in old:
                store.delete(key)
