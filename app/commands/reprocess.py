"""``faust -A app reprocess``: rebuild the sinks for a time range (app/reprocess.py).

Reads the options and the settings, prints the plan, runs it with a consumer group of
its own and prints a summary. See the README, "Replay and reprocess".
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import click
from faust.cli import option

from app.commands.base import DirectCommand
from app.commands.replay import EXAMPLE, fail, partitions, time_ms
from app.main import app, settings

DATASET_NAMES = ("readings", "aggregates", "anomalies")
log = logging.getLogger("sensorstream.reprocess")


def names(allowed: tuple[str, ...]) -> Callable[..., tuple[str, ...] | None]:
    """A click callback: a comma-separated list of ``allowed`` names."""

    def parse(_ctx: click.Context, param: click.Parameter, value: str | None,
              ) -> tuple[str, ...] | None:
        if value is None or not value.strip():
            return None
        found = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        unknown = [v for v in found if v not in allowed]
        if unknown:
            raise click.BadParameter(f"{unknown[0]!r} is not one of {', '.join(allowed)}",
                                     param=param)
        return found
    return parse


@app.command(
    option("--since", required=True, callback=time_ms, metavar="TIME",
           help=f"Start at the first record at or after TIME ({EXAMPLE}): the time the "
                "worker handed the rows to the sinks."),
    option("--until", default=None, callback=time_ms, metavar="TIME",
           help="Stop before the first record after TIME [default: the log end at start]."),
    option("--sinks", "sink_names", default=None, callback=names(("postgres", "lake")),
           metavar="LIST", help="Sinks to rebuild, e.g. postgres [default: every enabled "
                                "sink]."),
    option("--datasets", default=None, callback=names(DATASET_NAMES), metavar="LIST",
           help="Datasets to rebuild [default: readings,aggregates,anomalies]."),
    option("--partitions", "chosen", default=None, callback=partitions, metavar="LIST",
           help="Partitions of the source topics, e.g. 0,2-3 [default: all]."),
    option("--group", default=None, metavar="NAME",
           help="The consumer group to read with [default: <app id>-reprocess-<UTC stamp>]; "
                "an earlier run's group resumes where it stopped."),
    option("--dry-run", is_flag=True, default=False,
           help="Print the plan only; write nothing."),
    option("--json", "as_json", is_flag=True, default=False,
           help="Print the plan and the summary as JSON."),
    base=DirectCommand,
)
async def reprocess(self: DirectCommand, since: int, until: int | None,
                    sink_names: tuple[str, ...] | None, datasets: tuple[str, ...] | None,
                    chosen: set[int] | None, group: str | None, dry_run: bool,
                    as_json: bool) -> int:
    """Rebuild the sinks (PostgreSQL, the lake) for a time range from the topics they are
    fed from, without touching the live worker group."""
    from pathlib import Path

    import orjson

    from app import reprocess as logic
    from app.progress import Progress
    from app.replay import ReplayError
    from stream.kafka import client_kwargs

    if until is not None and until < since:
        return fail("reprocess: --until must not be before --since", 2)
    enabled = settings.enabled_sinks
    chosen_sinks = sink_names or enabled
    if not chosen_sinks:
        return fail("reprocess: no sink is enabled: set SENSORSTREAM_PG_DSN and/or "
                    "SENSORSTREAM_LAKE_URL (SENSORSTREAM_SINKS)", 2)
    missing = [name for name in chosen_sinks if name not in enabled]
    if missing:
        return fail(f"reprocess: --sinks: the {missing[0]} sink is not enabled in these "
                    f"settings (enabled: {', '.join(enabled) or 'none'})", 2)
    group = group or logic.default_group(settings.app_id)
    if group == settings.app_id:
        return fail(f"reprocess: --group: {group!r} is the live worker group; reprocess "
                    "reads with a group of its own", 2)
    topics = logic.source_topics(settings.app_id, settings.aggregates_topic,
                                 settings.anomalies_topic)
    topics = {name: topic for name, topic in topics.items()
              if name in (datasets or DATASET_NAMES)}
    client = client_kwargs(settings)
    since_text, until_text = logic.describe_range(since, until)
    try:
        spans = await logic.plan(client, group, topics, since, until, chosen)
    except ReplayError as exc:
        return fail(f"reprocess: {exc}", exc.status)
    except Exception as exc:
        log.exception("reprocess: no plan")
        return fail(f"reprocess: cannot read the source topics: {type(exc).__name__}: {exc}", 1)
    total = sum(span.messages for span in spans)
    if as_json:
        plan_doc = {"group": group, "since": since_text, "until": until_text,
                    "sinks": list(chosen_sinks),
                    "partitions": [{**vars(s), "messages": s.messages} for s in spans],
                    "messages": total}
    else:
        print(f"reprocess {since_text} .. {until_text} into {', '.join(chosen_sinks)} with "
              f"consumer group {group}{' (dry run: nothing is written)' if dry_run else ''}")
        print(logic.render_plan(spans))
    if dry_run:
        if as_json:
            print(orjson.dumps({"plan": plan_doc}, option=orjson.OPT_INDENT_2).decode())
        return 0
    staging = Path(settings.lake_staging) / "reprocess" / group
    sinks = logic.build_sinks(settings, chosen_sinks, staging)
    summary = logic.Summary(group, since_text, until_text, list(chosen_sinks))
    run = logic.Rebuild(client, group, sinks, settings.sink_batch_rows, summary)
    try:
        with Progress("reprocess", total, "messages", group=group) as progress:
            await run.run(spans, progress)
    except ReplayError as exc:
        return fail(f"reprocess: {exc} (run again with --group {group} to resume)",
                    exc.status)
    except Exception as exc:
        log.exception("reprocess failed")
        return fail(f"reprocess: {type(exc).__name__}: {exc} (run again with --group {group} "
                    "to resume)", 1)
    logic.remove_staging(staging)
    if as_json:
        print(orjson.dumps({"plan": plan_doc, "summary": summary.as_dict()},
                           option=orjson.OPT_INDENT_2).decode())
    else:
        print(logic.render_summary(summary))
    if summary.undecodable:
        print(f"reprocess: {summary.undecodable} record(s) could not be decoded",
              file=sys.stderr)
        return 1
    return 0
