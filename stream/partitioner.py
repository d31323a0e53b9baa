"""Kafka's default partitioner, the one place the project routes a key by it.

A sensor's readings, its table keys and the loader's envelopes must land on the same
partition as a keyed message sent by any Kafka client (the simulator, a device
gateway), and ``app.table_route`` looks a table key up there too: all of them use
aiokafka's ``murmur2``, as the Java client does.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``, as Kafka's default partitioner
    places a keyed message."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
