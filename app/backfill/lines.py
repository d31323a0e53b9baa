"""A file's lines without holding the file: plain or gzip content, a block at a time.

A load's unit of progress is a line, and a checkpoint must name a place in the file
where reading can start again exactly; so this module owns both the reading
(``LineStream``: lines out of 1 MiB blocks, a damaged gzip stream ending at its last
complete line) and the ``Position`` it reports (lines consumed, byte offset of the
next line), which ``seek`` returns to. It knows nothing of formats or Kafka.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from app.backfill.errors import LoadError

GZIP_MAGIC = b"\x1f\x8b"
BLOCK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading stands: ``line`` lines consumed, the next one starts at byte
    ``offset`` (of the decompressed content for a gzip file)."""

    line: int = 0
    offset: int = 0


#: The start of a file.
ORIGIN = Position()


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


def seek(stream: IO[bytes], position: Position, path: Path) -> None:
    """Move to a checkpoint's offset, checking that a line ended just before it."""
    if position.offset == 0:
        return
    stream.seek(position.offset - 1)
    if stream.read(1) != b"\n":
        raise LoadError(f"{path}: no line ends at byte {position.offset - 1} where the "
                        "checkpoint resumes; the file changed: pass --restart")
