"""Historical backfill: readings from files into the input topic, as envelopes. No Faust.

``faust -A app load FILE ...`` (app/commands/load.py) is the command; this module does
the work, so that it can be tested without a worker:

* reads the Intel Berkeley Lab text format (``date time epoch moteid temperature
  humidity light voltage``) or CSV with a header and a column mapping, plain or gzip
  (told by the magic bytes), block by block: memory stays constant whatever the size;
* turns every line into one reading of the contract's wide shape (app/contract.py
  decides what the worker accepts), or counts it as skipped with a reason;
* groups readings into envelopes per input partition, in file order (event time moves
  forward in each partition as in the file, so the worker's watermarks do not make
  readings late), each sent to the partition of its sensors;
* keeps a checkpoint: the line and byte offset up to which every message was
  acknowledged by the broker, with a fingerprint of the file, so that a load that was
  stopped resumes at the exact line.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import hashlib
import logging
import math
import os
import re
import signal
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka.partitioner import murmur2

from app.contract import (
    ENVELOPE_FIELD,
    ID_FIELDS,
    MAX_ID_LENGTH,
    METRIC_NAME_FIELDS,
    METRICS_FIELD,
    TIME_FIELDS,
    VALUE_FIELD,
    format_ts,
    normalise_metric,
    parse_time,
)
from app.progress import Progress

log = logging.getLogger("sensorstream.load")

FORMATS = ("auto", "intel", "csv")
GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 1 << 20
#: Bytes of the file's start hashed into its fingerprint.
HEAD_BYTES = 1 << 20
#: An envelope stays below Kafka's default message size limit (1 MB), whatever the topic.
MAX_ENVELOPE_BYTES = 900 * 1024
CHECKPOINT_VERSION = 1
#: Lines of each reason logged as examples, per file.
EXAMPLES_PER_REASON = 3


class LoadError(Exception):
    """A problem the operator must fix (bad argument, changed file, broker failure)."""


class ProduceError(LoadError):
    """Producing failed part-way; the checkpoint holds what was acknowledged."""


class Skip(StrEnum):
    """Why a line (a CSV row) was not loaded; counted per reason in the summary."""

    BLANK = "blank"  #: an empty line
    TRUNCATED = "truncated"  #: fewer fields than the format has (Intel: below 8)
    EXTRA_FIELDS = "extra_fields"  #: more fields than the format has
    NOT_UTF8 = "not_utf8"  #: a CSV row that is not UTF-8
    BAD_CSV = "bad_csv"  #: a CSV row the csv module cannot parse (an unclosed quote, ...)
    BAD_TIME = "bad_time"  #: the time is not a time
    BAD_EPOCH = "bad_epoch"  #: Intel: the epoch (sequence number) is not an integer
    BAD_SENSOR = "bad_sensor"  #: the sensor id is missing or not an id
    BAD_VALUE = "bad_value"  #: a metric that is not a finite number
    #: A gzip file cut short or corrupt: the rest after the last complete line (counted once).
    DAMAGED_GZIP = "damaged_gzip"


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading stands: ``line`` lines consumed, the next one starts at byte
    ``offset`` (of the decompressed content for a gzip file)."""

    line: int = 0
    offset: int = 0


#: The start of a file.
ORIGIN = Position()

# -- reading files ---------------------------------------------------------------------------


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_content(path: Path, gzipped: bool) -> IO[bytes]:
    """The file's content as a binary stream (decompressed for gzip)."""
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def raw_position(stream: IO[bytes]) -> int:
    """Bytes of the file on disk consumed so far (the compressed position for gzip)."""
    inner = getattr(stream, "fileobj", None)
    return (inner or stream).tell()


class LineStream:
    """The lines of a binary stream, read a block at a time, without their ``\\n``.

    ``line`` and ``offset`` always describe the position after the last line handed
    out. A last line without ``\\n`` is handed out too.
    """

    def __init__(self, stream: IO[bytes], start: Position = ORIGIN,
                 block: int = BLOCK_BYTES) -> None:
        self.stream, self.block = stream, block
        self.line, self.offset = start.line, start.offset
        #: Why a compressed stream could not be read to its end (a cut or corrupt file):
        #: reading stops at the last complete line before the damage.
        self.damage: str | None = None

    def _read(self) -> bytes:
        # read1: what one read of the file gives, so that a damaged gzip stream raises
        # only after every byte before the damage was handed out.
        try:
            return self.stream.read1(self.block)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            self.damage = f"{type(exc).__name__}: {exc}"
            return b""

    @property
    def position(self) -> Position:
        return Position(self.line, self.offset)

    def __iter__(self) -> Iterator[bytes]:
        tail = b""
        while data := self._read():
            lines = (tail + data).split(b"\n") if tail else data.split(b"\n")
            tail = lines.pop()
            for line in lines:
                self.line += 1
                self.offset += len(line) + 1
                yield line
        if tail and self.damage is None:
            self.line += 1
            self.offset += len(tail)
            yield tail


