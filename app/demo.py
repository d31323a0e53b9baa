"""``make demo``: the local stack, a worker and the simulator; Ctrl-C stops what it started."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from app import settings as settings_mod
from app.stack import Stack, StackError, spawn, terminate, wait_until

READY_DEADLINE = 90.0


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        terminate(process.pid, deadline=20)
        process.wait()


def main() -> int:
    try:
        settings = settings_mod.load()
    except settings_mod.SettingError as exc:
        print(f"sensorstream demo: {exc}", file=sys.stderr)
        return 2
    stack = Stack(settings)
    was_running = any(s.get("started") and s["running"] for s in stack.status().values())
    worker = simulator = None
    interrupted = False

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("starting the local stack (broker, PostgreSQL, S3)...", flush=True)
        env = {**os.environ, **stack.up()}
        data_dir = stack.dir / "demo-data"
        if not was_running:
            # The broker keeps topics in memory only: a new broker means new state.
            shutil.rmtree(data_dir, ignore_errors=True)
        env["SENSORSTREAM_DATA_DIR"] = str(data_dir)
        lake = (stack.dir / "lake").resolve()
        if "SENSORSTREAM_LAKE_URL" not in os.environ:  # the embedded default: a local lake
            env["SENSORSTREAM_LAKE_URL"] = f"file://{lake}"
        if not was_running:
            shutil.rmtree(lake, ignore_errors=True)
        url = settings.canonical_url
        print(f"starting the worker (log: {stack.dir / 'worker.log'})...", flush=True)
        worker = spawn([sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
                       stack.dir / "worker.log", env)

        def worker_ready() -> bool:
            if worker.poll() is not None:
                tail = (stack.dir / "worker.log").read_text(errors="replace")[-3000:]
                raise StackError(f"the worker exited ({worker.returncode}); its log:\n{tail}")
            return _ready(url)

        started = time.monotonic()
        wait_until(worker_ready, f"the worker's {url}/ready", deadline=READY_DEADLINE)
        print(f"worker ready in {time.monotonic() - started:.1f} s", flush=True)
        simulator = spawn([sys.executable, "-m", "app.simulator"], stack.dir / "simulator.log",
                          env)
        print(f"""
sensorstream is running: 54 simulated Intel Lab motes, the last day at 100x, then live.
  {url}/sensors        the motes and when each was last seen
  {url}/sensors/1      the latest values of mote 1
  {url}/sensors/1/aggregates?window=1m&metric=temperature
                       mote 1's 1-minute windows, live ("open": true) and sealed
  {url}/ready          readiness
  {url}/metrics        Prometheus metrics (readings in, accepted, dead-lettered, ...)
History: PostgreSQL at {env["SENSORSTREAM_PG_DSN"]} (schema sensorstream),
         the Parquet lake at {env.get("SENSORSTREAM_LAKE_URL")} (README: "Sinks").
Logs: {stack.dir}/worker.log, {stack.dir}/simulator.log. Press Ctrl-C to stop.
""", flush=True)
        while True:
            if worker.poll() is not None:
                print(f"the worker exited ({worker.returncode}); see {stack.dir}/worker.log",
                      file=sys.stderr)
                return 1
            if simulator.poll() is not None and simulator.returncode != 0:
                print(f"the simulator exited ({simulator.returncode}); see "
                      f"{stack.dir}/simulator.log", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
        return 0
    except StackError as exc:
        print(f"sensorstream demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if interrupted:
            print("\nstopping...", flush=True)
        _stop(simulator)
        _stop(worker)
        if not was_running:
            with contextlib.suppress(StackError):
                stopped = stack.down()
                print(f"stopped: simulator, worker, {', '.join(stopped)}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
