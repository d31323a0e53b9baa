"""``/sensors`` and ``/sensors/{sensor_id}``: latest values, from any worker of the group."""

from __future__ import annotations

from typing import Any

import orjson
from faust import web

from app.main import app
from app.topics import sensor_partition
from tables import latest
from tables.sensor_state import local_get, local_prefixed, state
from tables.windows import LATEST
from web.group import answer, gather
from web.params import BadRequest, bad_request, scope, unknown_sensor


def _local() -> list[dict[str, Any]]:
    return [latest.summary(key[len(LATEST):], orjson.loads(value))
            for key, value in local_prefixed(state, LATEST)]


@app.page("/sensors")
async def list_sensors(self: web.View, request: web.Request) -> web.Response:
    """Every known sensor with its last-seen time; asks the other workers for theirs."""
    try:
        where = scope(request)
    except BadRequest as exc:
        return bad_request(self, exc)
    found, unreachable = _local(), []
    if where == "group":
        found, unreachable = await gather(found, "/sensors", "sensors")
    found.sort(key=lambda s: s["sensor_id"])
    return self.json(answer({"count": len(found), "sensors": found}, unreachable))


@app.page("/sensors/{sensor_id}")
@app.table_route(table=state, match_info="sensor_id")
async def get_sensor(self: web.View, request: web.Request, sensor_id: str) -> web.Response:
    raw = local_get(state, sensor_partition(sensor_id), LATEST + sensor_id)
    if raw is None:
        return unknown_sensor(self, sensor_id)
    return self.json(latest.detail(sensor_id, orjson.loads(raw)))