#: A record's outcome: ``(sensor key, reading)`` or why it was skipped.
Record = tuple[Any, dict[str, Any]] | Skip

_DATE = re.compile(rb"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(rb"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.(\d{1,6}))?")


def _day_prefix(text: bytes) -> str:
    """``"YYYY-MM-DDT"`` for a valid calendar date, else ``""``."""
    if not _DATE.fullmatch(text):
        return ""
    try:
        return date.fromisoformat(text.decode()).isoformat() + "T"
    except ValueError:
        return ""


class IntelRecords:
    """Readings of the Intel Berkeley Lab text format, one per line.

    A reading is the simulator's wide shape (``mote_id`` as an integer, so the sensor
    id is ``"7"`` as the simulator names mote 7; ``ts`` in the contract's ISO-8601;
    ``epoch`` an attribute). A line with another number of fields than 8 is skipped
    whole: its last field may be cut short too.
    """

    def __init__(self, lines: LineStream) -> None:
        self.lines = lines

    def __iter__(self) -> Iterator[Record]:
        days: dict[bytes, str] = {}
        motes: dict[bytes, int] = {}
        isfinite = math.isfinite
        time_match = _TIME.fullmatch
        for line in self.lines:
            fields = line.split()
            if len(fields) != 8:
                yield (Skip.BLANK if not fields else
                       Skip.TRUNCATED if len(fields) < 8 else Skip.EXTRA_FIELDS)
                continue
            day_text, tod, epoch, mote, t, h, li, v = fields
            day = days.get(day_text)
            if day is None:
                if len(days) > 100_000:
                    days.clear()
                day = days[day_text] = _day_prefix(day_text)
            match = time_match(tod)
            if not day or match is None:
                yield Skip.BAD_TIME
                continue
            if len(tod) == 15:
                ts = day + tod.decode() + "Z"
            else:
                fraction = (match.group(2) or b"").decode().ljust(6, "0")
                ts = f"{day}{tod[:8].decode()}.{fraction}Z"
            mote_id = motes.get(mote)
            if mote_id is None:
                if not mote.isdigit():
                    yield Skip.BAD_SENSOR
                    continue
                if len(motes) > 100_000:
                    motes.clear()
                mote_id = motes[mote] = int(mote)
            if not epoch.isdigit():
                yield Skip.BAD_EPOCH
                continue
            try:
                t, h, li, v = float(t), float(h), float(li), float(v)
            except ValueError:
                yield Skip.BAD_VALUE
                continue
            if not (isfinite(t) and isfinite(h) and isfinite(li) and isfinite(v)):
                yield Skip.BAD_VALUE
                continue
            yield mote_id, {"mote_id": mote_id, "ts": ts, "epoch": int(epoch),
                            "temperature": t, "humidity": h, "light": li, "voltage": v}


# -- CSV and its mapping ---------------------------------------------------------------------

SENSOR, TIME = "sensor", "ts"
ATTRIBUTE_PREFIX = "attr."


@dataclass(frozen=True)
class ColumnMap:
    """Which CSV column feeds which field: ``sensor``, ``ts``, metrics and attributes,
    by column name (resolved against a header by ``column_indices``)."""

    sensor: str
    ts: str
    metrics: tuple[tuple[str, str], ...]  #: (metric name, column)
    attributes: tuple[tuple[str, str], ...] = ()  #: (attribute name, column)

    def as_dict(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "ts": self.ts, "metrics": [list(m) for m in self.metrics],
                "attributes": [list(a) for a in self.attributes]}


def reserved_names(attribute_fields: Iterable[str] = ()) -> frozenset[str]:
    """Field names a metric cannot take: the contract reads them as ids, times, long-form
    or envelope fields, or keeps them as attributes."""
    return frozenset((*ID_FIELDS, *TIME_FIELDS, *METRIC_NAME_FIELDS, VALUE_FIELD,
                      METRICS_FIELD, ENVELOPE_FIELD, *attribute_fields))


