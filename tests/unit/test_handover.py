"""Hand-over records any producer could write: decoded with the stages' types, or a
``BadHandover`` with its reason, never another exception."""

from __future__ import annotations

import orjson
import pytest

from app.contract import Reading, Source, encode_batch
from app.handover import BadHandover, decode_checked
from sinks.records import ROWS_OF


def test_a_hand_over_of_the_ingest_stage_decodes_as_it_was_written():
    items = [(Reading("s1", 5, {"t": 1.5, "h": None, "n": 3}, {"loc": "a"}),
              Source("in", 1, 7), 9)]
    handover = decode_checked(encode_batch(items, {"in:1": 5}, {"s1": 2}))
    assert handover.rows == items and handover.watermarks == {"in:1": 5}
    assert handover.dead_letters == {"s1": 2}


@pytest.mark.parametrize(("value", "reason"), [
    (None, "not_json"),
    (b"", "not_json"),
    (b"\xff\x00 not json", "not_json"),
    (b"[1, 2]", "bad_shape"),
    (b'{"wm": {}}', "bad_shape"),
    (orjson.dumps({"rows": [["s", "not a time", {}]], "wm": {}}), "bad_shape"),
    (orjson.dumps({"rows": [["s", 1, {"t": "warm"}, {}, "in", 0, 0, 0]], "wm": {}}),
     "bad_shape"),
    (orjson.dumps({"rows": [["s", 1, {"t": True}, {}, "in", 0, 0, 0]], "wm": {}}),
     "bad_shape"),
    (orjson.dumps({"rows": [[1, 1, {"t": 1.0}, {}, "in", 0, 0, 0]], "wm": {}}), "bad_shape"),
    (orjson.dumps({"rows": [["s", 1, {"t": 1.0}, [], "in", 0, 0, 0]], "wm": {}}), "bad_shape"),
    (orjson.dumps({"rows": [["s", 1, {"t": 1.0}, {}, "in", "0", 0, 0]], "wm": {}}),
     "bad_shape"),
    (orjson.dumps({"rows": [], "wm": {"in:0": "late"}}), "bad_shape"),
    (orjson.dumps({"rows": [], "wm": {}, "dl": {"s": None}}), "bad_shape"),
])
def test_anything_else_is_a_bad_hand_over_with_its_reason(value, reason):
    with pytest.raises(BadHandover) as raised:
        decode_checked(value)
    assert raised.value.reason == reason and str(raised.value)


def test_the_readings_sink_skips_a_bad_hand_over_that_the_per_sensor_stage_dead_letters():
    assert list(ROWS_OF["readings"](b"\x00 not a hand-over", 0, 3)) == []
    good = encode_batch([(Reading("s1", 5, {"t": 1.5}, {}), Source("in", 1, 7), 9)])
    assert len(list(ROWS_OF["readings"](good, 0, 4))) == 1
