"""``GET /export``: a selection of history (as ``/history/*`` takes it, with
``dataset=readings|aggregates``) streamed as CSV or Parquet in chunks: record batch by
record batch from the lake and from a PostgreSQL server-side cursor, so a download of
any size holds one batch in memory."""

from __future__ import annotations

import contextlib
import logging
import time

from aiohttp import web as aioweb
from faust import web

from app.history.columns import SCHEMAS
from app.history.encode import CONTENT_TYPES, Encoder
from app.history.postgres import Unavailable
from app.history.query import QueryError, export_of
from app.main import app
from web.history import HISTORY, WINDOWS, unavailable

log = logging.getLogger("sensorstream.export")


@app.page("/export")
async def export(self: web.View, request: web.Request) -> aioweb.StreamResponse:
    """Stream a selection; a bad parameter or a store that cannot answer is refused
    (400, 503) before the first byte, a failure later cuts the download short."""
    try:
        job = export_of(request.query, WINDOWS)
        HISTORY.plan(job.selection)
    except QueryError as exc:
        return self.json({"error": str(exc)}, status=400)
    except Unavailable as exc:
        return unavailable(self, exc)
    selection = job.selection
    started = time.monotonic()
    encoder = Encoder(job.format, SCHEMAS[selection.dataset])
    sent = 0
    async with contextlib.aclosing(HISTORY.batches(selection)) as batches:
        try:
            first = await anext(batches, None)
        except Unavailable as exc:
            return unavailable(self, exc)
        response = aioweb.StreamResponse(headers={
            "Content-Type": CONTENT_TYPES[job.format],
            "Content-Disposition": f'attachment; filename="{selection.dataset}.{job.format}"'})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            if first is not None:
                data = encoder.feed(first)
                sent += len(data)
                await response.write(data)
                async for batch in batches:
                    data = encoder.feed(batch)
                    if data:
                        sent += len(data)
                        await response.write(data)
            tail = encoder.close()
            sent += len(tail)
            await response.write(tail)
        except (ConnectionResetError, ConnectionError):
            log.info("export download ended by the client", extra={
                "dataset": selection.dataset, "format": job.format, "rows": encoder.rows})
            return response
        except Exception as exc:
            # Headers are out: the only way to say "incomplete" is to end the
            # connection without the final chunk, so the client sees a cut download.
            log.error("export failed part way; the download is cut short: %s", exc, extra={
                "dataset": selection.dataset, "format": job.format, "rows": encoder.rows})
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    log.info("export sent", extra={
        "dataset": selection.dataset, "format": job.format, "rows": encoder.rows,
        "bytes": sent, "seconds": round(time.monotonic() - started, 3)})
    return response
