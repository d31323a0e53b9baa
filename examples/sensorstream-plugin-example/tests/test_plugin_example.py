"""The example plugin, installed with pip into a directory of its own (never the shared
environment), runs inside a real worker against the real stack: readings produced to
the input topic show up in its view with the right figures; SENSORSTREAM_PLUGINS turns
it off; a name that is not installed stops start-up."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from app.contract import format_ts
from tests.integration.harness import accounting, commits_and_ends, eventually, produce

pytestmark = pytest.mark.integration

SOURCE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed with pip into a directory of its own (for PYTHONPATH).
    Built from a copy, so the source tree gets no build directories."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = shutil.copytree(SOURCE, root / "src", ignore=shutil.ignore_patterns(
        "tests", "build", "*.egg-info", "__pycache__"))
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip could not install the example:\n{done.stderr}"
    assert (target / "sensorstream_plugin_example" / "plugin.py").exists()
    return target


def readings_of(now: float) -> list[dict]:
    """Three sensors, one of them with a reading sent twice (a device's duplicate)."""
    docs = []
    for i in range(30):
        sensor = f"ex-{i % 3}"
        docs.append({"sensor_id": sensor, "ts": now - 300 + i,
                     "temperature": round(15 + (i * 7) % 13 + i / 10, 2), "humidity": 40})
    docs.append(dict(docs[4]))
    docs.append({"sensor_id": "ex-0", "ts": now - 100, "humidity": 41})  # no temperature
    return docs


def expected(docs: list[dict]) -> dict[str, dict]:
    """The example's figures, computed here on the plain documents."""
    found: dict[str, dict] = defaultdict(lambda: {"readings": 0, "max_temperature": None,
                                                  "last_seen": 0.0})
    for doc in docs:
        record = found[doc["sensor_id"]]
        record["readings"] += 1
        value = doc.get("temperature")
        if value is not None and (record["max_temperature"] is None
                                  or value > record["max_temperature"]):
            record["max_temperature"] = value
        record["last_seen"] = max(record["last_seen"], doc["ts"])
    return {sensor: {"sensor_id": sensor, "readings": r["readings"],
                     "max_temperature": r["max_temperature"],
                     "last_seen": format_ts(round(r["last_seen"] * 1e6))}
            for sensor, r in found.items()}


async def test_the_example_counts_readings_inside_a_worker(site, make_worker, app_env,
                                                           bootstrap):
    worker = make_worker(PYTHONPATH=str(site)).start()
    await worker.ready()
    status, body = worker.get("/plugins")
    assert status == 200
    assert body["setting"] == "all"
    assert [(p["name"], p["module"], p["distribution"]) for p in body["plugins"]] == [
        ("example", "sensorstream_plugin_example.plugin", "sensorstream-plugin-example")]

    docs = readings_of(time.time())
    topic = app_env["SENSORSTREAM_INPUT_TOPICS"]
    await produce(bootstrap, topic, [(None, orjson.dumps(d)) for d in docs])
    want = expected(docs)
    assert want["ex-1"]["readings"] == 11  # the duplicate: plugins see readings before dedup

    def answers():
        got = {sensor: worker.get(f"/plugins/example/sensors/{sensor}") for sensor in want}
        assert got == {sensor: (200, body) for sensor, body in want.items()}, got
        return got
    await eventually(answers, "the example's view shows every reading", 90)
    status, body = worker.get("/plugins/example/sensors/no-such-sensor")
    assert status == 404 and "no-such-sensor" in body["error"]

    # The per-sensor stage on the same topic is undisturbed: it deduplicates ...
    rows = sum(len(d) - 2 for d in docs)  # every field but sensor_id and ts is a metric

    def settled():
        counts = accounting(worker.metrics(), topic)
        return counts if counts["in"] == rows else None
    counts = await eventually(settled, "the per-sensor stage counted every reading", 90)
    assert (counts["accepted"], counts["duplicate"]) == (rows - 2, 2)
    assert worker.get("/sensors/ex-1")[1]["metrics"]["temperature"]["value"] == docs[28][
        "temperature"]
    # ... and once both agents are done, the hand-overs' offsets are committed to the end.
    handovers = f"{app_env['SENSORSTREAM_APP_ID']}-readings-by-sensor"

    async def committed_to_the_end():
        offsets = await commits_and_ends(bootstrap, app_env["SENSORSTREAM_APP_ID"], handovers)
        return all(end == 0 or committed == end for committed, end in offsets.values())
    await eventually(committed_to_the_end, "hand-over offsets committed to the log end", 60)
    # The plugin's table has its own changelog, partitioned like the hand-overs.
    changelog = await commits_and_ends(
        bootstrap, app_env["SENSORSTREAM_APP_ID"],
        f"{app_env['SENSORSTREAM_APP_ID']}-plugin-example-stats-changelog")
    assert len(changelog) == int(app_env["SENSORSTREAM_PARTITIONS"])
    assert sum(end for _, end in changelog.values()) >= len(want)


async def test_plugins_none_leaves_the_example_out(site, make_worker, app_env, bootstrap):
    worker = make_worker(PYTHONPATH=str(site), SENSORSTREAM_PLUGINS="none").start()
    await worker.ready()
    assert worker.get("/plugins")[1] == {"setting": "none", "group": "sensorstream.agents",
                                         "plugins": []}
    docs = readings_of(time.time())
    await produce(bootstrap, app_env["SENSORSTREAM_INPUT_TOPICS"],
                  [(None, orjson.dumps(d)) for d in docs])
    await eventually(lambda: worker.get("/sensors/ex-2")[0] == 200,
                     "the worker runs the pipeline without the plugin", 90)
    status, _ = worker.get("/plugins/example/sensors/ex-2")
    assert status == 404
    assert "plugin-example" not in worker.log_tail(200_000)


async def test_a_plugin_name_not_installed_stops_start_up(site, make_worker):
    worker = make_worker(PYTHONPATH=str(site), SENSORSTREAM_PLUGINS="example,exmaple").start()
    assert worker.process.wait(60) == 2
    log = worker.log_tail()
    line = next(line for line in log.splitlines() if "cannot start" in line)
    record = orjson.loads(line)
    assert record["setting"] == "SENSORSTREAM_PLUGINS"
    assert "'exmaple'" in record["msg"] and "installed: example" in record["msg"]
    assert "Traceback" not in log