def parse_mapping(items: Iterable[str], reserved: frozenset[str] = reserved_names()
                  ) -> ColumnMap | None:
    """``--map`` values (each ``FIELD=COLUMN[,FIELD=COLUMN...]``) as a mapping, or None
    when none is given. FIELD is ``sensor``, ``ts``, ``attr.NAME`` or a metric name."""
    pairs = [part for item in items for part in item.split(",") if part.strip()]
    if not pairs:
        return None
    sensor = ts = None
    metrics: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for pair in pairs:
        target, sep, column = (s.strip() for s in pair.partition("="))
        if not sep or not target or not column:
            raise LoadError(f"--map: {pair.strip()!r} is not FIELD=COLUMN")
        if target in (SENSOR, TIME):
            if (sensor if target == SENSOR else ts) is not None:
                raise LoadError(f"--map: {target!r} is mapped twice")
            if target == SENSOR:
                sensor = column
            else:
                ts = column
        elif target.startswith(ATTRIBUTE_PREFIX):
            name = target[len(ATTRIBUTE_PREFIX):].strip()
            if not name or name in reserved_names():
                raise LoadError(f"--map: {target!r} is not a usable attribute name")
            if name in attributes:
                raise LoadError(f"--map: {target!r} is mapped twice")
            attributes[name] = column
        else:
            name = normalise_metric(target)
            if not name:
                raise LoadError(f"--map: {target!r} is not a metric name")
            if name in reserved:
                raise LoadError(f"--map: {target!r} cannot be a metric: the contract reads "
                                "that field as an id, a time, an attribute or a shape field")
            if name in metrics:
                raise LoadError(f"--map: metric {name!r} is mapped twice")
            metrics[name] = column
    if sensor is None or ts is None:
        missing = " and ".join(f"{n}=COLUMN" for n, c in ((SENSOR, sensor), (TIME, ts))
                               if c is None)
        raise LoadError(f"--map: needs {missing}")
    if not metrics:
        raise LoadError("--map: maps no metric (METRIC=COLUMN)")
    return ColumnMap(sensor, ts, tuple(metrics.items()), tuple(attributes.items()))


def default_mapping(header: list[str], attribute_fields: Iterable[str] = ()) -> ColumnMap:
    """Without ``--map``: the id is the first column named like a contract id field, the
    time the first named like a time field, the attribute fields are attributes and
    every other column is a metric."""
    sensor = next((c for c in header if c in (*ID_FIELDS, SENSOR)), None)
    ts = next((c for c in header if c in TIME_FIELDS), None)
    if sensor is None or ts is None:
        raise LoadError(
            "the CSV header has no " + ("sensor id column (one of "
                                        f"{', '.join((*ID_FIELDS, SENSOR))})"
                                        if sensor is None else
                                        f"time column (one of {', '.join(TIME_FIELDS)})")
            + f"; header: {', '.join(header)}; name the columns with --map")
    attrs = set(attribute_fields)
    rest = [c for c in header if c not in (sensor, ts)]
    metrics = [(normalise_metric(c), c) for c in rest if c not in attrs]
    bad = [c for name, c in metrics if not name or name in reserved_names(attrs)]
    if bad:
        raise LoadError(f"CSV column {bad[0]!r} cannot be a metric name; use --map")
    if not metrics:
        raise LoadError(f"the CSV header has no metric column; header: {', '.join(header)}")
    return ColumnMap(sensor, ts, tuple(metrics), tuple((c, c) for c in rest if c in attrs))


def column_indices(header: list[str], mapping: ColumnMap) -> dict[str, int]:
    """Column name -> index (the first of equal names); every mapped column must exist."""
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    columns = [mapping.sensor, mapping.ts, *(c for _n, c in mapping.metrics),
               *(c for _n, c in mapping.attributes)]
    unknown = [c for c in columns if c not in index]
    if unknown:
        raise LoadError(f"--map: no column {unknown[0]!r} in the CSV header "
                        f"({', '.join(header)})")
    return index


