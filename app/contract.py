"""The data contract, version 1: the bytes of one Kafka message become readings or rejections.

Plain Python, no Faust: the agents, the simulator, the loader and the tests all
use this module, so what is accepted is decided in exactly one place.

Accounting unit: a *reading* is one canonical row ``(sensor_id, metric, ts)``.
Input that cannot be split into rows -- a message that is not JSON, a reading
object without a usable id or time -- counts as one reading, rejected whole.
So for every message: ``count_in == rows accepted for checking + rejections``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

CONTRACT_VERSION = 1
#: Largest record the service writes (dead letters, hand-over batches): room for the
#: largest input message Kafka accepts by default (1 MB), base64-encoded, and more.
MAX_RECORD_BYTES = 4 * 1024 * 1024

ID_FIELDS = ("sensor_id", "device_id", "mote_id", "asset_id")
TIME_FIELDS = ("timestamp", "ts", "event_time", "time")
METRIC_NAME_FIELDS = ("metric", "sensor_type")
ENVELOPE_FIELD = "readings"
METRICS_FIELD = "metrics"
VALUE_FIELD = "value"

MAX_ID_LENGTH = 256
#: Longest metric name (after normalising): it is part of PostgreSQL's primary key.
MAX_METRIC_LENGTH = 256
#: Most metrics one reading may carry, so that one reading always fits a hand-over.
MAX_METRICS = 1000
#: Deepest nesting of arrays and objects inside one attribute value (``{"a": [[1]]}``
#: is 2). orjson refuses to encode more than 254 levels; PostgreSQL's jsonb and every
#: reader of the lake cope with this many.
MAX_DEPTH = 32
#: Largest attributes of one reading, as the hand-over encodes them (JSON, UTF-8): a
#: reading's hand-over never comes near the producer's limit (``MAX_RECORD_BYTES``).
MAX_ATTRIBUTES_BYTES = 64 * 1024
#: Longest ``message`` a dead-letter record carries (a store's error can be long).
MAX_MESSAGE_CHARS = 2000
#: Largest time accepted: the end of year 9999, in microseconds since the epoch.
MAX_TS_US = 253_402_300_799_999_999
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMERIC = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_METRIC_CHARS = re.compile(r"[^a-z0-9_]+")


class Reason(StrEnum):
    """Why a reading was dead-lettered; the code travels in the record and its headers."""

    NOT_JSON = "not_json"
    BAD_SHAPE = "bad_shape"
    MISSING_ID = "missing_id"
    INVALID_ID = "invalid_id"
    MISSING_TIME = "missing_time"
    INVALID_TIME = "invalid_time"
    FUTURE_TIME = "future_time"
    NO_METRICS = "no_metrics"
    INVALID_METRIC = "invalid_metric"
    DUPLICATE_METRIC = "duplicate_metric"
    MISSING_VALUE = "missing_value"
    VALUE_NOT_NUMBER = "value_not_number"
    VALUE_NOT_FINITE = "value_not_finite"
    OUT_OF_RANGE = "out_of_range"
    INVALID_TEXT = "invalid_text"
    INVALID_NUMBER = "invalid_number"
    TOO_DEEP = "too_deep"
    TOO_LARGE = "too_large"


@dataclass(slots=True)
class Reading:
    """One sensor at one time with one or more metrics; each metric is one canonical row."""

    sensor_id: str
    ts: int  #: microseconds since the epoch, UTC
    metrics: dict[str, float | None]
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Rejection:
    """One dead-lettered reading: a reason code and a message a human can act on."""

    reason: Reason
    message: str
    index: int | None = None  #: position in the envelope, None for a single reading
    sensor_id: str | None = None
    metric: str | None = None


@dataclass(slots=True)
class Parsed:
    readings: list[Reading]
    rejections: list[Rejection]

    @property
    def rows(self) -> int:
        return sum(len(r.metrics) for r in self.readings)

    @property
    def count_in(self) -> int:
        """Readings this message counts as received: rows plus rejections."""
        return self.rows + len(self.rejections)


def now_us() -> int:
    return time.time_ns() // 1000


def normalise_metric(name: str) -> str:
    """Lower-case snake: ``"Temperature"`` and ``" temperature "`` are one metric."""
    return _METRIC_CHARS.sub("_", name.strip().lower()).strip("_")


def parse_time(value: Any) -> int | None:
    """Microseconds since the epoch, or None when ``value`` is not a usable time.

    ISO-8601 strings without a zone are UTC. Epoch numbers (or numeric strings)
    are seconds, milliseconds, microseconds or nanoseconds by magnitude:
    below 1e11 seconds, below 1e14 ms, below 1e17 us, else ns.
    """
    try:
        return _parse_time(value)
    except (ValueError, OverflowError):  # documented never to raise: not a usable time
        return None


def _parse_time(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if _NUMERIC.fullmatch(text):
            digits = text.lstrip("+-")
            if not digits.isdigit():
                value = float(text)
            else:
                significant = digits.lstrip("0") or "0"
                if len(significant) > 22:
                    return None  # past the year 9999 in any unit (and int()'s digit limit)
                value = -int(significant) if text.startswith("-") else int(significant)
        else:
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                return None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts = (dt - _EPOCH) // timedelta(microseconds=1)
            return ts if 0 <= ts <= MAX_TS_US else None
    if isinstance(value, int):
        magnitude = abs(value)
        if magnitude < 10**11:
            ts = value * 1_000_000
        elif magnitude < 10**14:
            ts = value * 1_000
        elif magnitude < 10**17:
            ts = value
        else:
            ts = value // 1_000
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        magnitude = abs(value)
        scale = 1e6 if magnitude < 1e11 else 1e3 if magnitude < 1e14 else 1.0
        ts = round(value * scale) if magnitude < 1e17 else round(value / 1e3)
    else:
        return None
    return ts if 0 <= ts <= MAX_TS_US else None


def format_ts(ts_us: int) -> str:
    """ISO-8601 UTC with microseconds, as every output of the service writes times."""
    return (_EPOCH + timedelta(microseconds=ts_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode(value: bytes | None) -> tuple[Any, Rejection | None, bool]:
    """The document, or why there is none, and whether the lenient decoder read it (then
    it may hold NaN, infinities and lone surrogates)."""
    if not value:
        return None, Rejection(Reason.NOT_JSON, "empty message value"), False
    try:
        return orjson.loads(value), None, False
    except orjson.JSONDecodeError as fast_error:
        # Only the slow path accepts NaN/Infinity and huge numbers, so that such
        # values are rejected per metric instead of the whole message.
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, Rejection(
                Reason.NOT_JSON, f"not UTF-8: {exc.reason} at byte {exc.start}"), False
        try:
            return json.loads(text, parse_int=_parse_int), None, True
        except (ValueError, RecursionError):
            return None, Rejection(Reason.NOT_JSON, f"not JSON: {fast_error}"), False
    except RecursionError:
        return None, Rejection(Reason.NOT_JSON, "not JSON: nested too deeply"), False


class _LongInteger(float):
    """An integer literal too large for a double (orjson refuses it; ``int()`` refuses
    over 4,300 digits): an infinite float that says what it was, so a metric holding one
    is ``value_not_finite`` alone instead of the whole message being ``not_json``."""

    __slots__ = ("digits",)

    def __new__(cls, text: str) -> _LongInteger:
        number = super().__new__(cls, "-inf" if text.startswith("-") else "inf")
        number.digits = len(text.lstrip("+-"))
        return number

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(text: str) -> int | float:
    """An integer literal as orjson reads it, so both decoders give the same values: an
    int within 64 bits, else a float (infinite, a ``_LongInteger``, past a double)."""
    if len(text) < 19:
        return int(text)
    if len(text) < 22 and _INT_MIN <= (number := int(text)) < _INT_END:
        return number
    number = float(text)
    return number if math.isfinite(number) else _LongInteger(text)


def _first_present(doc: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in names:
        value = doc.get(name)
        if value is not None:
            return name, value
    return None, None


def _sensor_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= MAX_ID_LENGTH else None
    if isinstance(value, str):
        text = value.strip()
        if 0 < len(text) <= MAX_ID_LENGTH and text.isprintable():
            return text
    return None


def _brief(value: Any, limit: int = 60) -> str:
    """A short quote of ``value`` for a message: ``repr`` escapes NUL and surrogates."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad_text(text: str) -> bool:
    """NUL (PostgreSQL's text and jsonb refuse it) or a lone surrogate (not UTF-8: the
    hand-over's encoder refuses it). An ASCII string is checked by one ``in``."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_INT_MIN, _INT_END = -(2**63), 2**64  # what the hand-over's JSON encoder (orjson) carries


def _value_problem(value: Any) -> str | None:
    """What a scalar attribute value cannot carry, or None (containers are walked)."""
    if isinstance(value, str):
        if "\x00" in value or (not value.isascii() and bad_text(value)):
            return "holds a NUL character or a lone surrogate, which the stores cannot keep"
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"holds {_brief(value)}, which JSON cannot carry"
    if isinstance(value, int):
        return None if _INT_MIN <= value < _INT_END else (
            "holds an integer outside 64 bits, which the hand-over cannot carry")
    return f"holds a {type(value).__name__}, not JSON"


def _attributes_problem(attributes: dict[str, Any], lenient: bool) -> tuple[Reason, str] | None:
    """Why the hand-over or a store could not carry these attributes, or None.

    The hot path is one ``orjson.dumps``, as the hand-over will do it: it refuses lone
    surrogates, integers past 64 bits and nesting past 254, and gives the exact size.
    Then two byte scans: no ``\\u0000`` escape (NUL) and few enough brackets that no
    value can nest past ``MAX_DEPTH``. Only what those cannot clear is walked. Values
    from the lenient decoder (``lenient``) may hold NaN, which orjson writes as null
    without a word: those are always walked.
    """
    try:
        encoded = orjson.dumps(attributes)
    except orjson.JSONEncodeError:
        return _walk_attributes(attributes) or (
            Reason.INVALID_NUMBER, "attributes the JSON encoder refuses")
    if len(encoded) > MAX_ATTRIBUTES_BYTES:
        return Reason.TOO_LARGE, (
            f"attributes of {len(encoded)} bytes, more than {MAX_ATTRIBUTES_BYTES}")
    if (not lenient and b"\\u0000" not in encoded
            and encoded.count(b"[") + encoded.count(b"{") <= MAX_DEPTH + 1):
        return None
    return _walk_attributes(attributes)


def _walk_attributes(attributes: dict[str, Any]) -> tuple[Reason, str] | None:
    """``_attributes_problem`` the slow and certain way: one walk over every key and value
    at every depth (iterative: no recursion limit). A lower bound of the encoded size
    (characters) stops it early on a huge attribute; the exact size is measured only when
    an upper bound says it could be near ``MAX_ATTRIBUTES_BYTES``.
    """
    chars = 2 * len(attributes)  #: a lower bound of the encoded size
    items = len(attributes)
    for name, value in attributes.items():
        chars += len(name)
        if "\x00" in name or (not name.isascii() and bad_text(name)):
            return Reason.INVALID_TEXT, (
                f"attribute {_brief(name)}: its name holds a NUL character or a lone "
                "surrogate, which the stores cannot keep")
        if isinstance(value, str):
            chars += len(value)
            if chars > MAX_ATTRIBUTES_BYTES:
                return Reason.TOO_LARGE, f"attributes of more than {MAX_ATTRIBUTES_BYTES} bytes"
        if not isinstance(value, dict | list):
            problem = _value_problem(value)
            if problem is not None:
                reason = Reason.INVALID_TEXT if isinstance(value, str) else Reason.INVALID_NUMBER
                return reason, f"attribute {_brief(name)} {problem}"
            continue
        stack: list[tuple[Any, int]] = [(value, 1)]
        while stack:
            container, depth = stack.pop()
            items += len(container)
            chars += 2 * len(container)
            if isinstance(container, dict):
                for key in container:
                    chars += len(key)
                    if "\x00" in key or (not key.isascii() and bad_text(key)):
                        return Reason.INVALID_TEXT, (
                            f"attribute {_brief(name)} has a key holding a NUL character or "
                            "a lone surrogate, which the stores cannot keep")
                members = container.values()
            else:
                members = container
            for member in members:
                if isinstance(member, dict | list):
                    if depth >= MAX_DEPTH:
                        return Reason.TOO_DEEP, (
                            f"attribute {_brief(name)} nests arrays or objects more than "
                            f"{MAX_DEPTH} levels deep")
                    stack.append((member, depth + 1))
                    continue
                if isinstance(member, str):
                    chars += len(member)
                    if chars > MAX_ATTRIBUTES_BYTES:
                        break
                problem = _value_problem(member)
                if problem is not None:
                    reason = (Reason.INVALID_TEXT if isinstance(member, str)
                              else Reason.INVALID_NUMBER)
                    return reason, f"attribute {_brief(name)} {problem}"
            if chars > MAX_ATTRIBUTES_BYTES:
                return Reason.TOO_LARGE, f"attributes of more than {MAX_ATTRIBUTES_BYTES} bytes"
    # At most 6 bytes a character (an escape), 30 an item (number, quotes, separators).
    if 6 * chars + 30 * items > MAX_ATTRIBUTES_BYTES:
        size = len(orjson.dumps(attributes))
        if size > MAX_ATTRIBUTES_BYTES:
            return Reason.TOO_LARGE, (
                f"attributes of {size} bytes, more than {MAX_ATTRIBUTES_BYTES}")
    return None


@dataclass(frozen=True)
class Contract:
    """Validation rules that come from settings: physical limits, future bound, attributes."""

    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    max_future_us: int = 300_000_000
    attribute_fields: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Any) -> Contract:
        return cls(
            limits=dict(settings.physical_limits),
            max_future_us=int(settings.max_future * 1_000_000),
            attribute_fields=frozenset(settings.attribute_fields),
        )

    def parse(self, value: bytes | None, now: int | None = None) -> Parsed:
        """Readings and rejections in one message. Never raises for any input bytes."""
        doc, rejection, lenient = _decode(value)
        if rejection is not None:
            return Parsed([], [rejection])
        now = now_us() if now is None else now
        readings: list[Reading] = []
        rejections: list[Rejection] = []
        if isinstance(doc, list):
            items, defaults, single = doc, None, False
        elif isinstance(doc, dict) and ENVELOPE_FIELD in doc:
            items = doc[ENVELOPE_FIELD]
            if not isinstance(items, list):
                return Parsed([], [Rejection(
                    Reason.BAD_SHAPE, f"envelope field {ENVELOPE_FIELD!r} must be a list")])
            defaults = {k: v for k, v in doc.items() if k != ENVELOPE_FIELD}
            single = False
        elif isinstance(doc, dict):
            items, defaults, single = [doc], None, True
        else:
            return Parsed([], [Rejection(
                Reason.BAD_SHAPE, f"expected a JSON object or array, got {type(doc).__name__}")])
        for position, item in enumerate(items):
            index = None if single else position
            if not isinstance(item, dict):
                rejections.append(Rejection(
                    Reason.BAD_SHAPE, f"reading must be a JSON object, got {type(item).__name__}",
                    index))
                continue
            if defaults:
                item = {**defaults, **item}
            self._parse_reading(item, index, now, readings, rejections, lenient)
        return Parsed(readings, rejections)

    def _parse_reading(self, doc: dict[str, Any], index: int | None, now: int,
                       readings: list[Reading], rejections: list[Rejection],
                       lenient: bool = True) -> None:
        id_field, raw_id = _first_present(doc, ID_FIELDS)
        if id_field is None:
            rejections.append(Rejection(
                Reason.MISSING_ID, f"no sensor id in any of {', '.join(ID_FIELDS)}", index))
            return
        sensor_id = _sensor_id(raw_id)
        if sensor_id is None:
            rejections.append(Rejection(
                Reason.INVALID_ID, f"{id_field}={_brief(raw_id)} is not a usable id "
                f"(a non-empty string of at most {MAX_ID_LENGTH} printable characters, "
                "or an integer)", index))
            return
        time_field, raw_time = _first_present(doc, TIME_FIELDS)
        if time_field is None:
            rejections.append(Rejection(
                Reason.MISSING_TIME, f"no time in any of {', '.join(TIME_FIELDS)}", index,
                sensor_id))
            return
        ts = parse_time(raw_time)
        if ts is None:
            rejections.append(Rejection(
                Reason.INVALID_TIME, f"{time_field}={_brief(raw_time)} is neither ISO-8601 "
                "nor an epoch number after 1970", index, sensor_id))
            return
        if ts > now + self.max_future_us:
            rejections.append(Rejection(
                Reason.FUTURE_TIME, f"{time_field}={format_ts(ts)} is more than "
                f"{self.max_future_us / 1e6:g} s ahead of the wall clock", index, sensor_id))
            return

        metrics: dict[str, float | None] = {}
        attributes: dict[str, Any] = {}
        found_metric = False
        name_field, raw_name = _first_present(doc, METRIC_NAME_FIELDS)
        long_form = name_field is not None
        if long_form:
            found_metric = True
            if not isinstance(raw_name, str) or not normalise_metric(raw_name):
                rejections.append(Rejection(
                    Reason.INVALID_METRIC, f"{name_field}={_brief(raw_name)} is not a metric name",
                    index, sensor_id))
            elif VALUE_FIELD not in doc:
                rejections.append(Rejection(
                    Reason.MISSING_VALUE, f"long reading of {raw_name!r} has no {VALUE_FIELD!r}",
                    index, sensor_id, normalise_metric(raw_name)))
            else:
                self._add_metric(metrics, raw_name, doc[VALUE_FIELD], index, sensor_id,
                                 rejections)
        for key, value in doc.items():
            if key in (id_field, time_field):
                continue
            if long_form and (key == VALUE_FIELD or key in METRIC_NAME_FIELDS):
                continue
            if key == METRICS_FIELD:
                if isinstance(value, dict):
                    for name, metric_value in value.items():
                        found_metric = True
                        self._add_metric(metrics, name, metric_value, index, sensor_id,
                                         rejections)
                    continue
                if value is not None:
                    found_metric = True
                    rejections.append(Rejection(
                        Reason.BAD_SHAPE, f"{METRICS_FIELD!r} must be an object of "
                        f"metric: number, got {type(value).__name__}", index, sensor_id))
                    continue
            # A boolean is a metric value too (not a number): a flag to carry goes in
            # ATTRIBUTE_FIELDS, or in a long reading.
            is_number = value is None or isinstance(value, int | float)
            if (long_form or not is_number or key in self.attribute_fields
                    or key in ID_FIELDS or key in TIME_FIELDS or key == METRICS_FIELD):
                attributes[key] = value
                continue
            found_metric = True
            self._add_metric(metrics, key, value, index, sensor_id, rejections)
        if not found_metric:
            rejections.append(Rejection(
                Reason.NO_METRICS, "reading has no metric: no numeric field, no 'metrics' "
                "object and no 'metric'/'value' pair", index, sensor_id))
            return
        if not metrics:
            return
        if len(metrics) > MAX_METRICS:
            rejections.append(Rejection(
                Reason.TOO_LARGE, f"reading has {len(metrics)} metrics, more than "
                f"{MAX_METRICS}", index, sensor_id))
            return
        if attributes:
            problem = _attributes_problem(attributes, lenient)
            if problem is not None:
                rejections.append(Rejection(problem[0], problem[1], index, sensor_id))
                return
        readings.append(Reading(sensor_id, ts, metrics, attributes))

    def _add_metric(self, metrics: dict[str, float | None], raw_name: Any, value: Any,
                    index: int | None, sensor_id: str, rejections: list[Rejection]) -> None:
        name = normalise_metric(raw_name) if isinstance(raw_name, str) else ""
        if not name or len(name) > MAX_METRIC_LENGTH:
            rejections.append(Rejection(
                Reason.INVALID_METRIC, f"{_brief(raw_name)} is not a metric name (a string "
                f"of 1 to {MAX_METRIC_LENGTH} letters, digits or _ once normalised)", index,
                sensor_id))
            return
        if name in metrics:
            rejections.append(Rejection(
                Reason.DUPLICATE_METRIC, f"metric {name!r} appears twice in one reading",
                index, sensor_id, name))
            return
        if value is None:
            metrics[name] = None
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            rejections.append(Rejection(
                Reason.VALUE_NOT_NUMBER, f"{name}={_brief(value)} is not a number", index,
                sensor_id, name))
            return
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            rejections.append(Rejection(
                Reason.VALUE_NOT_FINITE, f"{name}={_brief(value)} is not a finite number",
                index, sensor_id, name))
            return
        bounds = self.limits.get(name)
        if bounds is not None and not bounds[0] <= number <= bounds[1]:
            rejections.append(Rejection(
                Reason.OUT_OF_RANGE, f"{name}={number:g} is outside its physical limits "
                f"[{bounds[0]:g}, {bounds[1]:g}]", index, sensor_id, name))
            return
        metrics[name] = number


# -- records the service writes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: its lineage."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None

    @property
    def input_partition(self) -> str:
        """``topic:partition``: what a watermark belongs to."""
        return f"{self.topic}:{self.partition}"


def _record_text(value: Any, limit: int = MAX_MESSAGE_CHARS) -> str | None:
    """``value`` as text any JSON encoder and Kafka header takes: at most ``limit``
    characters, a lone surrogate written as its escape (``\\ud800``)."""
    if value is None:
        return None
    text = value if type(value) is str else str(value)  # a Reason: its code
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def dead_letter(rejection: Rejection, original: bytes | None, source: Source,
                at_us: int | None = None,
                max_bytes: int = MAX_RECORD_BYTES) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The dead-letter record of one rejection: JSON value and headers (same facts in both).

    Never raises, whatever the rejection's text holds (a store's error may quote a
    lone surrogate): texts are bounded and made encodable. Only an original too large
    for ``max_bytes`` even as the sole content is cut: the record keeps the base64 of
    its first bytes, says so (``original_truncated``, ``original_size`` and the
    ``message``); the whole message stays in the source topic at the offset named.
    """
    original = original or b""
    try:
        text, encoding = original.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(original).decode("ascii"), "base64"
    message = _record_text(rejection.message) or ""
    record = {
        "contract_version": CONTRACT_VERSION,
        "reason": _record_text(rejection.reason, 100),
        "message": message,
        "source": {"topic": _record_text(source.topic, 300), "partition": source.partition,
                   "offset": source.offset, "timestamp_ms": source.timestamp_ms},
        "reading_index": rejection.index,
        "sensor_id": _record_text(rejection.sensor_id, 300),
        "metric": _record_text(rejection.metric, 300),
        "original": text,
        "original_encoding": encoding,
        "original_size": len(original),
        "original_truncated": False,
        "dead_lettered_at": format_ts(now_us() if at_us is None else at_us),
    }
    value = orjson.dumps(record)
    if len(value) > max_bytes:
        # As base64 (exact bytes, 4 characters per 3), as much as fits with the message
        # that says the original was cut.
        record["original"] = ""
        record["original_encoding"] = "base64"
        record["original_truncated"] = True
        record["message"] = (
            f"{message} (original cut to {len(original)} of {len(original)} bytes: a "
            f"dead-letter record is limited to {max_bytes} bytes; the whole message is "
            "at the source offset)")
        room = max_bytes - len(orjson.dumps(record)) - 64
        keep = min(len(original), max(0, room // 4 * 3))
        record["original_truncated"] = keep < len(original)
        record["message"] = message if keep == len(original) else (
            f"{message} (original cut to {keep} of {len(original)} bytes: a dead-letter "
            f"record is limited to {max_bytes} bytes; the whole message is at the source "
            "offset)")
        record["original"] = base64.b64encode(original[:keep]).decode("ascii")
        value = orjson.dumps(record)
    headers = [
        ("sensorstream-reason", str(record["reason"]).encode()),
        ("sensorstream-message", str(record["message"]).encode()),
        ("sensorstream-source-topic", str(record["source"]["topic"]).encode()),
        ("sensorstream-source-partition", str(source.partition).encode()),
        ("sensorstream-source-offset", str(source.offset).encode()),
        ("sensorstream-original-encoding", str(record["original_encoding"]).encode()),
    ]
    return value, headers


# -- the internal hand-over between the validating and the per-sensor stage ----------------


class Handover(NamedTuple):
    """One hand-over message: readings with lineage and ingest time, the newest reading
    time of each input partition (``topic:partition``) so far, and how many dead letters
    each sensor (``""``: unreadable id) had since the last hand-over."""

    rows: list[tuple[Reading, Source, int]]
    watermarks: dict[str, int]
    dead_letters: dict[str, int]


def encode_batch(items: list[tuple[Reading, Source, int]],
                 watermarks: dict[str, int] | None = None,
                 dead_letters: dict[str, int] | None = None) -> bytes:
    """A hand-over message for the per-sensor stage (``Handover``), compactly."""
    doc: dict[str, Any] = {"rows": [
        [r.sensor_id, r.ts, r.metrics, r.attributes, s.topic, s.partition, s.offset, at]
        for r, s, at in items
    ], "wm": watermarks or {}}
    if dead_letters:
        doc["dl"] = dead_letters
    return orjson.dumps(doc)


def encode_batches(items: list[tuple[Reading, Source, int]], max_readings: int = 1000,
                   max_bytes: int = MAX_RECORD_BYTES,
                   watermarks: dict[str, int] | None = None,
                   dead_letters: dict[str, int] | None = None) -> Iterator[bytes]:
    """``items`` as hand-over messages of at most ``max_readings`` and ``max_bytes`` each
    (a batch too large is halved until it fits); the last carries ``watermarks``, which
    take effect after every reading before them, and ``dead_letters``."""
    chunks = []
    for start in range(0, len(items), max_readings):
        pending = [items[start:start + max_readings]]
        while pending:
            chunk = pending.pop()
            if len(chunk) == 1 or len(encode_batch(chunk)) <= max_bytes:
                chunks.append(chunk)
            else:
                half = len(chunk) // 2
                pending.extend([chunk[half:], chunk[:half]])
    if not chunks and (watermarks or dead_letters):
        chunks.append([])
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        yield encode_batch(chunk, watermarks if last else None, dead_letters if last else None)


def decode_batch(value: bytes) -> Handover:
    doc = orjson.loads(value)
    return Handover(
        [(Reading(sensor_id, ts, metrics, attributes), Source(topic, partition, offset), at)
         for sensor_id, ts, metrics, attributes, topic, partition, offset, at in doc["rows"]],
        doc["wm"], doc.get("dl", {}))
