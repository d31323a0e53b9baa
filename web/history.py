"""``GET /history/readings`` and ``GET /history/aggregates``: pages of history from
PostgreSQL (the retained range) and the Parquet lake (older), merged as
``app.history.merge`` says, with a keyset cursor in each page's ``next`` link. Any
worker answers: nothing here reads the worker's tables."""

from __future__ import annotations

from urllib.parse import urlencode

from faust import web

from app.history.encode import as_dicts
from app.history.merge import Plan, Range
from app.history.postgres import Unavailable
from app.history.query import QueryError, encode_cursor, page_of
from app.history.service import History
from app.main import app, settings

HISTORY = History.from_settings(settings)
WINDOWS = tuple(size.label for size in settings.windows)


def unavailable(view: web.View, exc: Unavailable) -> web.Response:
    return view.json({"error": str(exc)}, status=503)


def _range_text(rng: Range | None) -> dict | None:
    from app.contract import format_ts

    if rng is None:
        return None
    return {"since": None if rng[0] is None else format_ts(rng[0]),
            "until": None if rng[1] is None else format_ts(rng[1])}


def sources(plan: Plan) -> dict:
    """Which store answered which part of the range (``null``: not read)."""
    return {"lake": _range_text(plan.lake), "postgresql": _range_text(plan.postgres)}


async def _page(view: web.View, request: web.Request, dataset: str) -> web.Response:
    try:
        page = page_of(request.query, dataset, WINDOWS, settings.history_max_page)
        result = await HISTORY.page(page)
    except QueryError as exc:
        return view.json({"error": str(exc)}, status=400)
    except Unavailable as exc:
        return unavailable(view, exc)
    selection = page.selection
    cursor = None if result.next_key is None else encode_cursor(selection, result.next_key)
    link = None
    if cursor is not None:
        link = f"{request.path}?" + urlencode(
            {**selection.params(), "limit": page.limit, "cursor": cursor})
    return view.json({
        "dataset": dataset, **selection.params(), "limit": page.limit,
        "count": result.table.num_rows, dataset: as_dicts(result.table),
        "cursor": cursor, "next": link, "sources": sources(result.plan)})


@app.page("/history/readings")
async def history_readings(self: web.View, request: web.Request) -> web.Response:
    """Readings in ``(time, sensor_id, metric)`` order, a page at a time."""
    return await _page(self, request, "readings")


@app.page("/history/aggregates")
async def history_aggregates(self: web.View, request: web.Request) -> web.Response:
    """Sealed windows of one size in ``(window_start, sensor_id, metric)`` order."""
    return await _page(self, request, "aggregates")


@app.on_before_shutdown.connect
async def close_history_pool(_app: object, **_kwargs: object) -> None:
    """The read-only pool's connections are closed with the worker, not dropped."""
    if HISTORY.postgres is not None:
        await HISTORY.postgres.close()
