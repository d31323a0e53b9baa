"""Parameters of the history views, validated, and the keyset cursor of their pages.

Every selection is sorted by its key: readings by ``(time, sensor_id, metric)``,
aggregates of one window size by ``(window_start, sensor_id, metric)``. A page ends at a
key; the cursor carries that key (and a fingerprint of the filters, so a cursor is not
reused with other filters), and the next page starts strictly after it: stable however
the rows arrive meanwhile, and each row on exactly one page.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from app.contract import normalise_metric, parse_time
from sinks.records import DAY_US

DATASETS = ("readings", "aggregates")
FORMATS = ("csv", "parquet")
DEFAULT_LIMIT = 1000

#: A page's key: (time in us, sensor_id, metric).
Key = tuple[int, str, str]


class QueryError(ValueError):
    """A parameter the history views cannot use; the message says why (a 400)."""


@dataclass(frozen=True)
class Selection:
    """Which rows: one dataset (and window size for aggregates), filters, a time range
    ``[since, until)`` in microseconds (None: unbounded)."""

    dataset: str
    window: str | None = None
    sensor_id: str | None = None
    metric: str | None = None
    since: int | None = None
    until: int | None = None

    def fingerprint(self) -> str:
        text = orjson.dumps([self.dataset, self.window, self.sensor_id, self.metric,
                             self.since, self.until])
        return hashlib.sha256(text).hexdigest()[:12]

    def params(self) -> dict[str, str]:
        """The selection as query parameters (for ``next`` links)."""
        from app.contract import format_ts

        found = {"window": self.window, "sensor_id": self.sensor_id, "metric": self.metric,
                 "since": None if self.since is None else format_ts(self.since),
                 "until": None if self.until is None else format_ts(self.until)}
        return {k: v for k, v in found.items() if v is not None}


@dataclass(frozen=True)
class Page:
    """A selection read a page at a time: at most ``limit`` rows after ``after``."""

    selection: Selection
    limit: int = DEFAULT_LIMIT
    after: Key | None = field(default=None)


def encode_cursor(selection: Selection, key: Key) -> str:
    raw = orjson.dumps([1, selection.fingerprint(), *key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(selection: Selection, text: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        version, fingerprint, ts, sensor_id, metric = orjson.loads(raw)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise QueryError("cursor is not a cursor of this API: pass the 'cursor' of a "
                         "previous page's 'next' link unchanged") from None
    if version != 1 or not isinstance(ts, int) or not isinstance(sensor_id, str) or \
            not isinstance(metric, str):
        raise QueryError("cursor is not a cursor of this API: pass the 'cursor' of a "
                         "previous page's 'next' link unchanged")
    if fingerprint != selection.fingerprint():
        raise QueryError("cursor belongs to a different selection: keep the other "
                         "parameters of the page it came from")
    return ts, sensor_id, metric


def _check_known(query: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise QueryError(f"unknown parameter {unknown[0]!r}; this view takes: "
                         f"{', '.join(allowed)}")


def _text(query: Mapping[str, str], name: str) -> str | None:
    """A parameter's text; QueryError for a NUL (PostgreSQL and asyncpg refuse it)."""
    value = query.get(name)
    if value is None or not value.strip():
        return None
    if "\x00" in value:
        raise QueryError(f"{name} holds a NUL character")
    return value.strip()


#: Longest numeric text a time parameter takes: epoch nanoseconds have 19 digits.
MAX_NUMBER_CHARS = 40


def time_param(text: str) -> int | None:
    """The time a request parameter's text names (``parse_time``), or None: also for a
    number longer than ``MAX_NUMBER_CHARS``, which no time needs. The history API and
    every view's ``web.params.query_time`` read times through it."""
    if len(text) > MAX_NUMBER_CHARS and text.lstrip("+-").replace(".", "", 1).isdigit():
        return None
    return parse_time(text)