class CsvRecords:
    """Readings of a CSV file, one per row: ``sensor_id`` (a string, as given), ``ts``
    (normalised to the contract's ISO-8601), the mapped metrics (an empty cell is a
    null value) and attributes (an empty cell is left out)."""

    def __init__(self, lines: LineStream, header: list[str], mapping: ColumnMap,
                 delimiter: str = ",") -> None:
        index = column_indices(header, mapping)
        self.lines, self.delimiter, self.width = lines, delimiter, len(header)
        self.sensor, self.ts = index[mapping.sensor], index[mapping.ts]
        self.metrics = [(name, index[c]) for name, c in mapping.metrics]
        self.attributes = [(name, index[c]) for name, c in mapping.attributes]
        self._bad_utf8 = False

    def __iter__(self) -> Iterator[Record]:
        reader = csv.reader(_csv_text(self), delimiter=self.delimiter)
        width, sensor_at, ts_at = self.width, self.sensor, self.ts
        while True:
            self._bad_utf8 = False
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                yield Skip.BAD_CSV
                continue
            if self._bad_utf8:
                yield Skip.NOT_UTF8
                continue
            if len(row) != width:
                yield (Skip.BLANK if not row or row == [""] else
                       Skip.TRUNCATED if len(row) < width else Skip.EXTRA_FIELDS)
                continue
            sensor_id = row[sensor_at].strip()
            if not sensor_id or len(sensor_id) > MAX_ID_LENGTH or not sensor_id.isprintable():
                yield Skip.BAD_SENSOR
                continue
            ts = parse_time(row[ts_at])
            if ts is None:
                yield Skip.BAD_TIME
                continue
            reading: dict[str, Any] = {"sensor_id": sensor_id, "ts": format_ts(ts)}
            try:
                for name, at in self.metrics:
                    cell = row[at].strip()
                    value = float(cell) if cell else None
                    if value is not None and not math.isfinite(value):
                        raise ValueError(cell)
                    reading[name] = value
            except ValueError:
                yield Skip.BAD_VALUE
                continue
            for name, at in self.attributes:
                if row[at].strip():
                    reading[name] = row[at].strip()
            yield sensor_id, reading



def _csv_text(records: CsvRecords) -> Iterator[str]:
    """The lines as text with a line end, as the csv module wants them (a quoted field
    may span lines); a line that is not UTF-8 marks its row."""
    for line in records.lines:
        raw = line + b"\n"
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            records._bad_utf8 = True
            yield raw.decode("utf-8", "replace")


def read_header(stream: IO[bytes], delimiter: str = ",") -> tuple[list[str], Position]:
    """The CSV header row and the position after it."""
    lines = LineStream(stream, block=64 * 1024)
    text = (line.decode("utf-8", "replace") + "\n" for line in lines)
    try:
        header = next(csv.reader(text, delimiter=delimiter))
    except StopIteration:
        raise LoadError("the CSV file is empty (no header row)") from None
    except csv.Error as exc:
        raise LoadError(f"the CSV header row cannot be parsed: {exc}") from None
    header = [name.strip() for name in header]
    if header:
        header[0] = header[0].removeprefix("\ufeff")
    if not any(header):
        raise LoadError("the CSV header row is empty")
    return header, lines.position


# -- envelopes -------------------------------------------------------------------------------


def kafka_partition(sensor_id: str, partitions: int) -> int:
    """Kafka's default partitioner on the sensor id, as ``app.topics.sensor_partition``
    and the simulator's keyed messages place a sensor."""
    return (murmur2(sensor_id.encode()) & 0x7FFFFFFF) % partitions


def envelopes(readings: list[dict[str, Any]], size: int,
              max_bytes: int = MAX_ENVELOPE_BYTES) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of envelopes ``{"readings": [...]}`` of at most ``size`` readings
    and ``max_bytes`` each (halved until they fit), in order. The key is the first
    reading's sensor id: every sensor in an envelope hashes to the same partition."""
    pending = [readings[i:i + size] for i in range(0, len(readings), size)]
    pending.reverse()  # a stack: the next envelope is on top
    while pending:
        part = pending.pop()
        value = orjson.dumps({ENVELOPE_FIELD: part})
        if len(value) > max_bytes and len(part) > 1:
            half = len(part) // 2
            pending.extend([part[half:], part[:half]])
            continue
        first = part[0]
        yield str(first.get("sensor_id", first.get("mote_id"))).encode(), value


@dataclass
class Chunk:
    """Consecutive records, ready to send: envelopes per partition, the position after
    the last record, and what it counts."""

    end: Position
    messages: list[tuple[int, bytes, bytes]]  #: (partition, key, value)
    counts: Counter[str]
    raw_end: int = 0  #: bytes of the file on disk consumed (progress)


def chunks(records: Iterable[Record], lines: LineStream, partitions: int, *,
           envelope: int = 1000, chunk_records: int = 10_000,
           partition_of: Callable[[str, int], int] = kafka_partition,
           on_skip: Callable[[Skip, int], None] | None = None,
           raw: Callable[[], int] | None = None) -> Iterator[Chunk]:
    """``records`` in chunks of ``chunk_records``: each partition's readings in file order."""
    cache: dict[Any, int] = {}
    groups: dict[int, list[dict[str, Any]]] = {}
    counts: Counter[str] = Counter()
    start_line = lines.line
    n = 0
    for item in records:
        n += 1
        if type(item) is tuple:
            key, reading = item
            p = cache.get(key)
            if p is None:
                if len(cache) > 1_000_000:
                    cache.clear()
                p = cache[key] = partition_of(str(key), partitions)
            group = groups.get(p)
            if group is None:
                group = groups[p] = []
            group.append(reading)
        else:
            counts[f"skipped:{item}"] += 1
            if on_skip is not None:
                on_skip(item, lines.line)
        if n == chunk_records:
            yield _chunk(groups, counts, n, lines, start_line, envelope, raw)
            groups, counts, n, start_line = {}, Counter(), 0, lines.line
    if lines.damage is not None:
        n += 1  # the unreadable rest counts as one record, skipped
        counts[f"skipped:{Skip.DAMAGED_GZIP}"] += 1
    if n or lines.line != start_line or counts:
        yield _chunk(groups, counts, n, lines, start_line, envelope, raw)


