"""Topics of the service, declared once. Every topic the service writes is created
by the worker with an explicit partition count and configs."""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor

from aiokafka.admin import AIOKafkaAdminClient

from app.contract import MAX_RECORD_BYTES
from app.main import app, settings, stop_startup
from app.settings import PREFIX, SettingError
from stream.consumer import resubscribe
from stream.kafka import client_kwargs
from stream.partitioner import partition_for
from stream.transport import BULK_TOPICS

log = logging.getLogger(__name__)

RETENTION_7D = {"retention.ms": str(7 * 24 * 3600 * 1000), "cleanup.policy": "delete",
                "max.message.bytes": str(MAX_RECORD_BYTES + 64 * 1024)}
#: How the service's own clients (re-reads, topic listing) reach the broker, SASL/TLS
#: included: the same way as the worker's (stream.kafka).
KAFKA = client_kwargs(settings)


def _own(topic: str) -> bool:
    return topic in settings.internal_topics or topic.startswith(f"{settings.app_id}-")


async def matching_topics(pattern: str) -> list[str]:
    """Existing topics that fully match ``pattern``, never the service's own."""
    admin = AIOKafkaAdminClient(**KAFKA, request_timeout_ms=10_000)
    await admin.start()
    try:
        names = await admin.list_topics()
    finally:
        await admin.close()
    regex = re.compile(pattern)
    return sorted(t for t in names if regex.fullmatch(t) and not _own(t))


def _initial_pattern_topics() -> list[str]:
    # Faust's aiokafka driver cannot subscribe by pattern, so the pattern is resolved
    # here, before the worker's event loop runs (hence a thread with its own loop).
    setting = PREFIX + "INPUT_PATTERN"
    try:
        with ThreadPoolExecutor(1) as pool:
            names = pool.submit(asyncio.run, matching_topics(settings.input_pattern)).result(60)
    except Exception as exc:
        stop_startup(SettingError(setting, settings.input_pattern,
                                  f"cannot list topics at {settings.broker}: {exc}"))
    if not names:
        stop_startup(SettingError(setting, settings.input_pattern,
                                  "matches no existing topic; create the input topics first"))
    return names


if settings.input_pattern:
    readings = app.topic(*_initial_pattern_topics(), value_type=bytes, key_type=bytes)
else:
    # internal=True: the worker creates a missing input topic with these partitions and
    # configs before subscribing (an existing topic is used as it is).
    readings = app.topic(*settings.input_topics, value_type=bytes, key_type=bytes,
                         internal=True, partitions=settings.partitions, config=RETENTION_7D)
# A list, shared with the clone each agent iterates: new pattern matches join it in place.
readings.topics = list(readings.topics)

dead_letters = app.topic(settings.dlq_topic, value_type=bytes, key_type=bytes, internal=True,
                         partitions=settings.partitions, config=RETENTION_7D)
late = app.topic(settings.late_topic, value_type=bytes, key_type=bytes, internal=True,
                 partitions=settings.partitions, config=RETENTION_7D)

#: Each sealed window once, JSON, keyed by sensor id (consumers upsert by window,
#: sensor_id, metric and window_start).
aggregates = app.topic(settings.aggregates_topic, value_type=bytes, key_type=bytes,
                       internal=True, partitions=settings.partitions, config=RETENTION_7D)

#: Anomaly events, JSON, keyed by sensor id (upsert by sensor, metric, time, detector).
anomalies = app.topic(settings.anomalies_topic, value_type=bytes, key_type=bytes,
                      internal=True, partitions=settings.partitions, config=RETENTION_7D)

#: Validated readings, partitioned by sensor: every sensor's state lives in one partition.
by_sensor = app.topic(f"{settings.app_id}-readings-by-sensor", value_type=bytes,
                      key_type=bytes, internal=True, partitions=settings.partitions,
                      config=RETENTION_7D)


#: Sealed base windows, keyed (and so partitioned) by location, for the hourly
#: aggregates per location.
by_location = app.topic(f"{settings.app_id}-windows-by-location", value_type=bytes,
                        key_type=bytes, internal=True, partitions=settings.partitions,
                        config=RETENTION_7D)


#: One message per reading or per window: delivered in bundles (stream.transport), so
#: Faust's per-message cost is paid per fetch. Hand-overs are batches already.
BULK_TOPICS.update(readings.topics)
BULK_TOPICS.update((settings.aggregates_topic, settings.anomalies_topic))


def sensor_partition(sensor_id: str, partitions: int = settings.partitions) -> int:
    """The partition of a sensor: Kafka's default partitioner on the raw id, which is also
    where ``app.table_route`` looks for a table key equal to the sensor id."""
    return partition_for(sensor_id.encode(), partitions)


if settings.input_pattern:

    @app.timer(settings.input_pattern_refresh)
    async def subscribe_new_pattern_matches() -> None:
        """Add topics created since start-up that match the input pattern."""
        try:
            found = await matching_topics(settings.input_pattern)
        except Exception as exc:
            log.warning("cannot list topics for %s: %s", PREFIX + "INPUT_PATTERN", exc)
            return
        new = [t for t in found if t not in readings.topics]
        if new:
            readings.topics.extend(new)
            BULK_TOPICS.update(new)
            resubscribe(app)  # the conductor resubscribes (after its 45 s lock)
            log.info("new input topics match the pattern: %s", ", ".join(new),
                     extra={"pattern": settings.input_pattern})