def _time(query: Mapping[str, str], name: str) -> int | None:
    text = _text(query, name)
    if text is None:
        return None
    ts = time_param(text)
    if ts is None:
        raise QueryError(f"{name}={text!r} is not a time: use ISO 8601 "
                         "(2026-11-22T10:00:00Z) or epoch seconds/ms/us/ns")
    return ts


def _selection(query: Mapping[str, str], dataset: str, windows: tuple[str, ...]) -> Selection:
    window = None
    if dataset == "aggregates":
        window = _text(query, "window")
        if window is None:
            raise QueryError(f"window is required: one of {', '.join(windows)}")
        if window not in windows:
            raise QueryError(f"window={window!r} is not kept; use one of: {', '.join(windows)}")
    elif _text(query, "window") is not None:
        raise QueryError("window applies to dataset=aggregates only")
    metric = _text(query, "metric")
    since, until = _time(query, "since"), _time(query, "until")
    if since is not None and until is not None and since >= until:
        raise QueryError("since must be before until (the range is [since, until))")
    return Selection(dataset, window, _text(query, "sensor_id"),
                     None if metric is None else normalise_metric(metric), since, until)


def _limit(query: Mapping[str, str], max_limit: int) -> int:
    text = _text(query, "limit")
    if text is None:
        return min(DEFAULT_LIMIT, max_limit)
    try:
        if len(text) > 20:
            raise ValueError(text)
        limit = int(text)
    except ValueError:
        raise QueryError(f"limit={text!r} is not an integer") from None
    if limit < 1:
        raise QueryError("limit must be at least 1")
    if limit > max_limit:
        raise QueryError(f"limit={limit} is more than a page holds (at most {max_limit}, "
                         "SENSORSTREAM_HISTORY_MAX_PAGE): page with the 'next' link, or "
                         "download the whole selection from /export")
    return limit


_PAGE_PARAMS = ("sensor_id", "metric", "since", "until", "limit", "cursor")


def page_of(query: Mapping[str, str], dataset: str, windows: tuple[str, ...],
            max_limit: int) -> Page:
    """``/history/readings`` or ``/history/aggregates`` parameters; QueryError if bad."""
    allowed = _PAGE_PARAMS + (("window",) if dataset == "aggregates" else ())
    _check_known(query, allowed)
    selection = _selection(query, dataset, windows)
    limit = _limit(query, max_limit)
    cursor = _text(query, "cursor")
    return Page(selection, limit, None if cursor is None else decode_cursor(selection, cursor))


@dataclass(frozen=True)
class Export:
    selection: Selection
    format: str


def export_of(query: Mapping[str, str], windows: tuple[str, ...]) -> Export:
    """``/export`` parameters; QueryError if bad."""
    _check_known(query, ("format", "dataset", "window", "sensor_id", "metric", "since",
                         "until"))
    fmt = _text(query, "format") or "csv"
    if fmt not in FORMATS:
        raise QueryError(f"format={fmt!r}: use csv or parquet")
    dataset = _text(query, "dataset") or "readings"
    if dataset not in DATASETS:
        raise QueryError(f"dataset={dataset!r}: use readings or aggregates")
    return Export(_selection(query, dataset, windows), fmt)


@dataclass(frozen=True)
class Day:
    """One UTC day ``[start, start + 1 day)`` with optional filters."""

    start: int
    sensor_id: str | None
    metric: str | None

    @property
    def end(self) -> int:
        return self.start + DAY_US

    @property
    def text(self) -> str:
        return f"{datetime.fromtimestamp(self.start / 1e6, UTC):%Y-%m-%d}"


def day_of(query: Mapping[str, str]) -> Day:
    """``/analytics/daily-summary`` parameters; QueryError if bad."""
    _check_known(query, ("date", "sensor_id", "metric"))
    text = _text(query, "date")
    if text is None:
        raise QueryError("date is required: a UTC day as YYYY-MM-DD")
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise QueryError(f"date={text!r} is not a day: use YYYY-MM-DD") from None
    metric = _text(query, "metric")
    return Day(int(day.timestamp()) * 1_000_000, _text(query, "sensor_id"),
               None if metric is None else normalise_metric(metric))
