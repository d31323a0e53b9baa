"""The data contract: every accepted shape and alias, every time unit, every reason."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.contract import (
    ID_FIELDS,
    MAX_ATTRIBUTES_BYTES,
    MAX_DEPTH,
    MAX_METRICS,
    MAX_RECORD_BYTES,
    TIME_FIELDS,
    Contract,
    Reading,
    Reason,
    Source,
    dead_letter,
    decode_batch,
    encode_batch,
    encode_batches,
    format_ts,
    parse_time,
)

NOW = 1_763_000_000_000_000  # 2025-11-13T02:13:20Z in microseconds
TS = NOW - 60_000_000
ISO = format_ts(TS)
CONTRACT = Contract(
    limits={"humidity": (0.0, 100.0), "voltage": (0.0, 10.0)},
    max_future_us=300_000_000,
    attribute_fields=frozenset({"location", "lat", "lon", "unit", "schema_version", "event_id",
                                "seq", "epoch"}),
)


def parse(doc, now=NOW):
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return CONTRACT.parse(raw, now)


def only_reading(doc):
    result = parse(doc)
    assert result.rejections == [], result.rejections
    assert len(result.readings) == 1
    return result.readings[0]


def only_rejection(doc):
    result = parse(doc)
    assert result.readings == []
    assert len(result.rejections) == 1, result.rejections
    return result.rejections[0]


# -- shapes and aliases -----------------------------------------------------------------------


@pytest.mark.parametrize("id_field", ID_FIELDS)
def test_every_id_alias(id_field):
    reading = only_reading({id_field: "s-1", "ts": ISO, "temperature": 21.5})
    assert reading.sensor_id == "s-1"
    assert reading.metrics == {"temperature": 21.5}


@pytest.mark.parametrize("time_field", TIME_FIELDS)
def test_every_time_alias(time_field):
    reading = only_reading({"sensor_id": "s-1", time_field: ISO, "temperature": 21.5})
    assert reading.ts == TS


def test_id_precedence_keeps_other_aliases_as_attributes():
    reading = only_reading({"device_id": "d", "sensor_id": "s", "ts": ISO, "t": 1})
    assert reading.sensor_id == "s"
    assert reading.attributes == {"device_id": "d"}


def test_integer_ids_become_strings():
    assert only_reading({"mote_id": 7, "ts": ISO, "light": 3}).sensor_id == "7"
    assert only_reading({"mote_id": 7.0, "ts": ISO, "light": 3}).sensor_id == "7"


def test_wide_reading_numbers_are_metrics_and_the_rest_attributes():
    reading = only_reading({
        "sensor_id": "s", "ts": ISO, "temperature": 21.5, "humidity": 40, "light": None,
        "location": "lab", "lat": 37.4, "lon": -122.1, "unit": "C", "schema_version": 2,
        "event_id": 17, "firmware": "1.2", "tags": ["a", True], "extra": {"k": 1},
    })
    assert reading.metrics == {"temperature": 21.5, "humidity": 40.0, "light": None}
    assert reading.attributes == {
        "location": "lab", "lat": 37.4, "lon": -122.1, "unit": "C", "schema_version": 2,
        "event_id": 17, "firmware": "1.2", "tags": ["a", True], "extra": {"k": 1}}


def test_metrics_object_holds_metrics_too():
    reading = only_reading({"sensor_id": "s", "ts": ISO, "pressure": 1013.0,
                            "metrics": {"Temperature": 20.0, "co2 ppm": 410}})
    assert reading.metrics == {"pressure": 1013.0, "temperature": 20.0, "co2_ppm": 410.0}


@pytest.mark.parametrize("name_field", ["metric", "sensor_type"])
def test_long_reading(name_field):
    reading = only_reading({"sensor_id": "s", "event_time": ISO, name_field: "Humidity",
                            "value": 41.5, "unit": "%", "quality": 3})
    assert reading.metrics == {"humidity": 41.5}
    assert reading.attributes == {"unit": "%", "quality": 3}


def test_long_reading_null_value_is_missing_not_rejected():
    assert only_reading({"sensor_id": "s", "ts": ISO, "metric": "t", "value": None}).metrics == {
        "t": None}


def test_envelope_array():
    result = parse([{"sensor_id": "a", "ts": ISO, "t": 1}, {"sensor_id": "b", "ts": ISO, "t": 2}])
    assert [r.sensor_id for r in result.readings] == ["a", "b"]
    assert result.count_in == 2


def test_envelope_object_fields_are_defaults_for_each_reading():
    result = parse({"gateway_id": "g1", "device_id": "d0", "location": "roof", "readings": [
        {"ts": ISO, "t": 1},
        {"device_id": "d2", "ts": ISO, "t": 2, "location": "hall"},
    ]})
    assert result.rejections == []
    first, second = result.readings
    assert (first.sensor_id, first.attributes) == ("d0", {"gateway_id": "g1", "location": "roof"})
    assert (second.sensor_id, second.attributes) == (
        "d2", {"gateway_id": "g1", "location": "hall"})


def test_envelope_mixing_good_and_bad_readings_keeps_the_good_ones():
    result = parse({"readings": [
        {"sensor_id": "a", "ts": ISO, "t": 1, "humidity": 50},
        {"ts": ISO, "t": 2},
        "not an object",
        {"sensor_id": "c", "ts": ISO, "humidity": 150, "t": 3},
    ]})
    assert [(r.sensor_id, r.metrics) for r in result.readings] == [
        ("a", {"t": 1.0, "humidity": 50.0}), ("c", {"t": 3.0})]
    assert [(x.reason, x.index) for x in result.rejections] == [
        (Reason.MISSING_ID, 1), (Reason.BAD_SHAPE, 2), (Reason.OUT_OF_RANGE, 3)]
    assert result.count_in == 3 + 3


def test_empty_envelope_has_no_readings():
    assert parse([]).count_in == 0
    assert parse({"readings": []}).count_in == 0


def test_unknown_fields_never_break_parsing_and_are_carried():
    reading = only_reading({"sensor_id": "s", "ts": ISO, "t": 1, "new_field_2027": {"x": [1]}})
    assert reading.attributes == {"new_field_2027": {"x": [1]}}


def test_nan_and_infinity_from_lenient_producers_are_rejected_per_metric():
    raw = b'{"sensor_id": "s", "ts": "%s", "t": NaN, "h": 50, "v": Infinity, "w": 1e400}' % (
        ISO.encode())
    result = CONTRACT.parse(raw, NOW)
    assert [r.metrics for r in result.readings] == [{"h": 50.0}]
    assert [(x.reason, x.metric) for x in result.rejections] == [
        (Reason.VALUE_NOT_FINITE, "t"), (Reason.VALUE_NOT_FINITE, "v"),
        (Reason.VALUE_NOT_FINITE, "w")]


# -- time ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (1_700_000_000, 1_700_000_000_000_000),  # seconds
    (1_700_000_000.25, 1_700_000_000_250_000),  # fractional seconds
    (1_700_000_000_123, 1_700_000_000_123_000),  # milliseconds
    (1_700_000_000_123_456, 1_700_000_000_123_456),  # microseconds
    (1_700_000_000_123_456_789, 1_700_000_000_123_456),  # nanoseconds
    ("1700000000", 1_700_000_000_000_000),  # numeric string
    ("1700000000123", 1_700_000_000_123_000),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000_000),
    ("2023-11-14T22:13:20", 1_700_000_000_000_000),  # no zone means UTC
    ("2023-11-15T00:13:20+02:00", 1_700_000_000_000_000),
    ("2023-11-14 22:13:20.5", 1_700_000_000_500_000),  # the Intel Lab's own format
    ("2023-11-14T22:13:20.123456789Z", 1_700_000_000_123_456),
])
def test_time_units_and_formats(value, expected):
    assert parse_time(value) == expected


@pytest.mark.parametrize("value", [
    "yesterday", "", "2023-13-01T00:00:00", True, None, [], {}, -5, float("nan"),
    float("inf"), "12:00", 10**30])
def test_unusable_times(value):
    assert parse_time(value) is None


def test_format_ts_round_trips():
    assert parse_time(format_ts(1_700_000_000_123_456)) == 1_700_000_000_123_456


# -- every dead-letter reason ------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", Reason.NOT_JSON),
    (b"{not json", Reason.NOT_JSON),
    (b"\xff\xfe{}", Reason.NOT_JSON),
    (b"[" * 5000, Reason.NOT_JSON),
    (b"42", Reason.BAD_SHAPE),
    (b'"text"', Reason.BAD_SHAPE),
    (b'{"readings": {"sensor_id": "s"}}', Reason.BAD_SHAPE),
])
def test_whole_message_rejections(raw, reason):
    result = CONTRACT.parse(raw, NOW)
    assert [x.reason for x in result.rejections] == [reason]
    assert result.count_in == 1


@pytest.mark.parametrize(("doc", "reason"), [
    ({"ts": ISO, "t": 1}, Reason.MISSING_ID),
    ({"sensor_id": None, "ts": ISO, "t": 1}, Reason.MISSING_ID),
    ({"sensor_id": "", "ts": ISO, "t": 1}, Reason.INVALID_ID),
    ({"sensor_id": True, "ts": ISO, "t": 1}, Reason.INVALID_ID),
    ({"sensor_id": {"a": 1}, "ts": ISO, "t": 1}, Reason.INVALID_ID),
    ({"sensor_id": "x" * 300, "ts": ISO, "t": 1}, Reason.INVALID_ID),
    ({"sensor_id": "s", "t": 1}, Reason.MISSING_TIME),
    ({"sensor_id": "s", "ts": "noon", "t": 1}, Reason.INVALID_TIME),
    ({"sensor_id": "s", "ts": -1, "t": 1}, Reason.INVALID_TIME),
    ({"sensor_id": "s", "ts": format_ts(NOW + 301_000_000), "t": 1}, Reason.FUTURE_TIME),
    ({"sensor_id": "s", "ts": ISO, "location": "lab"}, Reason.NO_METRICS),
    ({"sensor_id": "s", "ts": ISO, "metric": 5, "value": 1}, Reason.INVALID_METRIC),
    ({"sensor_id": "s", "ts": ISO, "metrics": {"!!": 1}}, Reason.INVALID_METRIC),
    ({"sensor_id": "s", "ts": ISO, "metric": "t"}, Reason.MISSING_VALUE),
    ({"sensor_id": "s", "ts": ISO, "metrics": {"t": "21.5"}}, Reason.VALUE_NOT_NUMBER),
    ({"sensor_id": "s", "ts": ISO, "metrics": {"t": True}}, Reason.VALUE_NOT_NUMBER),
    ({"sensor_id": "s", "ts": ISO, "metric": "t", "value": "high"}, Reason.VALUE_NOT_NUMBER),
    ({"sensor_id": "s", "ts": ISO, "humidity": 100.5}, Reason.OUT_OF_RANGE),
    ({"sensor_id": "s", "ts": ISO, "voltage": -0.1}, Reason.OUT_OF_RANGE),
    ({"sensor_id": "s", "ts": ISO, "metrics": [1, 2]}, Reason.BAD_SHAPE),
])
def test_reading_rejections(doc, reason):
    rejection = only_rejection(doc)
    assert rejection.reason == reason
    assert rejection.message


def test_duplicate_metric_in_one_reading_is_rejected_not_overwritten():
    result = parse({"sensor_id": "s", "ts": ISO, "Temp": 1, "metrics": {"temp": 2}})
    assert [r.metrics for r in result.readings] == [{"temp": 1.0}]
    assert [x.reason for x in result.rejections] == [Reason.DUPLICATE_METRIC]


def test_future_bound_is_inclusive_of_the_setting():
    assert only_reading({"sensor_id": "s", "ts": format_ts(NOW + 300_000_000), "t": 1})


def test_metric_without_limits_has_none():
    assert only_reading({"sensor_id": "s", "ts": ISO, "weird": -1e300}).metrics == {
        "weird": -1e300}


# -- records ------------------------------------------------------------------------------------


def test_dead_letter_record_carries_reason_source_and_original_bytes():
    raw = b'{"ts": 1}'
    rejection = CONTRACT.parse(raw, NOW).rejections[0]
    value, headers = dead_letter(rejection, raw, Source("in", 3, 42, 1000), NOW)
    record = orjson.loads(value)
    assert record["reason"] == "missing_id"
    assert record["source"] == {"topic": "in", "partition": 3, "offset": 42, "timestamp_ms": 1000}
    assert (record["original"], record["original_encoding"]) == ('{"ts": 1}', "utf-8")
    hdr = dict(headers)
    assert hdr["sensorstream-reason"] == b"missing_id"
    assert hdr["sensorstream-source-offset"] == b"42"
    assert hdr["sensorstream-message"].decode() == record["message"]


def test_dead_letter_of_binary_is_base64():
    raw = b"\xff\x00\xfe"
    rejection = CONTRACT.parse(raw, NOW).rejections[0]
    record = orjson.loads(dead_letter(rejection, raw, Source("in", 0, 1))[0])
    assert record["original_encoding"] == "base64"
    assert base64.b64decode(record["original"]) == raw


def test_a_cut_utf8_original_is_base64_in_record_and_header():
    raw = b'{"a": "' + b"x" * 10_000 + b'"'
    rejection = CONTRACT.parse(raw, NOW).rejections[0]
    value, headers = dead_letter(rejection, raw, Source("in", 0, 7), max_bytes=4_000)
    record = orjson.loads(value)
    assert record["original_truncated"] is True
    assert record["original_encoding"] == "base64"
    assert dict(headers)["sensorstream-original-encoding"] == b"base64"
    assert raw.startswith(base64.b64decode(record["original"]))


def test_an_original_too_large_is_cut_and_flagged_never_dropped():
    raw = b"\xff" * 10_000
    rejection = CONTRACT.parse(raw, NOW).rejections[0]
    value, headers = dead_letter(rejection, raw, Source("in", 0, 7), max_bytes=4_000)
    record = orjson.loads(value)
    assert len(value) <= 4_000
    assert dict(headers)["sensorstream-original-encoding"] == b"base64"
    assert record["original_truncated"] is True and record["original_size"] == 10_000
    assert raw.startswith(base64.b64decode(record["original"]))
    whole = orjson.loads(dead_letter(rejection, raw, Source("in", 0, 7))[0])
    assert whole["original_truncated"] is False
    assert base64.b64decode(whole["original"]) == raw


def test_hand_over_batches_respect_count_and_size():
    items = [(Reading(f"s{i}", TS, {"t": 1.0}, {"blob": "x" * 500}), Source("in", 0, i), NOW)
             for i in range(50)]
    values = list(encode_batches(items, max_readings=20, max_bytes=4_000,
                                 watermarks={"in:0": TS}))
    assert all(len(v) <= 4_000 for v in values)
    back = [r for v in values for r, _s, _at in decode_batch(v)[0]]
    assert [r.sensor_id for r in back] == [f"s{i}" for i in range(50)]
    assert [decode_batch(v)[1] for v in values] == [{}] * (len(values) - 1) + [{"in:0": TS}]
    assert [decode_batch(v) for v in encode_batches([], watermarks={"in:1": 5})] == [
        ([], {"in:1": 5}, {})]
    assert list(encode_batches([])) == []


def test_dead_letter_counts_travel_with_the_last_hand_over():
    items = [(Reading(f"s{i}", TS, {"t": 1.0}, {}), Source("in", 0, i), NOW) for i in range(5)]
    values = list(encode_batches(items, max_readings=2, dead_letters={"s1": 2, "": 1}))
    assert [decode_batch(v).dead_letters for v in values] == [{}, {}, {"s1": 2, "": 1}]
    alone = list(encode_batches([], dead_letters={"s9": 1}))
    assert [decode_batch(v) for v in alone] == [([], {}, {"s9": 1})]


def test_hand_over_batch_round_trips():
    items = [(Reading("s", TS, {"t": 1.5, "h": None}, {"a": [1]}), Source("in", 1, 2), NOW)]
    back = decode_batch(encode_batch(items))
    assert back == ([(items[0][0], Source("in", 1, 2), NOW)], {}, {})


# -- properties -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from([*ID_FIELDS, *TIME_FIELDS, "metric", "value", "metrics", "readings",
                         "temperature", "humidity", "x"]) | st.text(max_size=5),
        children, max_size=6),
    max_leaves=20)


def _accounting_holds(result):
    assert result.count_in == result.rows + len(result.rejections)
    for reading in result.readings:
        assert reading.metrics
        assert isinstance(reading.sensor_id, str) and reading.sensor_id
        assert reading.ts >= 0
    for rejection in result.rejections:
        assert isinstance(rejection.reason, Reason) and rejection.message


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw):
    _accounting_holds(CONTRACT.parse(raw, NOW))


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_arbitrary_json_never_raises_and_accounts(doc):
    raw = json.dumps(doc, allow_nan=True).encode()
    result = CONTRACT.parse(raw, NOW)
    _accounting_holds(result)
    assert result.count_in >= (0 if isinstance(doc, list) or (
        isinstance(doc, dict) and "readings" in doc) else 1)


# -- poison input (issue 18): what a later stage cannot carry is rejected here ---------------


def _rejected_alone(raw: bytes, reason: Reason):
    """``raw`` (a wide reading with one good metric) is one rejection of ``reason``, and
    that reading's rejection is encodable as a dead letter."""
    result = CONTRACT.parse(raw, NOW)
    assert result.readings == []
    assert [x.reason for x in result.rejections] == [reason], result.rejections
    rejection = result.rejections[0]
    assert rejection.sensor_id == "x"
    record = orjson.loads(dead_letter(rejection, raw, Source("in", 0, 1), NOW)[0])
    assert record["reason"] == reason.value
    return rejection


