"""How a line becomes a reading: the Intel Berkeley Lab text format (``date time epoch
moteid temperature humidity light voltage``), CSV with a header and a column mapping,
and telling the two apart.

Each format iterates over a ``LineStream`` and yields, per line (per CSV row), the
sensor key and a reading of the contract's wide shape, or the ``Skip`` reason it was
not loaded. The contract (app/contract.py) decides what the worker accepts; these
readers refuse only what cannot be a reading, so every line is either produced or
counted with a reason.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from app.backfill.errors import LoadError
from app.backfill.lines import LineStream, Position, open_content
from app.backfill.mapping import ColumnMap, column_indices
from app.contract import MAX_ID_LENGTH, format_ts, parse_time

FORMATS = ("auto", "intel", "csv")


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
        #: Whether the row being read has a line that is not UTF-8 (``_csv_text`` sets it).
        self.bad_utf8 = False

    def __iter__(self) -> Iterator[Record]:
        reader = csv.reader(_csv_text(self), delimiter=self.delimiter)
        width, sensor_at, ts_at = self.width, self.sensor, self.ts
        while True:
            self.bad_utf8 = False
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                yield Skip.BAD_CSV
                continue
            if self.bad_utf8:
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
            records.bad_utf8 = True
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
