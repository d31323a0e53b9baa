"""``GET /analytics/daily-summary?date=YYYY-MM-DD``: per sensor and metric of one UTC day,
count (readings with a value), min, max and mean, computed from the readings (not the 1d
aggregates: the readings are kept in one of the two stores for every day, while 1d
windows exist only when ``WINDOWS`` lists that size)."""

from __future__ import annotations

from faust import web

from app.history.postgres import Unavailable
from app.history.query import QueryError, day_of
from app.main import app
from web.history import HISTORY, unavailable


@app.page("/analytics/daily-summary")
async def daily_summary(self: web.View, request: web.Request) -> web.Response:
    """One day's summary per sensor and metric, from whichever store holds that day."""
    try:
        day = day_of(request.query)
        summaries, stores = await HISTORY.daily(day)
    except QueryError as exc:
        return self.json({"error": str(exc)}, status=400)
    except Unavailable as exc:
        return unavailable(self, exc)
    return self.json({"date": day.text, "basis": "readings", "stores": stores,
                      "sensor_id": day.sensor_id, "metric": day.metric,
                      "count": len(summaries), "summaries": summaries})