def _wide(extra: bytes) -> bytes:
    return b'{"sensor_id":"x","ts":"%s","temperature":21,%s}' % (ISO.encode(), extra)


def test_attribute_nested_300_arrays_deep_is_too_deep():
    _rejected_alone(_wide(b'"x":' + b"[" * 300 + b"]" * 300), Reason.TOO_DEEP)


def test_attribute_nesting_up_to_max_depth_is_carried():
    deep = {"x": 1}
    for _ in range(MAX_DEPTH - 1):
        deep = {"x": deep}
    reading = only_reading({"sensor_id": "x", "ts": ISO, "t": 1, "a": deep})
    assert decode_batch(encode_batch([(reading, Source("in", 0, 1), NOW)])).rows[0][0] == reading
    _rejected_alone(orjson.dumps({"sensor_id": "x", "ts": ISO, "t": 1, "a": {"x": deep}}),
                    Reason.TOO_DEEP)


@pytest.mark.parametrize("extra", [
    rb'"note":"\ud800"',  # a lone surrogate: orjson refuses it, json.loads' slow path not
    rb'"note":{"deep":["ok","\udfff"]}',
    rb'"\ud800":"key"',
    rb'"note":"bad\u0000byte"',  # NUL: PostgreSQL's text and jsonb refuse it
    rb'"note":[{"k\u0000":1}]',
])
def test_attribute_text_with_nul_or_lone_surrogate_is_invalid_text(extra):
    rejection = _rejected_alone(_wide(extra), Reason.INVALID_TEXT)
    assert "NUL" in rejection.message


