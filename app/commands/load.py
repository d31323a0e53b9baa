"""``faust -A app load FILE ...``: historical readings from files into the input topic.

The work is in the app/backfill package (plain Python); this module reads the options and
the settings. See the README, "Historical backfill".
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from faust.cli import argument, option

from app.commands.base import DirectCommand, duration
from app.main import app, settings


def _positive(_ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value < 1:
        raise click.BadParameter(f"must be at least 1, not {value}", param=param)
    return value


@app.command(
    argument("files", nargs=-1, required=True,
             type=click.Path(exists=True, dir_okay=False, readable=True)),
    option("--format", "fmt", type=click.Choice(["auto", "intel", "csv"]), default="auto",
           help="Input format; auto: a first line starting with a date is Intel, one with "
                "the delimiter is CSV. Gzip is recognised by its magic bytes."),
    option("--map", "mapping", multiple=True, metavar="FIELD=COLUMN[,...]",
           help="CSV: which column feeds which field: sensor=COL, ts=COL, METRIC=COL, "
                "attr.NAME=COL. Repeatable. Default: the header's id and time columns, "
                "every other column a metric."),
    option("--delimiter", default=",", help="CSV field delimiter."),
    option("--topic", default=None,
           help="Topic to load into [default: the first of SENSORSTREAM_INPUT_TOPICS]."),
    option("--envelope", type=int, default=1000, callback=_positive,
           help="Readings per message at most."),
    option("--chunk-lines", type=int, default=10_000, callback=_positive,
           help="Lines parsed, sent and acknowledged as one unit; bounds memory."),
    option("--max-rate", type=float, default=0.0,
           help="Lines per second at most (0: as fast as the broker takes them)."),
    option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
           help="Where checkpoints are kept [default: SENSORSTREAM_DATA_DIR/load-checkpoints]."),
    option("--checkpoint-every", default="1s", callback=duration,
           help="How often the checkpoint is written while loading."),
    option("--restart", is_flag=True, default=False,
           help="Ignore existing checkpoints: load the files from their first line."),
    base=DirectCommand,
)
async def load(self: DirectCommand, files: tuple[str, ...], fmt: str, mapping: tuple[str, ...],
               delimiter: str, topic: str | None, envelope: int, chunk_lines: int,
               max_rate: float, checkpoint_dir: str | None, checkpoint_every: float,
               restart: bool) -> int:
    """Load historical readings (Intel Lab text or CSV, plain or gzip) into the input topic."""
    import re

    from app.backfill.errors import LoadError
    from app.backfill.mapping import parse_mapping, reserved_names
    from app.backfill.plan import plan_file
    from app.backfill.run import Options, log, run
    from app.logs import configure
    from app.topics import RETENTION_7D, sensor_partition
    from stream.kafka import client_kwargs

    # Progress and the summary are logged at INFO, below Faust's default level (WARN).
    configure("DEBUG" if str(self.loglevel).lower() == "debug" else "INFO")
    if topic is None:
        if settings.input_pattern:
            return _fail("--topic is needed: SENSORSTREAM_INPUT_PATTERN is set, so there is "
                         "no single input topic to default to")
        topic = settings.input_topics[0]
    elif topic not in settings.input_topics and not (
            settings.input_pattern and re.fullmatch(settings.input_pattern, topic)):
        log.warning("topic %s is not an input topic of this deployment: the worker "
                    "will not read it", topic, extra={"topic": topic})
    if len(delimiter) != 1:
        return _fail(f"--delimiter must be one character, not {delimiter!r}")
    if max_rate < 0:
        return _fail("--max-rate must not be negative")
    directory = Path(checkpoint_dir) if checkpoint_dir else (
        Path(settings.data_dir) / "load-checkpoints")
    try:
        column_map = parse_mapping(mapping, reserved_names(settings.attribute_fields))
        plans = [plan_file(Path(f), topic=topic, fmt=fmt, mapping=column_map,
                           delimiter=delimiter, checkpoint_dir=directory,
                           restart=restart, attribute_fields=settings.attribute_fields)
                 for f in files]
    except LoadError as exc:
        return _fail(str(exc))
    options = Options(topic, envelope, chunk_lines, max_rate, checkpoint_every)
    return await run(plans, options, client_kwargs(settings),
                     create_partitions=settings.partitions,
                     replication=settings.replication_factor,
                     topic_configs=RETENTION_7D, partition_of=sensor_partition)


def _fail(message: str) -> int:
    print(f"load: {message}", file=sys.stderr)
    return 2
