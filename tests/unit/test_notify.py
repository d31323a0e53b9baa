"""Notifiers without a worker: signing, payloads, the rate limit, the retry schedule, the
input alerts' states, settings, and deliveries against a real local HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import random

import orjson
import pytest

from app.logs import JsonFormatter
from app.settings import SettingError, load
from sinks import notifiers
from sinks.notifiers import (
    Failure,
    InputAlerts,
    RateLimiter,
    RetrySchedule,
    SlackNotifier,
    WebhookNotifier,
)
from tests.integration.harness import free_port
from tests.receiver import Receiver

SECRET = "s3cret-s3cret-s3cret"
EVENT = {"sensor_id": "9", "metric": "temperature", "ts": "2026-11-22T10:00:00Z",
         "value": 122.0, "detector": "zscore", "severity": "high", "reason": "too hot",
         "expected": [19.0, 21.0], "z": 40.1, "suppressed": 0, "summary": False}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_signature_is_hmac_sha256_of_timestamp_dot_body():
    body = b'{"a":1}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert notifiers.sign(SECRET, 1700000000, body) == "sha256=" + expected
    assert notifiers.verify(SECRET, "1700000000", body, "sha256=" + expected)
    assert not notifiers.verify(SECRET, "1700000000", body + b" ", "sha256=" + expected)
    assert not notifiers.verify(SECRET, "1700000001", body, "sha256=" + expected)
    assert not notifiers.verify("another-secret-key", "1700000000", body, "sha256=" + expected)
    assert not notifiers.verify(SECRET, "soon", body, "sha256=" + expected)


def test_webhook_request_is_signed_json_of_the_event():
    hook = WebhookNotifier("http://127.0.0.1:1/hook", SECRET, retry_for=1)
    body, headers = hook.request(notifiers.anomaly_message(EVENT))
    assert headers["Content-Type"] == "application/json"
    assert notifiers.verify(SECRET, headers[notifiers.TIMESTAMP_HEADER], body,
                            headers[notifiers.SIGNATURE_HEADER])
    doc = orjson.loads(body)
    assert doc["kind"] == "anomaly" and doc["anomaly"] == EVENT
    assert "sensor 9 temperature" in doc["text"] and "[high]" in doc["text"]


def test_slack_payload_has_text_and_blocks():
    body, _headers = SlackNotifier("https://hooks.slack.com/services/T1/B2/tok",
                                  retry_for=1).request(notifiers.anomaly_message(EVENT))
    doc = orjson.loads(body)
    assert set(doc) == {"text", "blocks"}
    assert doc["text"].startswith("[high] sensor 9 temperature: zscore")
    assert doc["blocks"][0] == {"type": "section",
                                "text": {"type": "mrkdwn", "text": doc["text"]}}
    fields = [e["text"] for e in doc["blocks"][1]["elements"]]
    assert "*detector*: zscore" in fields and "*value*: 122.0" in fields
    assert len(fields) <= 10  # Slack's limit of a context block


def test_masked_url_hides_the_path_and_query():
    assert (notifiers.masked_url("https://hooks.slack.com/services/T1/B2/tok?x=1")
            == "https://hooks.slack.com/***")
    assert notifiers.masked_url("http://127.0.0.1:8080/a/b") == "http://127.0.0.1:8080/***"


def test_errors_quoting_the_url_are_scrubbed():
    slack = SlackNotifier("https://hooks.slack.com/services/T1/B2/tok?x=1", retry_for=1)
    text = slack.scrub("InvalidURL: https://hooks.slack.com/services/T1/B2/tok?x=1 and "
                       "URL('/services/T1/B2/tok')")
    assert "T1" not in text and "tok" not in text and "/***" in text


def test_rate_limit_collapses_a_storm_into_one_summary_per_period():
    clock = Clock()
    limiter = RateLimiter(2, 60.0, clock)
    admitted = []
    for i in range(7):
        event = {**EVENT, "detector": "spike" if i % 2 else "zscore",
                 "severity": "medium" if i == 5 else "low"}
        admitted.append(limiter.admit(event, ("anom", 1, 100 + i), f"e{i}".encode()))
        clock.now += 1
    assert admitted == [True, True, False, False, False, False, False]
    assert limiter.admit({**EVENT, "sensor_id": "other"})  # other sensors have their own
    assert limiter.due() == []  # the period has not ended
    clock.now += 60
    (summary,) = limiter.due()
    assert summary.sensor_id == "9" and summary.suppressed == 5
    assert summary.by_detector == {"zscore": 3, "spike": 2}  # events 2..6
    assert summary.highest == "medium"
    assert summary.last_source == ("anom", 1, 106) and summary.last_original == b"e6"
    message = summary.message()
    assert message.kind == "summary" and message.body["suppressed"] == 5
    assert "5 more anomalies held back" in message.text
    assert limiter.due() == []  # handed out once
    assert limiter.admit(EVENT)  # a new period


def test_a_period_that_ended_before_the_next_event_still_yields_its_summary():
    clock = Clock()
    limiter = RateLimiter(1, 10.0, clock)
    assert limiter.admit(EVENT)
    assert not limiter.admit(EVENT)
    clock.now += 11
    assert limiter.admit(EVENT)  # opens the next period before ``due`` ran
    (summary,) = limiter.due()
    assert summary.suppressed == 1


def test_retry_schedule_is_bounded_by_the_retry_time():
    schedule = RetrySchedule(retry_for=20.0, base=0.5, cap=4.0, rng=random.Random(1))
    elapsed, attempt, delays = 0.0, 0, []
    while (delay := schedule.delay(attempt, elapsed)) is not None:
        assert 0 <= delay <= min(4.0, 0.5 * 2 ** attempt)
        delays.append(delay)
        elapsed += delay + 0.01
        attempt += 1
    assert 19.0 <= sum(delays) + 0.01 * len(delays) <= 20.0 + 0.01 * len(delays)
    assert schedule.delay(0, 20.0) is None
    assert schedule.delay(10, 19.5) <= 0.5  # never past the end


def test_freshness_alert_fires_after_the_sla_and_resolves_on_new_input():
    clock = Clock()
    alerts = InputAlerts(sla=30.0, lag_max=0, clock=clock)
    assert alerts.check(100, 0)["freshness"][0] is False
    assert "lag" not in alerts.check(100, 0)
    clock.now += 29
    assert alerts.check(100, 0)["freshness"][0] is False
    clock.now += 2
    firing, message = alerts.check(100, 0)["freshness"]
    assert firing and message.body["state"] == "firing" and message.kind == "freshness"
    assert message.body["quiet_seconds"] == 31.0 and message.text.startswith("[ALERT]")
    clock.now += 1
    firing, message = alerts.check(101, 0)["freshness"]
    assert not firing and message.body["state"] == "resolved"


def test_lag_alert_fires_above_the_bound():
    alerts = InputAlerts(sla=0, lag_max=100, clock=Clock())
    assert alerts.check(0, 100)["lag"][0] is False
    firing, message = alerts.check(0, 101)["lag"]
    assert firing and message.body == {"kind": "lag", "state": "firing", "lag": 101,
                                       "lag_max": 100}
    assert "freshness" not in alerts.check(0, 5)


URL = "SENSORSTREAM_NOTIFY_WEBHOOK_URL"


@pytest.mark.parametrize(("env", "name", "fragment"), [
    ({"SENSORSTREAM_NOTIFY_WEBHOOK_SECRET": SECRET}, "SENSORSTREAM_NOTIFY_WEBHOOK_SECRET",
     "without"),
    ({URL: "http://x/hook"}, URL, "NOTIFY_WEBHOOK_SECRET"),
    ({URL: "ftp://x/hook", "SENSORSTREAM_NOTIFY_WEBHOOK_SECRET": SECRET}, URL, "http"),
    ({URL: "http://x:99999/", "SENSORSTREAM_NOTIFY_WEBHOOK_SECRET": SECRET}, URL, "port"),
    ({URL: "http://x/", "SENSORSTREAM_NOTIFY_WEBHOOK_SECRET": "short"},
     "SENSORSTREAM_NOTIFY_WEBHOOK_SECRET", "16"),
    ({"SENSORSTREAM_NOTIFY_SLACK_URL": "hooks.slack.com/services/T/B/tok"},
     "SENSORSTREAM_NOTIFY_SLACK_URL", "http"),
    ({"SENSORSTREAM_NOTIFY_MIN_SEVERITY": "urgent"}, "SENSORSTREAM_NOTIFY_MIN_SEVERITY",
     "expected one of"),
    ({"SENSORSTREAM_NOTIFY_RATE_LIMIT": "5"}, "SENSORSTREAM_NOTIFY_RATE_LIMIT", "N/DURATION"),
    ({"SENSORSTREAM_NOTIFY_RATE_LIMIT": "0/1m"}, "SENSORSTREAM_NOTIFY_RATE_LIMIT", "at least 1"),
    ({"SENSORSTREAM_NOTIFY_RETRY_FOR": "0s"}, "SENSORSTREAM_NOTIFY_RETRY_FOR", "greater"),
    ({"SENSORSTREAM_FRESHNESS_SLA": "5m"}, "SENSORSTREAM_FRESHNESS_SLA", "NOTIFY_"),
    ({"SENSORSTREAM_LAG_ALERT_MAX": "1000"}, "SENSORSTREAM_LAG_ALERT_MAX", "NOTIFY_"),
    ({"SENSORSTREAM_LAG_ALERT_MAX": "-1"}, "SENSORSTREAM_LAG_ALERT_MAX", "between"),
])
def test_bad_notify_settings_stop_start_up_naming_the_setting(env, name, fragment):
    with pytest.raises(SettingError) as caught:
        load(env)
    assert caught.value.name == name and fragment in str(caught.value)
    assert SECRET not in str(caught.value) and "tok" not in str(caught.value)


def test_notify_settings_off_by_default_and_secrets_masked_in_reprs():
    assert notifiers.from_settings(load({})) == []
    s = load({URL: "http://127.0.0.1:9/hook", "SENSORSTREAM_NOTIFY_WEBHOOK_SECRET": SECRET,
              "SENSORSTREAM_NOTIFY_SLACK_URL": "https://hooks.slack.com/services/T/B/tok",
              "SENSORSTREAM_NOTIFY_RATE_LIMIT": "3/30s",
              "SENSORSTREAM_FRESHNESS_SLA": "5m"})
    assert [n.name for n in notifiers.from_settings(s)] == ["webhook", "slack"]
    assert s.notify_rate_limit == (3, 30.0) and s.freshness_sla == 300.0
    assert SECRET not in repr(s.values) and "tok" not in repr(s.values)


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def _count(counter, *labels: str) -> float:
    return counter.labels(*labels)._value.get()


async def test_delivery_retries_server_errors_then_succeeds(receiver):
    receiver.statuses = [500, 503, 429]
    hook = WebhookNotifier(f"http://127.0.0.1:{receiver.port}/hook", SECRET, retry_for=30,
                           schedule=RetrySchedule(30, base=0.01, cap=0.05))
    retried = _count(notifiers.RETRIED, "webhook", "anomaly")
    outcome = await hook.deliver(notifiers.anomaly_message(EVENT))
    await hook.close()
    assert outcome.delivered and outcome.attempts == 4
    assert len(receiver.got) == 4
    assert _count(notifiers.RETRIED, "webhook", "anomaly") - retried == 3
    headers, body = receiver.got[-1]["headers"], receiver.got[-1]["body"]
    assert notifiers.verify(SECRET, headers[notifiers.TIMESTAMP_HEADER], body,
                            headers[notifiers.SIGNATURE_HEADER])


async def test_a_refusal_is_not_retried(receiver):
    receiver.statuses = [400]
    hook = WebhookNotifier(f"http://127.0.0.1:{receiver.port}/hook", SECRET, retry_for=30)
    outcome = await hook.deliver(notifiers.anomaly_message(EVENT))
    await hook.close()
    assert not outcome.delivered and outcome.failure is Failure.REFUSED
    assert outcome.attempts == 1 and outcome.detail == "HTTP 400"


async def test_a_receiver_that_is_down_is_given_up_after_the_retry_time():
    token = "T0000/B0000/verysecrettokenpart"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("sinks.notifiers").addHandler(handler)
    try:
        slack = SlackNotifier(f"http://127.0.0.1:{free_port()}/services/{token}",
                              retry_for=1.0, schedule=RetrySchedule(1.0, base=0.05, cap=0.2))
        outcome = await slack.deliver(notifiers.anomaly_message(EVENT))
        await slack.close()
    finally:
        logging.getLogger("sinks.notifiers").removeHandler(handler)
    assert not outcome.delivered and outcome.failure is Failure.UNDELIVERABLE
    assert outcome.attempts >= 3 and "Connect" in outcome.detail
    logged = stream.getvalue()
    assert "retrying" in logged and "not delivered" in logged
    assert "verysecrettokenpart" not in logged and "T0000" not in logged
