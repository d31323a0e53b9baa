"""A sink built from the settings: one place for the worker (sinks/active.py) and
``reprocess`` (app/reprocess.py), which differ only in the lake's staging and which
lake partitions it may seal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sinks.base import Sink


def make_sink(name: str, settings: Any, staging: Path,
              owns: Callable[[str, int], bool]) -> Sink:
    """The sink ``name`` (``postgres`` or ``lake``); the lake stages under ``staging`` and
    seals the periods of the partitions ``owns`` answers true for."""
    if name == "postgres":
        from sinks.postgres import PostgresSink

        return PostgresSink(
            settings.pg_dsn, settings.pg_schema,
            {"readings": settings.pg_raw_retention,
             "aggregates": settings.pg_aggregate_retention,
             "anomalies": settings.pg_anomaly_retention},
            settings.pg_partitions_ahead, settings.pg_compress_after)
    if name == "lake":
        from sinks.lake import LakeSink
        from sinks.objectstore import open_store

        return LakeSink(
            open_store(settings.lake_url, settings.s3_endpoint or None), staging,
            settings.lake_staging_max_size, settings.lake_staging_alarm_age,
            settings.lake_upload_concurrency, settings.lake_seal_idle,
            settings.allowed_lateness, owns=owns)
    raise ValueError(f"unknown sink {name!r}")