def test_non_ascii_text_is_carried():
    reading = only_reading({"sensor_id": "x", "ts": ISO, "t": 1, "note": "ü 🙂 \u2028 \\u0000"})
    assert reading.attributes == {"note": "ü 🙂 \u2028 \\u0000"}


@pytest.mark.parametrize("extra", [rb'"x":{"y":NaN}', rb'"lat":Infinity',
                                   b'"x":[' + b"1" * 400 + b"]",
                                   b'"x":{"y":' + b"9" * 5000 + b"}"])
def test_attribute_numbers_json_cannot_carry_are_invalid_number(extra):
    # 'lat' is a declared attribute, so its infinity is not a metric.
    _rejected_alone(_wide(extra), Reason.INVALID_NUMBER)


def test_timestamp_string_of_5000_digits_is_invalid_time():
    assert parse_time("1" * 5000) is None
    assert parse_time("-" + "0" * 4990 + "1700000000") is None
    assert parse_time("+" + "0" * 4990 + "1700000000") == 1_700_000_000_000_000
    assert parse_time("1" * 5000 + ".5") is None
    raw = b'{"sensor_id":"x","ts":"%s","temperature":21}' % (b"1" * 5000)
    _rejected_alone(raw, Reason.INVALID_TIME)


def test_five_megabyte_attribute_is_too_large():
    rejection = _rejected_alone(_wide(b'"blob":"' + b"a" * 5_000_000 + b'"'), Reason.TOO_LARGE)
    assert str(MAX_ATTRIBUTES_BYTES) in rejection.message


