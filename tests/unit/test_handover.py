"""Hand-over records any producer could write: decoded with the types the per-sensor
stage relies on, each other reading named, or a ``BadHandover`` with its reason; never
another exception."""

from __future__ import annotations

import orjson
import pytest

from app.contract import Reading, Source, encode_batch
from app.handover import BadHandover, decode_checked

GOOD_ROW = ["s", 1, {"t": 1.0}, {}, "in", 0, 0, 0]


def test_a_hand_over_of_the_ingest_stage_decodes_as_it_was_written():
    items = [(Reading("s1", 5, {"t": 1.5, "h": None, "n": 3}, {"loc": "a"}),
              Source("in", 1, 7), 9)]
    handover, bad = decode_checked(encode_batch(items, {"in:1": 5}, {"s1": 2}))
    assert bad == []
    assert handover.rows == items and handover.watermarks == {"in:1": 5}
    assert handover.dead_letters == {"s1": 2}


@pytest.mark.parametrize(("value", "reason"), [
    (None, "not_json"),
    (b"", "not_json"),
    (b"\xff\x00 not json", "not_json"),
    (b"[1, 2]", "bad_shape"),
    (b'{"wm": {}}', "bad_shape"),
    (orjson.dumps({"rows": [["s", "not a time", {}]], "wm": {}}), "bad_shape"),
    (orjson.dumps({"rows": [], "wm": {"in:0": "late"}}), "bad_shape"),
    (orjson.dumps({"rows": [], "wm": {}, "dl": {"s": None}}), "bad_shape"),
])
def test_a_record_that_is_no_hand_over_is_bad_whole_with_its_reason(value, reason):
    with pytest.raises(BadHandover) as raised:
        decode_checked(value)
    assert raised.value.reason == reason and str(raised.value)


@pytest.mark.parametrize("row", [
    ["s", 1, {"t": "warm"}, {}, "in", 0, 0, 0],
    ["s", 1, {"t": True}, {}, "in", 0, 0, 0],
    [1, 1, {"t": 1.0}, {}, "in", 0, 0, 0],
    ["s", 1.5, {"t": 1.0}, {}, "in", 0, 0, 0],
    ["s", 1, {"t": 1.0}, [], "in", 0, 0, 0],
    ["s", 1, {"t": 1.0}, {}, "in", "0", 0, 0],
    ["s", 1, [], {}, "in", 0, 0, 0],
])
def test_a_reading_of_the_wrong_types_is_named_and_the_others_kept(row):
    handover, bad = decode_checked(orjson.dumps({"rows": [GOOD_ROW, row, GOOD_ROW],
                                                 "wm": {"in:0": 3}}))
    assert [index for index, _problem in bad] == [1] and bad[0][1]
    assert [r.sensor_id for r, _s, _at in handover.rows] == ["s", "s"]
    assert handover.watermarks == {"in:0": 3}
