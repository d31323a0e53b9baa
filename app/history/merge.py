"""Which store answers which part of a time range, so that each row is read once.

PostgreSQL holds the retained range: the sink writes a row only when its time is at or
after the retention cut-off (the start of the UTC day ``PG_*_RETENTION`` ago, as
``sinks.postgres``'s ``_cutoff_us``) and drops whole days before it. The lake holds every
row (all of them are written there), each key once per sealed period, possibly twice in
periods not sealed yet. So, at the time of the query:

- ``time <  cut``: the lake, each key once (copies removed as the sink's seal would);
- ``time >= cut``: PostgreSQL only, even though the lake holds those rows too.

Without a lake, PostgreSQL answers the whole range; without PostgreSQL, the lake does;
with a retention of 0 (PostgreSQL keeps everything) PostgreSQL answers the whole range.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sinks.records import DAY_US

Range = tuple[int | None, int | None]  #: [since, until) in us; None: unbounded


def retention_cut(retention_s: float, now_s: float | None = None) -> int | None:
    """The sink's cut-off for a retention (None: PostgreSQL keeps everything)."""
    if not retention_s:
        return None
    now_s = time.time() if now_s is None else now_s
    return int((now_s - retention_s) * 1_000_000) // DAY_US * DAY_US


@dataclass(frozen=True)
class Plan:
    """The part of a range each store answers (None: that store is not read)."""

    lake: Range | None
    postgres: Range | None


def _clip(since: int | None, until: int | None) -> Range | None:
    if since is not None and until is not None and since >= until:
        return None
    return since, until


def plan(since: int | None, until: int | None, *, postgres: bool, lake: bool,
         cut: int | None) -> Plan:
    """Split ``[since, until)`` between the stores configured, at ``cut``."""
    if not lake:
        return Plan(None, _clip(since, until) if postgres else None)
    if not postgres:
        return Plan(_clip(since, until), None)
    if cut is None:
        return Plan(None, _clip(since, until))
    lake_until = cut if until is None else min(until, cut)
    pg_since = cut if since is None else max(since, cut)
    return Plan(_clip(since, lake_until), _clip(pg_since, until))


def after_range(rng: Range, after_time: int | None) -> Range | None:
    """A store's range narrowed to keys that can follow a cursor at ``after_time``."""
    since, until = rng
    if after_time is not None:
        since = after_time if since is None else max(since, after_time)
    return _clip(since, until)
