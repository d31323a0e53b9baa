"""Topics of the service, declared once. Every topic the service writes is created
by the worker with an explicit partition count and configs."""

from __future__ import annotations

from aiokafka.partitioner import murmur2

from app.main import app, settings

RETENTION_7D = {"retention.ms": str(7 * 24 * 3600 * 1000), "cleanup.policy": "delete"}

if settings.input_pattern:
    readings = app.topic(pattern=settings.input_pattern, value_type=bytes, key_type=bytes)
else:
    # internal=True: the worker creates a missing input topic with these partitions and
    # configs before subscribing (an existing topic is used as it is).
    readings = app.topic(*settings.input_topics, value_type=bytes, key_type=bytes,
                         internal=True, partitions=settings.partitions, config=RETENTION_7D)

dead_letters = app.topic(settings.dlq_topic, value_type=bytes, key_type=bytes, internal=True,
                         partitions=settings.partitions, config=RETENTION_7D)
late = app.topic(settings.late_topic, value_type=bytes, key_type=bytes, internal=True,
                 partitions=settings.partitions, config=RETENTION_7D)

#: Validated readings, partitioned by sensor: every sensor's state lives in one partition.
by_sensor = app.topic(f"{settings.app_id}-readings-by-sensor", value_type=bytes,
                      key_type=bytes, internal=True, partitions=settings.partitions,
                      config=RETENTION_7D)


def sensor_partition(sensor_id: str, partitions: int = settings.partitions) -> int:
    """The partition of a sensor: Kafka's default partitioner on the raw id, which is also
    where ``app.table_route`` looks for a table key equal to the sensor id."""
    return (murmur2(sensor_id.encode()) & 0x7FFFFFFF) % partitions
