"""The operators' controls on real workers (broker, PostgreSQL, S3 behind a proxy that can
fail): a pause holds an input topic for the whole group, through a rebalance and for a
worker that starts later, and a resume ingests everything once (after a pause under load
too); the lake's seal-now, retry-uploads and staging clean-up; every action logged with
the token's name, never the token; 401 without a token."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from .harness import commits_and_ends, counter, eventually, metric_samples, produce
from .test_access import assert_refused, request
from .test_sinks import Outage, lake_readings, lake_store

pytestmark = pytest.mark.integration

OPS = "ops-token-0123456789abcdef"
CI = "ci-token-fedcba9876543210"
TOKENS = f"ops:{OPS},ci:{CI}"
STILL_FOR = 5.0  #: seconds a paused topic must show no progress


def readings_of(prefix: str, n: int, at: float) -> list[tuple[bytes, bytes]]:
    """``n`` distinct readings of distinct sensors, one second apart from ``at``."""
    return [(f"{prefix}-{i}".encode(), orjson.dumps({
        "sensor_id": f"{prefix}-{i}", "ts": at + i, "temperature": float(i)}))
        for i in range(n)]


def ingested(workers, topic: str) -> float:
    """Readings the ingest stage took in from ``topic``, summed over ``workers``."""
    total = 0.0
    for worker in workers:
        status, text, _ = request(worker.url + "/metrics", CI)
        assert status == 200
        total += counter(metric_samples(text), "sensorstream_readings_in_total", topic=topic)
    return total


def held(worker, topic: str) -> list[int]:
    status, body, _ = request(worker.url + "/admin/paused?scope=local", OPS)
    assert status == 200, body
    return body["held_partitions"].get(topic, [])


async def stays_still(workers, topic: str, group: str, bootstrap: str) -> None:
    """Neither the ingest counters nor the group's committed offsets move for STILL_FOR
    seconds: an assertion over a span, not a wait for readiness."""
    counted = ingested(workers, topic)
    committed = {p: c for p, (c, _end) in (await commits_and_ends(bootstrap, group,
                                                                   topic)).items()}
    end = time.monotonic() + STILL_FOR
    while time.monotonic() < end:
        assert ingested(workers, topic) == counted, "a paused topic was ingested"
        await asyncio.sleep(0.5)
    now = {p: c for p, (c, _end) in (await commits_and_ends(bootstrap, group, topic)).items()}
    assert now == committed, f"committed offsets moved while paused: {committed} -> {now}"


async def test_a_pause_holds_the_group_through_a_rebalance_and_a_resume_ingests_once(
        make_worker, app_env, bootstrap):
    extra = {"SENSORSTREAM_API_TOKENS": TOKENS, "SENSORSTREAM_SINKS": "postgres"}
    topic, group = app_env["SENSORSTREAM_INPUT_TOPICS"], app_env["SENSORSTREAM_APP_ID"]
    a, b = make_worker(**extra).start(), make_worker(**extra).start()
    await a.ready()
    await b.ready()

    def both_own_partitions():
        return all(request(w.url + "/ready")[1].get("partitions", 0) > 0 for w in (a, b))
    await eventually(both_own_partitions, "both workers own partitions", 60)
    now = time.time()
    first = readings_of("before", 40, now - 600)
    await produce(bootstrap, topic, first)
    await eventually(lambda: ingested((a, b), topic) == len(first), "ingesting works", 60)

    async def all_committed() -> bool:
        state = await commits_and_ends(bootstrap, group, topic)
        return all(c == end for c, end in state.values())
    await eventually(all_committed, "the group committed the first readings", 60)

    # Refusals: no token, an unknown topic, a bad body; reads under /admin/ need a token.
    for path in ("/admin/pause", "/admin/resume", "/admin/lake/seal"):
        assert_refused(request(a.url + path, None, "POST", {"topic": topic}))
    for path in ("/admin/paused", "/admin/sinks"):
        assert_refused(request(a.url + path))
    status, body, _ = request(a.url + "/admin/pause", OPS, "POST", {"topic": "elsewhere"})
    assert status == 400 and body["error"] == (
        f"'elsewhere' is not an input topic; only these can be paused: {topic}")
    status, body, _ = request(a.url + "/admin/pause", OPS, "POST", [topic])
    assert status == 400 and "JSON object" in body["error"]
    status, body, _ = request(a.url + "/admin/lake/seal", OPS, "POST",
                              {"hour": "2026-11-22T10:00Z"})
    assert status == 404 and "lake sink is not enabled" in body["error"], body

    # Pause through A: both workers hold their partitions.
    status, body, _ = request(a.url + "/admin/pause", OPS, "POST", {"topic": topic})
    assert status == 200, body
    assert body["by"] == "ops" and body["paused"] is True and "unreachable_workers" not in body
    assert sorted(w["worker"] for w in body["workers"]) == sorted([a.url, b.url])
    assert sorted(p for w in body["workers"] for p in w["held_partitions"]) == [0, 1, 2, 3]
    status, body, _ = request(b.url + "/admin/paused", CI)
    assert status == 200 and body["paused"][topic]["by"] == "ops", body
    status, body, _ = request(b.url + "/admin/sinks", CI)
    assert status == 200 and len(body["workers"]) == 2, body
    assert all("postgres" in w["sinks"] for w in body["workers"])
    assert sorted(p for w in body["workers"] for p in w["held_partitions"][topic]) == [
        0, 1, 2, 3]

    second = readings_of("during", 60, now - 300)
    await produce(bootstrap, topic, second)
    ends = await commits_and_ends(bootstrap, group, topic)
    assert sum(end for _c, end in ends.values()) == len(first) + len(second)
    await stays_still((a, b), topic, group, bootstrap)

    # A rebalance: B leaves, A takes its partitions and holds them too.
    b.stop()
    await eventually(lambda: held(a, topic) == [0, 1, 2, 3],
                     "A holds all four partitions after B left", 60)
    await stays_still((a,), topic, group, bootstrap)

    # A worker that starts later learns the pause from the control topic.
    c = make_worker(**extra).start()
    await c.ready()
    await eventually(lambda: held(c, topic) and len(held(a, topic) + held(c, topic)) == 4,
                     "A and the new worker C share the partitions, all held", 60)
    a_before, c_before = ingested((a,), topic), ingested((c,), topic)
    assert c_before == 0
    await stays_still((a, c), topic, group, bootstrap)

    # Resume through C: every reading produced meanwhile is ingested, once.
    status, body, _ = request(c.url + "/admin/resume", CI, "POST", {"topic": topic})
    assert status == 200 and body["by"] == "ci" and body["paused"] is False, body
    assert all(w["held_partitions"] == [] for w in body["workers"])
    await eventually(all_committed, "the group committed every input offset", 90)
    await eventually(lambda: ingested((a, c), topic) - a_before >= len(second),
                     "the readings produced while paused are ingested", 30)
    assert ingested((a, c), topic) - a_before == len(second)
    status, body, _ = request(a.url + "/admin/paused", OPS)
    assert status == 200 and body["paused"] == {}, body

    logs = {w: w.log.read_text() for w in (a, b, c)}
    assert OPS not in "".join(logs.values()) and CI not in "".join(logs.values())
    audit = [orjson.loads(line) for w in (a, b, c) for line in logs[w].splitlines()
             if line.startswith("{") and '"admin: input topic' in line]
    assert {(e["action"], e["by"], e["target"], e["forwarded"]) for e in audit} == {
        ("pause", "ops", topic, False), ("pause", "ops", topic, True),
        ("resume", "ci", topic, False), ("resume", "ci", topic, True)}


async def test_a_sink_recovering_from_an_outage_leaves_a_paused_topic_paused(
        make_worker, app_env, bootstrap, stack):
    """The sink watcher pauses every partition while PostgreSQL is down and resumes them
    after: not those of a topic an operator paused."""
    paused_topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    other = f"{paused_topic}-b"
    group = app_env["SENSORSTREAM_APP_ID"]
    extra = {"SENSORSTREAM_API_TOKENS": TOKENS, "SENSORSTREAM_SINKS": "postgres",
             "SENSORSTREAM_INPUT_TOPICS": f"{paused_topic},{other}",
             "SENSORSTREAM_SINK_RETRY_MAX": "2s", "SENSORSTREAM_SINK_BREAKER_COOLDOWN": "2s"}
    worker = make_worker(**extra).start()
    await worker.ready()
    status, body, _ = request(worker.url + "/admin/pause", OPS, "POST", {"topic": paused_topic})
    assert status == 200 and body["workers"][0]["held_partitions"] == [0, 1, 2, 3], body
    now = time.time()
    waiting = readings_of("held", 30, now - 900)
    await produce(bootstrap, paused_topic, waiting)
    flowing = readings_of("flow-1", 30, now - 800)
    await produce(bootstrap, other, flowing)
    await eventually(lambda: ingested((worker,), other) == len(flowing),
                     "the other topic is ingested", 60)

    stack.stop_service("postgres")
    try:
        await produce(bootstrap, other, readings_of("flow-2", 30, now - 700))

        def degraded() -> bool:
            status, body = worker.get("/ready")
            return status == 503 and body["sinks"]["postgres"]["ok"] is False
        await eventually(degraded, "the PostgreSQL sink degraded", 30)

        def watcher_paused() -> bool:
            samples = metric_samples(request(worker.url + "/metrics", CI)[1])
            return samples[("sensorstream_sink_paused", frozenset())] == 1
        await eventually(watcher_paused, "the sink watcher paused the partitions", 10)
    finally:
        await asyncio.to_thread(stack.up)
    await eventually(lambda: worker.get("/ready")[0] == 200, "the sink recovered", 60)
    # Records fetched as the watcher paused are fetched again on its resume (the consumer
    # seeks back to them: stream.transport), not only when their partition's next message
    # arrives (they sat unread 60 s before).
    await eventually(lambda: ingested((worker,), other) == len(flowing) + 30,
                     "the readings fetched as the watcher paused ingested", 30)
    await produce(bootstrap, other, readings_of("flow-3", 30, now - 600))
    await eventually(lambda: ingested((worker,), other) == len(flowing) + 60,
                     "the other topic is ingested again", 60)
    assert held(worker, paused_topic) == [0, 1, 2, 3]
    await stays_still((worker,), paused_topic, group, bootstrap)
    assert ingested((worker,), paused_topic) == 0

    status, body, _ = request(worker.url + "/admin/resume", OPS, "POST",
                              {"topic": paused_topic})
    assert status == 200, body

    async def all_committed() -> bool:
        state = await commits_and_ends(bootstrap, group, paused_topic)
        return all(c == end for c, end in state.values())
    await eventually(all_committed, "the paused topic's readings committed", 60)
    await eventually(lambda: ingested((worker,), paused_topic) >= len(waiting),
                     "the paused topic's readings ingested", 30)
    assert ingested((worker,), paused_topic) == len(waiting)


async def arequest(*args: object) -> tuple:
    """``request`` off the event loop, which runs the S3 proxy the worker goes through."""
    return await asyncio.to_thread(request, *args)


async def test_a_pause_under_load_then_a_resume_ingests_every_reading_once(
        make_worker, app_env, bootstrap):
    """A pause while readings flow, then a resume: every input offset is committed and
    every reading ingested once. It stalled in about half the runs: the pause's record to
    the pauses topic (new to the producer) narrowed the producer's metadata to that topic,
    a changelog batch waiting in the producer lost its leader, and every commit waited for
    it (stream.transport.keep_known_topics). The producing is paced so that the pause lands
    while fetches, table updates and their changelog batches are in flight."""
    topic, group = app_env["SENSORSTREAM_INPUT_TOPICS"], app_env["SENSORSTREAM_APP_ID"]
    worker = make_worker(SENSORSTREAM_API_TOKENS=TOKENS, SENSORSTREAM_SINKS="none").start()
    await worker.ready()
    now = time.time()
    chunks = [readings_of(f"load-{n}", 100, now - 1200 + n) for n in range(40)]

    async def paced() -> None:
        for chunk in chunks:
            await produce(bootstrap, topic, chunk)
            await asyncio.sleep(0.1)
    producing = asyncio.create_task(paced())
    await eventually(lambda: ingested((worker,), topic) >= 1000, "ingesting under load", 30)
    status, body, _ = await arequest(worker.url + "/admin/pause", OPS, "POST",
                                     {"topic": topic})
    assert status == 200, body
    await producing
    last: list[float] = []

    def settled() -> bool:  # what was handed to the agents before the pause is processed
        last.append(ingested((worker,), topic))
        return len(last) > 4 and last[-1] == last[-5]
    await eventually(settled, "the readings handed over before the pause processed", 30,
                     interval=0.25)
    assert last[-1] < 4000, "the pause stopped nothing"
    await stays_still((worker,), topic, group, bootstrap)

    status, body, _ = await arequest(worker.url + "/admin/resume", OPS, "POST",
                                     {"topic": topic})
    assert status == 200, body

    async def all_committed() -> bool:
        state = await commits_and_ends(bootstrap, group, topic)
        return all(c == end for c, end in state.values())
    await eventually(all_committed, "every input offset committed", 60)
    await eventually(lambda: ingested((worker,), topic) >= 4000, "every reading ingested", 30)
    assert ingested((worker,), topic) == 4000


def hour_dir(start: datetime) -> str:
    return f"raw/dt={start:%Y-%m-%d}/hour={start:%H}"


async def lake_keys(env: dict[str, str], prefix: str) -> list[str]:
    store = lake_store(env)
    await store.start()
    try:
        return await store.list(prefix)
    finally:
        await store.stop()


async def download(env: dict[str, str], target: Path) -> Path:
    store = lake_store(env)
    await store.start()
    try:
        for key in await store.list("raw/"):
            path = target / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(await store.get(key))
    finally:
        await store.stop()
    return target


async def test_lake_seal_now_retry_uploads_and_cleanup(make_worker, app_env, bootstrap,
                                                        tmp_path):
    proxy = Outage(app_env["SENSORSTREAM_S3_ENDPOINT"])
    await proxy.up()
    extra = {"SENSORSTREAM_API_TOKENS": TOKENS, "SENSORSTREAM_SINKS": "lake",
             "SENSORSTREAM_S3_ENDPOINT": f"http://127.0.0.1:{proxy.port}",
             "SENSORSTREAM_LAKE_SEAL_IDLE": "10m", "SENSORSTREAM_LAKE_UPLOAD_CONCURRENCY": "1",
             "SENSORSTREAM_SINK_BATCH_WINDOW": "200ms"}
    env = {**app_env, **extra}
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    worker = make_worker(**extra).start()
    await worker.ready()
    staging = Path(worker.env["SENSORSTREAM_DATA_DIR"]) / "lake-staging"
    hour = datetime.fromtimestamp((time.time() // 3600 - 2) * 3600, UTC)
    directory = hour_dir(hour)

    def gauge(name: str, **labels: str) -> float:
        status, text, _ = request(worker.url + "/metrics", CI)
        assert status == 200
        return counter(metric_samples(text), name, **labels)

    first = readings_of("lake-a", 50, hour.timestamp() + 60)
    await produce(bootstrap, topic, first)

    async def uploaded() -> bool:
        parts = [k for k in await lake_keys(env, directory + "/") if "/part-p" in k]
        return bool(parts) and gauge("sensorstream_lake_staging_files") == 0 and len(
            lake_readings(await download(env, tmp_path / "parts"))) == len(first)
    await eventually(uploaded, "the first readings uploaded as parts", 90, interval=1)

    # Seal now: ten minutes before the idle timeout would have.
    status, body, _ = await arequest(worker.url + "/admin/lake/seal", OPS, "POST",
                              {"hour": hour.strftime("%Y-%m-%dT%H:%MZ")})
    assert status == 200, body
    (mine,) = body["workers"]
    assert mine["dataset"] == "readings" and body["by"] == "ops"
    assert sum(s["rows"] for s in mine["sealed"]) == len(first), mine
    assert all(s["files"] >= 1 and "error" not in s for s in mine["sealed"])
    keys = await lake_keys(env, directory + "/")
    assert keys and all("/sealed-p" in k for k in keys), keys
    assert not await lake_keys(env, f"_sensorstream/open/{directory}/")
    rows = lake_readings(await download(env, tmp_path / "sealed"))
    assert sorted(r[0] for r in rows) == sorted(k.decode() for k, _v in first)

    # S3 down: new parts stay staged; clean-up removes a planted temporary file only.
    await proxy.down()
    second = readings_of("lake-b", 30, hour.timestamp() + 600)
    try:
        await produce(bootstrap, topic, second)
        await eventually(lambda: gauge("sensorstream_lake_upload_errors_total") >= 8,
                         "uploads failed long enough to back off to the cap", 120)
        staged = sorted((staging / "pending").rglob("*.parquet"))
        assert staged
        planted = staging / "pending" / directory / "part-p0-1-planted.parquet.tmp"
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_bytes(b"a write cut short")
        status, body, _ = await arequest(worker.url + "/admin/lake/cleanup-staging", CI, "POST")
        assert status == 200, body
        (mine,) = body["workers"]
        assert mine["removed"] == [planted.relative_to(staging).as_posix()]
        assert mine["kept_not_uploaded"] == len(staged)
        assert not planted.exists() and all(p.exists() for p in staged)
    finally:
        await proxy.up()

    # Retry now: the staged files are uploaded at once, not after the backoff (up to 30 s).
    began = time.monotonic()
    status, body, _ = await arequest(worker.url + "/admin/lake/retry-uploads", OPS, "POST")
    assert status == 200 and body["workers"][0]["queued"] == len(staged), body
    await eventually(lambda: gauge("sensorstream_lake_staging_files") == 0,
                     "staging drained after the retry", 5)
    took = time.monotonic() - began
    status, body, _ = await arequest(worker.url + "/admin/lake/seal", OPS, "POST",
                              {"hour": hour.isoformat()})
    assert status == 200, body
    rows = lake_readings(await download(env, tmp_path / "after"))
    assert sorted(r[0] for r in rows) == sorted(k.decode() for k, _v in first + second)
    assert all("/sealed-p" in k for k in await lake_keys(env, directory + "/"))

    log = worker.log.read_text()
    assert OPS not in log and CI not in log
    audit = [orjson.loads(line) for line in log.splitlines()
             if line.startswith("{") and '"admin: lake' in line]
    assert [(e["action"], e["by"]) for e in audit] == [
        ("lake seal", "ops"), ("lake cleanup-staging", "ci"), ("lake retry-uploads", "ops"),
        ("lake seal", "ops")]
    print(f"staging drained {took:.2f} s after retry-uploads")
