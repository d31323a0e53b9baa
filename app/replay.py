"""Replay: move a consumer group's committed offsets, with a plan first. No Faust.

``faust -A app replay`` (app/commands/replay.py) is the command; this module does the
work with plain aiokafka clients, so that it can be tested and reasoned about alone.

* The plan: per partition the group's committed offset, the partition's earliest offset
  and true log end, the target, and how many messages the group will process again
  (target before its position) or skip (target after it).
* Targets: an offset, the earliest or latest offset, or a time. "Latest" is the log end
  from a fetch's high watermark (stream.transport): some brokers, this project's Tansu
  among them, answer ``ListOffsets(latest)`` with the last batch's base offset + 1.
  A time is turned into "the first offset whose record timestamp is at or after it",
  exactly: the broker's ``offsets_for_times`` answer is only a starting point, then
  records are read forward to the first one at or after the time. Tansu answers per
  record batch, and with the batch's append time rather than its records' own
  timestamps, so its answer can be a whole batch early (measured: 100 records with
  timestamps spread over 100 s in one batch all map to offset 0); it answers
  ``(offset 0, timestamp -1)`` instead of "none" for a time after every record.
* Safety: moving offsets under a live group is refused (``group_members``); committing
  as a non-member is refused by the broker anyway while the group lists members
  (``UNKNOWN_MEMBER_ID``, Tansu and Apache Kafka alike), and a live member's next
  commit would overwrite the moved offsets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, KafkaError

from app.contract import format_ts
from stream import reread

#: Exit statuses of the commands, beside 0 (done) and 2 (a bad argument).
FAILED = 1
REFUSED = 3
BROKER_REFUSED = 4

#: Tansu answers DescribeGroups for a group it has never seen with this error and no
#: members (Apache Kafka: no error, state "Dead").
UNKNOWN_SERVER_ERROR = -1


class ReplayError(Exception):
    """A refusal or failure, reported as it is; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """Where to move: ``earliest``, ``latest``, ``offset`` (``value``: the offset) or
    ``time`` (``value``: milliseconds since the epoch)."""

    kind: str
    value: int | None = None

    def describe(self) -> str:
        if self.kind == "offset":
            return f"offset {self.value}"
        if self.kind == "time":
            return f"time {format_ts((self.value or 0) * 1000)}"
        return self.kind


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    client_host: str

    def describe(self) -> str:
        where = " ".join(part for part in (self.client_id, self.client_host) if part)
        return f"{self.member_id} ({where})" if where else self.member_id


@dataclass(frozen=True)
class GroupState:
    group: str
    state: str
    members: tuple[Member, ...]


@dataclass
class Row:
    """One partition of the plan. ``position``: where the group would resume now (its
    committed offset, or where ``offset_reset`` sends it when it has none)."""

    topic: str
    partition: int
    committed: int | None
    earliest: int
    end: int
    position: int
    target: int

    @property
    def again(self) -> int:
        """Messages processed a second time after the move."""
        return max(0, self.position - self.target)

    @property
    def skipped(self) -> int:
        """Messages never processed by the group after the move."""
        return max(0, self.target - self.position)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "again": self.again, "skipped": self.skipped}


def parse_partitions(text: str | None) -> set[int] | None:
    """``"0,2,5-7"`` -> {0, 2, 5, 6, 7}; None or empty: every partition."""
    if text is None or not text.strip():
        return None
    found: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"{part!r} is not a partition number or a range like 2-5")
        first, last = int(low), int(high) if sep else int(low)
        if last < first:
            raise ValueError(f"{part!r}: the range ends before it starts")
        found.update(range(first, last + 1))
    return found