def test_attributes_just_under_the_limit_are_carried_and_over_it_are_not():
    # Escapes count: 10,000 control characters encode to 60,000 bytes.
    fits = {"a": "\x01" * 10_000, "b": "é" * 2_000}
    reading = only_reading({"sensor_id": "x", "ts": ISO, "t": 1, **fits})
    assert len(orjson.dumps(reading.attributes)) <= MAX_ATTRIBUTES_BYTES
    over = {"a": "\x01" * 11_000}
    _rejected_alone(orjson.dumps({"sensor_id": "x", "ts": ISO, "t": 1, **over}),
                    Reason.TOO_LARGE)
    many = {f"k{i}": [i] for i in range(10_000)}  # small items, many of them
    _rejected_alone(orjson.dumps({"sensor_id": "x", "ts": ISO, "t": 1, **many}),
                    Reason.TOO_LARGE)


def test_a_reading_of_more_than_max_metrics_is_too_large():
    doc = {"sensor_id": "x", "ts": ISO, **{f"m{i}": i for i in range(MAX_METRICS + 1)}}
    _rejected_alone(orjson.dumps(doc), Reason.TOO_LARGE)
    doc.pop(f"m{MAX_METRICS}")
    assert len(only_reading(doc).metrics) == MAX_METRICS


