"""Expiry and latest values: the plain logic behind the per-sensor state."""

from tables import latest
from tables.windows import Expiry


def test_expiry_scans_only_when_something_can_expire():
    expiry = Expiry()
    assert expiry.due("p", 5)  # never scanned: unknown
    expiry.scanned("p", 7)
    assert not expiry.due("p", 7)
    assert expiry.due("p", 8)
    expiry.wrote("p", 6)
    assert expiry.due("p", 7)
    expiry.scanned("p", None)  # nothing left
    assert not expiry.due("p", 10**6)
    expiry.wrote("p", 20)
    assert expiry.due("p", 21) and not expiry.due("p", 20)


def test_latest_keeps_the_newest_value_per_metric():
    record = latest.merge(None, 10, {"t": 1.0, "h": 2.0}, {"loc": "a"})
    record = latest.merge(record, 5, {"t": 9.0, "v": 3.0}, {"loc": "old"})
    assert record["metrics"] == {"t": [10, 1.0], "h": [10, 2.0], "v": [5, 3.0]}
    assert record["last_seen"] == 10
    assert latest.merge(record, 5, {"t": 9.0, "v": 3.0}, {"loc": "old"}) == record  # again
    assert record["attributes"] == {"loc": "a"}
    detail = latest.detail("s", record)
    assert detail["metrics"]["t"] == {"value": 1.0, "time": "1970-01-01T00:00:00.000010Z"}
