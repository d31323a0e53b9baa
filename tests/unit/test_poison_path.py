"""The whole path a reading takes, searched for the next poison message (issue 18).

Arbitrary messages -- any JSON shape of the contract, deep nesting, any Unicode with
NUL and lone surrogates, huge integers, floats and strings, raw bytes -- go through
what the ingest stage and the sinks do with them, without Faust or the stores:
``Contract.parse`` -> ``encode_batches`` -> ``decode_batch`` -> the readings' row
builder (``ROWS_OF``) -> PostgreSQL's staging records and Parquet; every rejection
-> ``dead_letter``. Nothing may raise; an accepted reading comes out of every step as
it went in; every other reading is a rejection with a reason; and the stores would
take every row (no NUL, valid UTF-8, ``jsonb``-able attributes). Bounded, derandomized
examples: CI and a developer's run take the same seconds.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.contract import (
    MAX_DEPTH,
    MAX_RECORD_BYTES,
    Contract,
    Parsed,
    Reason,
    Source,
    dead_letter,
    decode_batch,
    encode_batches,
)
from sinks.lake import COMPRESSION, COMPRESSION_LEVEL
from sinks.postgres import _stage_records
from sinks.records import READINGS, ROWS_OF, to_table

NOW = 1_763_000_000_000_000
SOURCE = Source("sensor-readings", 2, 41, 1_763_000_000_000)
CONTRACT = Contract(limits={"humidity": (0.0, 100.0)}, max_future_us=300_000_000,
                    attribute_fields=frozenset({"location", "unit", "on"}))
INT64 = (-(2**63), 2**63 - 1)

POISON = settings(derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.large_base_example])


@dataclass(frozen=True)
class Literal:
    """A number written as given (5,000 digits, 1e400, NaN): what a lenient producer sends."""

    text: str


# -- message generation ------------------------------------------------------------------------

_NASTY = ["\x00", "\ud800", "\udfff", "\ud83d", "bad\x00byte", "\\u0000", "é", "🙂", "\u2028",
          "\x01", '"', "\\"]
chars = st.one_of(st.characters(), st.sampled_from([c for c in _NASTY if len(c) == 1]))
texts = st.one_of(st.text(chars, max_size=12), st.sampled_from(_NASTY))
#: Around and over the 64 KiB of attributes (escapes count 6 bytes), now and then.
huge_texts = st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "\x01", "\x00"]),
                       st.sampled_from([11_000, 70_000, 200_000]))
literals = st.builds(Literal, st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400",
                     "18446744073709551616", "-9223372036854775809"]),
    st.builds(lambda d, n: d * n, st.sampled_from(["9", "1"]),
              st.sampled_from([19, 20, 25, 400, 4_301, 5_000])),
    st.builds(lambda d, n: "-" + d * n, st.sampled_from(["9"]), st.sampled_from([30, 5_000])),
))
numbers = st.one_of(st.integers(), st.integers(-(2**70), 2**70), st.floats(), literals)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, texts, texts, huge_texts)
FIELDS = ["sensor_id", "device_id", "mote_id", "asset_id", "ts", "timestamp", "event_time",
          "time", "metric", "sensor_type", "value", "metrics", "readings", "temperature",
          "humidity", "location", "unit", "on", "note"]
keys = st.one_of(st.sampled_from(FIELDS), texts)


def _nest(leaf: Any, depth: int, kind: str) -> Any:
    for i in range(depth):
        leaf = [leaf] if kind == "list" or (kind == "mixed" and i % 2) else {"k": leaf}
    return leaf


values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(keys, children, max_size=5)),
    max_leaves=12,
) | st.builds(_nest, scalars, st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1,
                                                254, 300, 1_100]),
              st.sampled_from(["list", "dict", "mixed"]))

ids = st.one_of(st.sampled_from(["s-1", "mote 7", "é-sensor", 7, 7.0, "x" * 256, "x" * 257,
                                 True, None, "", "a\x00b", "\ud800"]), texts, numbers)
times = st.one_of(st.sampled_from(["2025-11-13T02:12:20Z", "2025-11-13 02:12:20.5",
                                   1_762_999_940, 1_762_999_940_000, 1_762_999_940.25,
                                   1_762_999_940_000_000_000, "1762999940", "1" * 5_000,
                                   "0" * 5_000 + "1762999940", -1, "noon"]),
                  numbers, texts)
metric_values = st.one_of(st.floats(-1e6, 1e6), st.integers(-1000, 1000), st.just(21.5),
                          numbers, st.booleans(), st.none(), texts)
#: What an ordinary gateway sends, so that most examples carry rows to check.
sane_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(
        allow_nan=False, allow_infinity=False), st.text(st.characters(), max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=4), children, max_size=3)),
    max_leaves=6)
attributes = st.one_of(
    st.just({}),
    st.dictionaries(st.sampled_from(["location", "unit", "gateway", "firmware", "on"]),
                    sane_values, max_size=3),
    st.dictionaries(keys, values, max_size=3),  # now and then poison
)


@st.composite
def readings(draw: st.DrawFn) -> dict[Any, Any]:
    """One reading object in any shape of the contract, mostly usable, with or without
    poison."""
    doc: dict[Any, Any] = {}
    usually = st.sampled_from([True, True, True, False])
    if draw(usually):
        doc[draw(st.sampled_from(FIELDS[:4]))] = draw(
            st.one_of(st.sampled_from(["s-1", "mote 7", 7]), st.just("s-2"), ids))
    if draw(usually):
        doc[draw(st.sampled_from(FIELDS[4:8]))] = draw(
            st.one_of(st.sampled_from(["2025-11-13T02:12:20Z", 1_762_999_940]),
                      st.just(1_762_999_941_500), times))
    shape = draw(st.sampled_from(["wide", "long", "metrics"]))
    if shape == "wide":
        for name in draw(st.lists(st.one_of(st.sampled_from(["temperature", "humidity", "on"]),
                                            texts), min_size=draw(usually), max_size=4)):
            doc[name] = draw(metric_values)
    elif shape == "long":
        doc[draw(st.sampled_from(["metric", "sensor_type"]))] = draw(
            st.one_of(st.sampled_from(["temperature", "Humidity"]), texts, numbers))
        if draw(usually):
            doc["value"] = draw(metric_values)
    else:
        doc["metrics"] = draw(st.one_of(
            st.dictionaries(st.one_of(st.sampled_from(["t", "Humidity"]), texts),
                            metric_values, min_size=1, max_size=4), values))
    doc.update(draw(attributes))
    return doc


@st.composite
def good_readings(draw: st.DrawFn) -> dict[Any, Any]:
    """A usable reading in one of the shapes, with at most one field set to anything
    (poison alone, so that what rejects it is that field)."""
    doc: dict[Any, Any] = {
        draw(st.sampled_from(FIELDS[:4])): draw(st.sampled_from(["s-1", "mote 7", 7, "é"])),
        draw(st.sampled_from(FIELDS[4:8])): draw(st.sampled_from(
            ["2025-11-13T02:12:20Z", 1_762_999_940, 1_762_999_941_500, "1762999942"]))}
    metric_names = st.sampled_from(["temperature", "humidity", "light", "Co2 ppm"])
    shape = draw(st.sampled_from(["wide", "long", "metrics"]))
    if shape == "long":
        doc.update(metric=draw(metric_names), value=draw(st.floats(0, 100)))
    else:
        metrics = draw(st.dictionaries(metric_names, st.one_of(
            st.floats(0, 100), st.integers(0, 100), st.none()), min_size=1, max_size=3))
        doc.update(metrics if shape == "wide" else {"metrics": metrics})
    doc.update(draw(attributes))
    if draw(st.booleans()):
        doc[draw(keys)] = draw(st.one_of(values, huge_texts, ids, times))
    return doc


@st.composite
def documents(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["reading", "reading", "reading", "array", "envelope", "any"]))
    if shape == "reading":
        return draw(st.one_of(good_readings(), readings()))
    items = st.lists(st.one_of(good_readings(), good_readings(), readings(), values),
                     max_size=4)
    if shape == "array":
        return draw(items)
    if shape == "envelope":
        defaults = draw(st.dictionaries(keys, st.one_of(values, ids, times), max_size=3))
        defaults.pop("readings", None)
        return {**defaults, "readings": draw(st.one_of(items, values))}
    return draw(values)


def _escape(text: str) -> str:
    """A JSON string written by hand: every non-ASCII or control character as ``\\uXXXX``
    (surrogates one by one, so a lone one reaches the decoder as an escape)."""
    return json.dumps(text)  # ensure_ascii: the standard library writes exactly that


def hand_json(doc: Any) -> str:
    """JSON as a lenient producer writes it: NaN, Infinity, huge literals, escapes."""
    parts: list[str] = []
    stack: list[Any] = [doc]
    while stack:  # iterative: documents nest past Python's recursion limit
        item = stack.pop()
        if isinstance(item, tuple) and item and item[0] is _RAW:
            parts.append(item[1])
        elif isinstance(item, Literal):
            parts.append(item.text)
        elif item is None or isinstance(item, bool):
            parts.append({None: "null", True: "true", False: "false"}[item])
        elif isinstance(item, int):
            parts.append(str(item))
        elif isinstance(item, float):
            parts.append("NaN" if math.isnan(item) else "Infinity" if item == math.inf
                         else "-Infinity" if item == -math.inf else repr(item))
        elif isinstance(item, str):
            parts.append(_escape(item))
        elif isinstance(item, list):
            todo: list[Any] = [(_RAW, "[")]
            for i, member in enumerate(item):
                todo += [(_RAW, ",")] * bool(i) + [member]
            stack.extend(reversed([*todo, (_RAW, "]")]))
        else:
            todo = [(_RAW, "{")]
            for i, (key, member) in enumerate(item.items()):
                todo += [(_RAW, ("," if i else "") + _escape(str(key)) + ":"), member]
            stack.extend(reversed([*todo, (_RAW, "}")]))
    return "".join(parts)


_RAW = object()


def _orjson_doc(doc: Any) -> Any:
    """``doc`` with its literals as the numbers orjson writes (it cannot write NaN)."""
    if isinstance(doc, Literal):
        try:
            return int(doc.text) if doc.text.lstrip("-").isdigit() else float(doc.text)
        except ValueError:
            return None
    if isinstance(doc, list):
        return [_orjson_doc(x) for x in doc]
    if isinstance(doc, dict):
        return {k: _orjson_doc(v) for k, v in doc.items()}
    return doc


def encode(doc: Any, by_hand: bool) -> bytes:
    """``doc`` written by hand, or by orjson where orjson can write it."""
    if not by_hand:
        try:
            return orjson.dumps(_orjson_doc(doc))
        except (orjson.JSONEncodeError, RecursionError):
            pass  # lone surrogates, ints past 64 bits, nesting past 254: by hand then
    return hand_json(doc).encode("utf-8")


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Message bytes: a document written by orjson or by hand, or raw bytes."""
    how = draw(st.sampled_from(["orjson", "hand", "hand", "bytes"]))
    if how == "bytes":
        return draw(st.one_of(st.binary(max_size=200),
                              st.builds(lambda b: b"{" + b, st.binary(max_size=50))))
    return encode(draw(documents()), how == "hand")


