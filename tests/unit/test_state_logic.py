"""Dedup evidence and latest values: the plain logic behind the per-sensor tables."""

import orjson

from tables import latest
from tables.dedup import BUCKET_US, Evidence, Expiry, bucket_key, expired


def test_evidence_accepts_once_across_batches_and_rewrites_touched_records():
    table: dict[bytes, bytes] = {}
    first = Evidence(table)
    assert first.accept("s", "t", 5)
    assert first.accept("s", "h", 5)
    assert not first.accept("s", "t", 5)
    assert first.accept("s", "t", 5 + BUCKET_US)
    assert first.flush() == 2
    assert orjson.loads(table[bucket_key("s", 5).encode()]) == {"t": [5], "h": [5]}

    second = Evidence(table)
    assert not second.accept("s", "t", 5)
    assert second.accept("other", "t", 5)
    table.clear()  # only what flush writes back is in the table now
    assert second.flush() == 2
    assert set(table) == {bucket_key("s", 5).encode(), bucket_key("other", 5).encode()}


def test_bucket_keys_sort_by_time_and_expire_by_prefix():
    keys = sorted([bucket_key("b", 3 * BUCKET_US), bucket_key("a", BUCKET_US),
                   bucket_key("z", 2 * BUCKET_US), "__faust\0offset__"])
    assert expired(keys, 3) == (
        [bucket_key("a", BUCKET_US), bucket_key("z", 2 * BUCKET_US)], 3)
    assert expired(keys, 0) == ([], 1)
    assert expired(keys, 9)[1] is None


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
    assert record["last_seen"] == 10 and record["readings"] == 4
    assert record["attributes"] == {"loc": "a"}
    detail = latest.detail("s", record)
    assert detail["metrics"]["t"] == {"value": 1.0, "time": "1970-01-01T00:00:00.000010Z"}
