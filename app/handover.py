"""Decoding a hand-over record that any producer could have written to the topic.

The per-sensor stage and the readings sink read the hand-over topic; the ingest stage
writes it (``app.contract.encode_batch``), but nothing stops another producer from
writing there too. ``decode_checked`` turns any record into a ``Handover`` of the
readings with the types the per-sensor stage relies on, and says what is wrong with
each other reading; a record that is not a hand-over at all raises ``BadHandover``.
The per-sensor stage dead-letters what it cannot apply instead of crashing on it
(issue 18); the sink stage decides for itself (``sinks.base.readable_rows``).
"""

from __future__ import annotations

import orjson

from app.contract import Handover, Reading, Reason, Source, decode_batch


class BadHandover(ValueError):
    """A record that is not a hand-over this service writes: the reason code and why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_checked(value: bytes | None) -> tuple[Handover, list[tuple[int, str]]]:
    """The hand-over in ``value`` with its well-typed readings, and ``(index, problem)``
    of each other reading; ``BadHandover`` when the record as a whole is unusable. The
    type checks cost about a microsecond per reading, against tens for applying it."""
    try:
        handover = decode_batch(value)
    except orjson.JSONDecodeError as exc:
        raise BadHandover(Reason.NOT_JSON, f"not JSON: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadHandover(Reason.BAD_SHAPE, f"{type(exc).__name__}: {exc}"[:500]) from None
    if not (isinstance(handover.watermarks, dict) and isinstance(handover.dead_letters, dict)
            and all(type(v) is int for v in handover.watermarks.values())
            and all(type(v) is int for v in handover.dead_letters.values())):
        raise BadHandover(Reason.BAD_SHAPE, "watermarks or dead-letter counts of the wrong "
                          "types")
    bad = []
    for index, item in enumerate(handover.rows):
        problem = _malformed(*item)
        if problem is not None:
            bad.append((index, problem))
    if not bad:
        return handover, bad
    skip = {index for index, _problem in bad}
    rows = [item for index, item in enumerate(handover.rows) if index not in skip]
    return Handover(rows, handover.watermarks, handover.dead_letters), bad


def _malformed(reading: Reading, source: Source, at: int) -> str | None:
    """What makes one reading of a hand-over unusable: types the ingest stage never
    writes."""
    if not (isinstance(reading.sensor_id, str) and type(reading.ts) is int
            and isinstance(reading.metrics, dict) and isinstance(reading.attributes, dict)
            and isinstance(source.topic, str) and type(source.partition) is int
            and type(source.offset) is int and type(at) is int):
        return f"a reading of sensor {str(reading.sensor_id)[:100]!r} has the wrong types"
    for metric, number in reading.metrics.items():
        if not (number is None or type(number) in (float, int)) or not isinstance(metric, str):
            return (f"metric {str(metric)[:100]!r} of sensor {reading.sensor_id[:100]!r} "
                    "is not a number")
    return None
