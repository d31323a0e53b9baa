"""Anomaly notifications and input alerts through the real stack (Tansu, PostgreSQL,
S3), delivered to a real HTTP server in the test process that records what it gets."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2

from app.contract import format_ts
from sinks import notifiers
from tests import receiver

from .harness import commits_and_ends, counter, eventually, produce, read_all
from .test_anomalies import mote_readings

pytestmark = pytest.mark.integration

SECRET = "integration-hmac-secret-0123"
SLACK_TOKEN = "T0SECRET/B0SECRET/slacktokenpart"


class Receiver(receiver.Receiver):
    """The shared receiver, reading what the worker sent."""

    def webhook(self, since: int = 0) -> list[dict[str, Any]]:
        """The webhook's documents since the ``since``-th request, each signature checked."""
        docs = []
        for hit in self.got[since:]:
            if hit["path"] != "/hook":
                continue
            headers = hit["headers"]
            assert notifiers.verify(SECRET, headers[notifiers.TIMESTAMP_HEADER], hit["body"],
                                    headers[notifiers.SIGNATURE_HEADER]), hit
            assert abs(int(headers[notifiers.TIMESTAMP_HEADER]) - time.time()) < 120
            docs.append(orjson.loads(hit["body"]))
        return docs

    def slack(self) -> list[dict[str, Any]]:
        return [orjson.loads(h["body"]) for h in self.got if h["path"].startswith("/slack/")]


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def notify_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {"SENSORSTREAM_NOTIFY_WEBHOOK_URL": receiver.url("/hook"),
            "SENSORSTREAM_NOTIFY_WEBHOOK_SECRET": SECRET,
            **{f"SENSORSTREAM_{k}": v for k, v in extra.items()}}


def anomaly(sensor_id: str, n: int, severity: str = "high") -> tuple[bytes, bytes]:
    """An anomaly record as agents.per_sensor emits it."""
    return sensor_id.encode(), orjson.dumps({
        "sensor_id": sensor_id, "metric": "temperature",
        "ts": format_ts(1_700_000_000_000_000 + n * 1_000_000), "value": 90.0 + n,
        "detector": "zscore", "severity": severity, "reason": f"test {n}",
        "expected": [19.0, 21.0], "z": 9.0, "suppressed": 0, "summary": False})


def anomalies_of(docs: list[dict[str, Any]], sensor_id: str | None = None) -> list[dict]:
    return [d["anomaly"] for d in docs if d["kind"] == "anomaly"
            and (sensor_id is None or d["anomaly"]["sensor_id"] == sensor_id)]


async def test_detected_anomalies_above_the_threshold_reach_the_webhook_and_slack(
        make_worker, app_env, bootstrap, receiver):
    """The real path: readings with a battery fault, the detectors' events, the
    notifications of the high ones only, signed, and in Slack's format."""
    worker = make_worker(**notify_env(
        receiver, NOTIFY_SLACK_URL=receiver.url(f"/slack/{SLACK_TOKEN}"),
        NOTIFY_MIN_SEVERITY="high")).start()
    await worker.ready()
    await produce(bootstrap, app_env["SENSORSTREAM_INPUT_TOPICS"],
                  mote_readings(60, time.time() - 3600))

    async def events():
        found = [orjson.loads(r.value) for r in await read_all(
            bootstrap, app_env["SENSORSTREAM_ANOMALIES_TOPIC"], deadline=10)]
        return found if any(e["detector"] == "fault:battery" for e in found) else None
    emitted = await eventually(events, "the battery fault detected", 90, interval=0.5)
    high = [e for e in emitted if e["severity"] == "high"]
    lower = [e for e in emitted if e["severity"] != "high"]
    assert high and lower, emitted  # both sides of the threshold are exercised

    def key(e: dict) -> tuple:
        return (e["sensor_id"], str(e["metric"]), e["ts"], e["detector"])
    await eventually(lambda: len(anomalies_of(receiver.webhook())) >= len(high)
                     and len(receiver.slack()) >= len(high), "the high events notified", 60)
    assert sorted(map(key, anomalies_of(receiver.webhook()))) == sorted(map(key, high))
    assert all(a in high for a in anomalies_of(receiver.webhook()))  # whole events
    await eventually(lambda: counter(worker.metrics(),
                                     "sensorstream_notifications_below_threshold_total")
                     == len(lower), "the lower ones counted as below the threshold", 30)
    slack = receiver.slack()
    assert len(slack) == len(high)
    for message in slack:
        assert set(message) == {"text", "blocks"} and message["text"].startswith("[high]")
        assert message["blocks"][0]["text"]["text"] == message["text"]
    assert any("fault:battery" in m["text"] for m in slack)
    samples = worker.metrics()
    for notifier in ("webhook", "slack"):
        assert counter(samples, "sensorstream_notifications_sent_total", notifier=notifier,
                       kind="anomaly") == len(high)
    log = worker.log.read_text()
    assert SECRET not in log and "slacktokenpart" not in log and "T0SECRET" not in log