async def group_state(client: Mapping[str, Any], group: str) -> GroupState:
    """The group's state and members, from DescribeGroups."""
    admin = AIOKafkaAdminClient(**client, request_timeout_ms=15_000)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in responses:
        for described in response.to_object()["groups"]:
            members = tuple(Member(m["member_id"], m["client_id"] or "", m["client_host"] or "")
                            for m in described["members"])
            error = described["error_code"]
            if error == UNKNOWN_SERVER_ERROR and not members:
                return GroupState(group, "unknown to the broker", ())
            if error:
                raise ReplayError(f"cannot read the members of group {group!r}: the broker "
                                  f"answered error {error}; --force skips this check",
                                  REFUSED)
            return GroupState(group, described["state"], members)
    raise ReplayError(f"the broker did not describe group {group!r}; --force skips this check",
                      REFUSED)


def refusal(state: GroupState, session_timeout: float) -> str:
    """Why offsets are not moved while the group has members, and what to do."""
    n = len(state.members)
    listed = "; ".join(m.describe() for m in state.members)
    return (
        f"refused: consumer group {state.group!r} has {n} active member"
        f"{'s' if n != 1 else ''} (state {state.state}): {listed}. Stop the workers first: "
        "a live worker keeps its own positions and its next commit overwrites moved "
        "offsets, and the broker refuses commits from outside a group that has members. "
        f"A worker that was killed stays listed until its session timeout "
        f"({session_timeout:g} s) on Apache Kafka; on Tansu until the group's next join "
        "(start a worker and stop it cleanly). --wait SECONDS waits for the group to empty.")


async def wait_until_empty(client: Mapping[str, Any], group: str, seconds: float,
                           interval: float = 0.5) -> GroupState:
    """The group's state once it has no members, or the last state seen after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        state = await group_state(client, group)
        if not state.members or time.monotonic() >= deadline:
            return state
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


async def topic_partitions(client: Mapping[str, Any], topics: Iterable[str],
                           chosen: set[int] | None) -> list[TopicPartition]:
    """The partitions of ``topics`` (only ``chosen`` ones, when given). Reads the metadata
    of existing topics only: a broker that creates topics on a metadata request (Tansu)
    would otherwise create a mistyped one."""
    topics = list(topics)
    admin = AIOKafkaAdminClient(**client, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            raise ReplayError(f"topic {missing[0]!r} does not exist")
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described}
    tps = []
    for topic in topics:
        numbers = range(counts[topic])
        if chosen is not None:
            absent = sorted(chosen - set(numbers))
            if absent:
                raise ReplayError(f"topic {topic!r} has partitions 0-{counts[topic] - 1}; "
                                  f"there is no partition {absent[0]}", 2)
            numbers = sorted(chosen)
        tps.extend(TopicPartition(topic, p) for p in numbers)
    return tps


async def log_ends(client: Mapping[str, Any], consumer: AIOKafkaConsumer,
                   tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The true log end of each partition (a fetch's high watermark)."""
    from stream.transport import log_end_offsets

    listed = await consumer.end_offsets(tps)
    security = {k: v for k, v in client.items() if k != "bootstrap_servers"}
    return await log_end_offsets(client["bootstrap_servers"], listed, **security)


async def offsets_at(consumer: AIOKafkaConsumer, tps: list[TopicPartition], ts_ms: int,
                     ends: Mapping[TopicPartition, int],
                     ) -> dict[TopicPartition, int]:
    """Per partition, the first offset whose record timestamp is at or after ``ts_ms``
    (the log end when there is none). ``consumer`` has no group and is not assigned."""
    hints = await consumer.offsets_for_times({tp: ts_ms for tp in tps})
    found: dict[TopicPartition, int] = {}
    scan: dict[TopicPartition, int] = {}
    for tp in tps:
        hint = hints.get(tp)
        if hint is None or hint.timestamp is None or hint.timestamp < 0 or hint.offset >= ends[tp]:
            found[tp] = ends[tp]
        else:
            scan[tp] = hint.offset
    if scan:
        consumer.assign(list(scan))
        for tp, start in scan.items():
            consumer.seek(tp, start)
        while scan:
            batch = await consumer.getmany(*scan, timeout_ms=1000)
            for tp in list(scan):
                for record in batch.get(tp, ()):
                    if record.timestamp is not None and record.timestamp >= ts_ms:
                        found[tp] = record.offset
                        del scan[tp]
                        break
                else:
                    if await consumer.position(tp) >= ends[tp]:
                        found[tp] = ends[tp]
                        del scan[tp]
        consumer.unsubscribe()
    return found