def test_overlong_metric_names_and_ids_are_rejected():
    result = parse({"sensor_id": "x", "ts": ISO, "t": 1, "m" * 300: 2})
    assert [r.metrics for r in result.readings] == [{"t": 1.0}]
    assert [x.reason for x in result.rejections] == [Reason.INVALID_METRIC]
    assert only_rejection(json.dumps({"sensor_id": 10**300, "ts": ISO, "t": 1}).encode()
                          ).reason == Reason.INVALID_ID
    assert only_rejection({"sensor_id": 1e300, "ts": ISO, "t": 1}).reason == Reason.INVALID_ID


def test_a_5000_digit_integer_metric_is_that_metric_value_not_finite():
    raw = b'{"sensor_id":"x","ts":"%s","big":%s,"temperature":21}' % (
        ISO.encode(), b"9" * 5000)
    result = CONTRACT.parse(raw, NOW)
    assert [r.metrics for r in result.readings] == [{"temperature": 21.0}]
    assert [(x.reason, x.metric) for x in result.rejections] == [
        (Reason.VALUE_NOT_FINITE, "big")]
    assert "5000 digits" in result.rejections[0].message
    negative = CONTRACT.parse(b'{"sensor_id":"x","ts":"%s","metrics":{"m":-%s}}' % (
        ISO.encode(), b"1" * 5000), NOW)
    assert [x.reason for x in negative.rejections] == [Reason.VALUE_NOT_FINITE]
    as_id = CONTRACT.parse(b'{"sensor_id":%s,"ts":"%s","t":1}' % (b"7" * 5000, ISO.encode()),
                           NOW)
    assert [x.reason for x in as_id.rejections] == [Reason.INVALID_ID]


