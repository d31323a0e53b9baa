"""Intel-Lab-like sensor readings into Kafka: ``sensorstream-simulate``.

By default the 54 motes of the Intel Berkeley Research Lab at their published
locations, one reading every ~31 s of simulated time each, with diurnal
temperature, humidity and light, slowly falling battery voltage, and the data
set's known fault: below about 2.3 V a mote reads past 100 degC and negative
humidity. Simulated time runs ``--speed`` times faster than the wall clock and
starts in the past (``--start``); it never runs ahead of the wall clock: once it
catches up it goes on in real time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from app.contract import format_ts, parse_time
from app.inject import Injector, Label
from app.locations import mote_locations
from app.settings import parse_duration

INTERVAL_S = 31.0
FAULT_VOLTAGE = 2.3
LAB_SIZE = (41.0, 32.0)  # metres, the extent of the published mote coordinates


@dataclass
class Mote:
    mote_id: int
    x: float
    y: float
    temp_offset: float
    volt_start: float
    volt_per_day: float
    light_gain: float
    due_us: int
    seq: int = 0
    temp_noise: float = 0.0


class Fleet:
    """A reproducible stream of readings (dicts in the wide shape), in time order."""

    def __init__(self, sensors: int = 54, start_us: int | None = None, seed: int | None = None,
                 interval_s: float = INTERVAL_S) -> None:
        self.rng = random.Random(seed)
        self.interval_us = int(interval_s * 1_000_000)
        self.start_us = start_us if start_us is not None else int(time.time() * 1e6)
        locations = mote_locations()
        self.motes: list[Mote] = []
        self._due: list[tuple[int, int, Mote]] = []
        for mote_id in range(1, sensors + 1):
            x, y = locations.get(str(mote_id)) or (self.rng.uniform(0, LAB_SIZE[0]),
                                              self.rng.uniform(0, LAB_SIZE[1]))
            # One mote in ten drains fast enough to show the battery fault within a day.
            fast = self.rng.random() < 0.1
            self.motes.append(Mote(
                mote_id=mote_id, x=x, y=y,
                temp_offset=self.rng.gauss(0, 0.8) + 0.05 * x,
                volt_start=self.rng.uniform(2.55, 2.75),
                volt_per_day=self.rng.uniform(0.25, 0.4) if fast else self.rng.uniform(0.005, 0.02),
                light_gain=self.rng.uniform(0.5, 1.2),
                due_us=self.start_us + self.rng.randrange(self.interval_us)))

    def readings(self) -> Iterator[dict[str, Any]]:
        """Endless readings, each the next one due across the fleet."""
        # A heap by (due time, mote id): the same order as a scan for the earliest,
        # at log n per reading, so 100,000 sensors are as quick to simulate as 54.
        due = [(m.due_us, m.mote_id, m) for m in self.motes]
        heapq.heapify(due)
        self._due = due
        while True:
            _due_us, _mote_id, mote = due[0]
            yield self._reading(mote)
            jitter = self.rng.uniform(-0.03, 0.03) * self.interval_us
            mote.due_us += int(self.interval_us + jitter)
            heapq.heapreplace(due, (mote.due_us, mote.mote_id, mote))

    def next_due_us(self) -> int:
        return self._due[0][0] if self._due else min(m.due_us for m in self.motes)

    def _reading(self, mote: Mote) -> dict[str, Any]:
        rng = self.rng
        ts = mote.due_us
        mote.seq += 1
        hour = (ts / 3.6e9) % 24
        days = (ts - self.start_us) / 8.64e10
        voltage = mote.volt_start - mote.volt_per_day * days + rng.gauss(0, 0.004)
        mote.temp_noise = 0.9 * mote.temp_noise + rng.gauss(0, 0.08)
        temperature = 19.5 + mote.temp_offset + 3.0 * math.sin(2 * math.pi * (hour - 9) / 24)
        temperature += mote.temp_noise
        humidity = 42.0 - 1.6 * (temperature - 20.0) + rng.gauss(0, 0.4)
        daylight = max(0.0, math.sin(math.pi * (hour - 6) / 12))
        light = mote.light_gain * (450.0 * daylight + (280.0 if 8 <= hour < 19 else 0.0))
        light = max(0.0, light + rng.gauss(0, 3.0))
        if voltage < FAULT_VOLTAGE:
            temperature = 100.0 + (FAULT_VOLTAGE - voltage) * 150.0 + rng.gauss(0, 1.5)
            humidity = -4.0 + rng.gauss(0, 0.3)
        return {
            "mote_id": mote.mote_id,
            "ts": format_ts(ts),
            "epoch": mote.seq,
            "temperature": round(temperature, 4),
            "humidity": round(humidity, 4),
            "light": round(light, 2),
            "voltage": round(voltage, 5),
            "location": {"x": mote.x, "y": mote.y},
        }


def reshape(reading: dict[str, Any], shape: str) -> list[dict[str, Any]]:
    """The same reading in another accepted shape: ``wide``, ``metrics`` or ``long``."""
    metric_names = ("temperature", "humidity", "light", "voltage")
    base = {k: v for k, v in reading.items() if k not in metric_names}
    if shape == "metrics":
        return [{"device_id": base.pop("mote_id"), **base,
                 "metrics": {m: reading[m] for m in metric_names}}]
    if shape == "long":
        return [{"sensor_id": str(base["mote_id"]), "event_time": base["ts"], "metric": m,
                 "value": reading[m]} for m in metric_names]
    return [reading]


def malformed(rng: random.Random, reading: dict[str, Any]) -> tuple[bytes, str]:
    """A bad message and the dead-letter reason the contract must give it."""
    kind = rng.choice(["not_json", "not_utf8", "missing_id", "invalid_time", "value_not_number",
                       "future_time", "out_of_range"])
    if kind == "not_json":
        return orjson.dumps(reading)[:-7], "not_json"
    if kind == "not_utf8":
        return b"\xff\xfe" + orjson.dumps(reading), "not_json"
    bad = dict(reading)
    if kind == "missing_id":
        del bad["mote_id"]
    elif kind == "invalid_time":
        bad["ts"] = "yesterday at noon"
    elif kind == "value_not_number":
        bad = {"mote_id": reading["mote_id"], "ts": reading["ts"], "metrics": {"voltage": "2.7V"}}
    elif kind == "future_time":
        bad["ts"] = "2100-01-01T00:00:00Z"  # fixed, so a seeded stream stays reproducible
    else:
        bad = {"mote_id": reading["mote_id"], "ts": reading["ts"], "humidity": 180.0}
    return orjson.dumps(bad), kind


@dataclass
class Plan:
    """What one run produces; ``--seed`` makes it reproducible (with ``--start``)."""

    sensors: int = 54
    speed: float = 100.0
    count: int = 0
    envelope: int = 1
    duplicates: float = 0.0
    malformed: float = 0.0
    seed: int | None = None
    start_us: int | None = None
    shape: str = "wide"
    anomalies: float = 0.0  #: share of readings inside an injected, labelled anomaly


def messages(plan: Plan, summary: Counter[str], labels: list[Label] | None = None,
             ) -> Iterator[tuple[int, bytes | None, bytes]]:
    """``(event time, key, value)`` of every message of the run, duplicates and bad ones
    included; ``summary`` counts what was produced, ``labels`` receives the anomalies
    (app.inject) as they start (their ``end`` grows while they last)."""
    fleet = Fleet(plan.sensors, plan.start_us, plan.seed)
    rng = random.Random(None if plan.seed is None else plan.seed + 1)
    injector = Injector(plan.anomalies, random.Random(None if plan.seed is None
                                                      else plan.seed + 2), FAULT_VOLTAGE)
    if labels is not None:
        injector.labels = labels
    shapes = ["wide", "metrics", "long"] if plan.shape == "mixed" else [plan.shape]
    produced = 0
    pending: list[dict[str, Any]] = []
    for reading in fleet.readings():
        if plan.count and produced >= plan.count:
            break
        produced += 1
        reading = injector.apply(reading)
        if reading is None:
            summary["silenced"] += 1
            continue
        summary["readings"] += 1
        summary["rows"] += 4
        ts = parse_time(reading["ts"]) or 0
        pending.extend(reshape(reading, shapes[produced % len(shapes)]))
        if plan.envelope == 1:
            key = str(reading["mote_id"]).encode()
            batch = [(key, orjson.dumps(doc)) for doc in pending]
        elif len(pending) >= plan.envelope or (plan.count and produced >= plan.count):
            batch = [(b"gateway-1",
                      orjson.dumps({"gateway_id": "gateway-1", "readings": pending}))]
        else:
            continue
        pending = []
        for key, value in batch:
            summary["messages"] += 1
            yield ts, key, value
            if rng.random() < plan.duplicates:
                summary["duplicate_messages"] += 1
                yield ts, key, value
        if rng.random() < plan.malformed:
            bad, reason = malformed(rng, reading)
            summary["malformed_messages"] += 1
            summary[f"malformed:{reason}"] += 1
            yield ts, key, bad


async def ensure_topic(kafka: Mapping[str, Any], topic: str, partitions: int) -> None:
    """Create the input topic with its partition count before anything touches it.
    ``kafka``: the clients' connection options (``stream.kafka.client_kwargs``)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**kafka)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(
                    topic, partitions, 1, topic_configs={"retention.ms": str(7 * 86_400_000)})])
    finally:
        await admin.close()


