"""Which records of a fetch Faust dropped (stream.transport.dropped): a partition paused while
its records were handed over keeps the rest of that fetch only if the consumer seeks back
to the first one not handed over; the integration tests in tests/integration/test_admin.py
show the pause and the sink watcher's case on a real broker."""

from __future__ import annotations

from collections import namedtuple

from stream.transport import dropped

TP = namedtuple("TP", "topic partition")
A0, A1, A2, A3 = (TP("a", p) for p in range(4))


def test_only_partitions_with_records_not_handed_over_go_back():
    fetched = {A0: (10, 19), A1: (5, 5), A2: (100, 149), A3: (7, 9)}
    handed = {A0: 19, A1: 5, A2: 120}  # A3: paused before its turn, nothing handed over
    assert dropped(fetched, handed) == {A2: 121, A3: 7}


def test_a_fetch_handed_over_whole_goes_nowhere():
    assert dropped({A0: (0, 0), A1: (3, 4)}, {A0: 0, A1: 4}) == {}
    assert dropped({}, {}) == {}
