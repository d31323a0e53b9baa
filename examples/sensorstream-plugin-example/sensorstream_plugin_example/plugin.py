"""The worker's part: an agent over the hand-over topic, its table and its view.

Names start with ``plugin-example`` (table, agent) and ``/plugins/example/`` (view),
so they never collide with the project's or another plugin's.
"""

from __future__ import annotations

from faust import web

from app.contract import format_ts
from app.plugin_api import app, deliveries, handovers, table

from .stats import merge

#: Per sensor id (its UTF-8 bytes, so the key lives in the sensor's partition, where the
#: view's ``table_route`` looks): the record of ``stats.merge``, as JSON.
stats = table("plugin-example-stats",
              help="example plugin: readings and highest temperature per sensor")


@app.agent(handovers, name="plugin-example")
async def count_readings(stream):
    async for delivered in deliveries(stream):
        reading = delivered.reading
        key = reading.sensor_id.encode()
        record = merge(stats.get(key), reading.ts, reading.metrics, delivered.position)
        if record is not None:
            stats[key] = record


@app.page("/plugins/example/sensors/{sensor_id}")
@app.table_route(table=stats, match_info="sensor_id")
async def sensor_stats(self: web.View, request: web.Request, sensor_id: str) -> web.Response:
    """The sensor's count and highest temperature, from the worker that owns it."""
    record = stats.get(sensor_id.encode())
    if record is None:
        return self.json({"error": f"unknown sensor {sensor_id!r}"}, status=404)
    return self.json({"sensor_id": sensor_id, "readings": record["readings"],
                      "max_temperature": record["max_temperature"],
                      "last_seen": format_ts(record["last_seen"])})
