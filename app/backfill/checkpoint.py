"""Where a load stands, kept on disk so that a stopped load resumes at the exact line.

A checkpoint records the line and byte offset up to which every message was
acknowledged by the broker (``AckedPrefix`` keeps that prefix while acknowledgements
arrive), with a fingerprint of the file so that a changed file is refused instead of
resumed in the wrong place; it is written whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter, deque
from pathlib import Path
from typing import Any

import orjson

from app.backfill.envelopes import Chunk
from app.backfill.errors import LoadError
from app.backfill.lines import Position

#: Bytes of the file's start hashed into its fingerprint.
HEAD_BYTES = 1 << 20
CHECKPOINT_VERSION = 1


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
