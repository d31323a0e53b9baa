"""Faust's App and Worker with public hooks on the stop, where Faust and mode offer none.

Faust waits at a rebalance and at the stop until every message an agent was given is
acknowledged (``App._consumer_wait_empty``), with no bound; mode schedules the stop on
SIGTERM/SIGINT (``Worker._schedule_shutdown``) and winds the event loop down
(``Worker._shutdown_loop``). These are private methods: they are overridden here, in
the seam, and the worker's definition (``app.main``) uses the hooks below.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import faust


class Worker(faust.Worker):
    """A worker that says when its stop begins and when the event loop is wound down."""

    def on_stop_signal(self, sig: signal.Signals) -> None:
        """Called at SIGTERM or SIGINT, before the stop is scheduled."""

    def on_loop_shut_down(self) -> None:
        """Called once mode has wound the event loop down (it re-raises a crash first)."""

    def _schedule_shutdown(self, sig: signal.Signals) -> None:
        self.on_stop_signal(sig)
        super()._schedule_shutdown(sig)

    def _shutdown_loop(self) -> None:
        super()._shutdown_loop()
        self.on_loop_shut_down()


class App(faust.App):
    """An App whose wait for acknowledgements can be bounded (``drain_budget``)."""

    def drain_budget(self) -> float | None:
        """Seconds the wait for every given message's acknowledgement may take now;
        None: as long as it takes (Faust's own wait, at every rebalance)."""
        return None

    async def on_drain_expired(self, consumer: Any) -> None:
        """Called when the bounded wait ran out; the wait ends once this returns and
        every message it waited for is done (``stream.consumer.drop_unacked``)."""

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        budget = self.drain_budget()
        if budget is None:
            await super()._consumer_wait_empty(consumer, logger)
            return
        waiting = asyncio.ensure_future(super()._consumer_wait_empty(consumer, logger))
        done, _ = await asyncio.wait({waiting}, timeout=budget)
        if not done:
            await self.on_drain_expired(consumer)
        await waiting
