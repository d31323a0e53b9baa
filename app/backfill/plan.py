"""Every argument checked before anything is produced: one ``FilePlan`` per input file.

A load that fails half-way leaves a topic half-filled, so the file's existence and
format, the CSV header and mapping, and the agreement of an existing checkpoint (same
file, topic and way of reading) are all settled here, and the command stops with a
message naming the problem before the broker is contacted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.backfill.checkpoint import checkpoint_path, fingerprint, read_checkpoint
from app.backfill.errors import LoadError
from app.backfill.formats import FORMATS, detect_format, read_header
from app.backfill.lines import ORIGIN, Position, is_gzip, open_content
from app.backfill.mapping import ColumnMap, column_indices, default_mapping


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
