"""The stop's deadline (app.shutdown): its budget, its watchdog, what it gives up."""

from __future__ import annotations

import asyncio
import threading

from app.shutdown import EXIT_CODE, Shutdown, drop_unacked


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_counts_from_the_first_begin_and_keeps_a_reserve():
    clock = Clock()
    shutdown = Shutdown(20.0, clock=clock, exit=lambda code: None)
    assert not shutdown.started and shutdown.remaining() == 20.0
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


class Message:
    def __init__(self, offset: int, acked: bool = False) -> None:
        self.offset = offset
        self.acked = acked


class Consumer:
    """What ``drop_unacked`` uses of app.transport's consumer."""

    def __init__(self, messages: list[Message]) -> None:
        self._unacked_messages = set(messages)

    def _drop_ack(self, message: Message) -> None:
        message.acked = True
        self._unacked_messages.discard(message)


def test_drop_unacked_marks_held_messages_done_without_acknowledging_them():
    held, done = Message(5), Message(3, acked=True)
    consumer = Consumer([held, done])
    assert drop_unacked(consumer) == 1
    assert held.acked and consumer._unacked_messages == {done}