async def committed_offsets(client: Mapping[str, Any], group: str,
                            tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
    """The group's committed offsets, None where it has none (joins nothing)."""
    found = await reread.committed_offsets(client, group, [(tp.topic, tp.partition)
                                                           for tp in tps])
    return {tp: found.get((tp.topic, tp.partition)) for tp in tps}


async def plan(client: Mapping[str, Any], group: str, tps: list[TopicPartition],
               target: Target, offset_reset: str) -> list[Row]:
    """What moving ``group`` to ``target`` on ``tps`` means, partition by partition."""
    committed = await committed_offsets(client, group, tps)
    consumer = AIOKafkaConsumer(**client, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        earliest = await consumer.beginning_offsets(tps)
        ends = await log_ends(client, consumer, tps)
        if target.kind == "time":
            assert target.value is not None
            at_time = await offsets_at(consumer, tps, target.value, ends)
    finally:
        await consumer.stop()
    rows = []
    for tp in tps:
        first, end = earliest[tp], ends[tp]
        if target.kind == "earliest":
            goal = first
        elif target.kind == "latest":
            goal = end
        elif target.kind == "time":
            goal = at_time[tp]
        else:
            assert target.value is not None
            goal = target.value
            if not first <= goal <= end:
                raise ReplayError(f"--to-offset {goal} is outside {tp.topic}[{tp.partition}]: "
                                  f"its offsets run from {first} to {end} (the log end)", 2)
        current = committed[tp]
        if current is not None and first <= current <= end:
            position = current
        else:  # none yet, or out of range: the consumer resets as the worker is set up to
            position = first if offset_reset == "earliest" else end
        rows.append(Row(tp.topic, tp.partition, current, first, end, position, goal))
    return rows


async def apply(client: Mapping[str, Any], group: str, rows: list[Row],
                ) -> dict[TopicPartition, int | None]:
    """Commit each row's target for ``group``; return the offsets read back."""
    tps = [TopicPartition(r.topic, r.partition) for r in rows]
    consumer = AIOKafkaConsumer(**client, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        try:
            await consumer.commit({TopicPartition(r.topic, r.partition): r.target
                                   for r in rows})
        except CommitFailedError as exc:
            raise ReplayError(
                f"the broker refused the commit for group {group!r}: the group has members "
                f"({exc.__cause__ or exc}). Nothing was moved. Stop the workers and run "
                "replay again without --force.", BROKER_REFUSED) from None
        except KafkaError as exc:
            raise ReplayError(f"the broker refused the commit for group {group!r}: {exc}. "
                              "Nothing was moved.", BROKER_REFUSED) from None
    finally:
        await consumer.stop()
    return await committed_offsets(client, group, tps)


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def render(rows: list[Row]) -> str:
    """The plan as a table: one line per partition and a total."""
    header = ("topic", "partition", "committed", "earliest", "log end", "target",
              "again", "skipped")
    lines = [(r.topic, str(r.partition), _cell(r.committed), str(r.earliest), str(r.end),
              str(r.target), str(r.again), str(r.skipped)) for r in rows]
    lines.append(("total", "", "", "", "", "", str(sum(r.again for r in rows)),
                  str(sum(r.skipped for r in rows))))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])])


def as_json(group: str, target: Target, rows: list[Row], moved: bool,
            members: tuple[Member, ...] = ()) -> dict[str, Any]:
    return {"group": group, "target": target.describe(), "moved": moved,
            "members": [asdict(m) for m in members],
            "partitions": [r.as_dict() for r in rows],
            "again": sum(r.again for r in rows), "skipped": sum(r.skipped for r in rows)}
