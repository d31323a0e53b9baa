"""Only the worker command drops the local tables; the operators' commands, which may
run beside a worker sharing its data directory, leave them alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .harness import ROOT, eventually

pytestmark = pytest.mark.integration


async def test_commands_keep_the_tables_the_worker_drops_them(make_worker, app_env, tmp_path):
    data_dir = tmp_path / "data"
    env = {**app_env, "SENSORSTREAM_DATA_DIR": str(data_dir)}
    tabledir = Path(subprocess.run(
        [sys.executable, "-c", "from app.main import app; print(app.conf.tabledir)"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip())
    assert tabledir.is_relative_to(data_dir)
    marker = tabledir / "state-marker"
    marker.parent.mkdir(parents=True)
    marker.write_text("left by an earlier run")

    listed = subprocess.run([sys.executable, "-m", "faust", "-A", "app", "tables"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "state" in listed.stdout
    assert marker.exists(), "a command other than worker removed the local tables"

    worker = make_worker(data_dir).start()
    await worker.ready()
    assert not marker.exists(), "the worker started from a local store"
    await eventually(lambda: "local tables dropped" in worker.log_tail(200_000),
                     "the worker logs that it dropped the local tables")
