"""The one skipped-offset guard every stage uses (stream.guard, issue 19): it finds the
ranges skipped in front of a batch, reads them back, and forgets its expected offsets
when partitions are assigned, through a hook it registers itself."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from mode import Signal

from stream import guard as guard_module
from stream.guard import Gap, SkipGuard, Skipped

TOPIC = "readings"


@pytest.fixture
def broker(monkeypatch):
    """Every partition holds offsets 0..99 except 5 (gone with retention); the group
    committed 10 in partition 0 and nothing elsewhere."""
    asked: list[list[tuple[str, int]]] = []

    async def committed_offsets(kafka: Any, group: str, tps: list[tuple[str, int]],
                                log_start: bool = False) -> dict[tuple[str, int], int]:
        asked.append(list(tps))
        return {tp: 10 for tp in tps if tp[1] == 0} | (
            {tp: 0 for tp in tps if tp[1] != 0} if log_start else {})

    async def read_range(kafka: Any, topic: str, partition: int, start: int, end: int):
        for offset in range(start, end):
            if offset != 5:
                yield offset, b"k", b"v%d" % offset, 1000 + offset

    monkeypatch.setattr(guard_module, "committed_offsets", committed_offsets)
    monkeypatch.setattr(guard_module, "read_range", read_range)
    return asked


class App:
    """A worker's app as far as the guard uses it: its assignment signal."""

    def __init__(self) -> None:
        self.on_partitions_assigned = Signal().with_default_sender(self)


async def test_the_gaps_start_at_the_committed_offsets_then_at_the_positions(broker):
    guard = SkipGuard({}, "group", offset_reset="latest")

    assert await guard.gaps({(TOPIC, 0): 14, (TOPIC, 1): 30}) == [Gap(TOPIC, 0, 10, 14)]
    guard.advance(TOPIC, 0, 20)
    guard.advance(TOPIC, 1, 40)
    assert await guard.gaps({(TOPIC, 1): 41, (TOPIC, 0): 23}) == [Gap(TOPIC, 0, 21, 23)]
    assert broker == [[(TOPIC, 0), (TOPIC, 1)]]  # the group is asked once per partition


async def test_skipped_reads_the_gaps_back_in_order(broker):
    guard = SkipGuard({}, "group", offset_reset="earliest")

    found = [s async for s in guard.skipped({(TOPIC, 1): 3, (TOPIC, 0): 12})]

    assert found == [Skipped(TOPIC, 1, o, b"k", b"v%d" % o, 1000 + o) for o in (0, 1, 2)] + [
        Skipped(TOPIC, 0, o, b"k", b"v%d" % o, 1000 + o) for o in (10, 11)]


async def test_an_expected_offset_from_the_stage_state_replaces_the_positions(broker):
    stored = {0: 3, 1: None}
    guard = SkipGuard({}, "group", expected=lambda _topic, partition: stored[partition])

    gaps = await guard.gaps({(TOPIC, 0): 8, (TOPIC, 1): 50})

    assert gaps == [Gap(TOPIC, 0, 3, 8)] and broker == []  # the group is not asked
    assert [s.offset async for s in guard.read(gaps[0])] == [3, 4, 6, 7]  # 5 is gone
    stored[0] = 8
    assert await guard.gaps({(TOPIC, 0): 8}) == []


async def test_a_guard_for_a_stage_forgets_its_positions_when_partitions_are_assigned(broker):
    worker = App()
    guard = SkipGuard.for_stage(worker, {}, "group", offset_reset="latest")
    guard.advance(TOPIC, 0, 40)
    assert await guard.gaps({(TOPIC, 0): 45}) == [Gap(TOPIC, 0, 41, 45)]

    await worker.on_partitions_assigned.send(set())

    assert await guard.gaps({(TOPIC, 0): 45}) == [Gap(TOPIC, 0, 10, 45)]  # committed again


async def test_the_reset_hook_ends_with_its_guard(broker):
    worker = App()
    guard = SkipGuard.for_stage(worker, {}, "group")
    assert len(list(worker.on_partitions_assigned.iter_receivers(worker))) == 1

    del guard
    gc.collect()

    assert list(worker.on_partitions_assigned.iter_receivers(worker)) == []
