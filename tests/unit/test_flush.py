"""The producer buffer's flush waits for every message, in order (stream.flush).

A real Faust ProducerBuffer service; only the channel that would hand a message to
Kafka is a stand-in that takes longer than Faust's 0.1 s per message.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.producer import ProducerBuffer

from stream import flush


class SlowChannel:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sent: list[int] = []

    async def publish_message(self, fut: SimpleNamespace, wait: bool = False) -> None:
        await asyncio.sleep(self.delay)
        self.sent.append(fut.n)


async def run(flush_with, delay: float = 0.15, n: int = 5) -> tuple[list[int], int]:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    channel = SlowChannel(delay)
    await buffer.start()
    try:
        for i in range(n):
            buffer.put(SimpleNamespace(n=i, message=SimpleNamespace(channel=channel)))
        await flush_with(buffer)
        return list(channel.sent), buffer.size
    finally:
        await flush.flush(buffer)  # nothing left for stop() to refuse
        await buffer.stop()


async def test_faust_flush_returns_with_messages_unsent():
    """Why the replacement exists: with a slow hand-over, Faust's own flush gives up."""
    original = flush._original_flush
    sent, left = await run(lambda b: original(b))
    assert len(sent) < 5 and left > 0


async def test_flush_waits_for_every_message_in_order():
    flush.install()
    sent, left = await run(lambda b: b.flush())
    assert sent == [0, 1, 2, 3, 4] and left == 0


async def test_flush_of_an_empty_buffer_returns():
    flush.install()
    sent, left = await run(lambda b: b.flush(), n=0)
    assert (sent, left) == ([], 0)
