"""Quality of anomaly detection per injected class: precision, recall, F1, latency.

``python -m bench.anomaly_eval --offline`` runs the simulator's labelled stream
(app.inject) through the detectors (tables.anomalies) in this process, one reading
at a time in time order. It has no broker, no dedup and no windows: the typical
interval of the silence check is the fleet's (31 s). The run through the real stack
is still to come (issue 4).

Scoring:

- a label is found when an event of one of its class's detectors, for its sensor (and
  metric, where the class has one), falls between its start and its end plus a grace
  (``--grace``, default 10 min of event time); latency is from the label's start;
- a detector's event is right when it falls inside any label of its sensor (with the
  same grace); precision of a class is over the events of its detectors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import orjson

from app.contract import Contract, parse_time
from app.inject import KINDS, Label
from app.settings import load
from app.simulator import INTERVAL_S, Plan, messages
from tables import fault_rules
from tables.anomalies import Judgement
from tables.baseline import Rules

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
        judgement = Judgement(store, rules, faults)
        for reading in contract.parse(value).readings:
            latest[reading.sensor_id].update(reading.metrics)
            last_seen[reading.sensor_id] = max(last_seen.get(reading.sensor_id, 0), reading.ts)
            newest = max(newest, reading.ts)
            judgement.observe(reading, latest[reading.sensor_id])
        if n % 50 == 0:  # about every 30 s of event time, as the worker looks
            judgement.check_silence(((s, t, int(INTERVAL_S * 1e6)) for s, t in
                                     last_seen.items()), newest, settings.silent_after)
        judgement.write()
        events.extend(judgement.events)
    return labels, events


def score(labels: list[Label], events: list[dict], grace_us: int) -> dict[str, dict[str, Any]]:
    by_sensor: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        by_sensor[label.sensor_id].append(label)
    timed = [(parse_time(e["ts"]), e) for e in events if not e["summary"]]
    table = {}
    for kind in KINDS:
        detectors = DETECTORS[kind]
        mine = [lb for lb in labels if lb.kind == kind]
        latencies, found = [], 0
        for label in mine:
            hits = [ts for ts, e in timed if e["sensor_id"] == label.sensor_id
                    and e["detector"] in detectors
                    and (label.metric is None or e["metric"] in (label.metric, None))
                    and label.start <= ts <= label.end + grace_us]
            if hits:
                found += 1
                latencies.append((min(hits) - label.start) / 1e6)
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
                       "latency_p50_s": statistics.median(latencies) if latencies else None}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly_eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", action="store_true", required=True,
                        help="detectors in this process (the real-stack run is to come)")
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--grace", type=float, default=600.0, help="seconds of event time")
    args = parser.parse_args(argv)
    started = time.monotonic()
    environ = {k: v for k, v in os.environ.items() if k.startswith("SENSORSTREAM_")}
    labels, events = run_offline(args.readings, args.rate, args.seed, environ)
    table = score(labels, events, int(args.grace * 1e6))
    print(markdown(table))
    print("events by detector and metric:", dict(Counter(
        f"{e['detector']}:{e['metric']}" for e in events if not e["summary"])))
    print(orjson.dumps({"readings": args.readings, "rate": args.rate, "seed": args.seed,
                        "seconds": round(time.monotonic() - started, 1),
                        "classes": table}).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
