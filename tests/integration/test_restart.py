"""A clean stop keeps the per-sensor state's local stores; a crash does not (issue 19).

After SIGTERM the worker marks its ``state`` stores as equal to their changelog, and the
next start keeps them: Faust replays only the changelog past them. After SIGKILL the
stores may hold writes the changelog lacks, so they are dropped and rebuilt, as before.
Either way the views are what they were before the stop.
"""

from __future__ import annotations

import time

import orjson
import pytest

from stream.store import CLEAN_STOP

from .harness import eventually, produce

pytestmark = pytest.mark.integration

SENSORS = [f"r{i}" for i in range(12)]


def log_records(worker) -> list[dict]:
    found = []
    for line in worker.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return found


def tables_report(worker) -> dict:
    reports = [r for r in log_records(worker) if r.get("msg", "").startswith(
        ("local tables dropped:", "local tables kept after a clean stop"))]
    assert reports, worker.log_tail()
    return reports[-1]


def views(worker) -> dict[str, object]:
    """Every sampled sensor's state as the HTTP views serve it."""
    seen = {}
    for sensor in SENSORS:
        for path in (f"/sensors/{sensor}", f"/sensors/{sensor}/aggregates?size=1m"):
            status, body = worker.get(path)
            assert status == 200, (path, status, body)
            seen[path] = body
    return seen


async def test_a_clean_stop_keeps_the_state_stores_and_a_crash_drops_them(
        make_worker, app_env, bootstrap, tmp_path):
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    data = tmp_path / "kept"
    worker = make_worker(data).start()
    await worker.ready()
    start = time.time() - 3600
    docs = [{"sensor_id": s, "ts": start + 30 * i, "temperature": 20 + (i % 7) * 0.5,
             "humidity": 40 + (i % 3)} for i in range(100) for s in SENSORS]
    await produce(bootstrap, topic, [(d["sensor_id"].encode(), orjson.dumps(d)) for d in docs])
    await eventually(lambda: all(worker.get(f"/sensors/{s}")[0] == 200 for s in SENSORS),
                     "every sensor's state served", 90)

    def settled() -> dict | None:
        # The windows keep sealing while the watermark moves: equal twice in a row.
        first = views(worker)
        return first if first == views(worker) else None
    before = await eventually(settled, "the views settled", 60, interval=1)

    worker.stop()  # SIGTERM: a clean stop
    tabledir = data / "v1" / "tables"
    assert (tabledir / CLEAN_STOP).exists(), worker.log_tail()
    stop_line = [r for r in log_records(worker) if r.get("msg") ==
                 "local tables kept for the next start"]
    assert stop_line and stop_line[-1]["in_flight"] == 0, worker.log_tail()

    worker.start()
    await worker.ready()
    report = tables_report(worker)
    assert report["kept"] and all(name.startswith("state-") for name in report["kept"])
    assert not (tabledir / CLEAN_STOP).exists()  # removed before anything is written
    assert views(worker) == before

    worker.kill()  # SIGKILL: no mark, the stores are rebuilt from the changelog
    assert not (tabledir / CLEAN_STOP).exists()
    worker.start()
    await worker.ready()
    report = tables_report(worker)
    assert report["kept"] == [] and any(n.startswith("state-") for n in report["dropped"])
    assert views(worker) == before
