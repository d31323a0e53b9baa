"""The consumer's and the group's internals that other modules need: dropping acks,
the pause/resume bookkeeping, where a bulk partition's hand-over ended, the inputs of
the consumer lag, and a resubscription. Each function names the faust-streaming or
aiokafka internal it reads (faust-streaming 0.15, aiokafka 0.14) and why no public
API does the same; ``consumer`` is Faust's consumer (``app.consumer``), the one of
``stream.transport`` where it says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from faust.types import TP, AppT, Message


def drop_ack(consumer: Any, message: Message) -> None:
    """Mark ``message`` done without acknowledging its offsets
    (``stream.transport.Consumer._drop_ack``): ``wait_empty`` ends and no commit covers
    it, so the next worker of the group reads it again."""
    consumer._drop_ack(message)


def drop_unacked(consumer: Any) -> int:
    """Mark every message still unacknowledged as done without acknowledging its offsets
    (``stream.transport.Consumer._drop_ack``), so ``wait_empty`` ends and no commit covers
    them; returns how many. Reads Faust's ``Consumer._unacked_messages``: no public API
    lists the messages an agent holds."""
    unacked = [m for m in list(consumer._unacked_messages) if not m.acked]
    for message in unacked:
        consumer._drop_ack(message)
    return len(unacked)


class Holds(Protocol):
    """What ``guard_pauses`` asks of the operators' holds (``app.pauses.Holds``)."""

    def resumable(self, tps: Any) -> Any: ...

    def forget(self, tps: set[Any]) -> None: ...


def guard_pauses(consumer: Any, holds: Holds) -> None:
    """Route the consumer's pauses and resumptions through ``holds``, so that nothing
    (Faust's recovery after a rebalance, the sink watcher after an outage) resumes a
    partition of a paused topic: it is resumed when the pause is lifted.

    Faust has no hook around its own ``resume_partitions`` calls, so the consumer's
    ``pause_partitions``/``resume_partitions`` are replaced on the instance (once: the
    instance is marked with ``_sensorstream_holds``)."""
    if getattr(consumer, "_sensorstream_holds", None) is holds:
        return
    resume, pause = consumer.resume_partitions, consumer.pause_partitions

    def resume_partitions(tps: Any) -> None:
        resume(holds.resumable(tps))

    def pause_partitions(tps: Any) -> None:
        tps = set(tps)
        holds.forget(tps)
        pause(tps)

    consumer.resume_partitions = resume_partitions
    consumer.pause_partitions = pause_partitions
    consumer._sensorstream_holds = holds


def paused_partitions(consumer: Any) -> set[TP]:
    """The partitions the consumer has paused (Faust's ``Consumer._paused_partitions``,
    the live set: no public API answers whether a partition is paused)."""
    paused: set[TP] = consumer._paused_partitions
    return paused


def forget_buffered(consumer: Any, tps: Iterable[TP]) -> None:
    """Take ``tps`` out of Faust's ``Consumer._buffered_partitions``: a partition Faust
    marked buffer-full would be fetched again once its buffer drains
    (``Consumer.on_buffer_drop``), paused or not."""
    consumer._buffered_partitions.difference_update(tps)


def active_partitions(consumer: Any) -> set[TP]:
    """The partitions the consumer fetches now: assigned, not paused, not buffer-full
    (Faust's ``Consumer._get_active_partitions``)."""
    active: set[TP] = consumer._get_active_partitions()
    return active


def bundle_end(consumer: Any, tp: TP, generation: int | None) -> int | None:
    """The offset after the last bundle of ``tp`` handed to the agents in the rebalance
    ``generation`` (``stream.transport.Consumer._bundle_end``), or None: none was, or
    the consumer is not the bulk transport's."""
    end = getattr(consumer, "_bundle_end", {}).get(tp)
    if end is not None and end[1] == generation:
        offset: int = end[0]
        return offset
    return None


def resubscribe(app: AppT) -> None:
    """Have the conductor subscribe again to its topics' current names, after a topic was
    added to a source (``TopicConductor._flag_changes``: Faust recomputes the
    subscription only when a topic is added to the conductor, after its 45 s lock)."""
    app.topics._flag_changes()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Progress:
    """Where the consumer is, read from memory for the consumer lag: the aiokafka consumer
    under Faust's, the offsets the group committed last, and aiokafka's assignment with
    each partition's position. The aiokafka consumer runs in Faust's consumer thread; its
    state is only read here."""

    client: Any  # aiokafka.AIOKafkaConsumer
    committed: Mapping[TP, int | None]
    states: Any  # aiokafka.consumer.subscription_state.Assignment | None

    def assignment(self) -> list[Any]:
        """The aiokafka consumer's assigned partitions (aiokafka's TopicPartition)."""
        return list(self.client.assignment())

    def highwater(self, tp: Any) -> int | None:
        """The high watermark of ``tp`` from the last fetch (AssertionError: revoked)."""
        highwater: int | None = self.client.highwater(tp)
        return highwater

    def done(self, tp: Any) -> int | None:
        """The group's committed offset of ``tp``, or the consumer's position while
        nothing is committed yet, or None."""
        done = self.committed.get(tp)  # .get: the defaultdict must not grow here
        if done is None and self.states is not None:
            state = self.states.state_value(tp)
            done = state.position if state is not None and state.has_valid_position else None
        return done


def progress(consumer: Any) -> Progress | None:
    """The consumer's ``Progress``, or None before its aiokafka consumer exists. Reads
    Faust's ``Consumer._thread._consumer`` and ``_committed_offset``, and aiokafka's
    ``AIOKafkaConsumer._subscription``: none of them has a public reader that does no
    I/O (``committed()`` asks the broker), and a scrape must not."""
    client = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    if client is None:
        return None
    committed = consumer._committed_offset
    assignment = client._subscription.subscription
    states = assignment.assignment if assignment is not None else None
    return Progress(client, committed, states)
