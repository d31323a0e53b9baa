"""The local stack: answers, starts nothing twice, stops exactly what it started."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import asyncpg
import botocore.session
import pytest

from app.stack import S3_CREDENTIALS, pid_alive
from stream.kafka import kafka_answers

from .harness import ROOT, free_port

pytestmark = pytest.mark.integration


def run_stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.stack", command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def state(env):
    import json
    from pathlib import Path
    return json.loads((Path(env["SENSORSTREAM_STACK_DIR"]) / "stack.json").read_text())


def test_up_twice_then_down(tmp_path, stack_env, bootstrap):
    env = {k: v for k, v in stack_env.items() if not k.startswith("SENSORSTREAM_")}
    env.update({
        "SENSORSTREAM_STACK_DIR": str(tmp_path / "stack"),
        "SENSORSTREAM_STACK_PG_PORT": str(free_port()),
        "SENSORSTREAM_STACK_S3_PORT": str(free_port()),
        # An existing broker: used, never started or stopped by this stack.
        "SENSORSTREAM_BROKER": stack_env["SENSORSTREAM_BROKER"],
    })
    first = run_stack("up", env)
    assert first.returncode == 0, first.stderr
    assert "SENSORSTREAM_PG_DSN=postgresql://" in first.stdout
    started = state(env)
    assert started["broker"] == {"started": False, "url": env["SENSORSTREAM_BROKER"]}
    env_file = (tmp_path / "stack" / "env").read_text()
    assert f"export SENSORSTREAM_PG_DSN={started['postgres']['dsn']}" in env_file

    second = run_stack("up", env)
    assert second.returncode == 0, second.stderr
    again = state(env)
    assert again["postgres"]["pid"] == started["postgres"]["pid"]
    assert again["s3"]["pid"] == started["s3"]["pid"]

    async def pg() -> int:
        conn = await asyncpg.connect(started["postgres"]["dsn"])
        try:
            return await conn.fetchval("select 1")
        finally:
            await conn.close()
    assert asyncio.run(pg()) == 1
    s3 = botocore.session.get_session().create_client(
        "s3", endpoint_url=started["s3"]["endpoint"], region_name="us-east-1",
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    s3.head_bucket(Bucket=started["s3"]["bucket"])

    down = run_stack("down", env)
    assert down.returncode == 0, down.stderr
    assert "stopped: s3, postgres" in down.stdout
    assert not pid_alive(started["postgres"]["pid"])
    assert not pid_alive(started["s3"]["pid"])
    assert kafka_answers(bootstrap), "down stopped a broker it did not start"
