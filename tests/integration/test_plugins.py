"""Plugins in a real worker: one that fails to import stops start-up with its name; a
plugin that does not keep up holds the hand-overs' commits, not the per-sensor stage."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.unit.test_plugins import distribution

from .harness import commits_and_ends, eventually, produce

pytestmark = pytest.mark.integration

GATED = '''\
"""Handles no reading before the file GATED_PLUGIN_GATE exists: a plugin that stalls."""

import asyncio
import os
from pathlib import Path

from app.plugin_api import app, deliveries, handovers

GATE = Path(os.environ["GATED_PLUGIN_GATE"])
handled = []


@app.agent(handovers, name="plugin-gated")
async def gated(stream):
    async for delivered in deliveries(stream):
        while not GATE.exists():
            await asyncio.sleep(0.05)
        handled.append(delivered.reading.sensor_id)


@app.page("/plugins/gated/handled")
async def count(self, request):
    return self.json({"handled": len(handled)})
'''


async def test_a_plugin_that_fails_to_import_stops_start_up_naming_it(tmp_path, make_worker):
    site = distribution(tmp_path / "site", "faulty-plugin", {"faulty": "faulty_plugin"}, {
        "faulty_plugin.py": """\
            from app.plugin_api import table

            counts = table("counts")  # not prefixed: the helper refuses it
        """}, version="0.3")
    worker = make_worker(PYTHONPATH=str(site)).start()
    assert worker.process.wait(60) == 2
    log = worker.log_tail()
    record = orjson.loads(next(line for line in log.splitlines() if "cannot start" in line))
    assert record["setting"] == "SENSORSTREAM_PLUGINS"
    message = record["msg"]
    assert "plugin 'faulty' (module faulty_plugin, faulty-plugin 0.3) failed to import" in message
    assert "ValueError" in message and "plugin-NAME-" in message
    assert f"{site / 'faulty_plugin.py'}:3" in message
    assert "Traceback" not in log


async def test_a_stalled_plugin_holds_the_hand_over_commits_not_the_pipeline(
        tmp_path, make_worker, app_env, bootstrap):
    gate = tmp_path / "gate"
    site = distribution(tmp_path / "site", "gated-plugin", {"gated": "gated_plugin"},
                        {"gated_plugin.py": GATED})
    worker = make_worker(PYTHONPATH=str(site), GATED_PLUGIN_GATE=str(gate)).start()
    await worker.ready()
    app_id, topic = app_env["SENSORSTREAM_APP_ID"], app_env["SENSORSTREAM_INPUT_TOPICS"]
    handovers = f"{app_id}-readings-by-sensor"
    now = time.time()
    docs = [{"sensor_id": f"g-{i % 12}", "ts": now - 120 + i, "temperature": 20 + i % 5}
            for i in range(60)]
    await produce(bootstrap, topic, [(None, orjson.dumps(d)) for d in docs])

    # The per-sensor stage handles every hand-over while the plugin has handled none.
    await eventually(lambda: all(worker.get(f"/sensors/g-{i}")[0] == 200 for i in range(12)),
                     "the per-sensor stage shows every sensor", 90)
    assert worker.get("/plugins/gated/handled")[1] == {"handled": 0}
    held = await commits_and_ends(bootstrap, app_id, handovers)
    assert sum(end for _, end in held.values()) > 0

    # A commit after that (a new input message committed) leaves the hand-overs
    # uncommitted: none of them is acknowledged by every agent on the topic.
    late = {"sensor_id": "g-late", "ts": now, "temperature": 21}
    await produce(bootstrap, topic, [(None, orjson.dumps(late))])

    async def input_committed():
        offsets = await commits_and_ends(bootstrap, app_id, topic)
        return all(end == 0 or committed == end for committed, end in offsets.values())
    await eventually(input_committed, "the input topic committed to its end", 60)
    after = await commits_and_ends(bootstrap, app_id, handovers)
    for partition, (_, end) in held.items():
        committed = after[partition][0]
        if end:
            assert committed is None or committed < end, (partition, committed, end)

    # Once the plugin goes on, every hand-over is committed.
    gate.touch()

    async def handovers_committed():
        offsets = await commits_and_ends(bootstrap, app_id, handovers)
        return all(end == 0 or committed == end for committed, end in offsets.values())
    await eventually(handovers_committed, "the hand-overs committed to their end", 60)
    await eventually(lambda: worker.get("/plugins/gated/handled")[1]["handled"] == len(docs) + 1,
                     "the plugin handled every reading once", 30)
