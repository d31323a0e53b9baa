"""A local stack of its own (free ports) and one worker on per-run topics, for the
benchmarks that need the real thing; both are stopped afterwards, whatever happens."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.settings import load
from app.stack import Stack
from tests.integration.harness import Worker, env_without_sensorstream, isolated_stack_settings


@contextmanager
def own_stack(workdir: Path, prefix: str) -> Iterator[tuple[dict[str, str], Worker]]:
    """The worker's settings and the worker (not started yet)."""
    overrides = isolated_stack_settings(workdir / "stack")
    stack = Stack(load(overrides))
    try:
        env = {**env_without_sensorstream(), **overrides, **stack.up()}
        app_id = f"{prefix}-{uuid.uuid4().hex[:6]}"
        env.update({"SENSORSTREAM_APP_ID": app_id, "SENSORSTREAM_INPUT_TOPICS": f"{app_id}-in",
                    "SENSORSTREAM_DLQ_TOPIC": f"{app_id}-dlq",
                    "SENSORSTREAM_LATE_TOPIC": f"{app_id}-late",
                    "SENSORSTREAM_AGGREGATES_TOPIC": f"{app_id}-aggregates",
                    "SENSORSTREAM_ANOMALIES_TOPIC": f"{app_id}-anomalies"})
        worker = Worker(env, workdir / "data", workdir / "worker.log")
        try:
            yield env, worker
        finally:
            worker.stop()
    finally:
        stack.down()


def bootstrap(env: dict[str, str]) -> str:
    """``host:port`` of the stack's broker."""
    return env["SENSORSTREAM_BROKER"].split("://", 1)[1]