async def run(plan: Plan, kafka: Mapping[str, Any], topic: str, partitions: int,
              progress: bool = False, labels: list[Label] | None = None) -> Counter[str]:
    from aiokafka import AIOKafkaProducer

    await ensure_topic(kafka, topic, partitions)
    producer = AIOKafkaProducer(**kafka, linger_ms=5,
                                max_batch_size=512 * 1024, max_request_size=4 * 1024 * 1024)
    await producer.start()
    summary: Counter[str] = Counter()
    wall_start_us = time.time() * 1e6
    sim_start = plan.start_us
    last_report = time.time()
    try:
        for ts, key, value in messages(plan, summary, labels):
            if sim_start is None:
                sim_start = ts
            while plan.speed > 0:
                # Simulated time runs at speed x the wall clock, but never past the wall clock.
                now_us = time.time() * 1e6
                target = min(sim_start + (now_us - wall_start_us) * plan.speed, now_us)
                if ts <= target:
                    break
                await producer.flush()
                rate = plan.speed if target < now_us else 1.0
                await asyncio.sleep(min((ts - target) / 1e6 / rate, 1.0))
            await producer.send(topic, value, key=key)
            if progress and time.time() - last_report >= 5:
                last_report = time.time()
                print(orjson.dumps({"simulated_time": format_ts(ts), **summary}).decode(),
                      file=sys.stderr, flush=True)
        await producer.flush()
    finally:
        await producer.stop()
    return summary


