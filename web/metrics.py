"""``/metrics``: the readings accounting (app.metrics), the sinks' metrics, consumer lag,
table sizes, and Faust's own sensor metrics (``faust_*``).

A scrape never does I/O and never scans a table: the lag comes from memory (the log
ends a background task fetches, ``refresh_log_ends``, and the offset the group last
committed), and the table sizes from counts a background task keeps
(``count_table_keys``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import TP
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.main import app
from app.topics import KAFKA
from stream.consumer import progress
from stream.offsets import LogEnds
from stream.store import open_dbs

log = logging.getLogger(__name__)

setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="faust")

LEADER_SUFFIX = "-__assignor-__leader"


def _started() -> bool:
    return bool(app.started) and app.consumer is not None


#: Seconds between two fetches of the log ends of the partitions this worker consumes.
LOG_ENDS_EVERY_S = 2.0


log_ends = LogEnds(KAFKA)


def consumer_lag() -> dict[TP, int]:
    """Per partition this worker consumes (its tables' changelogs and Faust's assignor
    topic left out), paused or not: the log end minus the group's committed offset, or
    minus the consumer's position while nothing is committed yet.

    The log end is the newer of the consumer's last high watermark of the partition and
    the one ``refresh_log_ends`` fetched last (both are fetches' high watermarks, right
    on every broker): a paused partition's own is as old as its pause. A partition with
    neither has no lag yet. Read from memory only: the aiokafka consumer runs in Faust's
    consumer thread; its state is only read here.
    """
    now = progress(app.consumer)
    if now is None:
        return {}
    fetched = log_ends.ends
    lags: dict[TP, int] = {}
    for tp in now.assignment():
        if not _consumed(tp):
            continue
        try:
            own = now.highwater(tp)
        except AssertionError:  # revoked meanwhile
            continue
        ends = [e for e in (own, fetched.get(TP(tp.topic, tp.partition))) if e is not None]
        if not ends:
            continue
        done = now.done(tp)
        if done is None:
            continue
        lags[TP(tp.topic, tp.partition)] = max(0, max(ends) - done)
    return lags


def _consumed(tp: Any) -> bool:
    """Whether the lag of ``tp`` is shown: not a table's changelog, not the assignor's."""
    return (tp.topic not in app.tables.changelog_topics
            and not tp.topic.endswith(LEADER_SUFFIX))


@app.task
async def refresh_log_ends() -> None:
    """Fetch the log ends of the partitions this worker consumes every few seconds, for
    the lag of paused ones; a failed round is logged and the next one tries again."""
    try:
        while True:
            await asyncio.sleep(LOG_ENDS_EVERY_S)
            if not _started():
                continue
            try:
                await log_ends.refresh({tp for tp in app.consumer.assignment()
                                        if _consumed(tp)})
            except Exception as exc:  # the broker unreachable, say: the next round
                log.warning("log ends not fetched this round: %s", str(exc)[:300])
                await log_ends.close()
    finally:
        await log_ends.close()


class LagCollector(Collector):
    """``sensorstream_consumer_lag{topic,partition}``, computed at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sensorstream_consumer_lag",
            "Messages behind the log end per partition this worker consumes, paused or "
            "not: the log end (a fetch's high watermark) minus the group's committed offset",
            labels=["topic", "partition"])
        if _started():
            try:
                lags = consumer_lag()
            except RuntimeError as exc:  # the assignment changed while it was read
                log.debug("consumer lag not read this time: %s", exc)
                lags = {}
            for tp, lag in sorted(lags.items()):
                family.add_metric([tp.topic, str(tp.partition)], lag)
        yield family


class TableKeys(Collector):
    """``sensorstream_table_keys{table,partition}``: the counts ``count_table_keys``
    made last, for the partitions still open."""

    def __init__(self) -> None:
        #: (table, partition) -> keys
        self.counts: dict[tuple[str, int], int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sensorstream_table_keys",
            "Keys of each table partition held on this worker (actives and standbys), "
            "counted in the background", labels=["table", "partition"])
        open_now = set(_open_partitions())
        for (table, partition), n in sorted(self.counts.items()):
            if (table, partition) in open_now:
                family.add_metric([table, str(partition)], n)
        yield family


def _open_partitions() -> Iterator[tuple[str, int]]:
    for name, table in list(app.tables.items()):
        for partition in list(open_dbs(table)):
            yield name, partition


#: Keys read per step of a count; the stream runs between steps (~5 ms each).
COUNT_STEP = 10_000


async def count_keys(table: Any, partition: int) -> int | None:
    """Every key of one open table partition, counted a step at a time without holding
    the store across a step (Faust may drop and reopen it meanwhile); None when the
    partition closed during the count."""
    n = 0
    start: bytes | None = None
    while True:
        db = open_dbs(table).get(partition)
        if db is None:
            return None
        step = 0
        last = start
        for key in db.keys(from_key=start):
            if key == start:
                continue  # the previous step counted it
            n += 1
            step += 1
            last = key
            if step >= COUNT_STEP:
                break
        del db
        if step < COUNT_STEP:
            return n
        start = last
        await asyncio.sleep(0)


lag = LagCollector()
table_keys = TableKeys()
REGISTRY.register(lag)
REGISTRY.register(table_keys)

#: A count runs at most every ``MIN_INTERVAL_S`` and takes at most 1/``DUTY`` of the
#: time: 1,500,000 keys take ~0.6 s, so they are counted every minute (~1 % of a core).
MIN_INTERVAL_S = 15.0
DUTY = 100


@app.task
async def count_table_keys() -> None:
    """Recount every open table partition in the background for ``/metrics``; a failed
    round is logged and the next one tries again, so the task never ends."""
    while True:
        if not _started() or not app.tables.recovery.completed.is_set():
            await asyncio.sleep(1.0)
            continue
        began = time.monotonic()
        counts: dict[tuple[str, int], int] = {}
        try:
            for name, partition in list(_open_partitions()):
                n = await count_keys(app.tables[name], partition)
                if n is not None:
                    counts[(name, partition)] = n
                await asyncio.sleep(0)
            table_keys.counts = counts
        except Exception as exc:  # a store closed under the count, say: the next round
            log.warning("table keys not counted this round: %s", exc)
        took = time.monotonic() - began
        await asyncio.sleep(max(MIN_INTERVAL_S, DUTY * took))


@app.on_partitions_assigned.connect
async def log_assignment(_app: Any, assigned: set[TP], **_kwargs: Any) -> None:
    """One line per topic of the new assignment: ``topic`` and ``partitions``."""
    by_topic: dict[str, list[int]] = {}
    for tp in assigned:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    generation = app.consumer_generation_id
    for topic, partitions in sorted(by_topic.items()):
        log.info("partitions assigned: %s %s", topic, sorted(partitions), extra={
            "topic": topic, "partitions": sorted(partitions), "generation": generation})
