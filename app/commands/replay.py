"""``faust -A app replay``: move the worker group's committed offsets (app/replay.py).

Reads the options and the settings, prints the plan, refuses while the group has
members, commits. See the README, "Replay and reprocess".
"""

from __future__ import annotations

import logging
import sys

import click
from faust.cli import option

from app.commands.base import DirectCommand, duration
from app.main import app, settings

EXAMPLE = "2026-11-22T10:00:00Z or epoch seconds/ms"
log = logging.getLogger("sensorstream.replay")


def time_ms(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A time option: ISO 8601 (UTC unless it says otherwise) or an epoch number, as
    milliseconds since the epoch."""
    if value is None:
        return None
    from app.contract import parse_time

    ts = parse_time(value)
    if ts is None:
        raise click.BadParameter(f"{value!r} is not a time: use ISO 8601 ({EXAMPLE})",
                                 param=param)
    return ts // 1000


def partitions(_ctx: click.Context, param: click.Parameter, value: str | None,
               ) -> set[int] | None:
    from app.replay import parse_partitions

    try:
        return parse_partitions(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def fail(message: str, status: int) -> int:
    print(f"{message}", file=sys.stderr)
    return status


def replayable_topics() -> dict[str, str]:
    """The topics the worker group consumes and may replay -> what replaying one does."""
    from app.topics import readings

    app_id = settings.app_id
    found = {topic: "readings are ingested again" for topic in readings.topics}
    found[f"{app_id}-readings-by-sensor"] = ("hand-overs are applied to the windows and "
                                             "written to the sinks again")
    found[f"{app_id}-windows-by-location"] = "base windows are merged into locations again"
    found[settings.aggregates_topic] = "sealed windows are written to the sinks again"
    found[settings.anomalies_topic] = "anomaly events are written to the sinks again"
    return found


def check_topics(chosen: tuple[str, ...]) -> list[str]:
    """The topics to move (default: the input topics); a UsageError names a refused one."""
    allowed = replayable_topics()
    if not chosen:
        from app.topics import readings

        return list(readings.topics)
    for topic in chosen:
        if topic in allowed:
            continue
        if topic.startswith(f"{settings.app_id}-") and topic.endswith("-changelog"):
            why = ("it is a table changelog: a worker reads changelogs in full when it "
                   "recovers its tables, and never as the group's consumer")
        else:
            why = "the worker group does not consume it"
        raise click.BadParameter(f"{topic!r} cannot be replayed: {why}. Replayable: "
                                 f"{', '.join(sorted(allowed))}", param_hint="'--topic'")
    return list(dict.fromkeys(chosen))


@app.command(
    option("--topic", "topics", multiple=True, metavar="TOPIC",
           help="A topic to move (repeatable) [default: the input topics]. Also allowed: "
                "the readings-by-sensor, windows-by-location, aggregates and anomalies "
                "topics; never a table changelog."),
    option("--partitions", "chosen", default=None, callback=partitions, metavar="LIST",
           help="Partitions to move, e.g. 0,2,4-7 [default: all]."),
    option("--to-earliest", is_flag=True, default=False,
           help="Move to the earliest offset still in the log."),
    option("--to-latest", is_flag=True, default=False,
           help="Move to the log end (skip everything not yet processed)."),
    option("--to-offset", type=int, default=None, metavar="N",
           help="Move to offset N (in every chosen partition)."),
    option("--to-time", default=None, callback=time_ms, metavar="TIME",
           help=f"Move to the first record at or after TIME ({EXAMPLE}); the log end "
                "where none is."),
    option("--dry-run", is_flag=True, default=False,
           help="Print the plan only; move nothing (allowed while workers run)."),
    option("--force", is_flag=True, default=False,
           help="Do not refuse while the group has members: try the commit anyway (the "
                "broker refuses it while members are listed; see the README)."),
    option("--wait", "wait", default="0s", callback=duration, metavar="DURATION",
           help="Wait up to DURATION (e.g. 30s) for the group to have no members before "
                "refusing."),
    option("--json", "as_json", is_flag=True, default=False,
           help="Print the plan (and the result) as JSON instead of a table."),
    base=DirectCommand,
)
async def replay(self: DirectCommand, topics: tuple[str, ...], chosen: set[int] | None,
                 to_earliest: bool, to_latest: bool, to_offset: int | None,
                 to_time: int | None, dry_run: bool, force: bool, wait: float,
                 as_json: bool) -> int:
    """Move the worker group's committed offsets (replay from an offset, a time, the
    earliest or the latest offset), after printing the plan."""
    import orjson
    from aiokafka import TopicPartition

    from app import replay as logic
    from stream.kafka import client_kwargs

    targets = [t for t in (
        logic.Target("earliest") if to_earliest else None,
        logic.Target("latest") if to_latest else None,
        logic.Target("offset", to_offset) if to_offset is not None else None,
        logic.Target("time", to_time) if to_time is not None else None) if t]
    if len(targets) != 1:
        return fail("replay: give exactly one of --to-earliest, --to-latest, --to-offset, "
                    "--to-time", 2)
    if to_offset is not None and to_offset < 0:
        return fail(f"replay: --to-offset must not be negative, not {to_offset}", 2)
    target = targets[0]
    try:
        names = check_topics(topics)
    except click.BadParameter as exc:
        return fail(f"replay: {exc.format_message()}", 2)
    client = client_kwargs(settings)
    group = settings.app_id
    try:
        tps = await logic.topic_partitions(client, names, chosen)
        try:
            state = await logic.group_state(client, group)
        except logic.ReplayError as exc:
            if not force:
                raise
            print(f"replay: {exc} (--force: going on)", file=sys.stderr)
            state = logic.GroupState(group, "not known", ())
        if state.members and not dry_run and wait:
            state = await logic.wait_until_empty(client, group, wait)
        if state.members and not dry_run and not force:
            raise logic.ReplayError(logic.refusal(state, settings.session_timeout),
                                    logic.REFUSED)
        rows = await logic.plan(client, group, tps, target, settings.offset_reset)
        if not as_json:
            print(f"consumer group {group}: move to {target.describe()}"
                  f"{' (dry run: nothing is moved)' if dry_run else ''}")
            print(logic.render(rows))
        if state.members:
            note = (f"note: the group has {len(state.members)} member(s) now: "
                    f"{'; '.join(m.describe() for m in state.members)}")
            print(note + (" (moving would be refused: stop the workers first)" if dry_run
                          else " (--force: trying the commit anyway; a live member's next "
                               "commit would overwrite it)"), file=sys.stderr)
        if dry_run:
            if as_json:
                print(orjson.dumps(logic.as_json(group, target, rows, False, state.members),
                                   option=orjson.OPT_INDENT_2).decode())
            return 0
        found = await logic.apply(client, group, rows)
    except logic.ReplayError as exc:
        return fail(f"replay: {exc}", exc.status)
    except Exception as exc:
        log.exception("replay failed")
        return fail(f"replay: {type(exc).__name__}: {exc}; nothing was moved", logic.FAILED)
    wrong = [(r, found[TopicPartition(r.topic, r.partition)]) for r in rows
             if found[TopicPartition(r.topic, r.partition)] != r.target]
    if wrong:
        row, got = wrong[0]
        return fail(f"replay: {row.topic}[{row.partition}] reads back {got} after committing "
                    f"{row.target} ({len(wrong)} partition(s) differ): a group member "
                    "committed meanwhile?", logic.FAILED)
    if as_json:
        print(orjson.dumps(logic.as_json(group, target, rows, True, state.members),
                           option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"moved: {len(rows)} partition(s) of group {group} committed at the target "
              "(read back); the next worker to start resumes there")
    return 0
