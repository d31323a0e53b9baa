"""The example's per-sensor record: counted once per position, whatever is redelivered."""

from sensorstream_plugin_example.stats import merge


def apply(record, deliveries):
    for ts, metrics, position in deliveries:
        merged = merge(record, ts, metrics, position)
        record = merged if merged is not None else record
    return record


def test_counts_readings_and_keeps_the_highest_temperature():
    record = apply(None, [(3, {"temperature": 20.5}, (0, 0)),
                          (1, {"temperature": 22.0, "humidity": 40.0}, (0, 3)),
                          (2, {"humidity": 41.0}, (4, 1)),
                          (5, {"temperature": None}, (9, 0))])
    assert record == {"readings": 4, "max_temperature": 22.0, "last_seen": 5,
                      "position": [9, 0]}


def test_a_redelivered_hand_over_changes_nothing():
    first = [(1, {"temperature": 20.0}, (7, 0)), (2, {"temperature": 25.0}, (7, 2))]
    once = apply(None, first)
    # After a crash the whole hand-over (and the ones before it) comes again.
    again = apply(once, [(0, {"temperature": 30.0}, (6, 5)), *first])
    assert again == once
    assert merge(once, 2, {"temperature": 25.0}, (7, 2)) is None


def test_a_device_s_own_duplicate_is_a_new_reading():
    record = apply(None, [(1, {"temperature": 20.0}, (0, 0)),
                          (1, {"temperature": 20.0}, (0, 1))])
    assert (record["readings"], record["max_temperature"]) == (2, 20.0)