def _chunk(groups: dict[int, list[dict[str, Any]]], counts: Counter[str], n: int,
           lines: LineStream, start_line: int, envelope: int,
           raw: Callable[[], int] | None) -> Chunk:
    messages = [(p, key, value) for p in sorted(groups)
                for key, value in envelopes(groups[p], envelope)]
    counts["records"] = n
    counts["lines_read"] = lines.line - start_line
    counts["readings"] = sum(len(g) for g in groups.values())
    counts["messages"] = len(messages)
    return Chunk(lines.position, messages, counts, raw() if raw else 0)


class AckedPrefix:
    """Chunks in the order they were sent; the position is the end of the longest
    prefix of them that the broker acknowledged completely: what a checkpoint records."""

    def __init__(self, start: Position) -> None:
        self.position = start
        self.counts: Counter[str] = Counter()
        self._sent: deque[tuple[int, Chunk]] = deque()
        self._acked: set[int] = set()
        self._next = 0

    def sent(self, chunk: Chunk) -> int:
        ticket = self._next
        self._next += 1
        self._sent.append((ticket, chunk))
        return ticket

    def acked(self, ticket: int) -> None:
        self._acked.add(ticket)
        while self._sent and self._sent[0][0] in self._acked:
            done, chunk = self._sent.popleft()
            self._acked.discard(done)
            self.position = chunk.end
            self.counts.update(chunk.counts)

    @property
    def outstanding(self) -> int:
        return len(self._sent)


# -- checkpoints -----------------------------------------------------------------------------