# -- the path ----------------------------------------------------------------------------------


def _texts(doc: Any) -> list[str]:
    found, stack = [], [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _postgres_text(text: str | None) -> None:
    """What PostgreSQL's text takes: no NUL, valid UTF-8 (asyncpg encodes as UTF-8)."""
    if text is not None:
        assert "\x00" not in text
        text.encode("utf-8")


def _depth(doc: Any) -> int:
    deepest, stack = 0, [(doc, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict | list):
            stack.extend((x, depth + 1) for x in (
                item.values() if isinstance(item, dict) else item))
    return deepest


def through_the_path(raw: bytes) -> Parsed:
    """Every step of ``raw``'s path, with what each step must keep."""
    parsed = CONTRACT.parse(raw, NOW)
    assert parsed.count_in == parsed.rows + len(parsed.rejections)

    for rejection in parsed.rejections:
        assert isinstance(rejection.reason, Reason) and rejection.message
        value, headers = dead_letter(rejection, raw, SOURCE, NOW)
        assert len(value) <= MAX_RECORD_BYTES
        record = orjson.loads(value)
        assert record["reason"] == rejection.reason.value
        original = record["original"]
        if record["original_encoding"] == "utf-8":
            assert original.encode("utf-8") == raw
        elif record["original_truncated"]:
            assert raw.startswith(base64.b64decode(original))
            assert "original cut to" in record["message"]
        else:
            assert base64.b64decode(original) == raw
        assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)

    items = [(reading, SOURCE, NOW) for reading in parsed.readings]
    handovers = list(encode_batches(items, watermarks={SOURCE.input_partition: NOW}))
    assert all(len(v) <= MAX_RECORD_BYTES for v in handovers)
    back = [row for v in handovers for row in decode_batch(v).rows]
    assert back == [(r, Source(SOURCE.topic, SOURCE.partition, SOURCE.offset), at)
                    for r, _s, at in items]

    rows = [row for v in handovers for row in ROWS_OF[READINGS.name](v, 2, 41)]
    expected = [(r.ts, r.sensor_id, metric, value, r.attributes or None)
                for r in parsed.readings for metric, value in r.metrics.items()]
    assert len(rows) == parsed.rows == len(expected)
    for row, (ts, sensor_id, metric, value, attributes) in zip(rows, expected, strict=True):
        assert row[:4] == (ts, sensor_id, metric, value)
        assert (None if row[4] is None else orjson.loads(row[4])) == attributes
        assert row[5:] == (SOURCE.topic, SOURCE.partition, SOURCE.offset)

    for record in _stage_records(READINGS, rows):
        _order, time_us, sensor_id, metric, value, attributes = record
        assert INT64[0] <= time_us <= INT64[1]
        assert value is None or math.isfinite(value)
        for text in (sensor_id, metric, attributes):
            _postgres_text(text)
        if attributes is not None:  # the move casts it to jsonb: no NUL in any string
            doc = orjson.loads(attributes)
            for text in _texts(doc):
                _postgres_text(text)
            assert _depth(doc) <= MAX_DEPTH + 1

    table = to_table(READINGS, rows)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL)
    assert pq.read_table(io.BytesIO(buffer.getvalue())).to_pylist() == table.to_pylist()
    return parsed


