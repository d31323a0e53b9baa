"""Input alerts: "data freshness" when the whole input goes quiet for ``FRESHNESS_SLA``,
"lag" when the group's lag over all input partitions exceeds ``LAG_ALERT_MAX``; each
followed by a "resolved" message when it ends.

One worker watches for the whole group: the one assigned partition 0 of the first
input topic. The question is about all input partitions, which any worker can measure
from the broker (log ends from a fetch's high watermark, committed offsets from a
consumer's ``committed``), so one message per condition instead of one per worker,
and no cross-worker agreement is needed: Faust's assignment already picks one holder.
A rebalance that moves that partition moves the watch; the new holder starts afresh
(its SLA clock from its takeover; a "resolved" for an alert its predecessor sent is
not sent).

Alerts are states, not events: the watcher delivers the state it measures whenever it
differs from the last one a notifier accepted, so an alert that could not be delivered
within ``NOTIFY_RETRY_FOR`` is tried again at the next check (never dead-lettered), and
a condition that ended before its alert got through sends nothing.
"""

from __future__ import annotations

import logging
import math

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP
from prometheus_client import Gauge

from agents.notify import NOTIFIERS
from app.main import app, settings
from app.topics import KAFKA, readings
from sinks.notifiers import InputAlerts
from stream.transport import log_end_offsets

log = logging.getLogger(__name__)

WATCHING = Gauge("sensorstream_alerts_watching",
                 "1 on the worker that watches the input for the freshness and lag alerts "
                 "(the holder of partition 0 of the first input topic)")
FIRING = Gauge("sensorstream_alert_firing", "1 while an input alert is firing (on the "
               "watching worker)", ["alert"])

SLA = float(settings.freshness_sla)
INTERVAL = min(settings.alert_check_interval, SLA / 4 if SLA > 0 else math.inf)
_SECURITY = {k: v for k, v in KAFKA.items() if k != "bootstrap_servers"}


class Watch:
    """The watching worker's broker client and what each notifier was last told."""

    def __init__(self) -> None:
        self.alerts = InputAlerts(SLA, settings.lag_alert_max)
        self.consumer: AIOKafkaConsumer | None = None
        #: (notifier, alert kind) -> firing, as last delivered
        self.told: dict[tuple[str, str], bool] = {}
        self.active = False

    async def measure(self) -> tuple[int, int]:
        """The sum of the input partitions' log ends, and the group's lag over them."""
        if self.consumer is None:
            self.consumer = AIOKafkaConsumer(**KAFKA, group_id=settings.app_id,
                                             enable_auto_commit=False)
            await self.consumer.start()
        consumer = self.consumer
        await consumer.topics()  # fresh metadata: partitions added meanwhile count too
        tps = [TopicPartition(topic, p) for topic in sorted(readings.topics)
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await log_end_offsets(KAFKA["bootstrap_servers"],
                                     await consumer.end_offsets(tps), **_SECURITY)
        starts = await consumer.beginning_offsets(tps)
        lag = 0
        for tp in tps:
            done = await consumer.committed(tp)
            if done is None:  # nothing committed: the group starts per OFFSET_RESET
                done = starts[tp] if settings.offset_reset == "earliest" else ends[tp]
            lag += max(0, ends[tp] - done)
        return sum(ends.values()), lag

    async def stop(self) -> None:
        self.active = False
        WATCHING.set(0)
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        self.alerts.reset()
        self.told.clear()
        for kind in ("freshness", "lag"):
            FIRING.labels(kind).set(0)


_watch = Watch()


def _watching() -> bool:
    consumer = app.consumer
    if consumer is None:
        return False
    first = sorted(readings.topics)[0]
    return TP(first, 0) in consumer.assignment()


if NOTIFIERS and (SLA > 0 or settings.lag_alert_max > 0):

    @app.timer(INTERVAL)
    async def watch_input() -> None:
        """Measure the input; tell each notifier when an alert starts or ends."""
        if not _watching():
            if _watch.active:  # the partition moved: forget the state
                log.info("input alerts: no longer the watching worker")
                await _watch.stop()
            return
        if not _watch.active:
            _watch.active = True
            log.info("input alerts: this worker watches the input (it holds partition 0 "
                     "of %s)", sorted(readings.topics)[0], extra={
                         "freshness_sla": SLA, "lag_alert_max": settings.lag_alert_max})
            WATCHING.set(1)
        try:
            total, lag = await _watch.measure()
        except Exception as exc:
            log.warning("input alerts: cannot measure the input (tried again): %s", exc)
            return
        for kind, (firing, message) in _watch.alerts.check(total, lag).items():
            FIRING.labels(kind).set(1 if firing else 0)
            for notifier in NOTIFIERS:
                if _watch.told.get((notifier.name, kind), False) == firing:
                    continue
                outcome = await notifier.deliver(message)
                if outcome.delivered:
                    _watch.told[(notifier.name, kind)] = firing
                    log.info("input alert %s %s", kind, message.body["state"], extra={
                        "notifier": notifier.name, "alert": kind, **message.body})
                else:
                    log.error("input alert %s %s not delivered; tried again at the next "
                              "check", kind, message.body["state"],
                              extra={"notifier": notifier.name, "alert": kind})
