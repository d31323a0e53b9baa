"""Wall-clock delay from producing a faulty reading to its anomaly at ``/anomalies``.

``python -m bench.anomaly_latency`` starts a local stack of its own and a worker, warms
up ``--motes`` motes with half an hour of quiet readings, then sends each one the
Intel-Lab battery fault, timed now, and polls ``/anomalies`` until the event is listed.
Prints the delay per mote and the median.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from bench.own_stack import bootstrap, own_stack
from tests.integration.harness import (
    Worker,
    eventually,
    produce,
)


def quiet(mote: int, start: float, n: int) -> list[tuple[bytes, bytes]]:
    return [(str(mote).encode(), orjson.dumps({
        "mote_id": mote, "ts": start + i * 30, "temperature": 20.0 + (i % 5) * 0.1,
        "humidity": 40.0, "voltage": 2.7})) for i in range(n)]


async def measure(worker: Worker, bootstrap: str, topic: str, motes: int) -> list[float]:
    start = time.time() - 1800
    await produce(bootstrap, topic, [m for mote in range(motes) for m in quiet(mote, start, 59)])
    delays = []
    for mote in range(motes):
        sent = time.monotonic()
        await produce(bootstrap, topic, [(str(mote).encode(), orjson.dumps({
            "mote_id": mote, "ts": time.time(), "temperature": 122.0, "humidity": 40.0,
            "voltage": 2.1}))])

        def listed(mote: int = mote) -> bool:
            status, body = worker.get(f"/anomalies?sensor_id={mote}")
            return status == 200 and any(a["detector"] == "fault:battery"
                                         for a in body["anomalies"])
        await eventually(listed, f"mote {mote}'s fault at /anomalies", 60, interval=0.02)
        delays.append(time.monotonic() - sent)
    return delays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly_latency", description=__doc__)
    parser.add_argument("--motes", type=int, default=10)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="sensorstream-latency-"))
    try:
        with own_stack(workdir, "latency") as (env, worker):
            async def run() -> list[float]:
                worker.start()
                await worker.ready(120)
                return await measure(worker, bootstrap(env), env["SENSORSTREAM_INPUT_TOPICS"],
                                     args.motes)
            delays = asyncio.run(run())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("delay from producing the fault to /anomalies listing it (s): "
          + ", ".join(f"{d:.2f}" for d in delays))
    print(f"median {statistics.median(delays):.2f} s, max {max(delays):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
