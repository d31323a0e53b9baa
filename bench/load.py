"""Throughput of the historical loader (``faust -A app load``) into a real broker.

    python -m bench.load [--lines N] [--quick]          (make bench-load)

Starts a local stack of its own (free ports), writes an Intel-Lab format file of N
lines (54 motes, ~31 s apart each, one line in 200 truncated), then measures in one
session:

* the baseline: raw aiokafka sending the very envelopes the loader makes of that file
  (made beforehand, not timed), with the loader's producer settings: what the broker
  and the client take when parsing costs nothing;
* the command itself, as an operator runs it, on the file, on its gzip copy and on a
  tenth of it (peak RSS of both sizes: memory does not grow with the file).

Rates are lines/s: the command's own figure (from the first line to the last
acknowledgement) and the wall-clock one, Python and Faust start-up included. Each topic
is checked to hold every message. Prints a markdown table and writes JSON under
bench/results/. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.backfill.envelopes import chunks
from app.backfill.formats import IntelRecords
from app.backfill.lines import LineStream
from bench.own_stack import bootstrap as bootstrap_of
from bench.own_stack import own_stack
from bench.peers.run import vmhwm_mib
from tests.integration.harness import create_topic

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 8
START_S = 1_077_926_400  # 2004-02-28, the Intel Lab's first day


def write_intel_file(path: Path, lines: int, motes: int = 54) -> None:
    """Intel-Lab lines in time order, one mote after another; one in 200 truncated."""
    day_s = 86_400
    with open(path, "w", buffering=1 << 20) as out:
        batch = []
        for i in range(lines):
            us = i * 31_000_000 // motes
            seconds, micro = divmod(us, 1_000_000)
            day, rest = divmod(seconds, day_s)
            date = datetime.fromtimestamp(START_S + day * day_s, UTC).strftime("%Y-%m-%d")
            line = (f"{date} {rest // 3600:02d}:{rest // 60 % 60:02d}:{rest % 60:02d}."
                    f"{micro:06d} {i // motes + 1} {i % motes + 1} {18 + i % 700 / 100:.4f} "
                    f"{35 + i % 900 / 100:.4f} {i % 5000 / 10:.2f} {2.7 - i % 300 / 1000:.5f}")
            if i % 200 == 199:
                line = line.rsplit(" ", 3)[0]
            batch.append(line)
            if len(batch) == 10_000:
                out.write("\n".join(batch) + "\n")
                batch = []
        if batch:
            out.write("\n".join(batch) + "\n")


def envelopes_of(path: Path) -> list[tuple[int, bytes, bytes]]:
    """The messages the loader makes of the file, made with its own code."""
    with open(path, "rb") as stream:
        lines = LineStream(stream)
        return [m for chunk in chunks(IntelRecords(lines), lines, PARTITIONS)
                for m in chunk.messages]


async def baseline(bootstrap: str, messages: list[tuple[int, bytes, bytes]], lines: int,
                   ) -> dict[str, Any]:
    """Raw aiokafka: the same envelopes, the loader's producer settings, in-flight bound
    by the broker's acknowledgements only."""
    topic = f"bench-load-base-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=1024 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        start = time.perf_counter()
        futures = [await producer.send(topic, value, key=key, partition=partition)
                   for partition, key, value in messages]
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - start
    finally:
        await producer.stop()
    return {"what": "baseline: raw aiokafka, the same envelopes", "topic": topic,
            "lines": lines, "messages": len(messages), "seconds": seconds,
            "lines_per_s": lines / seconds}


def run_load(env: dict[str, str], path: Path, topic: str, workdir: Path) -> dict[str, Any]:
    """The command as an operator runs it; its summary, wall time and peak RSS."""
    command = [str(Path(sys.executable).with_name("faust")), "-A", "app", "load", str(path),
               "--topic", topic, "--checkpoint-dir", str(workdir / "checkpoints")]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    outputs = [io.BytesIO(), io.BytesIO()]
    readers = [threading.Thread(target=shutil.copyfileobj, args=(pipe, out))
               for pipe, out in zip((process.stdout, process.stderr), outputs, strict=True)]
    for reader in readers:
        reader.start()
    # VmHWM of the process itself (a child's rusage would count the bench's memory at
    # fork); it only grows, so the last reading before the exit is the peak.
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, vmhwm_mib(process.pid) or 0.0)
        time.sleep(0.05)
    wall = time.perf_counter() - start
    for reader in readers:
        reader.join()
    text, log = (out.getvalue().decode() for out in outputs)
    if process.returncode != 0:
        raise RuntimeError(f"load failed ({process.returncode}):\n{text}\n{log[-4000:]}")
    summary = next(orjson.loads(line)["summary"] for line in log.splitlines()
                   if '"load summary"' in line)
    return {"summary": summary, "wall_s": wall, "peak_rss_mib": peak,
            "text": text}


