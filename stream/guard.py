"""The one guard against offsets Faust's consumer skipped, for every stage.

faust-streaming 0.15's consumer can drop messages it already fetched when its flow is
suspended around recovery and rebalances, and then commit past them (docs/windows.md,
invariant 6). Each stage that reads a topic holds a ``SkipGuard``: before it handles a
batch it asks the guard which offsets were skipped in front of the batch's first ones,
gets them read back straight from the broker (``stream.reread.read_range``), and after
handling the batch records what was delivered (``advance``). The stage decides what to
do with what was read back and what to log; the guard only notices and reads.

The offset a partition expects next is kept in memory and forgotten when partitions are
assigned (the guard registers that reset itself); a stage whose expected offset lives in
its own state (the per-sensor stage stores it with its windows) passes an ``expected``
callable instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple

from faust.types import AppT

from stream.reread import committed_offsets, read_range

#: The offset a stage expects next in ``(topic, partition)``, None when it knows none.
Expected = Callable[[str, int], int | None]


class Gap(NamedTuple):
    """Offsets ``start`` up to ``end`` (exclusive) of one partition, skipped."""

    topic: str
    partition: int
    start: int
    end: int


class Skipped(NamedTuple):
    """One skipped message, read back from the broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


class SkipGuard:
    """Notices the offsets a stage's consumer skipped and reads them back.

    Without ``expected``, a partition's expected offset starts at the group's committed
    offset. Where the group never committed one, ``offset_reset`` says where its consumer
    starts: ``"earliest"``, the log start, so that records skipped before the first
    delivered one are read back too (a worker killed before its first commit of a
    partition left exactly that); otherwise (``"latest"``, None) the first delivered
    record. ``advance`` then moves it past each delivered offset.

    With ``expected``, that callable gives the expected offset (the stage keeps it in
    its state), None meaning nothing is known to be skipped; ``advance`` is not needed.
    """

    def __init__(self, kafka: Mapping[str, Any], group: str, offset_reset: str | None = None,
                 *, expected: Expected | None = None) -> None:
        self.kafka = kafka
        self.group = group
        self.offset_reset = offset_reset
        self._expected_of = expected
        self._expected: dict[tuple[str, int], int] = {}

    @classmethod
    def for_stage(cls, app: AppT, kafka: Mapping[str, Any], group: str,
                  offset_reset: str | None = None, *,
                  expected: Expected | None = None) -> SkipGuard:
        """A guard that forgets its expected offsets whenever ``app`` is assigned
        partitions (the consumer then starts again from the committed offsets). The
        registration is weak: it ends with the guard."""
        guard = cls(kafka, group, offset_reset, expected=expected)
        app.on_partitions_assigned.connect(guard._on_assigned, weak=True)
        return guard

    async def _on_assigned(self, _app: object, *_args: object, **_kwargs: object) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the expected offsets kept in memory."""
        self._expected.clear()

    async def gaps(self, firsts: Mapping[tuple[str, int], int]) -> list[Gap]:
        """The ranges skipped in front of ``firsts`` (the first offset now delivered per
        ``(topic, partition)``), in the order of ``firsts``."""
        if self._expected_of is not None:
            found = []
            for (topic, partition), first in firsts.items():
                start = self._expected_of(topic, partition)
                if start is not None and first > start:
                    found.append(Gap(topic, partition, start, first))
            return found
        unknown = [tp for tp in firsts if tp not in self._expected]
        if unknown:
            committed = await committed_offsets(self.kafka, self.group, unknown,
                                                log_start=self.offset_reset == "earliest")
            for tp in unknown:
                self._expected[tp] = committed.get(tp, firsts[tp])
        return [Gap(topic, partition, self._expected[topic, partition], first)
                for (topic, partition), first in firsts.items()
                if first > self._expected[topic, partition]]

    async def read(self, gap: Gap) -> AsyncIterator[Skipped]:
        """The messages of ``gap`` still in the log, read back in order (offsets gone
        with retention are missing)."""
        async for offset, key, value, ts in read_range(self.kafka, gap.topic, gap.partition,
                                                       gap.start, gap.end):
            yield Skipped(gap.topic, gap.partition, offset, key, value, ts)

    async def skipped(self, firsts: Mapping[tuple[str, int], int]) -> AsyncIterator[Skipped]:
        """Every message skipped in front of ``firsts``, read back: ``gaps`` then ``read``."""
        for gap in await self.gaps(firsts):
            async for message in self.read(gap):
                yield message

    def advance(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` of ``(topic, partition)`` was delivered and handled."""
        tp = (topic, partition)
        self._expected[tp] = max(self._expected.get(tp, 0), offset + 1)