async def test_a_storm_collapses_and_a_receiver_that_is_down_is_retried_then_dead_lettered(
        make_worker, app_env, bootstrap, receiver):
    anomalies_topic = app_env["SENSORSTREAM_ANOMALIES_TOPIC"]
    dlq = app_env["SENSORSTREAM_DLQ_TOPIC"]
    group = app_env["SENSORSTREAM_APP_ID"]
    worker = make_worker(**notify_env(receiver, NOTIFY_MIN_SEVERITY="low",
                                      NOTIFY_RATE_LIMIT="3/8s", NOTIFY_RETRY_FOR="6s")).start()
    await worker.ready()

    # A storm of one sensor: 3 notified, the other 9 in one summary when the period ends.
    await produce(bootstrap, anomalies_topic,
                  [anomaly("storm", n, "medium" if n == 7 else "low") for n in range(12)]
                  + [anomaly("calm", 0)])
    summaries = await eventually(
        lambda: [d for d in receiver.webhook() if d["kind"] == "summary"],
        "the storm's summary", 40)
    assert len(summaries) == 1
    (summary,) = summaries
    assert summary["sensor_id"] == "storm" and summary["suppressed"] == 9
    assert summary["by_detector"] == {"zscore": 9} and summary["highest_severity"] == "medium"
    assert [a["value"] for a in anomalies_of(receiver.webhook(), "storm")] == [90.0, 91.0, 92.0]
    assert len(anomalies_of(receiver.webhook(), "calm")) == 1
    assert counter(worker.metrics(), "sensorstream_notifications_rate_limited_total",
                   notifier="webhook") == 9

    # The receiver down for a while: the anomaly's offset is not committed meanwhile;
    # once the receiver is back (same port) the notification arrives.
    await receiver.stop()
    retried = counter(worker.metrics(), "sensorstream_notifications_retried_total")
    await produce(bootstrap, anomalies_topic, [anomaly("down", 1)])
    ends = await commits_and_ends(bootstrap, group, anomalies_topic)
    await eventually(lambda: counter(worker.metrics(), "sensorstream_notifications_retried_total")
                     > retried, "a failed attempt retried", 30)
    await eventually(lambda: counter(worker.metrics(), "sensorstream_notifications_retried_total")
                     >= retried + 2, "a second failed attempt retried", 30)
    partition = (murmur2(b"down") & 0x7FFFFFFF) % len(ends)  # the producer's partitioner
    offset = ends[partition][1] - 1  # the "down" anomaly's
    held = await commits_and_ends(bootstrap, group, anomalies_topic)
    assert held[partition][0] is None or held[partition][0] <= offset, held
    await receiver.start()
    await eventually(lambda: anomalies_of(receiver.webhook(), "down"), "the delayed delivery",
                     30)
    # at least once: delivered (possibly more than once, never dead-lettered)
    assert len(anomalies_of(receiver.webhook(), "down")) >= 1
    assert counter(worker.metrics(), "sensorstream_notifications_dead_lettered_total") == 0
    await eventually(lambda: committed_past_offset(bootstrap, group, anomalies_topic,
                                                   partition, offset),
                     "the delivered anomaly's offset committed", 30)

    # Down past the retry time: a dead-letter record with the reason and original bytes,
    # and only then the offset is committed.
    # A storm meanwhile: its summary is dead-lettered too.
    await receiver.stop()
    key, original = anomaly("gone", 1)
    storm = [anomaly("storm2", n) for n in range(4)]
    await produce(bootstrap, anomalies_topic, [(key, original), *storm])

    async def dead_lettered():
        found = [(r, orjson.loads(r.value)) for r in await read_all(bootstrap, dlq, deadline=10)]
        gone = [(r, d) for r, d in found if d["sensor_id"] == "gone"]
        storm = [d for r, d in found if d["sensor_id"] == "storm2"]
        return (gone, storm) if gone and len(storm) >= 4 else None
    (gone, storm_letters) = await eventually(dead_lettered, "the dead-letter records", 60,
                                             interval=1)
    ((record, doc),) = gone
    assert sorted(d["original"].encode() for d in storm_letters if "summary" not in
                  d["message"]) == sorted(value for _k, value in storm[:3])
    (summary_letter,) = [d for d in storm_letters if d["message"].startswith("summary")]
    assert "1 more anomalies held back" in summary_letter["message"]
    assert summary_letter["original"].encode() == storm[3][1]  # the one it held back
    assert summary_letter["reason"] == "notification_undeliverable"
    assert doc["reason"] == "notification_undeliverable"
    assert doc["original"].encode() == original and doc["original_encoding"] == "utf-8"
    assert doc["source"]["topic"] == anomalies_topic
    assert "webhook" in doc["message"] and "attempts" in doc["message"]
    assert dict(record.headers)["sensorstream-notifier"] == b"webhook"
    assert anomalies_of(receiver.webhook(), "gone") == []
    samples = worker.metrics()
    assert counter(samples, "sensorstream_notifications_dead_lettered_total",
                   notifier="webhook", kind="anomaly") == 4
    assert counter(samples, "sensorstream_notifications_dead_lettered_total",
                   notifier="webhook", kind="summary") == 1
    gone = doc["source"]
    await eventually(lambda: committed_past_offset(bootstrap, group, anomalies_topic,
                                                   gone["partition"], gone["offset"]),
                     "the dead-lettered anomaly's offset committed", 30)