async def messages_in(bootstrap: str, topic: str) -> int:
    """Messages in the topic, from a fetch's high watermarks (FIELD-NOTES.md)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = time.monotonic() + 30
        while any(consumer.highwater(tp) is None for tp in tps):
            assert time.monotonic() < end, f"{topic}: no high watermarks"
            await consumer.getmany(timeout_ms=200, max_records=1)
        return sum(consumer.highwater(tp) for tp in tps)
    finally:
        await consumer.stop()


async def run(env: dict[str, str], lines: int, workdir: Path) -> dict[str, Any]:
    bootstrap = bootstrap_of(env)
    big, small = workdir / "intel-big.txt", workdir / "intel-small.txt"
    started = time.perf_counter()
    write_intel_file(big, lines)
    write_intel_file(small, lines // 10)
    packed = workdir / "intel-big.txt.gz"
    with open(big, "rb") as src, gzip.open(packed, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    print(f"{lines:,} lines, {big.stat().st_size / 2**20:.0f} MiB "
          f"({packed.stat().st_size / 2**20:.0f} MiB gzip), written in "
          f"{time.perf_counter() - started:.1f} s", flush=True)

    envelopes = envelopes_of(big)
    base = await baseline(bootstrap, envelopes, lines)
    del envelopes
    print(f"  baseline: {base['lines_per_s']:,.0f} lines/s", flush=True)
    rows = [base]
    for what, path in (("faust -A app load (plain file)", big),
                       ("faust -A app load (gzip file)", packed),
                       ("faust -A app load (a tenth of the file)", small)):
        topic = f"bench-load-{uuid.uuid4().hex[:6]}"
        await create_topic(bootstrap, topic, PARTITIONS)
        result = run_load(env, path, topic, workdir)
        summary = result["summary"]
        row = {"what": what, "topic": topic, "lines": summary["lines_read"],
               "readings": summary["readings"], "messages": summary["messages"],
               "skipped": summary["skipped"], "seconds": summary["seconds"],
               "lines_per_s": summary["lines_per_s"],
               "wall_s": result["wall_s"],
               "wall_lines_per_s": summary["lines_read"] / result["wall_s"],
               "peak_rss_mib": result["peak_rss_mib"]}
        rows.append(row)
        print(f"  {what}: {row['lines_per_s']:,.0f} lines/s "
              f"({row['wall_lines_per_s']:,.0f} wall clock), peak RSS "
              f"{row['peak_rss_mib']:.0f} MiB", flush=True)
    for row in rows:
        found = await messages_in(bootstrap, row["topic"])
        if found != row["messages"]:
            raise AssertionError(f"{row['what']}: {found} messages in {row['topic']}, "
                                 f"{row['messages']} produced")
    return {"lines": lines, "file_mib": big.stat().st_size / 2**20, "partitions": PARTITIONS,
            "cpus": os.cpu_count(), "rows": rows}


def table(report: dict[str, Any]) -> str:
    base = report["rows"][0]["lines_per_s"]
    out = ["| what | lines | lines/s | vs baseline | wall clock lines/s | peak RSS (MiB) |",
           "|---|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        wall = f"{row['wall_lines_per_s']:,.0f}" if "wall_lines_per_s" in row else "-"
        rss = f"{row['peak_rss_mib']:.0f}" if "peak_rss_mib" in row else "-"
        out.append(f"| {row['what']} | {row['lines']:,} | {row['lines_per_s']:,.0f} | "
                   f"{row['lines_per_s'] / base:.2f} | {wall} | {rss} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000, help="lines in the file")
    parser.add_argument("--quick", action="store_true", help="a tenth of the lines")
    args = parser.parse_args()
    lines = args.lines // 10 if args.quick else args.lines
    workdir = Path(tempfile.mkdtemp(prefix="sensorstream-bench-load-"))
    try:
        with own_stack(workdir, "bench-load") as (env, _worker):
            env = {**env, "SENSORSTREAM_PARTITIONS": str(PARTITIONS)}
            report = asyncio.run(run(env, lines, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(report))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"load-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"bench": "load", **report}, indent=2, default=str))
    print(f"\nwritten: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
