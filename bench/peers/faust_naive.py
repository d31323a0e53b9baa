"""The job written "the naive way" on stock faust-streaming: the baseline sensorstream's own
design is measured against.

    faust -A bench.peers.faust_naive worker -l warn --without-web

One agent over the input topic; per reading (an envelope's readings one by one), per metric:
the latest value into a plain Table and count/sum/min/max into a tumbling 60-s windowed
Table, both on RocksDB with changelogs, on the stock ``kafka://`` transport. Windows are in
event time (the reading's ``ts``): an envelope is one Faust event, so the reading's time is
handed to the window through ``relative_to`` and a context variable.

Settings come from the environment: BENCH_BROKER (``kafka://host:port``), BENCH_TOPIC,
BENCH_APP_ID, BENCH_PARTITIONS, BENCH_DATA_DIR, BENCH_PROGRESS (the progress file),
BENCH_WEB_PORT (web server on that port; off when unset, so two workers never clash).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from datetime import datetime
from typing import Any

import faust

from bench.peers.progress import INTERVAL_S, write_progress

METRICS = ("temperature", "humidity", "light", "voltage")
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "8"))
WEB_PORT = os.environ.get("BENCH_WEB_PORT")

app = faust.App(
    os.environ.get("BENCH_APP_ID", "bench-faust-naive"),
    broker=os.environ.get("BENCH_BROKER", "kafka://127.0.0.1:9092"),
    store="rocksdb://",
    datadir=os.environ.get("BENCH_DATA_DIR", "/tmp/bench-faust-naive"),
    topic_partitions=PARTITIONS,  # the changelogs get the source topic's partition count
    web_enabled=WEB_PORT is not None,
    web_port=int(WEB_PORT or 6066),
)
source = app.topic(os.environ.get("BENCH_TOPIC", "readings"), partitions=PARTITIONS,
                   value_serializer="json")

_reading_ts: ContextVar[float] = ContextVar("reading_ts")
latest = app.Table("latest")  # keys and values: JSON, Faust's default for tables
windows = app.Table("windows", default=dict).tumbling(60, expires=3600).relative_to(
    lambda _event: _reading_ts.get())
processed = 0


@app.agent(source)
async def aggregate(stream: faust.StreamT) -> None:
    global processed
    async for value in stream:
        readings: list[dict[str, Any]] = value.get("readings") or [value]
        for reading in readings:
            _reading_ts.set(datetime.fromisoformat(reading["ts"]).timestamp())
            for metric in METRICS:
                v = reading[metric]
                key = f"{reading['mote_id']}:{metric}"
                latest[key] = v
                agg = windows[key].current()
                windows[key] = ({"count": agg["count"] + 1, "sum": agg["sum"] + v,
                                 "min": min(agg["min"], v), "max": max(agg["max"], v)}
                                if agg else {"count": 1, "sum": v, "min": v, "max": v})
            processed += 1


@app.timer(INTERVAL_S)
async def report_progress() -> None:
    path = os.environ.get("BENCH_PROGRESS")
    if path:
        write_progress(path, processed)