def fingerprint(path: Path) -> dict[str, Any]:
    """The file's size and a hash of its first MiB (as stored, compressed or not)."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        size = os.fstat(f.fileno()).st_size
    return {"size": size, "head_sha256": hashlib.sha256(head).hexdigest()}


def checkpoint_path(directory: Path, path: Path) -> Path:
    """One checkpoint per input file (by its absolute path)."""
    absolute = str(path.resolve())
    digest = hashlib.sha256(absolute.encode()).hexdigest()[:12]
    return directory / f"{path.name}.{digest}.json"


def write_json_atomically(path: Path, doc: dict[str, Any]) -> None:
    """Whole or not at all, and on disk before it counts (a crash leaves the old one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise LoadError(f"checkpoint {path} cannot be read ({exc}); delete it or pass "
                        "--restart") from None
    if not isinstance(doc, dict) or doc.get("version") != CHECKPOINT_VERSION:
        raise LoadError(f"checkpoint {path} is not a version-{CHECKPOINT_VERSION} load "
                        "checkpoint; delete it or pass --restart")
    return doc


# -- planning: every argument checked before anything is produced ---------------------------


@dataclass
class FilePlan:
    """One input file, checked: how to read it and where to start."""

    path: Path
    gzipped: bool
    fmt: str
    checkpoint: Path
    fingerprint: dict[str, Any]
    reading: dict[str, Any]  #: how it is read; a checkpoint must agree
    start: Position = ORIGIN
    header: list[str] | None = None
    mapping: ColumnMap | None = None
    delimiter: str = ","
    totals: Counter[str] = field(default_factory=Counter)  #: acknowledged by earlier runs
    complete: bool = False


def detect_format(path: Path, gzipped: bool, delimiter: str) -> str:
    """``intel`` when the first non-blank line starts with a date, ``csv`` when it has the
    delimiter; otherwise the operator must say."""
    with open_content(path, gzipped) as stream:
        try:
            head = stream.read(64 * 1024)
        except (OSError, EOFError) as exc:
            raise LoadError(f"{path}: cannot read it: {exc}") from None
    first = next((line for line in head.split(b"\n") if line.strip()), b"")
    if re.match(rb"\s*\d{4}-\d{2}-\d{2}\s", first):
        return "intel"
    if delimiter.encode() in first:
        return "csv"
    shown = first[:60].decode("utf-8", "replace")
    raise LoadError(f"{path}: cannot tell its format from its first line ({shown!r}); "
                    "pass --format intel or --format csv")


def plan_file(path: Path, *, topic: str, fmt: str = "auto", mapping: ColumnMap | None = None,
              delimiter: str = ",", checkpoint_dir: Path, restart: bool = False,
              attribute_fields: Iterable[str] = ()) -> FilePlan:
    """Everything about one file that can be wrong, found before producing anything."""
    if fmt not in FORMATS:
        raise LoadError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    try:
        gzipped = is_gzip(path)
    except OSError as exc:
        raise LoadError(f"{path}: cannot read it: {exc}") from None
    if fmt == "auto":
        fmt = detect_format(path, gzipped, delimiter)
    if fmt == "intel" and mapping is not None:
        raise LoadError("--map applies to CSV files only; the Intel format has fixed fields")
    header, header_end = None, ORIGIN
    if fmt == "csv":
        with open_content(path, gzipped) as stream:
            header, header_end = read_header(stream, delimiter)
        mapping = mapping or default_mapping(header, attribute_fields)
        column_indices(header, mapping)
    reading = {"format": fmt, "gzip": gzipped, "delimiter": delimiter if fmt == "csv" else None,
               "mapping": mapping.as_dict() if mapping else None}
    plan = FilePlan(path, gzipped, fmt, checkpoint_path(checkpoint_dir, path),
                    fingerprint(path), reading, header_end, header, mapping, delimiter)
    doc = None if restart else read_checkpoint(plan.checkpoint)
    if doc is None:
        return plan
    where = f"checkpoint {plan.checkpoint}"
    if doc.get("fingerprint") != plan.fingerprint:
        raise LoadError(f"{where} was written for a different file than {path} (size or first "
                        "MiB differ): pass --restart to load it from the start")
    if doc.get("topic") != topic:
        raise LoadError(f"{where} belongs to a load of {path} into topic {doc.get('topic')!r}, "
                        f"not {topic!r}: pass --restart to load it into {topic!r} from the start")
    if doc.get("reading") != reading:
        raise LoadError(f"{where} read {path} as {doc.get('reading')}, not {reading}: use the "
                        "same --format/--map/--delimiter, or pass --restart")
    try:
        plan.start = Position(int(doc["line"]), int(doc["offset"]))
        plan.totals = Counter(doc.get("totals", {}))
    except (KeyError, TypeError, ValueError):
        raise LoadError(f"{where} has no usable line and offset; delete it or pass "
                        "--restart") from None
    plan.complete = bool(doc.get("complete"))
    return plan


def seek(stream: IO[bytes], position: Position, path: Path) -> None:
    """Move to a checkpoint's offset, checking that a line ended just before it."""
    if position.offset == 0:
        return
    stream.seek(position.offset - 1)
    if stream.read(1) != b"\n":
        raise LoadError(f"{path}: no line ends at byte {position.offset - 1} where the "
                        "checkpoint resumes; the file changed: pass --restart")


# -- producing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    topic: str
    envelope: int = 1000
    chunk_records: int = 10_000
    max_rate: float = 0.0  #: lines per second, 0: as fast as possible
    checkpoint_every: float = 1.0
    in_flight: int = 4  #: chunks sent and not yet acknowledged


@dataclass
class FileResult:
    path: Path
    state: str  #: complete, already_loaded, stopped, failed
    start: Position
    end: Position
    counts: Counter[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "state": self.state,
                "resumed_from_line": self.start.line, "line": self.end.line,
                "offset": self.end.offset, **_counts(self.counts),
                "seconds": round(self.seconds, 3)}


def _counts(counts: Counter[str]) -> dict[str, Any]:
    skipped = {k.split(":", 1)[1]: v for k, v in sorted(counts.items())
               if k.startswith("skipped:") and v}
    return {"lines_read": counts["lines_read"], "records": counts["records"],
            "readings": counts["readings"], "messages": counts["messages"],
            "skipped": skipped, "skipped_total": sum(skipped.values())}


class FileLoad:
    """One file into the topic, from its plan's start to its end or to a stop."""

    def __init__(self, plan: FilePlan, producer: Any, partitions: int, options: Options,
                 stop: asyncio.Event,
                 partition_of: Callable[[str, int], int] = kafka_partition) -> None:
        self.plan, self.producer, self.partitions = plan, producer, partitions
        self.options, self.stop, self.partition_of = options, stop, partition_of
        self.prefix = AckedPrefix(plan.start)
        self._saved_at = time.monotonic()
        self._examples: Counter[str] = Counter()
        self._sent_lines = 0

    def _checkpoint(self, complete: bool = False) -> None:
        totals = self.plan.totals + self.prefix.counts
        write_json_atomically(self.plan.checkpoint, {
            "version": CHECKPOINT_VERSION, "file": str(self.plan.path.resolve()),
            "topic": self.options.topic, "fingerprint": self.plan.fingerprint,
            "reading": self.plan.reading, "line": self.prefix.position.line,
            "offset": self.prefix.position.offset, "complete": complete,
            "totals": dict(totals), "updated_at": format_ts(time.time_ns() // 1000)})
        self._saved_at = time.monotonic()

    def _skipped(self, reason: Skip, line: int) -> None:
        if self._examples[reason] < EXAMPLES_PER_REASON:
            self._examples[reason] += 1
            log.warning("%s line %d skipped: %s", self.plan.path.name, line, reason,
                        extra={"file": str(self.plan.path), "line": line,
                               "reason": str(reason)})

    async def _settle(self, ticket: int, futures: list[asyncio.Future]) -> None:
        await asyncio.gather(*futures)
        self.prefix.acked(ticket)
        if time.monotonic() - self._saved_at >= self.options.checkpoint_every:
            self._checkpoint()

    async def run(self) -> FileResult:
        plan, options = self.plan, self.options
        started = time.monotonic()
        if plan.complete:
            return FileResult(plan.path, "already_loaded", plan.start, plan.start, Counter(), 0)
        state = "complete"
        with open_content(plan.path, plan.gzipped) as stream:
            seek(stream, plan.start, plan.path)
            lines = LineStream(stream, plan.start)
            records: Iterable[Record]
            if plan.fmt == "intel":
                records = IntelRecords(lines)
            else:
                assert plan.header is not None and plan.mapping is not None
                records = CsvRecords(lines, plan.header, plan.mapping, plan.delimiter)
            raw_start = raw_position(stream)
            size = plan.fingerprint["size"]
            pending: deque[tuple[int, list[asyncio.Future]]] = deque()
            with Progress(f"load {plan.path.name}", total=max(size - raw_start, 0),
                          unit="bytes", file=str(plan.path)) as progress:
                raw_done = raw_start
                try:
                    for chunk in chunks(records, lines, self.partitions,
                                        envelope=options.envelope,
                                        chunk_records=options.chunk_records,
                                        partition_of=self.partition_of, on_skip=self._skipped,
                                        raw=lambda: raw_position(stream)):
                        if self.stop.is_set():
                            state = "stopped"
                            break
                        futures = [await self.producer.send(options.topic, value, key=key,
                                                            partition=p)
                                   for p, key, value in chunk.messages]
                        chunk.messages = []
                        self._sent_lines += chunk.counts["lines_read"]
                        pending.append((self.prefix.sent(chunk), futures))
                        while pending and (len(pending) > options.in_flight
                                           or all(f.done() for f in pending[0][1])):
                            await self._settle(*pending.popleft())
                        progress.advance(chunk.raw_end - raw_done)
                        raw_done = chunk.raw_end
                        await self._pace(started)
                    while pending:
                        await self._settle(*pending.popleft())
                    if lines.damage is not None:
                        log.warning("%s: cannot be read past line %d (%s): loaded what came "
                                    "before", plan.path.name, lines.line, lines.damage,
                                    extra={"file": str(plan.path), "line": lines.line,
                                           "reason": str(Skip.DAMAGED_GZIP)})
                except Exception as exc:
                    # Nothing after the acknowledged prefix counts: the rerun sends it again.
                    for _ticket, futures in pending:
                        await asyncio.gather(*futures, return_exceptions=True)
                    self._checkpoint()
                    position = self.prefix.position
                    raise ProduceError(
                        f"{plan.path}: stopped by an error: {type(exc).__name__}: {exc}. "
                        f"Checkpoint at line {position.line} "
                        "(every line before it acknowledged); rerun to resume there (what "
                        "reached the broker after it is sent again and dropped by the "
                        "worker's deduplication)") from exc
        self._checkpoint(complete=state == "complete")
        return FileResult(plan.path, state, plan.start, self.prefix.position,
                          self.prefix.counts, time.monotonic() - started)

    async def _pace(self, started: float) -> None:
        """At most ``max_rate`` lines a second; a stop ends the wait."""
        if not self.options.max_rate:
            return
        ahead = self._sent_lines / self.options.max_rate - (time.monotonic() - started)
        if ahead > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), ahead)


@dataclass
class Summary:
    topic: str
    partitions: int
    results: list[FileResult]
    not_started: list[Path]
    seconds: float
    stopped_by: str | None = None
    error: str | None = None

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for result in self.results:
            total.update(result.counts)
        return total

    def as_dict(self) -> dict[str, Any]:
        total = self.totals()
        return {"topic": self.topic, "partitions": self.partitions, **_counts(total),
                "seconds": round(self.seconds, 3),
                "lines_per_s": round(total["lines_read"] / max(self.seconds, 1e-9), 1),
                "stopped_by": self.stopped_by, "error": self.error,
                "files": [r.as_dict() for r in self.results],
                "not_started": [str(p) for p in self.not_started]}

    def text(self) -> str:
        """The summary for a human."""
        out = [f"load into {self.topic!r} ({self.partitions} partitions):"]
        for r in self.results:
            if r.state == "already_loaded":
                out.append(f"  {r.path}: already loaded (its checkpoint says complete); "
                           "--restart loads it again")
                continue
            first = r.start.line + 1
            out.append(f"  {r.path}: {r.state.replace('_', ' ')}, lines {first:,} to "
                       f"{r.end.line:,}")
            out.append("    " + _counts_text(r.counts))
        for path in self.not_started:
            out.append(f"  {path}: not started")
        total = self.totals()
        rate = total["lines_read"] / max(self.seconds, 1e-9)
        out.append(f"  total: {_counts_text(total)}; {self.seconds:.1f} s, {rate:,.0f} lines/s")
        stopped = [r for r in self.results if r.state in ("stopped", "failed")]
        if self.stopped_by or stopped:
            for r in stopped:
                out.append(f"{'stopped by ' + self.stopped_by if self.stopped_by else 'stopped'}"
                           f": {r.path} is loaded up to line {r.end.line:,} (byte "
                           f"{r.end.offset:,}), every line before it acknowledged by the "
                           f"broker. Run the same command again to resume at line "
                           f"{r.end.line + 1:,}.")
        if self.error:
            out.append(f"error: {self.error}")
        return "\n".join(out)


def _counts_text(counts: Counter[str]) -> str:
    c = _counts(counts)
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in c["skipped"].items())
    return (f"lines read {c['lines_read']:,}, readings produced {c['readings']:,}, "
            f"messages {c['messages']:,}, lines skipped {c['skipped_total']:,}"
            + (f" ({reasons})" if reasons else ""))


async def ensure_topic(client: Mapping[str, Any], topic: str, partitions: int,
                       replication: int = 1, configs: Mapping[str, str] | None = None) -> None:
    """Create the topic as the worker would (its partitions and configs) if it is missing:
    a broker may otherwise create it on first use with its own default partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**client, request_timeout_ms=15_000)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, replication,
                                                    topic_configs=dict(configs or {}))])
                log.info("created topic %s", topic, extra={"topic": topic,
                                                           "partitions": partitions})
    finally:
        await admin.close()


EXIT_FAILED = 1


async def run(plans: list[FilePlan], options: Options, client: Mapping[str, Any], *,
              create_partitions: int, replication: int = 1,
              topic_configs: Mapping[str, str] | None = None,
              partition_of: Callable[[str, int], int] = kafka_partition,
              print_text: Callable[[str], None] = print) -> int:
    """Load ``plans`` in order; SIGINT/SIGTERM stop it cleanly. The exit status: 0 when
    every file is loaded, 128 + the signal when stopped, 1 when producing failed."""
    from aiokafka import AIOKafkaProducer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stopped_by: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if not stopped_by:
            stopped_by.append(sig)
            log.warning("%s: stop producing, wait for the broker's acknowledgements, write "
                        "the checkpoint", sig.name, extra={"signal": sig.name})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    started = time.monotonic()
    results: list[FileResult] = []
    partitions = 0
    error = None
    try:
        await ensure_topic(client, options.topic, create_partitions, replication, topic_configs)
        producer = AIOKafkaProducer(**client, acks="all", linger_ms=5,
                                    max_batch_size=1024 * 1024,
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            partitions = len(await producer.partitions_for(options.topic))
            for plan in plans:
                if stop.is_set():
                    break
                results.append(await FileLoad(plan, producer, partitions, options, stop,
                                              partition_of).run())
        finally:
            await producer.stop()
    except LoadError as exc:
        error = str(exc)
    except Exception as exc:  # the broker unreachable, a topic that cannot be created, ...
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    done = {r.path for r in results}
    summary = Summary(options.topic, partitions, results,
                      [p.path for p in plans if p.path not in done], time.monotonic() - started,
                      stopped_by[0].name if stopped_by else None, error)
    log.info("load summary", extra={"summary": summary.as_dict()})
    print_text(summary.text())
    if error:
        return EXIT_FAILED
    if stopped_by:
        return 128 + stopped_by[0]
    return 0
