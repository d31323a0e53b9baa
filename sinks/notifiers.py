"""Notifiers for anomaly events and input alerts: a signed generic webhook and a
Slack-compatible incoming webhook. No Faust here: payloads, signing, the per-sensor
rate limit and the retry schedule are plain code, unit-tested without a worker.

Delivery contract (agents.notify): ``Notifier.deliver`` returns only once a message is
delivered (a 2xx answer), refused for good (another 4xx), or past its retry time; the
caller acknowledges the anomaly's offset then, and dead-letters what was not delivered.

Webhook signature: ``X-Sensorstream-Timestamp: <unix seconds>`` and
``X-Sensorstream-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``
over the exact body bytes; a receiver recomputes it, compares in constant time and
refuses timestamps too far from its clock (replays).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from prometheus_client import Counter

log = logging.getLogger(__name__)

SEVERITIES = ("low", "medium", "high")
SIGNATURE_HEADER = "X-Sensorstream-Signature"
TIMESTAMP_HEADER = "X-Sensorstream-Timestamp"
#: Answers worth another try; any other 4xx means the receiver refuses this message.
RETRYABLE_STATUS = frozenset({408, 425, 429})

SENT = Counter("sensorstream_notifications_sent",
               "Notifications a receiver accepted (2xx)", ["notifier", "kind"])
RETRIED = Counter("sensorstream_notifications_retried",
                  "Notification attempts that failed and were tried again", ["notifier", "kind"])
DEAD_LETTERED = Counter("sensorstream_notifications_dead_lettered",
                        "Notifications not delivered within the retry time, or refused: "
                        "written to the dead-letter topic", ["notifier", "kind"])
RATE_LIMITED = Counter("sensorstream_notifications_rate_limited",
                       "Anomaly notifications held back by the per-sensor rate limit (counted "
                       "into a summary)", ["notifier"])
BELOW_THRESHOLD = Counter("sensorstream_notifications_below_threshold",
                          "Anomaly events below NOTIFY_MIN_SEVERITY, not notified")


class Failure(StrEnum):
    """Why a notification was dead-lettered: the ``reason`` of its dead-letter record."""

    UNDELIVERABLE = "notification_undeliverable"  #: still failing when the retry time ran out
    REFUSED = "notification_refused"  #: a 4xx other than 408/425/429: retrying cannot help
    BAD_EVENT = "notification_bad_event"  #: the anomalies topic held something else


def severity_rank(severity: str) -> int:
    """0, 1, 2 for low, medium, high; -1 for anything else (never notified)."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def masked_url(url: str) -> str:
    """``scheme://host[:port]/***``: what logs may show of a receiver's URL. A Slack URL's
    path is its token, and a webhook's path or query may carry one too."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of
    ``"{timestamp}." + body`` under ``secret``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (the tests use it): recompute, compare in constant time."""
    try:
        expected = sign(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


# -- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One notification, the same for every notifier: ``kind`` is ``anomaly``,
    ``summary``, ``freshness`` or ``lag``; ``body`` is the JSON document the webhook
    posts; ``text`` one line for humans (Slack)."""

    kind: str
    body: dict[str, Any]
    text: str


def anomaly_message(event: Mapping[str, Any]) -> Message:
    metric = f" {event['metric']}" if event.get("metric") else ""
    text = (f"[{event['severity']}] sensor {event['sensor_id']}{metric}: {event['detector']} "
            f"at {event.get('ts')}: {event.get('reason') or ''}").rstrip(": ")
    return Message("anomaly", {"kind": "anomaly", "anomaly": dict(event)}, text)


@dataclass
class Summary:
    """The anomalies of one sensor held back in one rate-limit period."""

    sensor_id: str
    period_start: float  #: unix seconds
    period_end: float
    suppressed: int = 0
    by_detector: dict[str, int] = field(default_factory=dict)
    highest: str = "low"
    #: Where the last held-back event came from (topic, partition, offset) and its bytes:
    #: the lineage of the summary's dead-letter record if it cannot be delivered.
    last_source: tuple[str, int, int] | None = None
    last_original: bytes = b""

    def message(self) -> Message:
        body = {"kind": "summary", "sensor_id": self.sensor_id,
                "suppressed": self.suppressed, "by_detector": dict(self.by_detector),
                "highest_severity": self.highest,
                "period_start": _iso(self.period_start), "period_end": _iso(self.period_end)}
        detectors = ", ".join(f"{d} x{n}" for d, n in sorted(self.by_detector.items()))
        text = (f"[{self.highest}] sensor {self.sensor_id}: {self.suppressed} more anomalies "
                f"held back by the rate limit between {body['period_start']} and "
                f"{body['period_end']} ({detectors})")
        return Message("summary", body, text)


def alert_message(kind: str, firing: bool, details: Mapping[str, Any], text: str) -> Message:
    """An input alert (``freshness`` or ``lag``), ``firing`` or ``resolved``."""
    state = "firing" if firing else "resolved"
    return Message(kind, {"kind": kind, "state": state, **details},
                   f"[{'ALERT' if firing else 'RECOVERED'}] {text}")


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def slack_payload(message: Message) -> dict[str, Any]:
    """An incoming-webhook message: ``text`` (the fallback shown in notifications) and
    ``blocks``: the line as a section, the facts as fields of a context block."""
    facts = message.body.get("anomaly", message.body)
    fields = [{"type": "mrkdwn", "text": f"*{k}*: {v}"} for k, v in facts.items()
              if v is not None and k != "kind" and not isinstance(v, dict | list)][:10]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": message.text[:2900]}}]
    if fields:
        blocks.append({"type": "context", "elements": fields})
    return {"text": message.text[:2900], "blocks": blocks}


# -- the per-sensor rate limit -----------------------------------------------------------


class RateLimiter:
    """At most ``limit`` notifications per sensor per ``period`` seconds; the rest are
    counted into a ``Summary`` that ``due`` hands out once its period has ended.

    A period starts with a sensor's first notification after the previous one ended
    (fixed windows per sensor, not a sliding log: one timestamp and one count each).
    Held in memory: a worker that stops loses the counts of open periods (the events
    themselves were acknowledged as deliberately dropped)."""

    def __init__(self, limit: int, period: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.period = period
        self.clock = clock
        #: sensor -> (period start, notifications admitted, summary of the held back)
        self._open: dict[str, tuple[float, int, Summary | None]] = {}
        self._ended: list[Summary] = []

    def admit(self, event: Mapping[str, Any], source: tuple[str, int, int] | None = None,
              original: bytes = b"") -> bool:
        """Whether to notify ``event`` now; False counts it into its sensor's summary."""
        now = self.clock()
        sensor_id = str(event["sensor_id"])
        start, sent, summary = self._open.get(sensor_id, (now, 0, None))
        if now >= start + self.period:
            if summary is not None:  # its period ended: keep it for ``due``
                self._ended.append(summary)
            start, sent, summary = now, 0, None
        if sent < self.limit:
            self._open[sensor_id] = (start, sent + 1, summary)
            return True
        if summary is None:
            summary = Summary(sensor_id, start, start + self.period)
        summary.suppressed += 1
        detector = str(event.get("detector"))
        summary.by_detector[detector] = summary.by_detector.get(detector, 0) + 1
        if severity_rank(str(event.get("severity"))) > severity_rank(summary.highest):
            summary.highest = str(event["severity"])
        summary.last_source, summary.last_original = source, original
        self._open[sensor_id] = (start, sent, summary)
        return False

    def due(self) -> list[Summary]:
        """Summaries of periods that have ended; each handed out once."""
        now = self.clock()
        ready, self._ended = self._ended, []
        for sensor_id, (start, _sent, summary) in list(self._open.items()):
            if now >= start + self.period:
                del self._open[sensor_id]
                if summary is not None:
                    ready.append(summary)
        return ready


# -- input alerts -------------------------------------------------------------------------


class InputAlerts:
    """What the freshness and lag alerts should say now, from periodic measurements of
    the whole input: the sum of the log ends of every input partition (unchanged for
    ``sla`` seconds: the input is quiet) and the group's lag over them (above
    ``lag_max``: behind). ``sla`` or ``lag_max`` 0: that alert is off."""

    def __init__(self, sla: float, lag_max: int, clock: Callable[[], float] = time.time,
                 ) -> None:
        self.sla = sla
        self.lag_max = lag_max
        self.clock = clock
        self._total: int | None = None
        self._changed_at = 0.0

    def reset(self) -> None:
        """Forget what was seen (another worker watched meanwhile)."""
        self._total = None

    def check(self, total_end: int, lag: int | None) -> dict[str, tuple[bool, Message]]:
        """Per alert kind: whether it should be firing, and the message saying so."""
        now = self.clock()
        if self._total is None or total_end != self._total:
            self._total, self._changed_at = total_end, now
        wanted: dict[str, tuple[bool, Message]] = {}
        if self.sla > 0:
            quiet = now - self._changed_at
            firing = quiet >= self.sla
            details = {"quiet_seconds": round(quiet, 1), "sla_seconds": self.sla,
                       "last_input_at": _iso(self._changed_at), "log_end_total": total_end}
            text = (f"no new input on any input partition for {quiet:.0f} s (SLA "
                    f"{self.sla:g} s)" if firing else
                    f"input is arriving again (SLA {self.sla:g} s)")
            wanted["freshness"] = (firing, alert_message("freshness", firing, details, text))
        if self.lag_max > 0 and lag is not None:
            firing = lag > self.lag_max
            details = {"lag": lag, "lag_max": self.lag_max}
            text = (f"consumer lag {lag} messages over all input partitions exceeds "
                    f"{self.lag_max}" if firing else
                    f"consumer lag {lag} messages is within {self.lag_max} again")
            wanted["lag"] = (firing, alert_message("lag", firing, details, text))
        return wanted


# -- retries ------------------------------------------------------------------------------


@dataclass
class RetrySchedule:
    """Exponential backoff with full jitter (uniform in [0, min(cap, base * 2^n))), for at
    most ``retry_for`` seconds from the first attempt: ``delay`` says how long to wait
    before the next attempt, or None when the time is up."""

    retry_for: float
    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, elapsed: float) -> float | None:
        left = self.retry_for - elapsed
        if left <= 0:
            return None
        return min(left, self.rng.uniform(0, min(self.cap, self.base * 2 ** min(attempt, 30))))


