"""The live dashboard: three pages (fleet grid, a sensor's charts, the lab map) that poll
the JSON views (``/fleet``, ``/sensors/...``, ``/anomalies``) from the browser, and their
static files. Any worker serves them: the JSON views gather or route to the owner.

plotly.js comes from the installed ``plotly`` package (web.dashboard_parts), so nothing
is vendored, built or fetched from the internet.
"""

from __future__ import annotations

import logging

from aiohttp import web as aiohttp_web
from faust import web

from app.main import app
from web.dashboard_parts import Asset, MissingAsset, asset

log = logging.getLogger(__name__)

#: html and the dashboard's own js/css: revalidated every load (cheap, ETag); plotly's
#: bundle changes only with the package, so browsers keep it for a day.
REVALIDATE = "no-cache"
KEEP_A_DAY = "public, max-age=86400"


def _serve(view: web.View, request: web.Request, name: str) -> aiohttp_web.Response:
    try:
        found: Asset = asset(name)
    except MissingAsset as exc:
        log.info("dashboard asset not served: %s", exc, extra={"asset": name})
        return view.json({"error": f"no dashboard asset {name!r}"}, status=404)
    headers = {"ETag": found.etag,
               "Cache-Control": KEEP_A_DAY if name.endswith(".min.js") else REVALIDATE,
               "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("If-None-Match") == found.etag:
        return aiohttp_web.Response(status=304, headers=headers)
    body = found.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        body = found.gzipped
    return aiohttp_web.Response(body=body, content_type=found.content_type, charset="utf-8",
                                headers=headers)


@app.page("/dashboard")
async def fleet_page(self: web.View, request: web.Request) -> aiohttp_web.Response:
    """The fleet overview: a tile per sensor, the group's rates and lag."""
    return _serve(self, request, "fleet.html")


@app.page("/dashboard/lab")
async def lab_page(self: web.View, request: web.Request) -> aiohttp_web.Response:
    """The Intel-Lab motes at their published coordinates, coloured by one metric."""
    return _serve(self, request, "lab.html")


@app.page("/dashboard/sensors/{sensor_id}")
async def sensor_page(self: web.View, request: web.Request, sensor_id: str) -> aiohttp_web.Response:
    """One sensor's windows, baseline and anomalies (the page reads the id from its URL)."""
    return _serve(self, request, "sensor.html")


@app.page("/dashboard/assets/{name}")
async def dashboard_asset(self: web.View, request: web.Request, name: str) -> aiohttp_web.Response:
    """The dashboard's js and css, and plotly.min.js from the installed plotly package."""
    return _serve(self, request, name)
