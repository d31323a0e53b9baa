"""Quality of anomaly detection per injected class: precision, recall, F1, latency.

``python -m bench.anomaly_eval --stack`` (``make anomaly-eval``) starts a local stack
of its own and a worker, produces the simulator's labelled stream (app.inject), one
reading per message keyed by mote, reads the anomaly topic, and scores it; then it
produces the same readings again and reports how many new events that raised.

``--offline`` runs the same stream through the detectors (tables.anomalies) in this
process, without broker, dedup or windows (the typical interval of the silence check
is the fleet's 31 s): quick for tuning.

Scoring:

- a label is found when an event of one of its class's detectors, for its sensor (and
  metric, where the class has one), falls between its start and its end plus a grace
  (``--grace``, default 10 min of event time); latency is from the label's start;
- a detector's event is right when it falls inside any label of its sensor (with the
  same grace); precision of a class is over the events of its detectors.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from app.contract import Contract, format_ts, parse_time
from app.inject import KINDS, Label
from app.settings import load
from app.simulator import INTERVAL_S, Plan, messages
from bench.own_stack import bootstrap, own_stack
from tables import fault_rules
from tables.anomalies import Judgement
from tables.baseline import Rules
from tests.integration.harness import (
    accounting,
    eventually,
    produce,
    read_all,
)

#: The detectors whose events answer for each class.
DETECTORS = {
    "spike": {"spike", "zscore", "range"},
    "drift": {"zscore", "seasonal", "range"},
    "stuck": {"stuck"},
    "silent": {"silent"},
    "battery": {"fault:battery"},
}


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def scan(self, start: str) -> Iterator[str]:
        return iter(sorted(k for k in self.data if k >= start))


def run_offline(readings: int, rate: float, seed: int,
                environ: dict[str, str] | None = None) -> tuple[list[Label], list[dict]]:
    settings = load(environ or {})
    contract = Contract.from_settings(settings)
    rules = Rules.from_settings(settings)
    faults = fault_rules.parse(settings.fault_rules)
    span_us = int(readings / 54 * INTERVAL_S * 1e6)
    plan = Plan(count=readings, speed=0, seed=seed, anomalies=rate,
                start_us=int(time.time() * 1e6) - span_us - 3_600_000_000)
    labels: list[Label] = []
    store = MemoryStore()
    latest: dict[str, dict[str, float | None]] = defaultdict(dict)
    last_seen: dict[str, int] = {}
    events: list[dict] = []
    newest = 0
    for n, (_ts, _key, value) in enumerate(messages(plan, Counter(), labels)):
        judgement = Judgement(store, rules, faults, None, settings.silent_after,
                              lambda _sensor: int(INTERVAL_S * 1e6))
        for reading in contract.parse(value).readings:
            latest[reading.sensor_id].update(reading.metrics)
            previous = last_seen.get(reading.sensor_id)
            last_seen[reading.sensor_id] = max(previous or 0, reading.ts)
            newest = max(newest, reading.ts)
            judgement.observe(reading, latest[reading.sensor_id], previous)
        if n % 50 == 0:  # about every 30 s of event time, as the worker looks
            judgement.check_silence(((s, t, int(INTERVAL_S * 1e6)) for s, t in
                                     last_seen.items()), newest, settings.silent_after)
        judgement.write()
        events.extend(judgement.events)
    return labels, events


def labelled_stream(readings: int, rate: float, seed: int,
                    ) -> tuple[list[tuple[bytes | None, bytes]], list[Label]]:
    """The simulator's messages (one reading each, keyed by mote) and their labels."""
    labels: list[Label] = []
    span_us = int(readings / 54 * INTERVAL_S * 1e6)
    plan = Plan(count=readings, speed=0, seed=seed, anomalies=rate,
                start_us=int(time.time() * 1e6) - span_us - 3_600_000_000)
    msgs = [(key, value) for _ts, key, value in messages(plan, Counter(), labels)]
    return msgs, labels


async def through_stack(bootstrap: str, worker: Any, env: dict[str, str],
                        msgs: list[tuple[bytes | None, bytes]]) -> tuple[list[dict], int]:
    """Run ``msgs`` through a started ``worker`` (tests.integration.harness.Worker), then
    once more: the anomaly events of the first pass, and how many the replay added."""
    topic = env["SENSORSTREAM_INPUT_TOPICS"]
    anomalies = env["SENSORSTREAM_ANOMALIES_TOPIC"]
    contract = Contract.from_settings(load({k: v for k, v in env.items()
                                            if k.startswith("SENSORSTREAM_")}))
    rows = sum(contract.parse(value).count_in for _key, value in msgs)
    for n in (1, 2):
        await produce(bootstrap, topic, msgs)
        await eventually(lambda n=n: accounting(worker.metrics(), topic)["in"] >= n * rows,
                         f"pass {n} processed", 900, interval=0.5)
        records = await read_all(bootstrap, anomalies, deadline=60)
        if n == 1:
            events = [orjson.loads(r.value) for r in records]
    return events, len(records) - len(events)


