"""``make demo``: ready within 90 s, lists the simulated motes, Ctrl-C stops everything."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import duckdb
import pytest

from app.stack import pid_alive

from .harness import (
    ROOT,
    env_without_sensorstream,
    eventually,
    free_port,
    http_get,
    isolated_stack_settings,
)

pytestmark = pytest.mark.integration


async def watch_minute_windows_change(url: str) -> None:
    """What a user watching a mote's 1-minute windows sees while the simulator runs: the
    newest window is open, and it fills or a newer one opens."""
    def newest():
        status, body = http_get(url)
        assert status == 200, body
        windows = body["windows"]
        if not windows:
            return None
        window = windows[-1]
        return window["start"], window["open"], window["metrics"]["temperature"]["count"]
    first = await eventually(newest, "a 1-minute window of mote 1", deadline=60)
    assert first[1], f"the newest window is open while readings arrive: {first}"

    def changed():
        now = newest()
        return now if now != first and (now[0] > first[0] or now[2] > first[2]) else None
    later = await eventually(changed, f"mote 1's windows change after {first}", deadline=90)
    assert later[1], later


async def test_demo_runs_and_stops_what_it_started(tmp_path):
    stack_dir = tmp_path / "stack"
    port = free_port()
    env = {**env_without_sensorstream(), **isolated_stack_settings(stack_dir),
           "SENSORSTREAM_WEB_PORT": str(port)}
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115
    demo = subprocess.Popen([sys.executable, "-m", "app.demo"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready():
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()
            try:
                return http_get(f"{url}/ready")[0] == 200
            except OSError:
                return False
        await eventually(ready, "the demo's /ready answers 200", deadline=90)
        state = json.loads((stack_dir / "stack.json").read_text())

        def motes():
            status, body = http_get(f"{url}/sensors")
            return status == 200 and {s["sensor_id"] for s in body["sensors"]} == {
                str(i) for i in range(1, 55)}
        await eventually(motes, "/sensors lists the 54 simulated motes", deadline=60)
        status, mote = http_get(f"{url}/sensors/1")
        assert status == 200
        assert set(mote["metrics"]) >= {"temperature", "light", "voltage"}
        await watch_minute_windows_change(f"{url}/sensors/1/aggregates?window=1m"
                                          "&metric=temperature")

        def anomalies():  # the simulator injects them by default (2 % of readings)
            status, body = http_get(f"{url}/anomalies")
            assert status == 200, body
            return body["anomalies"]
        found = await eventually(anomalies, "anomalies at /anomalies", deadline=120)
        assert all(a["detector"] and a["reason"] for a in found)
        status, quality = http_get(f"{url}/quality")
        assert status == 200 and quality["sensors"] == 54, quality
        assert quality["counts"]["accepted"] > 0 and quality["freshness_s"]["p50"] > 0

        # History: the local PostgreSQL and the local lake fill (README's one-liners).
        dsn = json.loads((stack_dir / "stack.json").read_text())["postgres"]["dsn"]

        async def in_postgres():
            conn = await asyncpg.connect(dsn)
            try:
                return await conn.fetchval("SELECT count(*) FROM sensorstream.readings") > 1000
            except asyncpg.UndefinedTableError:
                return False
            finally:
                await conn.close()
        await eventually(in_postgres, "readings in the demo's PostgreSQL", deadline=60)

        def in_lake():
            files = list((stack_dir / "lake" / "raw").rglob("*.parquet"))
            return files and duckdb.sql(
                f"SELECT count(*) FROM read_parquet('{stack_dir}/lake/raw/**/*.parquet', "
                "hive_partitioning = true)").fetchall()[0][0] > 1000
        await eventually(in_lake, "readings in the demo's local lake", deadline=60)
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(60)
    output = Path(tmp_path / "demo.log").read_text()
    assert code == 0, output
    assert "stopped: simulator, worker, s3, postgres, broker" in output
    for service in state.values():
        assert not pid_alive(service["pid"])
    assert not (stack_dir / "stack.json").exists()
