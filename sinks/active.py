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
from app.topics import aggregates, anomalies, by_sensor, dead_letters
from sinks.base import (
    Backoff,
    CircuitBreaker,
    Delivery,
    Guarded,
    Refusal,
    Sink,
    refusal_record,
)
from sinks.configured import make_sink
from sinks.records import AGGREGATES, ANOMALIES, READINGS

#: The topic each dataset comes from.
SOURCES = {READINGS.name: by_sensor, AGGREGATES.name: aggregates, ANOMALIES.name: anomalies}


def owns(dataset: str, partition: int) -> bool:
    if app.consumer is None:
        return False
    return TP(SOURCES[dataset].get_topic_name(), partition) in app.consumer.assignment()


def build_sinks() -> list[Sink]:
    return [make_sink(name, settings, Path(settings.lake_staging), owns)
            for name in settings.enabled_sinks]


async def send_refused(refused: list[Refusal]) -> None:
    """Rows a sink refused for their content to the dead-letter topic, confirmed by the
    broker before the delivery acknowledges their messages (it retries if this raises)."""
    await dead_letters.maybe_declare()
    sent = []
    for refusal in refused:
        key, value, headers = refusal_record(refusal)
        sent.append(await dead_letters.send(key=key, value=value, headers=headers))
    await app.producer.flush()
    for confirmation in sent:
        await confirmation  # raises if the broker did not take it


SINKS = build_sinks()
_guarded = [Guarded(sink, CircuitBreaker(settings.sink_breaker_failures,
                                         settings.sink_breaker_cooldown),
                    Backoff(base=0.2, cap=settings.sink_retry_max)) for sink in SINKS]
DELIVERIES = {dataset.name: Delivery(dataset, _guarded, settings.sink_batch_rows,
                                     settings.sink_batch_window, send_refused)
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


