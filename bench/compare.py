"""The performance benchmark: the ceiling, vanilla Faust, Quix Streams and sensorstream
on the same broker, topics and data, in one session.

    python -m bench.compare [--quick] [--skip-peers]          (make bench)

Starts a local stack of its own (broker, PostgreSQL, S3), produces each data set once
and lets every engine drain the same topic from the start. Rates are readings/s (a
reading is one record of four metrics; an envelope of 100 is 100 readings). Prints a
markdown table and writes JSON under bench/results/. Speed is measured here, never
asserted in tests.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app import settings as settings_mod
from app.simulator import Plan, messages
from app.stack import Stack
from bench import sensorstream_run as ss
from tests.integration.harness import (
    create_topic,
    env_without_sensorstream,
    isolated_stack_settings,
    produce,
)

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = ss.PARTITIONS


@dataclass(frozen=True)
class DataSet:
    name: str
    sensors: int
    readings: int
    envelope: int


def data_sets(quick: bool) -> list[DataSet]:
    scale = 10 if quick else 1
    return [DataSet("54 motes, one reading per message", 54, 100_000 // scale, 1),
            DataSet("54 motes, envelopes of 100", 54, 200_000 // scale, 100),
            DataSet("100,000 sensors, envelopes of 100", 100_000, 600_000 // scale, 100)]


async def produce_data_set(bootstrap: str, data: DataSet) -> tuple[str, int]:
    """The data set in a topic of its own: the topic and its number of messages."""
    topic = f"bench-in-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic, PARTITIONS)
    # Readings every ~31 s per sensor, ending a minute ago: event time spans the past.
    span_s = data.readings / data.sensors * 31
    plan = Plan(sensors=data.sensors, count=data.readings, speed=0, envelope=data.envelope,
                seed=1, start_us=int((time.time() - span_s - 60) * 1e6))
    n = await produce(bootstrap, topic, ((k, v) for _ts, k, v in messages(plan, Counter())))
    return topic, n


async def ceiling(bootstrap: str, topic: str, messages_in: int) -> dict[str, Any]:
    """Raw aiokafka consume + orjson parse of every message: the most any consumer in
    Python can do with this data on this machine."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        readings = seen = 0
        start = time.perf_counter()
        while seen < messages_in:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                seen += len(records)
                for record in records:
                    doc = orjson.loads(record.value)
                    readings += len(doc["readings"]) if "readings" in doc else 1
        seconds = time.perf_counter() - start
        return {"engine": "ceiling", "readings": readings, "seconds": seconds,
                "readings_per_s": readings / seconds, "complete": True}
    finally:
        await consumer.stop()


async def run(env: dict[str, str], quick: bool, skip_peers: bool, workdir: Path,
              ) -> dict[str, Any]:
    from bench.peers.run import run_peer

    bootstrap = env["SENSORSTREAM_BROKER"].split("://", 1)[1]
    rows: list[dict[str, Any]] = []
    restart: dict[str, Any] = {}
    for data in data_sets(quick):
        topic, n_messages = await produce_data_set(bootstrap, data)
        print(f"{data.name}: {data.readings:,} readings in {n_messages:,} messages",
              flush=True)
        results = [await ceiling(bootstrap, topic, n_messages)]
        if not skip_peers and data.sensors == 54:
            for kind in ("faust", "quix"):
                results.append(await run_peer(kind, bootstrap, topic, PARTITIONS,
                                              data.readings, workdir, time_limit=30.0))
        keep = data.sensors == 100_000
        own = await ss.throughput(env, topic, data.readings, n_messages, workdir, keep=keep)
        results.append({"engine": "sensorstream", "readings": data.readings,
                        "readings_per_s": own["stored_per_s"], "complete": True,
                        "processed_per_s": own["processed_per_s"],
                        "validated_per_s": own["validated_per_s"],
                        "peak_rss_mib": own["peak_rss_mib"], "ready_s": own["ready_s"]})
        if keep:
            restart = await ss.restart(own["worker"])
        for r in results:
            print(f"  {r['engine']}: {r['readings_per_s']:,.0f} readings/s", flush=True)
        rows.append({"data": data.__dict__, "messages": n_messages, "results": results})
    live = [await ss.latency(env, bootstrap, rate, 10 if quick else 30, workdir)
            for rate in (1_000, 10_000)]
    return {"data_sets": rows, "latency": live, "restart": restart}


def _rate(results: list[dict[str, Any]], engine: str) -> float | None:
    for r in results:
        if r["engine"] == engine:
            return r["readings_per_s"]
    return None


def table(report: dict[str, Any]) -> str:
    lines = ["| data | engine | readings/s | vs ceiling | vs vanilla Faust | vs Quix Streams "
             "| peak RSS (MiB) |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in report["data_sets"]:
        results = row["results"]
        top, faust, quix = (_rate(results, e) for e in ("ceiling", "faust", "quix"))
        for r in results:
            rate = r["readings_per_s"]
            engine = {"faust": "vanilla Faust (per event, 2 tables)",
                      "quix": "Quix Streams (1-min window)",
                      "ceiling": "ceiling (aiokafka + orjson)",
                      "sensorstream": "sensorstream end to end (both sinks)"}[r["engine"]]
            if not r.get("complete", True):
                engine += f" ({r['readings']:,} in the time limit)"
            ratio = [f"{rate / other:.2f}" if other else "-" for other in (top, faust, quix)]
            rss = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else "-"
            lines.append(f"| {row['data']['name']} | {engine} | {rate:,.0f} | "
                         f"{' | '.join(ratio)} | {rss} |")
            if r["engine"] == "sensorstream":
                lines.append(f"| {row['data']['name']} | sensorstream, ingest stage "
                             f"(validated) | {r['validated_per_s']:,.0f} | "
                             f"{r['validated_per_s'] / top:.2f} | - | - | - |")
                lines.append(f"| {row['data']['name']} | sensorstream, windows only "
                             f"(before the sinks) | {r['processed_per_s']:,.0f} | "
                             f"{r['processed_per_s'] / top:.2f} | - | - | - |")
    lines += ["", "| latency: input rate (readings/s) | achieved | probes | p50 (ms) "
              "| p99 (ms) | max (ms) | peak RSS (MiB) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["latency"]:
        lines.append(f"| {r['rate']:,} | {r['achieved_rate']:,.0f} | {r['probes']} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} | "
                     f"{r['peak_rss_mib']:.0f} |")
    if report["restart"]:
        r = report["restart"]
        lines += ["", f"Restart: {r['table_keys']:,} table keys, ready again after "
                      f"{r['ready_after_restart_s']:.1f} s."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    parser.add_argument("--skip-peers", action="store_true",
                        help="only the ceiling and sensorstream")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sensorstream-bench-"))
    overrides = isolated_stack_settings(workdir / "stack")
    stack = Stack(settings_mod.load(overrides))
    env = {**env_without_sensorstream(), **overrides, **stack.up()}
    try:
        report = asyncio.run(run(env, args.quick, args.skip_peers, workdir))
    finally:
        stack.down()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(report))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"compare-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"bench": "compare", **report}, indent=2, default=str))
    print(f"\nwritten: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
