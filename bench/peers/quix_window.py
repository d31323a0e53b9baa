"""The closest Quix Streams 3.28 equivalent of the windowed job, as a Quix user would write it.

    python -m bench.peers.quix_window

Parse JSON, expand an envelope into its readings, re-key by sensor with ``group_by`` (the
Quix way: envelopes are keyed by gateway, and a window is per message key; it costs a
repartition topic), take the reading's ``ts`` as the timestamp, then a 60-s tumbling
window per sensor of mean/min/max of each metric plus a count, emitted when closed. State
is RocksDB with changelog topics (the default). BENCH_QUIX_REKEY=0 skips the ``group_by``
and windows per message key, which is per sensor only when messages are keyed by sensor.

Readings are counted right before the window step (after the repartition); a thread
writes the count to BENCH_PROGRESS every 0.5 s. Same settings as bench.peers.faust_naive.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Max, Mean, Min

from bench.peers.progress import INTERVAL_S, write_progress

METRICS = ("temperature", "humidity", "light", "voltage")


class ReadingCounter:
    """Readings that reached the window; written from the processing thread only."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, _value: Any) -> None:
        self.n += 1


def report(path: str, counter: ReadingCounter, stop: threading.Event) -> None:
    while not stop.wait(INTERVAL_S):
        write_progress(path, counter.n)


def event_ms(value: dict[str, Any], _key: Any, _ts: int, _headers: Any) -> int:
    return int(datetime.fromisoformat(value["ts"]).timestamp() * 1000)


def main() -> None:
    app = Application(
        broker_address=os.environ.get("BENCH_BROKER", "127.0.0.1:9092").split("://")[-1],
        consumer_group=os.environ.get("BENCH_APP_ID", "bench-quix-window"),
        auto_offset_reset="earliest",
        state_dir=os.environ.get("BENCH_DATA_DIR", "/tmp/bench-quix-window"),
        loglevel="WARNING",
    )
    sdf = app.dataframe(app.topic(os.environ.get("BENCH_TOPIC", "readings"),
                                  value_deserializer="json"))
    sdf = sdf.apply(lambda value: value.get("readings") or [value], expand=True)
    if os.environ.get("BENCH_QUIX_REKEY", "1") != "0":
        sdf = sdf.group_by(lambda reading: reading["mote_id"], name="mote")
    counter = ReadingCounter()
    sdf = sdf.set_timestamp(event_ms).update(counter)
    aggregates: dict[str, Any] = {"count": Count()}
    for metric in METRICS:
        aggregates |= {f"{metric}_mean": Mean(metric), f"{metric}_min": Min(metric),
                       f"{metric}_max": Max(metric)}
    sdf = sdf.tumbling_window(duration_ms=60_000, grace_ms=5_000).agg(**aggregates).final()

    stop = threading.Event()
    path = os.environ.get("BENCH_PROGRESS")
    if path:
        threading.Thread(target=report, args=(path, counter, stop), daemon=True).start()
    try:
        app.run()
    finally:
        stop.set()
        if path:
            write_progress(path, counter.n)


if __name__ == "__main__":
    main()
