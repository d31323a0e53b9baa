"""The seam's consumer functions (stream.consumer), on stand-ins of Faust's and
aiokafka's consumers with the internals each function reads."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from app.pauses import Change, Holds
from stream.consumer import (
    active_partitions,
    bundle_end,
    drop_ack,
    drop_unacked,
    forget_buffered,
    guard_pauses,
    paused_partitions,
    progress,
    resubscribe,
)


class Message:
    def __init__(self, offset: int, acked: bool = False) -> None:
        self.offset = offset
        self.acked = acked


class Consumer:
    """What the functions use of stream.transport's consumer."""

    def __init__(self, messages: list[Message] = ()) -> None:  # type: ignore[assignment]
        self._unacked_messages = set(messages)
        self._paused_partitions: set[TP] = set()
        self._buffered_partitions: set[TP] = set()
        self.calls: list[tuple[str, set[TP]]] = []

    def _drop_ack(self, message: Message) -> None:
        message.acked = True
        self._unacked_messages.discard(message)

    def _get_active_partitions(self) -> set[TP]:
        return {TP("a", 0), TP("a", 1)} - self._paused_partitions

    def pause_partitions(self, tps: Any) -> None:
        self.calls.append(("pause", set(tps)))

    def resume_partitions(self, tps: Any) -> None:
        self.calls.append(("resume", set(tps)))


def test_drop_unacked_marks_held_messages_done_without_acknowledging_them():
    held, done = Message(5), Message(3, acked=True)
    consumer = Consumer([held, done])
    assert drop_unacked(consumer) == 1
    assert held.acked and consumer._unacked_messages == {done}


def test_drop_ack_marks_one_message_done():
    held, other = Message(5), Message(6)
    consumer = Consumer([held, other])
    drop_ack(consumer, held)
    assert held.acked and consumer._unacked_messages == {other}


def test_guard_pauses_withholds_held_topics_and_is_installed_once():
    holds = Holds(["a", "b"])
    holds.known = True
    holds.apply(Change("a", True, 10.0, "ops"))
    consumer = Consumer()
    guard_pauses(consumer, holds)
    guard_pauses(consumer, holds)  # not wrapped twice
    consumer.resume_partitions([TP("a", 0), TP("b", 0)])
    assert consumer.calls == [("resume", {TP("b", 0)})]
    assert holds.withheld == {TP("a", 0)}
    consumer.pause_partitions([TP("a", 0)])  # paused by someone else: not ours to resume
    assert consumer.calls[-1] == ("pause", {TP("a", 0)})
    assert holds.withheld == set()


def test_the_partition_sets():
    consumer = Consumer()
    consumer._paused_partitions.add(TP("a", 1))
    consumer._buffered_partitions.update({TP("a", 0), TP("a", 1)})
    assert paused_partitions(consumer) == {TP("a", 1)}
    assert active_partitions(consumer) == {TP("a", 0)}
    forget_buffered(consumer, [TP("a", 1)])
    assert consumer._buffered_partitions == {TP("a", 0)}


def test_bundle_end_only_of_the_same_generation():
    consumer = SimpleNamespace(_bundle_end={TP("a", 0): (42, 3)})
    assert bundle_end(consumer, TP("a", 0), 3) == 42
    assert bundle_end(consumer, TP("a", 0), 4) is None
    assert bundle_end(consumer, TP("a", 1), 3) is None
    assert bundle_end(SimpleNamespace(), TP("a", 0), 3) is None  # not the bulk transport


def test_resubscribe_flags_the_conductor():
    flagged = []
    app = SimpleNamespace(topics=SimpleNamespace(_flag_changes=lambda: flagged.append(1)))
    resubscribe(app)  # type: ignore[arg-type]
    assert flagged == [1]


def test_progress_committed_else_position():
    state = {TP("a", 1): SimpleNamespace(position=7, has_valid_position=True),
             TP("a", 2): SimpleNamespace(position=None, has_valid_position=False)}
    states = SimpleNamespace(state_value=state.get)
    client = SimpleNamespace(
        assignment=lambda: {TP("a", 0), TP("a", 1)}, highwater={TP("a", 0): 9}.get,
        _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=states)))
    committed: defaultdict[TP, int | None] = defaultdict(lambda: None, {TP("a", 0): 5})
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=client),
                               _committed_offset=committed)
    now = progress(consumer)
    assert now is not None
    assert sorted(now.assignment()) == [TP("a", 0), TP("a", 1)]
    assert now.highwater(TP("a", 0)) == 9
    assert now.done(TP("a", 0)) == 5
    assert now.done(TP("a", 1)) == 7
    assert now.done(TP("a", 2)) is None
    assert now.done(TP("a", 3)) is None
    assert set(committed) == {TP("a", 0)}  # the defaultdict did not grow


def test_progress_before_the_client_exists():
    assert progress(SimpleNamespace()) is None
    assert progress(SimpleNamespace(_thread=SimpleNamespace(_consumer=None))) is None


def test_progress_without_a_subscription():
    client = SimpleNamespace(_subscription=SimpleNamespace(subscription=None))
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=client),
                               _committed_offset={})
    now = progress(consumer)
    assert now is not None and now.done(TP("a", 0)) is None
