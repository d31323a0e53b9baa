"""The stop's deadline (app.shutdown): its budget, its watchdog, what it gives up."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.shutdown import EXIT_CODE, Shutdown

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_counts_from_the_first_begin_and_keeps_a_reserve():
    clock = Clock()
    shutdown = Shutdown(20.0, clock=clock, exit=lambda code: None)
    shutdown.begin("stop")  # not armed: a command other than the worker
    assert not shutdown.started and shutdown.remaining() == 20.0
    shutdown.arm()
    shutdown.begin("signal SIGTERM")
    clock.now += 4.0
    shutdown.begin("stop")  # a later begin does not restart the clock
    assert shutdown.remaining() == 16.0
    assert shutdown.reserve() == 6.0
    assert shutdown.drain_budget() == 10.0
    clock.now += 20.0
    assert shutdown.remaining() == 0.0 and shutdown.drain_budget() == 0.0
    assert Shutdown(60.0).reserve() == 8.0  # capped: a long timeout drains longer
    assert Shutdown(5.0).reserve() == 4.0  # mode's own wind-down needs its seconds


def test_the_watchdog_ends_the_process_at_the_deadline_with_its_status():
    exited: list[int] = []
    fired = threading.Event()

    def exit_(code: int) -> None:
        exited.append(code)
        fired.set()

    shutdown = Shutdown(0.2, exit=exit_)
    shutdown.arm()
    shutdown.begin("signal SIGTERM")
    assert fired.wait(5.0), "the watchdog did not fire"
    assert exited == [EXIT_CODE] and EXIT_CODE != 0


def test_give_up_runs_each_callback_once_even_when_one_fails():
    calls: list[str] = []

    async def failing() -> None:
        calls.append("failing")
        raise RuntimeError("sink gone")

    async def stop_retrying() -> None:
        calls.append("stop")

    shutdown = Shutdown(10.0, exit=lambda code: None)
    shutdown.on_give_up(failing)
    shutdown.on_give_up(stop_retrying)
    asyncio.run(shutdown.give_up())
    asyncio.run(shutdown.give_up())
    assert calls == ["failing", "stop"]


def test_the_watchdog_ends_a_process_whose_main_thread_is_stuck():
    """A real process, its main thread blocked (as an event loop stuck in a call would
    be): the watchdog's thread still ends it at the deadline, with the status and a
    critical log line."""
    code = ("import logging, sys, time\n"
            "logging.basicConfig(stream=sys.stderr, format='%(levelname)s %(message)s')\n"
            "from app.shutdown import Shutdown\n"
            "s = Shutdown(0.5)\n"
            "s.arm()\n"
            "s.begin('signal SIGTERM')\n"
            "time.sleep(30)\n")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=20)
    took = time.monotonic() - began
    assert done.returncode == EXIT_CODE, done.stderr
    assert "CRITICAL shutdown did not complete" in done.stderr
    assert took < 10, took


def test_a_finished_stop_ends_the_process_with_status_0():
    exited: list[int] = []
    shutdown = Shutdown(10.0, exit=exited.append)
    shutdown.arm()
    shutdown.begin("signal SIGTERM")
    shutdown.exit_now()
    assert exited == [0]
