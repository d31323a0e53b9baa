"""The load itself: the planned files, in order, into the topic, with bounded memory and
a checkpoint of what the broker acknowledged; SIGINT/SIGTERM stop it cleanly.

``FileLoad`` drives one file (read, chunk, send, settle acknowledgements, checkpoint,
pace to ``--max-rate``); ``run`` creates the topic as the worker would when it is
missing, opens the producer, loads every plan, prints the summary and returns the exit
status (0 done, 128 + the signal when stopped, 1 when producing failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.backfill.checkpoint import CHECKPOINT_VERSION, AckedPrefix, write_json_atomically
from app.backfill.envelopes import chunks, kafka_partition
from app.backfill.errors import LoadError, ProduceError
from app.backfill.formats import CsvRecords, IntelRecords, Record, Skip
from app.backfill.lines import LineStream, open_content, raw_position, seek
from app.backfill.plan import FilePlan
from app.backfill.summary import FileResult, Summary
from app.contract import format_ts
from app.progress import Progress

log = logging.getLogger("sensorstream.load")

#: Lines of each reason logged as examples, per file.
EXAMPLES_PER_REASON = 3


@dataclass(frozen=True)
class Options:
    topic: str
    envelope: int = 1000
    chunk_records: int = 10_000
    max_rate: float = 0.0  #: lines per second, 0: as fast as possible
    checkpoint_every: float = 1.0
    in_flight: int = 4  #: chunks sent and not yet acknowledged


class FileLoad:
    """One file into the topic, from its plan's start to its end or to a stop."""

    def __init__(self, plan: FilePlan, producer: Any, partitions: int, options: Options,
                 stop: asyncio.Event,
                 partition_of: Callable[[str, int], int] = kafka_partition) -> None:
        self.plan, self.producer, self.partitions = plan, producer, partitions
        self.options, self.stop, self.partition_of = options, stop, partition_of
        self.prefix = AckedPrefix(plan.start)
        self._saved_at = time.monotonic()
        self._examples: Counter[str] = Counter()
        self._sent_lines = 0

    def _checkpoint(self, complete: bool = False) -> None:
        totals = self.plan.totals + self.prefix.counts
        write_json_atomically(self.plan.checkpoint, {
            "version": CHECKPOINT_VERSION, "file": str(self.plan.path.resolve()),
            "topic": self.options.topic, "fingerprint": self.plan.fingerprint,
            "reading": self.plan.reading, "line": self.prefix.position.line,
            "offset": self.prefix.position.offset, "complete": complete,
            "totals": dict(totals), "updated_at": format_ts(time.time_ns() // 1000)})
        self._saved_at = time.monotonic()

    def _skipped(self, reason: Skip, line: int) -> None:
        if self._examples[reason] < EXAMPLES_PER_REASON:
            self._examples[reason] += 1
            log.warning("%s line %d skipped: %s", self.plan.path.name, line, reason,
                        extra={"file": str(self.plan.path), "line": line,
                               "reason": str(reason)})

    async def _settle(self, ticket: int, futures: list[asyncio.Future]) -> None:
        await asyncio.gather(*futures)
        self.prefix.acked(ticket)
        if time.monotonic() - self._saved_at >= self.options.checkpoint_every:
            self._checkpoint()

    async def run(self) -> FileResult:
        plan, options = self.plan, self.options
        started = time.monotonic()
        if plan.complete:
            return FileResult(plan.path, "already_loaded", plan.start, plan.start, Counter(), 0)
        state = "complete"
        with open_content(plan.path, plan.gzipped) as stream:
            seek(stream, plan.start, plan.path)
            lines = LineStream(stream, plan.start)
            records: Iterable[Record]
            if plan.fmt == "intel":
                records = IntelRecords(lines)
            else:
                assert plan.header is not None and plan.mapping is not None
                records = CsvRecords(lines, plan.header, plan.mapping, plan.delimiter)
            raw_start = raw_position(stream)
            size = plan.fingerprint["size"]
            pending: deque[tuple[int, list[asyncio.Future]]] = deque()
            with Progress(f"load {plan.path.name}", total=max(size - raw_start, 0),
                          unit="bytes", file=str(plan.path)) as progress:
                raw_done = raw_start
                try:
                    for chunk in chunks(records, lines, self.partitions,
                                        envelope=options.envelope,
                                        chunk_records=options.chunk_records,
                                        partition_of=self.partition_of, on_skip=self._skipped,
                                        raw=lambda: raw_position(stream)):
                        if self.stop.is_set():
                            state = "stopped"
                            break
                        futures = [await self.producer.send(options.topic, value, key=key,
                                                            partition=p)
                                   for p, key, value in chunk.messages]
                        chunk.messages = []
                        self._sent_lines += chunk.counts["lines_read"]
                        pending.append((self.prefix.sent(chunk), futures))
                        while pending and (len(pending) > options.in_flight
                                           or all(f.done() for f in pending[0][1])):
                            await self._settle(*pending.popleft())
                        progress.advance(chunk.raw_end - raw_done)
                        raw_done = chunk.raw_end
                        await self._pace(started)
                    while pending:
                        await self._settle(*pending.popleft())
                    if lines.damage is not None:
                        log.warning("%s: cannot be read past line %d (%s): loaded what came "
                                    "before", plan.path.name, lines.line, lines.damage,
                                    extra={"file": str(plan.path), "line": lines.line,
                                           "reason": str(Skip.DAMAGED_GZIP)})
                except Exception as exc:
                    # Nothing after the acknowledged prefix counts: the rerun sends it again.
                    for _ticket, futures in pending:
                        await asyncio.gather(*futures, return_exceptions=True)
                    self._checkpoint()
                    position = self.prefix.position
                    raise ProduceError(
                        f"{plan.path}: stopped by an error: {type(exc).__name__}: {exc}. "
                        f"Checkpoint at line {position.line} "
                        "(every line before it acknowledged); rerun to resume there (what "
                        "reached the broker after it is sent again and dropped by the "
                        "worker's deduplication)") from exc
        self._checkpoint(complete=state == "complete")
        return FileResult(plan.path, state, plan.start, self.prefix.position,
                          self.prefix.counts, time.monotonic() - started)

    async def _pace(self, started: float) -> None:
        """At most ``max_rate`` lines a second; a stop ends the wait."""
        if not self.options.max_rate:
            return
        ahead = self._sent_lines / self.options.max_rate - (time.monotonic() - started)
        if ahead > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), ahead)


async def ensure_topic(client: Mapping[str, Any], topic: str, partitions: int,
                       replication: int = 1, configs: Mapping[str, str] | None = None) -> None:
    """Create the topic as the worker would (its partitions and configs) if it is missing:
    a broker may otherwise create it on first use with its own default partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**client, request_timeout_ms=15_000)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, replication,
                                                    topic_configs=dict(configs or {}))])
                log.info("created topic %s", topic, extra={"topic": topic,
                                                           "partitions": partitions})
    finally:
        await admin.close()


EXIT_FAILED = 1


async def run(plans: list[FilePlan], options: Options, client: Mapping[str, Any], *,
              create_partitions: int, replication: int = 1,
              topic_configs: Mapping[str, str] | None = None,
              partition_of: Callable[[str, int], int] = kafka_partition,
              print_text: Callable[[str], None] = print) -> int:
    """Load ``plans`` in order; SIGINT/SIGTERM stop it cleanly. The exit status: 0 when
    every file is loaded, 128 + the signal when stopped, 1 when producing failed."""
    from aiokafka import AIOKafkaProducer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stopped_by: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if not stopped_by:
            stopped_by.append(sig)
            log.warning("%s: stop producing, wait for the broker's acknowledgements, write "
                        "the checkpoint", sig.name, extra={"signal": sig.name})
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    started = time.monotonic()
    results: list[FileResult] = []
    partitions = 0
    error = None
    try:
        await ensure_topic(client, options.topic, create_partitions, replication, topic_configs)
        producer = AIOKafkaProducer(**client, acks="all", linger_ms=5,
                                    max_batch_size=1024 * 1024,
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            partitions = len(await producer.partitions_for(options.topic))
            for plan in plans:
                if stop.is_set():
                    break
                results.append(await FileLoad(plan, producer, partitions, options, stop,
                                              partition_of).run())
        finally:
            await producer.stop()
    except LoadError as exc:
        error = str(exc)
    except Exception as exc:  # the broker unreachable, a topic that cannot be created, ...
        error = f"{type(exc).__name__}: {exc}"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    done = {r.path for r in results}
    summary = Summary(options.topic, partitions, results,
                      [p.path for p in plans if p.path not in done], time.monotonic() - started,
                      stopped_by[0].name if stopped_by else None, error)
    log.info("load summary", extra={"summary": summary.as_dict()})
    print_text(summary.text())
    if error:
        return EXIT_FAILED
    if stopped_by:
        return 128 + stopped_by[0]
    return 0