def test_a_boolean_wide_value_is_value_not_number_and_the_others_go_on():
    result = parse({"sensor_id": "x", "ts": ISO, "on": True, "temperature": 21})
    assert [r.metrics for r in result.readings] == [{"temperature": 21.0}]
    assert [(x.reason, x.metric) for x in result.rejections] == [
        (Reason.VALUE_NOT_NUMBER, "on")]
    assert only_rejection({"sensor_id": "x", "ts": ISO, "on": False}).reason == (
        Reason.VALUE_NOT_NUMBER)
    declared = Contract(attribute_fields=frozenset({"on"}))
    kept = declared.parse(orjson.dumps({"sensor_id": "x", "ts": ISO, "on": True, "t": 1}), NOW)
    assert [r.attributes for r in kept.readings] == [{"on": True}]
    long = only_reading({"sensor_id": "x", "ts": ISO, "metric": "t", "value": 1, "on": True})
    assert long.attributes == {"on": True}


def test_a_5_megabyte_non_json_original_is_cut_and_the_message_says_so():
    raw = b"not json " + b"z" * 5_000_000
    rejection = CONTRACT.parse(raw, NOW).rejections[0]
    assert rejection.reason == Reason.NOT_JSON
    value, headers = dead_letter(rejection, raw, Source("in", 0, 9), NOW)
    assert len(value) <= MAX_RECORD_BYTES
    record = orjson.loads(value)
    kept = base64.b64decode(record["original"])
    assert raw.startswith(kept) and len(kept) > 3_000_000
    assert record["original_truncated"] is True and record["original_size"] == len(raw)
    assert (f"original cut to {len(kept)} of {len(raw)} bytes: a dead-letter record is "
            f"limited to {MAX_RECORD_BYTES} bytes") in record["message"]
    assert dict(headers)["sensorstream-message"].decode() == record["message"]


