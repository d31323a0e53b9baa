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

from faust.types import TP
from prometheus_client import Gauge

from agents.notify import NOTIFIERS
from app.main import app, settings
from app.topics import KAFKA, readings
from sinks.notifiers import InputAlerts
from stream.offsets import GroupLag

log = logging.getLogger(__name__)

WATCHING = Gauge("sensorstream_alerts_watching",
                 "1 on the worker that watches the input for the freshness and lag alerts "
                 "(the holder of partition 0 of the first input topic)")
FIRING = Gauge("sensorstream_alert_firing", "1 while an input alert is firing (on the "
               "watching worker)", ["alert"])

SLA = float(settings.freshness_sla)
INTERVAL = min(settings.alert_check_interval, SLA / 4 if SLA > 0 else math.inf)


class Watch:
    """The watching worker's broker client and what each notifier was last told."""

    def __init__(self) -> None:
        self.alerts = InputAlerts(SLA, settings.lag_alert_max)
        self.lag: GroupLag | None = None
        #: (notifier, alert kind) -> firing, as last delivered
        self.told: dict[tuple[str, str], bool] = {}
        self.active = False

    async def measure(self) -> tuple[int, int]:
        """The sum of the input partitions' log ends, and the group's lag over them."""
        if self.lag is None:
            self.lag = GroupLag(KAFKA, settings.app_id, settings.offset_reset)
        return await self.lag.measure(readings.topics)

    async def stop(self) -> None:
        self.active = False
        WATCHING.set(0)
        if self.lag is not None:
            await self.lag.close()
            self.lag = None
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
