"""The real local stack, started once for the session on free loopback ports.

If a service cannot start (a missing binary, say), the session fails with the
stack's message: a missing service is never skipped.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pytest

from app import settings as settings_mod
from app.stack import Stack

from .harness import Worker, deployment_env, env_without_sensorstream, isolated_stack_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    overrides = isolated_stack_settings(tmp_path_factory.mktemp("stack"))
    stack = Stack(settings_mod.load(overrides))
    stack.overrides = overrides
    yield stack
    stack.down()


@pytest.fixture(scope="session")
def stack_env(stack) -> dict[str, str]:
    env = stack.up()
    return {**env_without_sensorstream(), **stack.overrides, **env}


@pytest.fixture(scope="session")
def bootstrap(stack_env) -> str:
    return stack_env["SENSORSTREAM_BROKER"].split("://", 1)[1]


_serial = itertools.count()


@pytest.fixture
def app_env(stack_env) -> dict[str, str]:
    """Settings of one isolated deployment (``deployment_env``) per test."""
    return deployment_env(stack_env, f"t{next(_serial)}-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def make_worker(app_env, tmp_path):
    workers: list[Worker] = []

    def make(data_dir: Path | None = None, **extra: str) -> Worker:
        n = len(workers)
        worker = Worker({**app_env, **extra}, data_dir or tmp_path / f"data{n}",
                        tmp_path / f"worker{n}.log")
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()
