"""Anomaly notifications: events of the anomalies topic at or above
``NOTIFY_MIN_SEVERITY`` to each configured notifier (sinks.notifiers), at most
``NOTIFY_RATE_LIMIT`` per sensor and period, the rest as one summary at the period's end.

At least once: an anomaly's message is acknowledged (so its offset can be committed)
only once each of its notifications was delivered, dead-lettered (undeliverable within
``NOTIFY_RETRY_FOR``, or refused) or deliberately dropped (below the threshold, held
back by the rate limit). Deliveries run concurrently, up to ``IN_FLIGHT`` messages, so
one slow receiver delays the stream by at most its retry time, never for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import faust
import orjson

from app.contract import Rejection, Source, dead_letter
from app.main import app, settings
from app.topics import anomalies, dead_letters
from sinks import notifiers
from sinks.notifiers import Failure, Message, Notifier, Outcome, RateLimiter
from stream.transport import records_of

log = logging.getLogger(__name__)

NOTIFIERS: list[Notifier] = notifiers.from_settings(settings)
LIMITERS: dict[str, RateLimiter] = {
    n.name: RateLimiter(*settings.notify_rate_limit) for n in NOTIFIERS}
MIN_RANK = notifiers.severity_rank(settings.notify_min_severity)
#: Anomaly messages (bundles) whose notifications may be under way at once.
IN_FLIGHT = 64
_slots = asyncio.Semaphore(IN_FLIGHT)
_tasks: set[asyncio.Task[Any]] = set()


def _spawn(work: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def send_dead_letter(notifier: str, message: Message, outcome: Outcome | None,
                           reason: Failure, detail: str, original: bytes,
                           source: Source, sensor_id: str | None) -> None:
    """A dead-letter record (app.contract's shape) for a notification given up on:
    the reason, the notifier and its last error, the original anomaly bytes."""
    attempts = f" after {outcome.attempts} attempts" if outcome is not None else ""
    text = f"{message.kind} notification via {notifier}{attempts}: {detail}"
    if message.kind != "anomaly":  # the original is not its content: say what it was
        text += f"; it said: {message.text}"
    text = text[:1000]
    value, headers = dead_letter(Rejection(reason, text, sensor_id=sensor_id),  # type: ignore[arg-type]
                                 original, source)
    headers.append(("sensorstream-notifier", notifier.encode()))
    await dead_letters.send(key=sensor_id.encode() if sensor_id else None, value=value,
                            headers=headers)
    notifiers.DEAD_LETTERED.labels(notifier, message.kind).inc()


async def _deliver(notifier: Notifier, message: Message, original: bytes, source: Source,
                   sensor_id: str | None) -> None:
    outcome = await notifier.deliver(message)
    if not outcome.delivered:
        assert outcome.failure is not None
        await send_dead_letter(notifier.name, message, outcome, outcome.failure,
                               outcome.detail, original, source, sensor_id)


async def _settle(event: Any, jobs: list[Awaitable[None]]) -> None:
    """Run one message's deliveries; acknowledge it once every one has ended."""
    try:
        if jobs:
            await asyncio.gather(*jobs)
            await app.producer.flush()  # dead letters durable before the ack
        event.ack()
    except asyncio.CancelledError:
        raise  # shutting down: not acknowledged, delivered again
    except Exception as exc:  # a dead letter that could not be sent: not acknowledged
        log.error("notifications of a message not settled; it is delivered again after a "
                  "restart or rebalance: %s", exc, extra={
                      "topic": event.message.topic, "partition": event.message.partition,
                      "offset": event.message.offset})
    finally:
        _slots.release()


def plan(value: bytes | None, source: Source) -> list[Awaitable[None]]:
    """The deliveries one anomaly record needs (none: below the threshold or held back);
    a record that is not an anomaly event is dead-lettered."""
    try:
        event = orjson.loads(value or b"")
        sensor_id, severity, _detector = (str(event[k]) for k in
                                          ("sensor_id", "severity", "detector"))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        detail = f"not an anomaly event: {type(exc).__name__}: {exc}"
        log.warning("anomaly record not notified: %s", detail, extra={
            "topic": source.topic, "partition": source.partition, "offset": source.offset})
        empty = Message("anomaly", {}, "")
        return [send_dead_letter("all", empty, None, Failure.BAD_EVENT, detail,
                                 value or b"", source, None)]
    if notifiers.severity_rank(severity) < MIN_RANK:
        notifiers.BELOW_THRESHOLD.inc()
        return []
    message = notifiers.anomaly_message(event)
    jobs: list[Awaitable[None]] = []
    where = (source.topic, source.partition, source.offset)
    for notifier in NOTIFIERS:
        if LIMITERS[notifier.name].admit(event, where, value or b""):
            jobs.append(_deliver(notifier, message, value or b"", source, sensor_id))
        else:
            notifiers.RATE_LIMITED.labels(notifier.name).inc()
    return jobs


if NOTIFIERS:

    @app.agent(anomalies, name="notify-anomalies")
    async def notify_anomalies(stream):
        async for event in stream.noack().events():
            m = event.message
            jobs = [job for r in records_of(m)
                    for job in plan(r.value, Source(m.topic, m.partition, r.offset,
                                                    r.timestamp_ms))]
            await _slots.acquire()
            _spawn(_settle(event, jobs))

    @app.timer(1.0)
    async def send_summaries() -> None:
        """Summaries of the rate-limit periods that ended, one per sensor and notifier."""
        for notifier in NOTIFIERS:
            for summary in LIMITERS[notifier.name].due():
                topic, partition, offset = summary.last_source or (anomalies.get_topic_name(),
                                                                   -1, -1)
                _spawn(_deliver(notifier, summary.message(), summary.last_original,
                                Source(topic, partition, offset), summary.sensor_id))

    @app.service
    class NotifierSessions(faust.Service):
        """Closes the receivers' HTTP sessions; deliveries still under way are dropped
        unacknowledged (their anomalies are delivered again)."""

        async def on_stop(self) -> None:
            for task in list(_tasks):
                task.cancel()
            await asyncio.gather(*_tasks, return_exceptions=True)
            for notifier in NOTIFIERS:
                await notifier.close()
            log.info("notifiers stopped", extra={"notifiers": [n.name for n in NOTIFIERS]})