def score(labels: list[Label], events: list[dict], grace_us: int) -> dict[str, dict[str, Any]]:
    by_sensor: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        by_sensor[label.sensor_id].append(label)
    timed = [(parse_time(e["ts"]), e) for e in events if not e["summary"]]
    table = {}
    for kind in KINDS:
        detectors = DETECTORS[kind]
        mine = [lb for lb in labels if lb.kind == kind]
        latencies, found, missed = [], 0, []
        for label in mine:
            hits = [ts for ts, e in timed if e["sensor_id"] == label.sensor_id
                    and e["detector"] in detectors
                    and (label.metric is None or e["metric"] in (label.metric, None))
                    and label.start <= ts <= label.end + grace_us]
            if hits:
                found += 1
                latencies.append((min(hits) - label.start) / 1e6)
            else:
                metric = f" {label.metric}" if label.metric else ""
                missed.append(f"sensor {label.sensor_id}{metric} from {format_ts(label.start)}")
        predicted = [(ts, e) for ts, e in timed if e["detector"] in detectors]
        right = sum(1 for ts, e in predicted
                    if any(lb.start <= ts <= lb.end + grace_us
                           for lb in by_sensor.get(e["sensor_id"], ())))
        precision = right / len(predicted) if predicted else None
        recall = found / len(mine) if mine else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision and recall else None)
        table[kind] = {"labels": len(mine), "events": len(predicted), "precision": precision,
                       "recall": recall, "f1": f1,
                       "latency_p50_s": statistics.median(latencies) if latencies else None,
                       "missed": missed}
    return table


def markdown(table: dict[str, dict[str, Any]]) -> str:
    def f(x: float | None, digits: int = 3) -> str:
        return "-" if x is None else f"{x:.{digits}f}"
    rows = ["| class | labels | events | precision | recall | F1 | latency p50 (s) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, r in table.items():
        rows.append(f"| {kind} | {r['labels']} | {r['events']} | {f(r['precision'])} | "
                    f"{f(r['recall'])} | {f(r['f1'])} | {f(r['latency_p50_s'], 0)} |")
    return "\n".join(rows)


def on_stack(readings: int, rate: float, seed: int,
             workdir: Path) -> tuple[list[Label], list[dict], int]:
    """The evaluation on a local stack of its own, started and stopped here."""
    msgs, labels = labelled_stream(readings, rate, seed)
    with own_stack(workdir, "eval") as (env, worker):
        async def evaluate() -> tuple[list[dict], int]:
            worker.start()
            await worker.ready(120)
            return await through_stack(bootstrap(env), worker, env, msgs)
        events, replayed = asyncio.run(evaluate())
    return labels, events, replayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--offline", action="store_true",
                       help="the detectors in this process, without a broker")
    where.add_argument("--stack", action="store_true",
                       help="a worker on a local stack of its own (free ports)")
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--grace", type=float, default=600.0, help="seconds of event time")
    args = parser.parse_args(argv)
    started = time.monotonic()
    replayed = None
    if args.offline:
        environ = {k: v for k, v in os.environ.items() if k.startswith("SENSORSTREAM_")}
        labels, events = run_offline(args.readings, args.rate, args.seed, environ)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="sensorstream-eval-"))
        try:
            labels, events, replayed = on_stack(args.readings, args.rate, args.seed, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    table = score(labels, events, int(args.grace * 1e6))
    print(markdown(table))
    for kind, row in table.items():
        for miss in row["missed"]:
            print(f"missed {kind}: {miss}")
    print("events by detector and metric:", dict(Counter(
        f"{e['detector']}:{e['metric']}" for e in events if not e["summary"])))
    if replayed is not None:
        print(f"the same readings again: {replayed} new anomaly events")
    print(orjson.dumps({"where": "offline" if args.offline else "stack",
                        "readings": args.readings, "rate": args.rate, "seed": args.seed,
                        "seconds": round(time.monotonic() - started, 1),
                        "replay_new_events": replayed, "classes": table}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
