"""sensorstream end to end in the benchmark: a real worker with both sinks, timed by its
own counters; fixed-rate latency probes over HTTP; peak RSS; restart to ready.

Every run gets its own app id, topics, PostgreSQL schema and lake prefix, so runs in
one session never see each other's state.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench.peers.run import vmhwm_mib
from tests.integration.harness import Worker, counter, http_get

PARTITIONS = 8
#: Metrics per simulated reading (temperature, humidity, light, voltage).
METRICS = 4
#: A scrape of /metrics costs the worker ~50 ms: poll about once a second.
POLL_S = 1.0


def worker_env(env: dict[str, str], topic: str) -> dict[str, str]:
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    lake = env.get("SENSORSTREAM_LAKE_URL", "")
    return {**env, "SENSORSTREAM_APP_ID": app_id, "SENSORSTREAM_INPUT_TOPICS": topic,
            "SENSORSTREAM_DLQ_TOPIC": f"{app_id}-dlq",
            "SENSORSTREAM_LATE_TOPIC": f"{app_id}-late",
            "SENSORSTREAM_AGGREGATES_TOPIC": f"{app_id}-aggregates",
            "SENSORSTREAM_ANOMALIES_TOPIC": f"{app_id}-anomalies",
            "SENSORSTREAM_PARTITIONS": str(PARTITIONS),
            "SENSORSTREAM_PG_SCHEMA": app_id.replace("-", "_"),
            "SENSORSTREAM_LAKE_URL": f"{lake.rstrip('/')}/{app_id}" if lake else "",}


def peak_rss_mib(pid: int) -> float:
    peak = vmhwm_mib(pid)
    return float("nan") if peak is None else peak


def _progress(worker: Worker, topic: str) -> tuple[float, float, float, float, float]:
    """Input messages validated, metric values classified (accepted, duplicate, late or
    missing), accepted, and rows stored by each sink."""
    samples = worker.metrics()
    return (counter(samples, "sensorstream_messages_in_total", topic=topic),
            counter(samples, "sensorstream_readings_in_total", topic=topic),
            counter(samples, "sensorstream_readings_accepted_total", topic=topic),
            counter(samples, "sensorstream_sink_rows_total", sink="postgres",
                    dataset="readings"),
            counter(samples, "sensorstream_sink_rows_total", sink="lake", dataset="readings"))


async def throughput(env: dict[str, str], topic: str, readings: int, messages: int,
                     workdir: Path,
                     deadline: float = 900.0, keep: bool = False) -> dict[str, Any]:
    """Drain a backlog of ``readings`` already in ``topic``: seconds from the first
    reading taken in to all accepted into the windows, and to all stored by both sinks."""
    wenv = worker_env(env, topic)
    app_id = wenv["SENSORSTREAM_APP_ID"]
    worker = Worker(wenv, workdir / app_id, workdir / f"{app_id}.log")
    started = time.perf_counter()
    worker.start()
    try:
        await worker.ready(180)
        ready_s = time.perf_counter() - started
        values = readings * METRICS
        first = validated = processed = stored = None
        unanswered = 0
        end = time.monotonic() + deadline
        while stored is None:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
            if time.monotonic() > end:
                raise RuntimeError(f"not stored within {deadline:.0f} s: "
                                   f"{_progress(worker, topic)} of {values}")
            try:
                n_messages, n_in, accepted, pg, lake = _progress(worker, topic)
            except OSError:  # a scrape that timed out: the event loop was busy; count it
                unanswered += 1
                await asyncio.sleep(POLL_S)
                continue
            now = time.perf_counter()
            if first is None and n_messages > 0:
                first = now - POLL_S / 2  # it started within the last poll interval
            if validated is None and n_messages >= messages:
                validated = now
            if processed is None and n_in >= values:
                processed = now
            sinks = wenv.get("SENSORSTREAM_SINKS", "auto")
            if processed is not None and (sinks == "none" or (pg >= accepted and lake >= accepted)):
                stored = now
            await asyncio.sleep(POLL_S)
        result = {"readings": readings, "ready_s": ready_s,
                  "validated_per_s": readings / (validated - first),
                  "processed_s": processed - first, "stored_s": stored - first,
                  "processed_per_s": readings / (processed - first),
                  "stored_per_s": readings / (stored - first),
                  "peak_rss_mib": peak_rss_mib(worker.process.pid),
                  "unanswered_scrapes": unanswered}
        if keep:
            result["worker"] = worker
        return result
    except BaseException:
        worker.stop()
        raise
    finally:
        if not keep:
            worker.stop()


def count_table_keys(data_dir: Path) -> int:
    """Keys in the worker's RocksDB tables (the worker must be stopped)."""
    from rocksdict import AccessType, Rdict

    total = 0
    for db in sorted(data_dir.glob("**/*.db")) + sorted(data_dir.glob("**/*.db-*")):
        if not (db / "CURRENT").exists():
            continue
        store = Rdict(str(db), access_type=AccessType.read_only())
        try:
            total += sum(1 for _ in store.keys())  # noqa: SIM118 (an Rdict iterates items)
        finally:
            store.close()
    return total


