"""Operators' pauses of input topics: which topics are held, since when, by whom, and which
of this worker's partitions wait for a hold to lift. Faust-free; web/admin.py wires it to
the consumer and the HTTP API.

The holds of the whole group live in a one-partition compacted topic (key: the input
topic, value: the latest change as JSON). Every worker reads it from the start and then
tails it, so a worker that starts later, or is assigned a paused topic's partitions in a
rebalance, holds them too. Until a worker has read that topic to its end it holds every
input topic: it never ingests a topic that may be paused. The newest change of a topic
wins by its time (``at``, the clock of the worker that took the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

#: Compacted: only each topic's latest change matters; no retention deletes a hold.
CONTROL_CONFIG = {"cleanup.policy": "compact"}


class Partition(Protocol):
    topic: str
    partition: int


def control_topic(app_id: str) -> str:
    return f"{app_id}-admin-pauses"


@dataclass(frozen=True)
class Change:
    """A pause (``paused``) or resume of one input topic."""

    topic: str
    paused: bool
    at: float  #: epoch seconds
    by: str  #: the name of the token that asked

    def encode(self) -> tuple[bytes, bytes]:
        return self.topic.encode(), orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, value: bytes) -> Change:
        """The change a control record holds; ValueError when it holds none."""
        try:
            body = orjson.loads(value)
            change = cls(str(body["topic"]), bool(body["paused"]), float(body["at"]),
                         str(body["by"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a pause record: {exc}") from None
        return change


class Holds:
    """The held topics and the partitions whose resumption waits for a hold to lift.

    The consumer's ``resume_partitions`` passes through :meth:`resumable`, so nothing
    (Faust's recovery after a rebalance, the sink watcher after an outage) resumes a held
    partition; a partition it wanted resumed is *withheld* and resumed when the hold
    lifts, unless something paused it again meanwhile (:meth:`forget`).
    """

    def __init__(self, inputs: Sequence[str]) -> None:
        self.inputs = inputs  #: the input topics (a live list: pattern matches join it)
        self.changes: dict[str, Change] = {}  #: the newest change per topic
        self.known = False  #: the control topic was read to its end
        self.withheld: set[Any] = set()

    def paused(self) -> dict[str, Change]:
        return {topic: c for topic, c in sorted(self.changes.items()) if c.paused}

    def held(self, topic: str) -> bool:
        change = self.changes.get(topic)
        if change is not None and change.paused:
            return True
        return not self.known and topic in self.inputs

    def apply(self, change: Change) -> bool:
        """Take ``change`` unless a newer one of its topic is known; True if taken."""
        current = self.changes.get(change.topic)
        if current is not None and (current.at, current.paused) >= (change.at, change.paused):
            return False  # older, or the same again (its record after the forwarded call)
        self.changes[change.topic] = change
        return True

    def resumable(self, tps: Iterable[Partition]) -> set[Any]:
        """Of ``tps`` (to resume), those not held; the held ones are withheld."""
        wanted = set(tps)
        held = {tp for tp in wanted if self.held(tp.topic)}
        self.withheld |= held
        return wanted - held

    def forget(self, tps: Iterable[Partition]) -> None:
        """``tps`` were paused (by a rebalance or a degraded sink): not for us to resume."""
        self.withheld.difference_update(tps)

    def releasable(self, assignment: Iterable[Partition]) -> set[Any]:
        """Withheld partitions still assigned whose hold lifted: to resume now."""
        assigned = set(assignment)
        self.withheld &= assigned
        free = {tp for tp in self.withheld if not self.held(tp.topic)}
        self.withheld -= free
        return free


class Control:
    """The control topic: created if missing (``ensured`` then), read from the start and
    tailed; ``on_change`` gets each change, ``on_known`` fires once its end is reached.
    Changes are written by the worker that takes the request (web/admin.py)."""

    def __init__(self, topic: str, kafka: dict[str, Any],
                 on_change: Callable[[Change], Awaitable[None]],
                 on_known: Callable[[], Awaitable[None]]) -> None:
        self.topic = topic
        self.kafka = kafka
        self.on_change = on_change
        self.on_known = on_known
        self.ensured = asyncio.Event()

    async def ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(**self.kafka, request_timeout_ms=10_000)
        await admin.start()
        try:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(self.topic, 1, 1,
                                                    topic_configs=CONTROL_CONFIG)])
        finally:
            await admin.close()

    async def follow(self, retry: float = 2.0) -> None:
        """Read and tail the topic for good; a broken connection is logged and retried
        (from the start: re-applying a change is harmless)."""
        while True:
            try:
                await self.ensure_topic()
                self.ensured.set()
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot read the operators' pauses (%s): retrying: %s",
                            self.topic, exc, extra={"topic": self.topic})
                await asyncio.sleep(retry)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(**self.kafka, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            known = False
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    try:
                        change = Change.decode(record.value)
                    except ValueError as exc:
                        log.warning("ignored a record of the pauses topic: %s", exc,
                                    extra={"topic": self.topic, "offset": record.offset})
                        continue
                    await self.on_change(change)
                # The fetch's high watermark (right on Tansu, unlike end_offsets()).
                highwater = consumer.highwater(tp)
                if not known and highwater is not None and \
                        await consumer.position(tp) >= highwater:
                    known = True
                    await self.on_known()
        finally:
            await consumer.stop()
