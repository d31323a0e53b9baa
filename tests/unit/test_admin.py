"""The operators' controls without a worker: which partitions a pause holds and when they
are resumed (app.pauses), the request bodies (app.admin_requests), and the lake's
seal-now, retry-now and staging clean-up on a local directory. The worker group is in
tests/integration/test_admin.py."""

from __future__ import annotations

import time
from collections import namedtuple

import pytest

from app.admin_requests import BadBody, forwarded_at, input_topic, json_object, seal_target
from app.pauses import Change, Holds
from sinks.base import Backoff, Batch
from sinks.objectstore import FileStore
from sinks.records import READINGS, period_of_dir

from .test_sinks import BrokenStore, lake, reading, sealed_rows, until

TP = namedtuple("TP", "topic partition")
A0, A1, B0 = TP("a", 0), TP("a", 1), TP("b", 0)


def known_holds() -> Holds:
    holds = Holds(["a", "b"])
    holds.known = True
    return holds


def test_until_the_pauses_are_read_every_input_topic_is_held():
    holds = Holds(["a", "b"])
    assert holds.resumable({A0, B0, TP("own-changelog", 0)}) == {TP("own-changelog", 0)}
    holds.known = True
    assert holds.releasable({A0, A1, B0}) == {A0, B0}
    assert holds.withheld == set()


def test_a_held_partition_waits_for_its_pause_to_lift():
    holds = known_holds()
    holds.apply(Change("a", True, 10.0, "ops"))
    assert holds.resumable({A0, A1, B0}) == {B0}  # Faust's recovery after a rebalance
    assert holds.releasable({A0, A1, B0}) == set()
    holds.apply(Change("a", False, 11.0, "ops"))
    assert holds.releasable({A0, B0}) == {A0}  # A1 was revoked meanwhile
    assert not holds.withheld


def test_a_pause_lifted_while_a_sink_holds_the_partitions_leaves_them_to_the_sink():
    holds = known_holds()
    holds.apply(Change("a", True, 10.0, "ops"))
    holds.resumable({A0})  # withheld
    holds.forget({A0, B0})  # the sink watcher paused everything: a sink is degraded
    holds.apply(Change("a", False, 11.0, "ops"))
    assert holds.releasable({A0, B0}) == set()  # not ours to resume
    assert holds.resumable({A0, B0}) == {A0, B0}  # the sink recovered: it resumes them


def test_the_sink_watcher_never_resumes_an_operators_pause():
    holds = known_holds()
    holds.forget({A0, B0})  # a sink degraded: all paused
    holds.apply(Change("a", True, 10.0, "ops"))  # operator pauses meanwhile
    assert holds.resumable({A0, B0}) == {B0}  # the sink recovered
    holds.apply(Change("a", False, 12.0, "ops"))
    assert holds.releasable({A0, B0}) == {A0}


def test_the_newest_change_of_a_topic_wins():
    holds = known_holds()
    assert holds.apply(Change("a", True, 10.0, "ops"))
    assert holds.apply(Change("a", False, 12.0, "ci"))
    assert not holds.apply(Change("a", True, 10.0, "ops"))  # its record, read late
    assert not holds.apply(Change("a", False, 12.0, "ci"))  # forwarded, then its record
    assert holds.paused() == {}
    assert holds.apply(Change("a", True, 13.0, "ops"))
    assert list(holds.paused()) == ["a"] and holds.paused()["a"].by == "ops"


def test_a_change_round_trips_and_a_bad_record_is_refused():
    change = Change("in-1", True, 1_700_000_000.25, "ops")
    key, value = change.encode()
    assert key == b"in-1" and Change.decode(value) == change
    for bad in (b"", b"{", b"[]", b'{"topic": "a"}', b'{"topic":"a","paused":1,"at":"x","by":1}'):
        with pytest.raises(ValueError, match="not a pause record"):
            Change.decode(bad)


@pytest.mark.parametrize("raw, message", [
    (b"", "expected a JSON body"),
    (b"{", "expected a JSON body"),
    (b"[1]", "expected a JSON object"),
])
def test_a_body_that_is_no_json_object_is_refused(raw, message):
    with pytest.raises(BadBody, match=message):
        json_object(raw, '{"topic": "x"}')


@pytest.mark.parametrize("body, message", [
    ({}, "naming an input topic: in-a, in-b"),
    ({"topic": 3}, "naming an input topic"),
    ({"topic": "dlq"}, "'dlq' is not an input topic; only these can be paused: in-a, in-b"),
])
def test_only_an_input_topic_can_be_paused(body, message):
    with pytest.raises(BadBody, match=message):
        input_topic(body, ["in-a", "in-b"])


def test_an_input_topic_is_accepted_and_a_forwarded_change_needs_its_time():
    assert input_topic({"topic": "in-b"}, ["in-a", "in-b"]) == "in-b"
    assert forwarded_at({"at": 1_700_000_000.5}) == 1_700_000_000.5
    for body in ({}, {"at": "now"}, {"at": True}, {"at": -1}):
        with pytest.raises(BadBody, match="needs its time"):
            forwarded_at(body)