def test_an_original_of_escapes_fits_whole_as_base64():
    raw = b'"' + b"\x01" * 600_000  # 6 bytes a character as JSON text, 1.33 as base64
    rejection = CONTRACT.parse(raw, NOW).rejections[0]
    record = orjson.loads(dead_letter(rejection, raw, Source("in", 0, 9), NOW,
                                      max_bytes=1_000_000)[0])
    assert record["original_truncated"] is False
    assert base64.b64decode(record["original"]) == raw
    assert "cut" not in record["message"]


@pytest.mark.parametrize("text", ["quote \ud800 lone", "nul \x00 byte", "x" * 100_000, 17])
def test_dead_letter_never_raises_on_any_message_text(text):
    from app.contract import Rejection

    rejection = Rejection(Reason.NOT_JSON, text, 3, "s\udfff", "m\x00")
    value, headers = dead_letter(rejection, b"\xff", Source("in", 0, 1), NOW)
    record = orjson.loads(value)
    assert len(record["message"]) <= 2000
    assert record["sensor_id"] == "s\\udfff"
    assert all(isinstance(v, bytes) for _k, v in headers)
    assert dict(headers)["sensorstream-message"].decode() == record["message"]


@pytest.mark.parametrize("slow", [b"", b',"nan":NaN'])
def test_integers_past_64_bits_are_floats_from_either_decoder(slow):
    raw = _wide(b'"x":[123456789012345678901234567890,18446744073709551615,-9223372036854775808]'
                + slow)
    reading = CONTRACT.parse(raw, NOW).readings[0]
    assert reading.attributes == {
        "x": [1.2345678901234568e+29, 18446744073709551615, -9223372036854775808]}
    assert type(reading.attributes["x"][1]) is int


def test_many_shallow_arrays_are_carried_and_the_walk_agrees_with_the_fast_check():
    # 50 arrays: too many brackets for the byte scan to clear, so the walk decides.
    doc = {"sensor_id": "x", "ts": ISO, "t": 1, "tags": [[i, str(i)] for i in range(50)]}
    assert only_reading(doc).attributes == {"tags": doc["tags"]}
    lenient = CONTRACT.parse(orjson.dumps(doc)[:-1] + b',"nan":NaN}', NOW)
    assert lenient.readings[0].attributes == {"tags": doc["tags"]}
    assert [x.reason for x in lenient.rejections] == [Reason.VALUE_NOT_FINITE]


def test_the_largest_reading_the_contract_accepts_fits_one_hand_over():
    from app.contract import MAX_METRIC_LENGTH

    metrics = {f"{i:04d}" + "m" * (MAX_METRIC_LENGTH - 4): -1.2345678901234567e-300
               for i in range(MAX_METRICS)}
    attributes = {"a": "\x01" * ((MAX_ATTRIBUTES_BYTES - 20) // 6)}
    doc = {"sensor_id": "s" * 256, "ts": ISO, "metrics": metrics, **attributes}
    reading = only_reading(doc)
    values = list(encode_batches([(reading, Source("in", 0, 1), NOW)] * 2))
    assert len(values) == 1 and len(values[0]) < MAX_RECORD_BYTES // 4
