"""What a plugin builds on: the app, the hand-over topic and its readings, tables.

A plugin module (app.plugins) declares agents, tables and views on the project's own
app, as the built-in ones do::

    from app.plugin_api import app, deliveries, handovers, table

    stats = table("plugin-example-stats")  # bytes keys, JSON values

    @app.agent(handovers, name="plugin-example")
    async def example(stream):
        async for delivered in deliveries(stream):
            ...  # delivered.reading is an app.contract.Reading

The contract (README, "Writing a plugin"): readings are validated and normalised
(``app.contract``), partitioned by sensor, at least once and *before* deduplication,
each with its lineage and its position in its partition, so that a plugin can be
idempotent. Its agent shares the hand-over topic with the per-sensor stage and the
readings sink: a hand-over's offset is committed only once every one of them is done.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, NamedTuple

from faust.types import TableT

from app.contract import Reading, Source, decode_batch
from app.main import app, settings
from app.topics import KAFKA, sensor_partition
from app.topics import by_sensor as handovers
from stream.guard import SkipGuard
from tables.sensor_state import _ROCKSDB

__all__ = ["NAME_PREFIX", "Delivered", "Reading", "Source", "app", "deliveries",
           "handovers", "readings", "sensor_partition", "settings", "table"]

log = logging.getLogger(__name__)

#: The start of a plugin's table and agent names (``plugin-NAME-...``) and, as
#: ``/plugins/NAME/...``, of its views: never a collision with the project's own.
NAME_PREFIX = "plugin-"


class Delivered(NamedTuple):
    """One reading as a plugin receives it."""

    reading: Reading
    #: The input message it came from (topic, partition, offset, timestamp).
    source: Source
    #: When the validating stage handled it, microseconds since the epoch.
    ingested_at: int
    #: Its partition of the hand-over topic: the sensor's, ``sensor_partition(sensor_id)``.
    partition: int
    #: The offset of its hand-over message and its index in it.
    offset: int
    index: int

    @property
    def position(self) -> tuple[int, int]:
        """Increasing within a partition, and a sensor's readings all come through one:
        remembering the last position applied per key makes a plugin idempotent."""
        return self.offset, self.index


def _unpack(value: bytes, partition: int, offset: int) -> Iterator[Delivered]:
    for index, (reading, source, at) in enumerate(decode_batch(value).rows):
        yield Delivered(reading, source, at, partition, offset, index)


async def deliveries(stream: Any) -> AsyncIterator[Delivered]:
    """The readings of an agent's stream over ``handovers``, in order per partition.

    A hand-over is acknowledged once the agent asks for the reading after its last, so
    its offset is committed only after the plugin handled all of it (and every table
    write that made is in the changelog). Hand-overs Faust's consumer skipped around a
    rebalance are read back from the broker first, as the built-in stages do.
    """
    guard = SkipGuard.for_stage(app, KAFKA, settings.app_id, settings.offset_reset)
    topic = handovers.get_topic_name()
    async for event in stream.events():
        message = event.message
        partition, offset = message.partition, message.offset
        async for _t, _p, skipped, _key, value, _ts in guard.skipped(
                {(topic, partition): offset}):
            log.warning("the consumer skipped a hand-over: read it back",
                        extra={"partition": partition, "offset": skipped})
            for delivered in _unpack(value, partition, skipped):
                yield delivered
        for delivered in _unpack(event.value, partition, offset):
            yield delivered
        guard.advance(topic, partition, offset)


async def readings(stream: Any) -> AsyncIterator[Reading]:
    """``deliveries`` without the lineage: the canonical readings alone."""
    async for delivered in deliveries(stream):
        yield delivered.reading


def table(name: str, *, help: str = "", **options: Any) -> TableT:
    """A plugin's table: ``app.Table`` partitioned like ``handovers``, with the project's
    bounded RocksDB memory. Its changelog topic, ``APP_ID-NAME-changelog``, is created by
    the worker with the same partitions.

    Keys are ``bytes`` by default (Faust's raw serializer): a key equal to a sensor id
    (``sensor_id.encode()``) is then in its sensor's partition, where ``app.table_route``
    looks for it. Values are JSON unless ``value_type`` says otherwise (``bytes``: raw).
    """
    if not name.startswith(NAME_PREFIX) or len(name) <= len(NAME_PREFIX):
        raise ValueError(f"a plugin's table name starts with {NAME_PREFIX!r} and its plugin's "
                         f"name (plugin-NAME-...), got {name!r}")
    return app.Table(name, help=help or f"plugin table {name}",
                     **{"partitions": settings.partitions, "options": dict(_ROCKSDB),
                        "key_type": bytes, **options})
