"""The bodies of the operators' controls (web/admin.py), read or refused with a message.
Faust-free, so the rules are tested without a worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from app.contract import parse_time
from sinks.records import DATASETS, period_start


class BadBody(ValueError):
    """A request body the control cannot use; the message says why (a 400)."""


def json_object(raw: bytes, example: str) -> dict[str, Any]:
    """The JSON object of a body; ``example`` shows a caller what to send."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadBody(f"expected a JSON body such as {example}") from None
    if not isinstance(body, dict):
        raise BadBody(f"expected a JSON object such as {example}")
    return body


def input_topic(body: dict[str, Any], inputs: Sequence[str]) -> str:
    """The input topic a pause or resume names: one of ``inputs``, nothing else."""
    topic = body.get("topic")
    allowed = ", ".join(inputs)
    if not isinstance(topic, str) or not topic:
        raise BadBody(f'expected {{"topic": "..."}} naming an input topic: {allowed}')
    if topic not in inputs:
        raise BadBody(f"{topic!r} is not an input topic; only these can be paused: {allowed}")
    return topic


def forwarded_at(body: dict[str, Any]) -> float:
    """The time a change forwarded by another worker was taken (epoch seconds)."""
    at = body.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or at <= 0:
        raise BadBody("a forwarded change (scope=local) needs its time: "
                      '{"topic": "...", "at": EPOCH_SECONDS}')
    return float(at)


SEAL_EXAMPLE = '{"hour": "2026-11-22T10:00Z"} or {"dataset": "aggregates", "day": "2026-11-22"}'


def seal_target(body: dict[str, Any]) -> tuple[str, int]:
    """(dataset, period start in us) of a seal: ``hour`` for raw readings, ``day`` for
    aggregates or anomalies (``dataset``), any time inside the period."""
    dataset = body.get("dataset", "readings")
    if not isinstance(dataset, str) or dataset not in DATASETS:  # a list is unhashable
        raise BadBody(f"dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    field = "hour" if DATASETS[dataset].lake_root == "raw" else "day"
    other = "day" if field == "hour" else "hour"
    if other in body:
        raise BadBody(f"{dataset} are sealed per {field}: send {field!r}, not {other!r}; "
                      f"e.g. {SEAL_EXAMPLE}")
    if field not in body:
        raise BadBody(f"expected {SEAL_EXAMPLE}")
    try:
        ts = parse_time(body[field])
    except (ValueError, OverflowError):  # a number of absurd length, say
        ts = None
    if ts is None:
        raise BadBody(f"{field}={repr(body[field])[:100]} is not a time: use ISO 8601 "
                      "(2026-11-22T10:00Z) or epoch seconds/ms/us/ns")
    return dataset, period_start(ts, DATASETS[dataset].period_us)
