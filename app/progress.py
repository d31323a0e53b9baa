"""Progress of long operations: a bar on a terminal, a JSON log line now and then otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("sensorstream.progress")


class Progress:
    """Counts ``done`` of ``total`` (``None``: unknown) units named ``unit``.

    On a terminal it draws a tqdm bar on stderr; otherwise it logs a line with the
    counts and rate every ``every`` seconds, so that a job under a supervisor shows it
    is moving.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "messages",
                 every: float = 5.0, tty: bool | None = None, **context: Any) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.context = context
        self.done = 0
        self.started = self._last = time.monotonic()
        self._bar = None
        if sys.stderr.isatty() if tty is None else tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=f" {unit}", unit_scale=True,
                             file=sys.stderr)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._log("progress")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._log("done")

    def _log(self, state: str) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        log.info("%s: %s %s of %s", self.what, self.done, self.unit,
                 "?" if self.total is None else self.total,
                 extra={"state": state, "done": self.done, "total": self.total,
                        "rate_per_s": round(self.done / elapsed, 1), **self.context})

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
