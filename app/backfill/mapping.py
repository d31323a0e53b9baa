"""Which CSV column feeds which field of a reading: ``--map``, or a default read off
the header.

Apart from the CSV reader because it is about the operator's input and the data
contract, not bytes: before anything is loaded it decides that every mapped name is
one the worker takes as a metric (not an id, a time or a shape field) and that every
mapped column exists, so a bad mapping stops the command with a message instead of
skipping every row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.backfill.errors import LoadError
from app.contract import (
    ENVELOPE_FIELD,
    ID_FIELDS,
    METRIC_NAME_FIELDS,
    METRICS_FIELD,
    TIME_FIELDS,
    VALUE_FIELD,
    normalise_metric,
)

SENSOR, TIME = "sensor", "ts"
ATTRIBUTE_PREFIX = "attr."


@dataclass(frozen=True)
class ColumnMap:
    """Which CSV column feeds which field: ``sensor``, ``ts``, metrics and attributes,
    by column name (resolved against a header by ``column_indices``)."""

    sensor: str
    ts: str
    metrics: tuple[tuple[str, str], ...]  #: (metric name, column)
    attributes: tuple[tuple[str, str], ...] = ()  #: (attribute name, column)

    def as_dict(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "ts": self.ts, "metrics": [list(m) for m in self.metrics],
                "attributes": [list(a) for a in self.attributes]}


def reserved_names(attribute_fields: Iterable[str] = ()) -> frozenset[str]:
    """Field names a metric cannot take: the contract reads them as ids, times, long-form
    or envelope fields, or keeps them as attributes."""
    return frozenset((*ID_FIELDS, *TIME_FIELDS, *METRIC_NAME_FIELDS, VALUE_FIELD,
                      METRICS_FIELD, ENVELOPE_FIELD, *attribute_fields))


def parse_mapping(items: Iterable[str], reserved: frozenset[str] = reserved_names()
                  ) -> ColumnMap | None:
    """``--map`` values (each ``FIELD=COLUMN[,FIELD=COLUMN...]``) as a mapping, or None
    when none is given. FIELD is ``sensor``, ``ts``, ``attr.NAME`` or a metric name."""
    pairs = [part for item in items for part in item.split(",") if part.strip()]
    if not pairs:
        return None
    sensor = ts = None
    metrics: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for pair in pairs:
        target, sep, column = (s.strip() for s in pair.partition("="))
        if not sep or not target or not column:
            raise LoadError(f"--map: {pair.strip()!r} is not FIELD=COLUMN")
        if target in (SENSOR, TIME):
            if (sensor if target == SENSOR else ts) is not None:
                raise LoadError(f"--map: {target!r} is mapped twice")
            if target == SENSOR:
                sensor = column
            else:
                ts = column
        elif target.startswith(ATTRIBUTE_PREFIX):
            name = target[len(ATTRIBUTE_PREFIX):].strip()
            if not name or name in reserved_names():
                raise LoadError(f"--map: {target!r} is not a usable attribute name")
            if name in attributes:
                raise LoadError(f"--map: {target!r} is mapped twice")
            attributes[name] = column
        else:
            name = normalise_metric(target)
            if not name:
                raise LoadError(f"--map: {target!r} is not a metric name")
            if name in reserved:
                raise LoadError(f"--map: {target!r} cannot be a metric: the contract reads "
                                "that field as an id, a time, an attribute or a shape field")
            if name in metrics:
                raise LoadError(f"--map: metric {name!r} is mapped twice")
            metrics[name] = column
    if sensor is None or ts is None:
        missing = " and ".join(f"{n}=COLUMN" for n, c in ((SENSOR, sensor), (TIME, ts))
                               if c is None)
        raise LoadError(f"--map: needs {missing}")
    if not metrics:
        raise LoadError("--map: maps no metric (METRIC=COLUMN)")
    return ColumnMap(sensor, ts, tuple(metrics.items()), tuple(attributes.items()))


def default_mapping(header: list[str], attribute_fields: Iterable[str] = ()) -> ColumnMap:
    """Without ``--map``: the id is the first column named like a contract id field, the
    time the first named like a time field, the attribute fields are attributes and
    every other column is a metric."""
    sensor = next((c for c in header if c in (*ID_FIELDS, SENSOR)), None)
    ts = next((c for c in header if c in TIME_FIELDS), None)
    if sensor is None or ts is None:
        raise LoadError(
            "the CSV header has no " + ("sensor id column (one of "
                                        f"{', '.join((*ID_FIELDS, SENSOR))})"
                                        if sensor is None else
                                        f"time column (one of {', '.join(TIME_FIELDS)})")
            + f"; header: {', '.join(header)}; name the columns with --map")
    attrs = set(attribute_fields)
    rest = [c for c in header if c not in (sensor, ts)]
    metrics = [(normalise_metric(c), c) for c in rest if c not in attrs]
    bad = [c for name, c in metrics if not name or name in reserved_names(attrs)]
    if bad:
        raise LoadError(f"CSV column {bad[0]!r} cannot be a metric name; use --map")
    if not metrics:
        raise LoadError(f"the CSV header has no metric column; header: {', '.join(header)}")
    return ColumnMap(sensor, ts, tuple(metrics), tuple((c, c) for c in rest if c in attrs))


def column_indices(header: list[str], mapping: ColumnMap) -> dict[str, int]:
    """Column name -> index (the first of equal names); every mapped column must exist."""
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    columns = [mapping.sensor, mapping.ts, *(c for _n, c in mapping.metrics),
               *(c for _n, c in mapping.attributes)]
    unknown = [c for c in columns if c not in index]
    if unknown:
        raise LoadError(f"--map: no column {unknown[0]!r} in the CSV header "
                        f"({', '.join(header)})")
    return index
