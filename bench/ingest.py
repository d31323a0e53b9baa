"""Ingest path benchmark: the ceiling (raw aiokafka + orjson) against a sensorstream worker
on the same topic, same data, same session.

    python -m bench.ingest [--readings N] [--sensors N]     (make bench)

Starts its own local stack on free ports, produces the data set once per input
shape, reads it with a plain consumer (the ceiling), then runs a worker over it and
times it by its own counters. Prints a markdown table and writes JSON under
bench/results/. Speed is never asserted in tests; this is where it is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app import settings as settings_mod
from app.simulator import Plan, messages
from app.stack import Stack
from tests.integration.harness import (
    Worker,
    accounting,
    create_topic,
    env_without_sensorstream,
    eventually,
    isolated_stack_settings,
    produce,
)

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 8


async def ceiling(bootstrap: str, topic: str, expected_messages: int) -> tuple[int, float]:
    """Raw consume + parse of every message: readings and seconds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        readings = seen = 0
        start = time.perf_counter()
        while seen < expected_messages:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                seen += len(records)
                for record in records:
                    doc = orjson.loads(record.value)
                    readings += len(doc["readings"]) if isinstance(doc, dict) and \
                        "readings" in doc else 1
        return readings, time.perf_counter() - start
    finally:
        await consumer.stop()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def worker_run(env: dict[str, str], topic: str, rows: int, workdir: Path) -> dict:
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    worker = Worker({**env, "SENSORSTREAM_APP_ID": app_id, "SENSORSTREAM_INPUT_TOPICS": topic,
                     "SENSORSTREAM_DLQ_TOPIC": f"{app_id}-dlq",
                     "SENSORSTREAM_LATE_TOPIC": f"{app_id}-late",
                     "SENSORSTREAM_PARTITIONS": str(PARTITIONS)},
                    workdir / app_id, workdir / f"{app_id}.log")
    started = time.perf_counter()
    worker.start()
    try:
        await worker.ready(120)
        ready_s = time.perf_counter() - started
        first = None

        def done():
            nonlocal first
            counts = accounting(worker.metrics(), topic)
            if first is None and counts["in"] > 0:
                first = time.perf_counter()
            return counts if counts["accepted"] >= rows else None
        counts = await eventually(done, "worker processed the data set", 900, interval=0.05)
        end = time.perf_counter()
        return {"seconds": end - (first or end), "ready_s": ready_s,
                "peak_rss_mib": peak_rss_mib(worker.process.pid), "counts": counts}
    finally:
        worker.stop()


async def run(env: dict[str, str], readings: int, sensors: int, workdir: Path) -> list[dict]:
    bootstrap = env["SENSORSTREAM_BROKER"].split("://", 1)[1]
    results = []
    for label, envelope in (("one reading per message", 1), ("envelopes of 100", 100)):
        topic = f"bench-in-{uuid.uuid4().hex[:6]}"
        await create_topic(bootstrap, topic, PARTITIONS)
        plan = Plan(sensors=sensors, count=readings, speed=0, envelope=envelope, seed=1,
                    start_us=int((time.time() - readings / sensors * 31 - 60) * 1e6))
        msgs = [(k, v) for _ts, k, v in messages(plan, Counter())]
        await produce(bootstrap, topic, msgs)
        n, seconds = await ceiling(bootstrap, topic, len(msgs))
        assert n == readings, (n, readings)
        run_result = await worker_run(env, topic, readings * 4, workdir)
        results.append({
            "input": label, "sensors": sensors, "readings": readings,
            "messages": len(msgs),
            "ceiling_readings_per_s": readings / seconds,
            "sensorstream_readings_per_s": readings / run_result["seconds"],
            "ratio_to_ceiling": seconds / run_result["seconds"],
            "worker_ready_s": run_result["ready_s"],
            "worker_peak_rss_mib": run_result["peak_rss_mib"],
        })
    return results


def table(results: list[dict]) -> str:
    lines = ["| input | readings | ceiling readings/s | sensorstream readings/s | "
             "ratio to ceiling | worker ready (s) | worker peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['input']} | {r['readings']:,} | {r['ceiling_readings_per_s']:,.0f} | "
            f"{r['sensorstream_readings_per_s']:,.0f} | {r['ratio_to_ceiling']:.3f} | "
            f"{r['worker_ready_s']:.1f} | {r['worker_peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--sensors", type=int, default=54)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sensorstream-bench-"))
    overrides = isolated_stack_settings(workdir / "stack")
    stack = Stack(settings_mod.load(overrides))
    env = {**env_without_sensorstream(), **overrides, **stack.up()}
    try:
        results = asyncio.run(run(env, args.readings, args.sensors, workdir))
    finally:
        stack.down()
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"bench": "ingest", "results": results}, indent=2))
    print(f"\nwritten: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
