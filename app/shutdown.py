"""A worker's stop, bounded by ``SENSORSTREAM_SHUTDOWN_TIMEOUT`` from SIGTERM or SIGINT.

Why it is needed: before anything else stops, Faust waits until every message an agent
was given is acknowledged (``App._stop_consumer`` -> ``Consumer.wait_empty``, with no
bound). The sink stage acknowledges a message only once every sink stored its rows,
and a sink that retries (PostgreSQL down, or refusing a row) never does: the worker
ignored SIGTERM for minutes (issue 18). So the stop has a deadline:

1. the streams drain (the sinks write what they hold) until ``drain_budget`` is spent;
2. then whatever waits is given up: the ``give_up`` callbacks stop the sinks' retries,
   and the messages still unacknowledged are marked done without their offsets being
   acknowledged, so Faust's commit at the stop cannot cover them (it commits only a
   contiguous run of acknowledged offsets) and the next worker reads them again;
3. the rest of the stop (tables, consumer, producer, the sinks' connections, mode's
   wind-down of the event loop) has the reserve, and the process then ends at once
   (``exit_now``); if it is still alive at the deadline anyway, a watchdog thread logs
   it and ends the process with ``EXIT_CODE``, whatever the event loop is doing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

#: The status of a stop the watchdog ended (EX_SOFTWARE): not a clean stop.
EXIT_CODE = 70
#: The part of the timeout kept for the stop after the drain: ``RESERVE_SHARE`` of it,
#: at least ``RESERVE_MIN_S`` (closing the tables, then mode's own wind-down of the
#: event loop, which sleeps 2 s: 2.7 s measured here) and at most ``RESERVE_MAX_S``.
RESERVE_SHARE = 0.3
RESERVE_MIN_S = 4.0
RESERVE_MAX_S = 8.0


class Shutdown:
    """The deadline of one worker's stop, its watchdog and its give-up callbacks."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic,
                 exit: Callable[[int], Any] = os._exit) -> None:
        self.timeout = timeout
        self.clock = clock
        self._exit = exit
        self.began: float | None = None
        self._watchdog: threading.Timer | None = None
        self._give_up: list[Callable[[], Awaitable[None]]] = []
        self._gave_up = False
        self.armed = False

    def arm(self) -> None:
        """Bound this process's stop: the ``worker`` command's only. Other commands
        (``load``, ``replay``, ...) stop as Faust stops them."""
        self.armed = True

    @property
    def started(self) -> bool:
        return self.began is not None

    def begin(self, why: str) -> None:
        """Start the clock (once: the first signal or stop counts) and the watchdog."""
        if self.began is not None or not self.armed:
            return
        self.began = self.clock()
        log.info("stopping within %g s", self.timeout,
                 extra={"why": why, "shutdown_timeout_s": self.timeout})
        self._watchdog = threading.Timer(self.timeout, self.expired)
        self._watchdog.daemon = True  # a clean stop never waits for it
        self._watchdog.name = "shutdown-watchdog"
        self._watchdog.start()

    def remaining(self) -> float:
        """Seconds left until the deadline (the whole timeout before the stop began)."""
        if self.began is None:
            return self.timeout
        return max(0.0, self.began + self.timeout - self.clock())

    def reserve(self) -> float:
        """Seconds kept for the stop after the drain."""
        return min(RESERVE_MAX_S, max(RESERVE_MIN_S, self.timeout * RESERVE_SHARE))

    def drain_budget(self) -> float:
        """Seconds the streams and sinks may still take to write what they hold."""
        return max(0.0, self.remaining() - self.reserve())

    def on_give_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` when the drain's budget is spent (stop retrying, say)."""
        self._give_up.append(callback)

    async def give_up(self) -> None:
        """Run the give-up callbacks, once; a failing one is logged, the others run."""
        if self._gave_up:
            return
        self._gave_up = True
        for callback in self._give_up:
            try:
                await callback()
            except Exception as exc:
                log.warning("a give-up step at shutdown failed: %s", str(exc)[:300])

    def exit_now(self) -> None:
        """End the process with status 0 once the stop's work is done (the event loop
        closed), without the interpreter's own teardown: it took 0.9 s here (1.2 s under
        load) and the watchdog's thread cannot run in it (Python freezes other threads
        once it finalizes), so the bound held only if it was quick."""
        log.info("stopped", extra={"stop_s": round(self.timeout - self.remaining(), 3)})
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # closed or gone: nothing left to tell
                stream.flush()
        self._exit(0)

    def expired(self) -> None:
        """The watchdog: the deadline passed with the process still running."""
        log.critical("shutdown did not complete within SENSORSTREAM_SHUTDOWN_TIMEOUT: "
                     "exiting now; what was not stored is read again after the restart",
                     extra={"shutdown_timeout_s": self.timeout, "exit_code": EXIT_CODE})
        self._exit(EXIT_CODE)  # the stream handlers flushed the line as they wrote it