def test_seal_targets():
    dataset, start = seal_target({"hour": "2026-11-22T10:37:12Z"})
    assert dataset == "readings"
    assert start == period_of_dir("raw/dt=2026-11-22/hour=10")
    assert seal_target({"dataset": "aggregates", "day": "2026-11-22T23:59:59Z"}) == (
        "aggregates", period_of_dir("aggregates/window=1m/dt=2026-11-22"))
    assert seal_target({"dataset": "anomalies", "day": "2026-11-22"})[0] == "anomalies"


@pytest.mark.parametrize("body, message", [
    ({}, "expected"),
    ({"hour": "yesterday"}, "hour='yesterday' is not a time"),
    ({"dataset": "aggregates", "hour": "2026-11-22T10:00Z"}, "per day: send 'day'"),
    ({"day": "2026-11-22"}, "per hour: send 'hour'"),
    ({"dataset": "weather", "hour": "2026-11-22T10:00Z"}, "dataset must be one of"),
])
def test_bad_seal_targets(body, message):
    with pytest.raises(BadBody, match=message):
        seal_target(body)


# -- the lake's operator actions on a local directory -------------------------------------


async def test_seal_now_seals_the_owned_period_before_the_idle_timeout(tmp_path):
    store = FileStore(tmp_path / "lake")
    sink = lake(tmp_path, store, seal_idle=3600, owns=lambda _d, p: p == 0)
    await sink.start()
    await sink.write(Batch(READINGS, 0, [reading(i) for i in range(6)]))
    await sink.write(Batch(READINGS, 0, [reading(i) for i in range(3, 9)]))  # 3 twice
    await sink.write(Batch(READINGS, 1, [reading(i, "s2") for i in range(4)]))
    await until(lambda: not sink._staged)
    hour = READINGS.lake_dir(reading(0))
    start = period_of_dir(hour)
    assert await sink.seal_now("readings", start - 3600 * 10**6) == []  # another hour
    sealed = await sink.seal_now("readings", start)
    assert sealed == [{"directory": hour, "partition": 0, "files": 2, "rows": 9,
                       "duplicates_removed": 3, "staged_not_uploaded": 0}]
    names = sorted(p.name for p in (tmp_path / "lake" / hour).glob("*.parquet"))
    assert [n.split("-")[0] for n in names] == ["part", "sealed"]  # p1: not this worker's
    assert len(sealed_rows(tmp_path / "lake")) == 9 + 4
    await sink.stop()


class Longest:
    """A backoff's random source that always waits the longest."""

    def uniform(self, _low: float, high: float) -> float:
        return high


async def test_retry_uploads_skips_the_backoff(tmp_path):
    store = BrokenStore(tmp_path / "lake")
    store.down = True
    sink = lake(tmp_path, store, seal_idle=3600, backoff=Backoff(base=60, cap=60, rng=Longest()))
    await sink.start()
    await sink.write(Batch(READINGS, 0, [reading(i) for i in range(5)]))
    await until(lambda: sink.last_upload_error is not None)  # failed: now waits up to 60 s
    store.down = False
    began = time.monotonic()
    assert sink.retry_uploads() == 1
    await until(lambda: not sink._staged, deadline=5)
    assert time.monotonic() - began < 5
    await sink.stop()


async def test_cleanup_removes_temp_and_stored_files_and_keeps_unverified_ones(tmp_path):
    store = BrokenStore(tmp_path / "lake")
    sink = lake(tmp_path, store, seal_idle=3600)
    await sink.start()
    await sink.write(Batch(READINGS, 0, [reading(i) for i in range(5)]))
    await until(lambda: not sink._staged)
    uploaded = next((tmp_path / "lake" / "raw").rglob("part-p0-*.parquet"))
    store.down = True
    await sink.write(Batch(READINGS, 0, [reading(i) for i in range(5, 9)]))
    unverified = list(sink._staged)
    await until(lambda: sink.last_upload_error is not None)
    # A copy of a stored part staged again (as a crash between upload and delete leaves
    # it), a temporary file of a write cut short, one being written now, a merge's leftover.
    staged_copy = sink.pending / uploaded.relative_to(tmp_path / "lake")
    staged_copy.write_bytes(uploaded.read_bytes())
    sink._stage(staged_copy, staged_copy.stat().st_size, time.time())
    cut_short = staged_copy.parent / "part-p0-1-dead.parquet.tmp"
    cut_short.write_bytes(b"half a file")
    in_progress = staged_copy.parent / "part-p0-2-live.parquet.tmp"
    in_progress.write_bytes(b"being written")
    sink._writing.add(in_progress)
    leftover = sink.sealing / "merge.parquet"
    leftover.write_bytes(b"merged, never stored")

    result = await sink.cleanup_staging()
    assert sorted(result["removed"]) == sorted(
        p.relative_to(sink.staging).as_posix() for p in (cut_short, staged_copy, leftover))
    assert result["kept_not_uploaded"] == len(unverified)
    assert all(p.exists() for p in unverified) and in_progress.exists()
    assert not cut_short.exists() and not staged_copy.exists() and not leftover.exists()
    store.down = False
    sink.retry_uploads()
    await until(lambda: not sink._staged)  # the removed copy is not uploaded again: skipped
    assert uploaded.exists()
    await sink.stop()
