"""The progress file every peer writes, so the runner measures all engines the same way
(from outside, by the readings each one says it has fully processed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

INTERVAL_S = 0.5


def write_progress(path: str | Path, readings: int) -> None:
    """``{"readings": n, "t": time.time()}``, atomically: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({"readings": readings, "t": time.time()}))
    os.replace(tmp, path)


def read_progress(path: str | Path) -> dict | None:
    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
