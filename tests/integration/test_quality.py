"""Data quality and the daily summary through the real stack: every kind of reading counted
where the operator reads it, over HTTP and on /metrics."""

from __future__ import annotations

import time

import orjson
import pytest

from app.contract import format_ts, parse_time

from .harness import eventually, produce

pytestmark = pytest.mark.integration

DAY = 86_400


def start_time() -> float:
    """Twenty minutes ago, or 23:00 yesterday just after midnight: one UTC day either way."""
    now = time.time()
    midnight = now // DAY * DAY
    return now - 1200 if now - midnight > 3600 else midnight - 3600


def stream(start: float) -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    """Sensor q1 every 10 s for 10 min, with every kind of reading the figures count."""
    def doc(i: int, **values: object) -> bytes:
        return orjson.dumps({"sensor_id": "q1", "ts": start + i * 10,
                             "temperature": 20.0 + (i % 4) * 0.1, "humidity": 40.0, **values})
    msgs = [doc(i, **({"humidity": None} if i in (10, 20) else {}),
                **({"temperature": 60.0} if i in (40, 50) else {})) for i in range(60)]
    msgs += [doc(5), doc(6), doc(7)]                     # sent twice
    msgs.append(doc(60, temperature=500.0))              # past its physical limits
    msgs.append(b"{oops")                                # no sensor id to read
    msgs.append(doc(-90))                                # 15 min behind: late
    expected = {"accepted": 121, "null": 2, "out_of_range": 2, "duplicate": 6, "late": 2,
                "dead_letter": 1, "received": 130}
    return [(b"q1", m) for m in msgs], expected


async def test_quality_and_daily_summary_count_every_kind_of_reading(
        make_worker, app_env, bootstrap):
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    start = start_time()
    day = format_ts(parse_time(start))[:10]
    msgs, expected = stream(start)
    worker = make_worker(SENSORSTREAM_ALLOWED_LATENESS="1m").start()
    await worker.ready()
    await produce(bootstrap, topic, msgs)

    def counted():
        status, body = worker.get("/sensors/q1/quality")
        assert status == 200 and body["counts"] == expected, body
        return body
    body = await eventually(counted, "q1's readings counted", 90, interval=0.5)
    assert body["date"] == day
    assert body["rates"]["duplicate"] == round(6 / 130, 6)
    assert body["rates"]["dead_letter"] == round(1 / 130, 6)
    assert body["typical_interval_s"] == 10.0
    # 60 temperatures and 61 humidities in the 600 s from its first reading to the newest
    assert body["completeness_by_metric"] == {"humidity": 100.0, "temperature": 100.0}
    assert body["last_seen"] == format_ts(parse_time(start + 600))
    assert body["freshness_s"] >= time.time() - (start + 600) - 5
    assert body["silent"] is False

    status, fleet = worker.get("/quality")
    assert status == 200 and fleet["date"] == day and fleet["sensors"] == 1
    assert fleet["counts"]["dead_letter"] == 2  # and the one without a sensor id
    assert fleet["counts"]["received"] == 131
    assert fleet["rates"]["late"] == round(2 / 131, 6)
    assert fleet["least_complete"][0]["sensor_id"] == "q1"
    assert worker.get(f"/quality?date={day}")[1]["counts"] == fleet["counts"]
    assert worker.get("/quality?date=2000-01-01")[1]["counts"]["received"] == 0
    assert worker.get("/sensors/q1/quality?date=2000-01-01")[1]["counts"]["received"] == 0
    for bad in ("/quality?date=tomorrow", "/sensors/q1/quality?date=2026-13-01",
                "/quality?scope=all", "/sensors/q1/daily?since=2026-02-01&until=2026-01-01",
                "/sensors/q1/daily?since=2000-01-01&until=2026-01-01"):
        status, answer = worker.get(bad)
        assert status == 400 and answer["error"], bad
    assert worker.get("/sensors/nope/quality")[0] == 404
    assert worker.get("/sensors/nope/daily")[0] == 404

    # the daily summary: the 1-day aggregate, next to the day's anomalies by severity
    status, summary = worker.get("/sensors/q1/daily")
    assert status == 200 and [d["date"] for d in summary["days"]] == [day]
    (today,) = summary["days"]
    assert today["aggregate"]["window"] == "1d" and today["aggregate"]["open"]
    assert 0 < today["aggregate"]["metrics"]["temperature"]["count"] <= 60
    assert today["quality"]["counts"] == expected
    events = worker.get("/anomalies?sensor_id=q1&limit=10000")[1]["anomalies"]
    raised = [e for e in events if not e["summary"] and e["detector"] != "recovered"]
    assert any(e["detector"] == "range" for e in raised)
    assert today["anomalies"]["total"] == len(raised)
    assert today["anomalies"]["by_severity"] == {
        s: sum(e["severity"] == s for e in raised) for s in ("low", "medium", "high")}
    assert today["anomalies"]["repeats_in_cooldown"] == sum(e["suppressed"] for e in events)

    # the same figures on /metrics (recomputed at most every 15 s: web/quality.py)
    def current() -> dict | None:
        samples = worker.metrics()
        key = ("sensorstream_quality_readings", frozenset({("kind", "received")}))
        return samples if samples.get(key) == 131 else None
    samples = await eventually(current, "quality figures on /metrics", 40, interval=1)
    assert samples[("sensorstream_quality_readings", frozenset({("kind", "dead_letter")}))] == 2
    assert samples[("sensorstream_sensor_completeness_percent",
                    frozenset({("sensor_id", "q1")}))] == 100.0
    assert samples[("sensorstream_sensor_quality_rate",
                    frozenset({("sensor_id", "q1"), ("kind", "duplicate")}))] == round(6 / 130, 6)
    assert samples[("sensorstream_sensor_freshness_seconds",
                    frozenset({("sensor_id", "q1")}))] > 0
