"""The example's state per sensor, plain Python: how many readings it received and
the highest temperature among them.

Plugins see readings before deduplication and at least once (README, "Writing a
plugin"). ``merge`` skips a reading at or before the sensor's last applied position,
so a hand-over delivered again after a crash or a rebalance is not counted twice.
A duplicate the device itself sent is a new reading to this plugin: it is counted
(the highest temperature is the same either way).
"""

from __future__ import annotations

from typing import Any

METRIC = "temperature"


def merge(record: dict[str, Any] | None, ts: int, metrics: dict[str, float | None],
          position: tuple[int, int]) -> dict[str, Any] | None:
    """The sensor's record after one reading at ``position``; None when the reading was
    applied already (its position is not past the record's)."""
    if record is not None and tuple(record["position"]) >= position:
        return None
    record = dict(record) if record else {"readings": 0, "max_temperature": None,
                                          "last_seen": ts, "position": [-1, -1]}
    record["readings"] += 1
    value = metrics.get(METRIC)
    if value is not None and (record["max_temperature"] is None
                              or value > record["max_temperature"]):
        record["max_temperature"] = value
    record["last_seen"] = max(record["last_seen"], ts)
    record["position"] = list(position)
    return record