@dataclass(frozen=True)
class Outcome:
    """How a delivery ended: ``delivered``; otherwise the ``failure`` and its detail."""

    delivered: bool
    attempts: int
    failure: Failure | None = None
    detail: str = ""


class Notifier:
    """One receiver: posts a message as JSON, retrying per its schedule."""

    name = "notifier"

    def __init__(self, url: str, retry_for: float, timeout: float = 10.0,
                 schedule: RetrySchedule | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.where = masked_url(url)
        self.timeout = timeout
        self.schedule = schedule or RetrySchedule(retry_for)
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None

    def request(self, message: Message) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one attempt."""
        raise NotImplementedError

    def scrub(self, text: str) -> str:
        """``text`` (an error, which may quote the URL) without the URL's path or query."""
        parts = urlsplit(self.url)
        for secret in (self.url, parts.path + (f"?{parts.query}" if parts.query else ""),
                       parts.path):
            if len(secret) > 1:
                text = text.replace(secret, "/***")
        return text

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, body: bytes, headers: dict[str, str], timeout: float) -> int:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.url, data=body, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=timeout),
                                      allow_redirects=False) as response:
            await response.read()
            return response.status

    async def deliver(self, message: Message) -> Outcome:
        """Post ``message`` until a 2xx, a refusal, or the end of the retry time."""
        began = self.clock()
        attempt = 0
        while True:
            attempt += 1
            body, headers = self.request(message)  # signed afresh: a current timestamp
            left = self.schedule.retry_for - (self.clock() - began)
            try:
                status = await self._post(body, headers, max(0.5, min(self.timeout, left)))
                detail = f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, detail = None, self.scrub(f"{type(exc).__name__}: {exc}")[:300]
            if status is not None and 200 <= status < 300:
                SENT.labels(self.name, message.kind).inc()
                if attempt > 1:
                    log.info("notification delivered after %d attempts", attempt, extra={
                        "notifier": self.name, "receiver": self.where, "kind": message.kind})
                return Outcome(True, attempt)
            if status is not None and 400 <= status < 500 and status not in RETRYABLE_STATUS:
                return self._failed(message, attempt, Failure.REFUSED, detail)
            wait = self.schedule.delay(attempt - 1, self.clock() - began)
            if wait is None:
                return self._failed(message, attempt, Failure.UNDELIVERABLE, detail)
            RETRIED.labels(self.name, message.kind).inc()
            log.warning("notification failed (%s); retrying in %.1f s", detail, wait, extra={
                "notifier": self.name, "receiver": self.where, "kind": message.kind,
                "attempt": attempt})
            await asyncio.sleep(wait)

    def _failed(self, message: Message, attempts: int, failure: Failure,
                detail: str) -> Outcome:
        log.error("notification not delivered (%s): %s", failure, detail, extra={
            "notifier": self.name, "receiver": self.where, "kind": message.kind,
            "attempts": attempts})
        return Outcome(False, attempts, failure, detail)


