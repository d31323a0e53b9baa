"""The sinks this worker writes to, built from the settings, and their health.

Shared by the sink stage (agents/sinks.py), which feeds them, and the views
(``/ready``), which report on them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faust.types import TP

from app.main import app, settings
from app.topics import aggregates, anomalies, by_sensor
from sinks.base import Backoff, CircuitBreaker, Delivery, Guarded, Sink
from sinks.records import AGGREGATES, ANOMALIES, READINGS

#: The topic each dataset comes from.
SOURCES = {READINGS.name: by_sensor, AGGREGATES.name: aggregates, ANOMALIES.name: anomalies}


def owns(dataset: str, partition: int) -> bool:
    if app.consumer is None:
        return False
    return TP(SOURCES[dataset].get_topic_name(), partition) in app.consumer.assignment()


def build_sinks() -> list[Sink]:
    sinks: list[Sink] = []
    for name in settings.enabled_sinks:
        if name == "postgres":
            from sinks.postgres import PostgresSink

            sinks.append(PostgresSink(
                settings.pg_dsn, settings.pg_schema,
                {"readings": settings.pg_raw_retention,
                 "aggregates": settings.pg_aggregate_retention,
                 "anomalies": settings.pg_anomaly_retention},
                settings.pg_partitions_ahead, settings.pg_compress_after))
        elif name == "lake":
            from sinks.lake import LakeSink
            from sinks.objectstore import open_store

            sinks.append(LakeSink(
                open_store(settings.lake_url, settings.s3_endpoint or None),
                Path(settings.lake_staging), settings.lake_staging_max_size,
                settings.lake_staging_alarm_age, settings.lake_upload_concurrency,
                settings.lake_seal_idle, settings.allowed_lateness, owns=owns))
    return sinks


SINKS = build_sinks()
_guarded = [Guarded(sink, CircuitBreaker(settings.sink_breaker_failures,
                                         settings.sink_breaker_cooldown),
                    Backoff(base=0.2, cap=settings.sink_retry_max)) for sink in SINKS]
DELIVERIES = {dataset.name: Delivery(dataset, _guarded, settings.sink_batch_rows,
                                     settings.sink_batch_window)
              for dataset in (READINGS, AGGREGATES, ANOMALIES)}
started = asyncio.Event()
start_errors: dict[str, str] = {}


def sink_states() -> dict[str, dict[str, Any]]:
    """What ``/ready`` shows per sink: ok, or why it is degraded, and its facts."""
    states: dict[str, dict[str, Any]] = {}
    for guarded in _guarded:
        reason = (start_errors.get(guarded.name)
                  or (None if started.is_set() else "starting")
                  or guarded.degraded())
        states[guarded.name] = {"ok": reason is None, "reason": reason,
                                **guarded.sink.status()}
    return states


def degraded() -> dict[str, str]:
    return {name: state["reason"] for name, state in sink_states().items() if not state["ok"]}