async def restart(worker: Worker) -> dict[str, Any]:
    """Stop the worker, count its table keys, start it again on the same data dir and
    time it to ready (it rebuilds its tables from their changelogs, app.main)."""
    worker.stop()
    keys = count_table_keys(Path(worker.env["SENSORSTREAM_DATA_DIR"]))
    started = time.perf_counter()
    worker.start()
    try:
        await worker.ready(600)
        return {"table_keys": keys, "ready_after_restart_s": time.perf_counter() - started}
    finally:
        worker.stop()


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _load(producer: AIOKafkaProducer, topic: str, rate: int, stop: asyncio.Event,
                motes: int = 54) -> int:
    """Single-reading messages at ``rate`` per second, time-stamped now."""
    rng = random.Random(7)
    tick = 0.02
    sent = 0
    begin = time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - begin) * rate)
        now_us = time.time_ns() // 1000
        while sent < due:
            mote = sent % motes + 1
            value = orjson.dumps({"mote_id": mote, "ts": _iso(now_us + sent % 1000),
                                  "temperature": 20 + rng.random(), "humidity": 40.0,
                                  "light": 500.0, "voltage": 2.6})
            await producer.send(topic, value, key=str(mote).encode())
            sent += 1
        await asyncio.sleep(tick)
    return sent


async def _probe(worker: Worker, producer: AIOKafkaProducer, topic: str, sensor: str,
                 stop: asyncio.Event, out: list[float], timeout: float = 10.0) -> None:
    """Send one reading at a time and poll its live 1-minute window over HTTP until
    the reading is counted in it: the delay from its time to being visible."""
    counts: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        ts_us = time.time_ns() // 1000
        start_s = ts_us // 60_000_000 * 60
        counts[start_s] = counts.get(start_s, 0) + 1
        want = counts[start_s]
        value = orjson.dumps({"sensor_id": sensor, "ts": _iso(ts_us), "temperature": 21.0})
        await producer.send(topic, value, key=sensor.encode())
        path = (f"/sensors/{sensor}/aggregates?window=1m&metric=temperature"
                f"&since={_iso(ts_us)}&until={_iso(ts_us)}")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, body = await loop.run_in_executor(None, http_get, worker.url + path)
            if status == 200 and _counted(body) >= want:
                out.append(time.time_ns() / 1000 - ts_us)
                break
            await asyncio.sleep(0.01)
        else:
            out.append(float("inf"))
        await asyncio.sleep(0.2)


def _counted(body: Any) -> int:
    for window in body.get("windows", []) if isinstance(body, dict) else []:
        stats = window.get("metrics", {}).get("temperature")
        if stats:
            return int(stats.get("count", 0))
    return 0


async def latency(env: dict[str, str], bootstrap: str, rate: int, seconds: float,
                  workdir: Path, probes: int = 4) -> dict[str, Any]:
    """p50/p99 from a reading's time to its aggregate visible over HTTP, under a steady
    load of ``rate`` readings/s (single-reading messages)."""
    from tests.integration.harness import create_topic

    topic = f"bench-live-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic, PARTITIONS)
    wenv = worker_env(env, topic)
    app_id = wenv["SENSORSTREAM_APP_ID"]
    worker = Worker(wenv, workdir / app_id, workdir / f"{app_id}.log")
    worker.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    await producer.start()
    stop_load, stop_probes = asyncio.Event(), asyncio.Event()
    try:
        await worker.ready(180)
        load = asyncio.create_task(_load(producer, topic, rate, stop_load))
        await asyncio.sleep(5)  # warm-up under load before measuring, not readiness
        samples: list[float] = []
        tasks = [asyncio.create_task(_probe(worker, producer, topic, f"probe-{i}",
                                            stop_probes, samples)) for i in range(probes)]
        await asyncio.sleep(seconds)
        stop_probes.set()
        await asyncio.gather(*tasks)
        stop_load.set()
        sent = await load
        elapsed = seconds + 5
        ms = sorted(s / 1000 for s in samples)
        return {"rate": rate, "achieved_rate": sent / elapsed, "probes": len(ms),
                "p50_ms": statistics.median(ms),
                "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
                "max_ms": ms[-1], "peak_rss_mib": peak_rss_mib(worker.process.pid)}
    finally:
        stop_load.set()
        stop_probes.set()
        await producer.stop()
        worker.stop()
