"""A producer flush that waits for every buffered message, so a commit never gets ahead
of the table changelog.

Faust writes table changes to its ProducerBuffer, which one background task hands to
aiokafka in order. Before it commits offsets, Faust flushes that buffer, but
faust-streaming 0.15's ``ProducerBuffer.flush`` returns as soon as one message takes
longer than 0.1 s to hand over. A busy event loop makes that common. Then the offsets
are committed with changelog records still in memory. A SIGKILL at that point loses
those records, and their input is never delivered again. Found by the SIGKILL test in
tests/integration/test_windows.py.

This flush keeps the buffer's order: only the background task sends, and the flush
waits until the queue is empty and nothing is being handed over.
"""

from __future__ import annotations

import asyncio

from faust.transport.producer import ProducerBuffer
from faust.types import FutureMessage

_original_send_pending = ProducerBuffer._send_pending
_original_flush = ProducerBuffer.flush


async def _send_pending(self: ProducerBuffer, fut: FutureMessage) -> None:
    # Counted before the first await: the background task calls this directly after it
    # takes a message off the queue, so "size 0 and nothing sending" means done.
    self._sensorstream_sending = getattr(self, "_sensorstream_sending", 0) + 1
    try:
        await _original_send_pending(self, fut)
    finally:
        self._sensorstream_sending -= 1
        self.message_sent.set()


async def flush(self: ProducerBuffer) -> None:
    """Return once every message put before the call is handed to the client."""
    while self.size or getattr(self, "_sensorstream_sending", 0):
        if self.state != "running" and self.size:
            raise RuntimeError(f"cannot flush: the producer buffer is {self.state}, "
                               f"{self.size} messages unsent")
        self.message_sent.clear()
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)
        except TimeoutError:
            continue  # still sending: check the state again, then wait on


def install() -> None:
    """Replace Faust's flush. Idempotent; called by app.main before any producer runs."""
    if ProducerBuffer.flush is not flush:
        ProducerBuffer._send_pending = _send_pending
        ProducerBuffer.flush = flush