async def committed_past_offset(bootstrap: str, group: str, topic: str, partition: int,
                                offset: int) -> bool:
    committed = (await commits_and_ends(bootstrap, group, topic))[partition][0]
    return committed is not None and committed > offset


def readings(n: int, start: float) -> list[tuple[bytes, bytes]]:
    return [(f"m{i % 40}".encode(), orjson.dumps({"sensor_id": f"m{i % 40}",
                                                  "ts": start + i, "temperature": 20.0}))
            for i in range(n)]


async def test_freshness_and_lag_alerts_fire_and_resolve_from_one_worker(
        make_worker, app_env, bootstrap, receiver):
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    env = notify_env(receiver, FRESHNESS_SLA="4s", LAG_ALERT_MAX="100",
                     ALERT_CHECK_INTERVAL="500ms", SESSION_TIMEOUT="40s",
                     HEARTBEAT_INTERVAL="1s")
    workers = [make_worker(**env).start(), make_worker(**env).start()]
    for worker in workers:
        await worker.ready()

    def watching() -> list[float]:
        return [counter(w.metrics(), "sensorstream_alerts_watching") for w in workers]
    await eventually(lambda: sorted(watching()) == [0.0, 1.0], "one worker watching", 60)
    watcher, other = sorted(workers, key=lambda w: -counter(w.metrics(),
                                                              "sensorstream_alerts_watching"))

    def alerts(since: int) -> list[tuple[str, str]]:
        return [(d["kind"], d["state"]) for d in receiver.webhook(since)
                if d["kind"] in ("freshness", "lag")]

    # The input is quiet: the freshness alert. Counted from the receiver's first request
    # (it is this test's own): the watcher may have fired before the group settled on
    # one watching worker, and a worker that keeps the watch does not fire again.
    await eventually(lambda: ("freshness", "firing") in alerts(0), "freshness alert", 30)
    docs = [d for d in receiver.webhook(0) if d["kind"] == "freshness"]
    assert docs and all(d["state"] == "firing" for d in docs), docs
    assert all(d["quiet_seconds"] >= 4 and d["sla_seconds"] == 4 for d in docs), docs

    # Input again, while the other worker is frozen: freshness resolved, lag fires
    # (the frozen worker's partitions are not consumed).
    mark = len(receiver.got)
    os.killpg(other.process.pid, signal.SIGSTOP)
    try:
        await produce(bootstrap, topic, readings(800, time.time() - 600))
        await eventually(lambda: {("freshness", "resolved"), ("lag", "firing")}
                         <= set(alerts(mark)), "freshness resolved and lag alert", 30)
        lag = next(d for d in receiver.webhook(mark) if d["kind"] == "lag")
        assert lag["lag"] > 100 and lag["lag_max"] == 100
    finally:
        os.killpg(other.process.pid, signal.SIGCONT)
    await eventually(lambda: ("lag", "resolved") in alerts(mark), "lag resolved", 60)
    # One worker sends, each change once. (The input went quiet again after the
    # produce, so a second freshness alert may have fired by now.)
    sent = alerts(mark)
    assert [a for a in sent if a[0] == "lag"] == [("lag", "firing"), ("lag", "resolved")]
    assert [a for a in sent if a[0] == "freshness"][:2] in (
        [("freshness", "resolved")], [("freshness", "resolved"), ("freshness", "firing")])
    assert "input alert lag" not in other.log.read_text()
    assert "input alert lag firing" in watcher.log.read_text()
