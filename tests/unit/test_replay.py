"""The plan arithmetic and texts of replay and reprocess (app/replay.py, app/reprocess.py)."""

from __future__ import annotations

import pytest

from app.replay import GroupState, Member, Row, Target, parse_partitions, refusal, render
from app.reprocess import Span, Summary, default_group, render_plan, render_summary


def test_partitions_lists_and_ranges():
    assert parse_partitions(None) is None
    assert parse_partitions(" ") is None
    assert parse_partitions("0,2,5-7") == {0, 2, 5, 6, 7}
    assert parse_partitions("3, 3,1-1") == {1, 3}
    for bad in ("x", "1-", "-2", "4-2", "1;2"):
        with pytest.raises(ValueError):
            parse_partitions(bad)


def test_a_row_counts_what_is_processed_again_or_skipped():
    back = Row("in", 0, committed=80, earliest=10, end=100, position=80, target=10)
    assert (back.again, back.skipped) == (70, 0)
    ahead = Row("in", 1, committed=None, earliest=0, end=100, position=0, target=100)
    assert (ahead.again, ahead.skipped) == (0, 100)
    assert back.as_dict()["again"] == 70 and ahead.as_dict()["committed"] is None


def test_the_table_has_a_line_per_partition_and_totals():
    rows = [Row("in", 0, 80, 10, 100, 80, 10), Row("in", 1, None, 0, 5, 0, 5)]
    lines = render(rows).splitlines()
    assert lines[0].split() == ["topic", "partition", "committed", "earliest", "log", "end",
                                "target", "again", "skipped"]
    assert lines[2].split() == ["in", "0", "80", "10", "100", "10", "70", "0"]
    assert lines[3].split() == ["in", "1", "-", "0", "5", "5", "0", "5"]
    assert lines[-1].split() == ["total", "70", "5"]


def test_the_refusal_names_the_members_and_what_to_do():
    state = GroupState("g", "Stable", (Member("faust-1", "faust", "/10.0.0.5"),
                                        Member("faust-2", "", "")))
    text = refusal(state, 30)
    assert "2 active members" in text and "faust-1 (faust /10.0.0.5)" in text
    assert "faust-2" in text and "Stop the workers first" in text and "30 s" in text


def test_targets_describe_themselves():
    assert Target("time", 1_000).describe() == "time 1970-01-01T00:00:01.000000Z"
    assert Target("offset", 5).describe() == "offset 5"
    assert Target("earliest").describe() == "earliest"


def test_reprocess_plan_summary_and_group_name():
    spans = [Span("readings", "hand", 0, 3, 10, 12), Span("readings", "hand", 1, 5, 5, 9),
             Span("aggregates", "agg", 0, 7, 9, 9, resumed=True)]
    assert [s.messages for s in spans] == [7, 0, 2]
    lines = render_plan(spans).splitlines()
    assert lines[2].split() == ["readings", "hand", "0", "3", "10", "7", "12"]
    assert "7 (resumed)" in lines[4] and lines[-1].split() == ["total", "9"]
    summary = Summary("g", "a", "b", ["postgres"])
    summary.messages["readings"] += 7
    summary.rows["readings"] += 70
    text = render_summary(summary)
    assert "with consumer group g" in text and text.splitlines()[-1].split() == [
        "readings", "7", "70"]
    assert default_group("app", 0) == "app-reprocess-19700101T000000Z"


def _window(sensor: str, start: str, mean: float, correction: bool = False) -> bytes:
    import orjson

    return orjson.dumps({
        "window": "1m", "window_start": start, "window_end": start.replace(":00Z", ":59Z"),
        "sensor_id": sensor, "metric": "temperature", "count": 2, "missing": 0,
        "mean": mean, "min": mean, "max": mean, "stddev": 0.0, "p50": mean, "p95": mean,
        "p99": mean, "first": start, "last": start, "correction": correction})


def test_reprocess_writes_later_corrections_of_the_ranges_windows_only():
    """PostgreSQL keeps the newest delivered version of a window: a correction sent after
    --until must be written after the range's version, and nothing else past --until."""
    from types import SimpleNamespace

    from app.progress import Progress
    from app.reprocess import Rebuild

    run = Rebuild({}, "g", [], 100, Summary("g", "a", "b", []))
    span = Span("aggregates", "agg", 0, start=10, stop=12, end=20)
    seen: set = set()
    records = [(10, _window("s1", "2026-11-20T10:00:00Z", 1.0)),
               (11, _window("s2", "2026-11-20T10:00:00Z", 2.0)),
               (12, _window("s1", "2026-11-20T10:00:00Z", 1.5, correction=True)),
               (13, _window("s3", "2026-11-20T10:00:00Z", 3.0))]
    with Progress("t", 2, tty=False) as progress:
        for offset, value in records:
            run._take(span, SimpleNamespace(offset=offset, value=value), seen, progress)
    rows = run._pending["aggregates", 0]
    assert [(row[3], row[8], row[-1]) for row in rows] == [
        ("s1", 1.0, 10), ("s2", 2.0, 11), ("s1", 1.5, 12)]
    assert run.summary.messages["aggregates"] == 2 and run.summary.followed == 1
    assert run._done[span.tp] == 12  # progress is committed up to --until only
