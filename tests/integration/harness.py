"""Helpers for tests against the real stack: free ports, worker processes, Kafka I/O,
polling with deadlines (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def eventually(check: Callable[[], Any], what: str, deadline: float = 60.0,
                     interval: float = 0.1) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value; fail after deadline."""
    end = time.monotonic() + deadline
    last: Any = None
    while True:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
        except AssertionError as exc:
            last = exc
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not true within {deadline:.0f} s (last: {last!r})")
        await asyncio.sleep(interval)


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    try:
        return status, orjson.loads(body)
    except orjson.JSONDecodeError:
        return status, body.decode(errors="replace")


_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? (\S+)$')


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(name, frozenset of label pairs): value}."""
    samples = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


class Worker:
    """One ``faust -A app worker`` process with its own data dir and web port."""

    def __init__(self, env: dict[str, str], data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "SENSORSTREAM_DATA_DIR": str(data_dir),
                    "SENSORSTREAM_WEB_PORT": str(self.port)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> Worker:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
            cwd=ROOT, env=self.env, stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def get(self, path: str) -> tuple[int, Any]:
        return http_get(self.url + path)

    async def ready(self, deadline: float = 90.0) -> None:
        def check() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited ({self.process.returncode}):\n"
                                   f"{self.log_tail()}")
            try:
                return self.get("/ready")[0] == 200
            except OSError:
                return False
        await eventually(check, f"worker {self.url} ready", deadline)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        status, text = self.get("/metrics")
        assert status == 200
        return metric_samples(text)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def counter(samples: dict, name: str, **labels: str) -> float:
    """Sum of a counter's samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and want <= set(lbl))


def accounting(samples: dict, topic: str) -> dict[str, float]:
    return {kind: counter(samples, f"sensorstream_readings_{kind}_total", topic=topic)
            for kind in ("in", "accepted", "dead_lettered", "duplicate", "late", "missing")}


async def create_topic(bootstrap: str, name: str, partitions: int = 4) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1,
                                            topic_configs={"retention.ms": "604800000"})])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str,
                  messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    n = 0
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


async def read_all(bootstrap: str, topic: str, expected: int | None = None,
                   deadline: float = 60.0) -> list[Any]:
    """Every record of ``topic`` from the start: until ``expected`` are in or, without
    ``expected``, up to each partition's end offset as it was when reading began."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        partitions = await eventually(lambda: consumer.partitions_for_topic(topic),
                                      f"topic {topic} exists", deadline=30)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps) if expected is None else {}
        pending = {tp for tp in tps if ends.get(tp, 1) > 0}
        end = time.monotonic() + deadline
        while pending and time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=500)
            for tp_records in batch.values():
                records.extend(tp_records)
            if expected is None:
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
            if expected is not None and len(records) >= expected:
                break
        if expected is None and pending:
            raise AssertionError(f"{topic}: not read to its end within {deadline:.0f} s "
                                 f"({len(records)} records)")
    finally:
        await consumer.stop()
    return records


def env_without_sensorstream() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SENSORSTREAM_")}


def deployment_env(stack_env: dict[str, str], name: str) -> dict[str, str]:
    """Settings of one isolated deployment named ``name``: its own consumer group,
    topics, schema and lake prefix, and fast group timeouts."""
    return {
        **stack_env,
        "SENSORSTREAM_APP_ID": f"ss-{name}",
        "SENSORSTREAM_INPUT_TOPICS": f"in-{name}",
        "SENSORSTREAM_DLQ_TOPIC": f"dlq-{name}",
        "SENSORSTREAM_LATE_TOPIC": f"late-{name}",
        "SENSORSTREAM_AGGREGATES_TOPIC": f"agg-{name}",
        "SENSORSTREAM_ANOMALIES_TOPIC": f"anom-{name}",
        "SENSORSTREAM_PARTITIONS": "4",
        "SENSORSTREAM_SESSION_TIMEOUT": "6s",
        "SENSORSTREAM_HEARTBEAT_INTERVAL": "1s",
        "SENSORSTREAM_BATCH_WINDOW": "50ms",
        "SENSORSTREAM_PG_SCHEMA": name.replace("-", "_"),
        "SENSORSTREAM_LAKE_URL": f"s3://{stack_env['SENSORSTREAM_S3_BUCKET']}/{name}",
    }


def isolated_stack_settings(stack_dir: Path) -> dict[str, str]:
    """Settings of a local stack of its own: its directory and free loopback ports."""
    return {"SENSORSTREAM_STACK_DIR": str(stack_dir),
            "SENSORSTREAM_STACK_KAFKA_PORT": str(free_port()),
            "SENSORSTREAM_STACK_PG_PORT": str(free_port()),
            "SENSORSTREAM_STACK_S3_PORT": str(free_port())}


@contextlib.contextmanager
def running(worker: Worker):
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


async def commits_and_ends(bootstrap: str, group: str, topic: str,
                           ) -> dict[int, tuple[int | None, int]]:
    """Per partition of ``topic``: the offset ``group`` committed (None: none yet) and the
    log end (a fetch's high watermark, FIELD-NOTES)."""
    from stream.transport import log_end_offsets

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await eventually(lambda: consumer.partitions_for_topic(topic),
                                      f"topic {topic} exists", deadline=30)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await log_end_offsets(bootstrap, await consumer.end_offsets(tps))
        return {tp.partition: (await consumer.committed(tp), ends[tp]) for tp in tps}
    finally:
        await consumer.stop()