def _start(text: str) -> int:
    """``--start``: ISO-8601, an epoch, or ``-<duration>`` before now (e.g. ``-1d``)."""
    if text.startswith("-"):
        return int((time.time() - parse_duration(text[1:])) * 1e6)
    ts = parse_time(text)
    if ts is None:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}")
    return ts


def main(argv: list[str] | None = None) -> int:
    from app import settings as settings_mod
    from stream.kafka import client_kwargs

    parser = argparse.ArgumentParser(prog="sensorstream-simulate", description=__doc__)
    parser.add_argument("--sensors", type=int, default=54, help="motes (54 = the Intel Lab)")
    parser.add_argument("--speed", type=float, default=100.0,
                        help="simulated seconds per wall-clock second; 0 = as fast as possible")
    parser.add_argument("--count", type=int, default=0,
                        help="readings to produce, then exit (0 = continuous)")
    parser.add_argument("--envelope", type=int, default=1,
                        help="readings per message (1 = one reading per message)")
    parser.add_argument("--duplicates", type=float, default=0.0,
                        help="rate of messages sent twice")
    parser.add_argument("--malformed", type=float, default=0.0,
                        help="rate of malformed messages added")
    parser.add_argument("--shape", choices=["wide", "metrics", "long", "mixed"], default="wide")
    parser.add_argument("--seed", type=int, default=None, help="reproducible stream")
    parser.add_argument("--start", type=_start, default=None,
                        help="simulated start: ISO-8601, epoch, or -DURATION before now "
                             "(default: far enough back that --count ends now, else -1d)")
    parser.add_argument("--topic", default=None, help="default: first SENSORSTREAM_INPUT_TOPICS")
    parser.add_argument("--anomalies", type=float, default=0.02,
                        help="share of readings inside an injected anomaly (spike, drift, "
                             "stuck, silent, battery); 0 = none")
    parser.add_argument("--labels", default=None,
                        help="write what was injected (and real battery faults) to this "
                             "file as JSON lines when the run ends")
    args = parser.parse_args(argv)
    if args.sensors < 1 or args.envelope < 1 or args.count < 0:
        parser.error("--sensors and --envelope must be >= 1, --count >= 0")
    if not (0 <= args.duplicates <= 1 and 0 <= args.malformed <= 1):
        parser.error("--duplicates and --malformed are rates between 0 and 1")
    if not 0 <= args.anomalies < 1:
        parser.error("--anomalies is a share of readings, from 0 to below 1")
    try:
        settings = settings_mod.load()
    except settings_mod.SettingError as exc:
        parser.error(str(exc))
    start = args.start
    if start is None:
        span_s = (args.count / args.sensors + 1) * INTERVAL_S if args.count else 86_400
        start = int((time.time() - span_s) * 1e6)
    plan = Plan(args.sensors, args.speed, args.count, args.envelope, args.duplicates,
                args.malformed, args.seed, start, args.shape, args.anomalies)
    labels: list[Label] = []
    bootstrap = settings.bootstrap
    topic = args.topic or settings.input_topics[0]
    print(f"simulating {args.sensors} sensors from {format_ts(start)} into {topic!r} at "
          f"{bootstrap}, speed {args.speed:g}x", file=sys.stderr, flush=True)
    try:
        summary = asyncio.run(run(plan, client_kwargs(settings), topic, settings.partitions,
                                  progress=True, labels=labels))
    except KeyboardInterrupt:
        return 130
    finally:
        if args.labels:
            with open(args.labels, "wb") as out:
                out.writelines(orjson.dumps(label.as_dict()) + b"\n" for label in labels)
    print(orjson.dumps(dict(summary), option=orjson.OPT_SORT_KEYS).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