class WebhookNotifier(Notifier):
    """The generic webhook: the message's JSON body, signed (see the module's doc)."""

    name = "webhook"

    def __init__(self, url: str, secret: str, retry_for: float, **kwargs: Any) -> None:
        super().__init__(url, retry_for, **kwargs)
        self._secret = secret

    def request(self, message: Message) -> tuple[bytes, dict[str, str]]:
        body = orjson.dumps({**message.body, "text": message.text})
        timestamp = int(time.time())
        return body, {"Content-Type": "application/json",
                      TIMESTAMP_HEADER: str(timestamp),
                      SIGNATURE_HEADER: sign(self._secret, timestamp, body)}


class SlackNotifier(Notifier):
    """A Slack-compatible incoming webhook: ``{"text": ..., "blocks": [...]}``."""

    name = "slack"

    def request(self, message: Message) -> tuple[bytes, dict[str, str]]:
        return orjson.dumps(slack_payload(message)), {"Content-Type": "application/json"}


def from_settings(settings: Any) -> list[Notifier]:
    """The notifiers the settings enable (none by default)."""
    found: list[Notifier] = []
    common = {"timeout": settings.notify_timeout}
    if settings.notify_webhook_url:
        found.append(WebhookNotifier(settings.notify_webhook_url,
                                     settings.notify_webhook_secret,
                                     settings.notify_retry_for, **common))
    if settings.notify_slack_url:
        found.append(SlackNotifier(settings.notify_slack_url, settings.notify_retry_for,
                                   **common))
    return found