@settings(POISON, max_examples=250)
@given(messages())
def test_any_message_is_carried_intact_or_dead_lettered(raw):
    through_the_path(raw)


@settings(POISON, max_examples=150)
@given(st.lists(st.one_of(good_readings(), readings()), min_size=1, max_size=4), st.booleans())
def test_every_reading_of_an_envelope_is_a_row_or_a_rejection(docs, by_hand):
    parsed = through_the_path(encode(docs, by_hand))
    whole = [x for x in parsed.rejections if x.index is None]
    if whole:  # JSON nested past what any decoder reads (1,024): the message is one reading
        assert [x.reason for x in parsed.rejections] == [Reason.NOT_JSON]
        assert parsed.readings == []
        return
    # One reading object is at least one row or rejection, never silently nothing.
    assert parsed.count_in >= len(docs)
    assert all(x.index in range(len(docs)) for x in parsed.rejections)


def test_the_generators_reach_the_poison_of_issue_18():
    """The search finds what the issue found: each payload is rejected for its reason."""
    hits = {}
    for extra, reason in [
        (Literal("[" * 300 + "]" * 300), Reason.TOO_DEEP),
        ("\ud800", Reason.INVALID_TEXT),
        ("bad\x00byte", Reason.INVALID_TEXT),
        ("a" * 5_000_000, Reason.TOO_LARGE),
    ]:
        doc = {"sensor_id": "x", "ts": "2025-11-13T02:12:20Z", "temperature": 21, "x": extra}
        parsed = through_the_path(hand_json(doc).encode())
        hits[reason] = [x.reason for x in parsed.rejections]
    assert hits == {reason: [reason] for reason in hits}
    ts = through_the_path(hand_json({"sensor_id": "x", "ts": "1" * 5_000, "t": 1}).encode())
    assert [x.reason for x in ts.rejections] == [Reason.INVALID_TIME]
    big = through_the_path(hand_json({"sensor_id": "x", "ts": "2025-11-13T02:12:20Z", "t": 1,
                                      "big": Literal("9" * 5_000)}).encode())
    assert [x.reason for x in big.rejections] == [Reason.VALUE_NOT_FINITE]
    assert big.rows == 1
