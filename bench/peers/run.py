"""Run one peer program over a topic and measure it from outside, by its progress file.

The rate runs from the first progress sample with readings > 0 to the sample where the count
last grew, so start-up (group join, topic creation, recovery) is left out; the readings
already in that first sample are not counted in the rate. Peak RSS is the process's VmHWM.

    python -m bench.peers.run      (smoke: own stack, both peers on both input shapes)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.peers.progress import read_progress

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {
    "faust": [sys.executable, "-m", "faust", "-A", "bench.peers.faust_naive", "worker",
              "-l", "warn", "--without-web"],
    "quix": [sys.executable, "-m", "bench.peers.quix_window"],
}
POLL_S = 0.2


def vmhwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


async def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL to the process group after ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait)


async def run_peer(kind: str, bootstrap: str, topic: str, partitions: int,
                   expected_readings: int, workdir: Path, time_limit: float = 60.0, *,
                   start_deadline: float = 120.0,
                   extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run peer ``kind`` until it has processed ``expected_readings`` or ``time_limit``
    seconds have passed since its first processed reading; fail if it dies or processes
    nothing within ``start_deadline``. A fresh app id (consumer group) every run."""
    app_id = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    rundir = workdir / app_id
    rundir.mkdir(parents=True)
    progress, log = rundir / "progress.json", rundir / f"{kind}.log"
    env = {**os.environ, "BENCH_BROKER": f"kafka://{bootstrap.split('://')[-1]}",
           "BENCH_TOPIC": topic, "BENCH_APP_ID": app_id, "BENCH_PARTITIONS": str(partitions),
           "BENCH_DATA_DIR": str(rundir / "data"), "BENCH_PROGRESS": str(progress),
           **(extra_env or {})}
    env.pop("BENCH_WEB_PORT", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(COMMANDS[kind], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{kind} exited ({process.returncode}):\n{log_tail(log)}")
            sample = read_progress(progress)
            if sample and sample["readings"] > 0:
                first = first or sample
                if last is None or sample["readings"] > last["readings"]:
                    last = sample
                if (last["readings"] >= expected_readings
                        or time.time() - first["t"] >= time_limit):
                    break
            elif time.monotonic() - started > start_deadline:
                raise TimeoutError(f"{kind}: no reading processed within {start_deadline:.0f} s"
                                   f":\n{log_tail(log)}")
            await asyncio.sleep(POLL_S)
        peak = vmhwm_mib(process.pid)
    finally:
        await stop(process)
    assert first is not None and last is not None
    seconds = last["t"] - first["t"]
    return {"engine": kind, "readings": last["readings"], "seconds": round(seconds, 2),
            "readings_per_s": round((last["readings"] - first["readings"]) / seconds)
            if seconds > 0 else None,
            "peak_rss_mib": round(peak, 1) if peak is not None else None,
            "complete": last["readings"] >= expected_readings}


async def smoke(workdir: Path, readings: int = 20_000, partitions: int = 8) -> None:
    from collections import Counter

    from app.settings import load
    from app.simulator import Plan, messages
    from app.stack import Stack
    from tests.integration.harness import create_topic, isolated_stack_settings, produce

    overrides = isolated_stack_settings(workdir / "stack")
    stack = Stack(load(overrides))
    try:
        env = await asyncio.to_thread(stack.up)  # it runs its own event loops
        bootstrap = env["SENSORSTREAM_BROKER"].split("://", 1)[1]
        start_us = int(time.time() * 1e6) - 3600 * 10**6
        for envelope in (1, 100):
            topic = f"peers-smoke-{envelope}-{uuid.uuid4().hex[:6]}"
            plan = Plan(sensors=54, count=readings, speed=0, envelope=envelope, seed=1,
                        start_us=start_us)
            await create_topic(bootstrap, topic, partitions)
            await produce(bootstrap, topic, ((k, v) for _ts, k, v in messages(plan, Counter())))
            runs: list[tuple[str, dict[str, str]]] = [("faust", {}), ("quix", {})]
            if envelope == 1:
                runs.append(("quix", {"BENCH_QUIX_REKEY": "0"}))
            for kind, extra in runs:
                result = await run_peer(kind, bootstrap, topic, partitions, readings, workdir,
                                        time_limit=30.0, extra_env=extra)
                print({"envelope": envelope, **extra, **result}, flush=True)
    finally:
        await asyncio.to_thread(stack.down)


if __name__ == "__main__":
    import tempfile

    asyncio.run(smoke(Path(tempfile.mkdtemp(prefix="bench-peers-"))))
