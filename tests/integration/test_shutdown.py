"""Shutdown and lag on the real stack (broker, PostgreSQL): SIGTERM stops a worker within
``SENSORSTREAM_SHUTDOWN_TIMEOUT`` while its PostgreSQL sink retries through an outage,
nothing it did not store is committed, and a restarted worker stores every reading; the
consumer lag of paused partitions is the real backlog (log end minus committed), not
what the paused consumer last fetched."""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import orjson
import pytest

from .harness import commits_and_ends, counter, eventually, produce
from .test_access import request
from .test_admin import CI, OPS, TOKENS, readings_of

pytestmark = pytest.mark.integration

SHUTDOWN_S = 10.0
#: Beyond the bound: the interpreter's own exit after the watchdog's or the clean stop's.
MARGIN_S = 2.0
PG_ENV = {"SENSORSTREAM_SINKS": "postgres", "SENSORSTREAM_SINK_RETRY_MAX": "2s",
          "SENSORSTREAM_SINK_BREAKER_COOLDOWN": "2s",
          "SENSORSTREAM_SHUTDOWN_TIMEOUT": f"{SHUTDOWN_S:g}s"}


async def stored_sensors(env: dict[str, str], prefix: str) -> set[str] | None:
    """The sensors named ``prefix``-* with a reading in PostgreSQL (each test sensor sends
    one); None while it does not answer or the table is not there yet."""
    try:
        conn = await asyncpg.connect(env["SENSORSTREAM_PG_DSN"], timeout=3)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        rows = await conn.fetch(f"SELECT DISTINCT sensor_id FROM "
                                f"{env['SENSORSTREAM_PG_SCHEMA']}.readings "
                                "WHERE sensor_id LIKE $1", f"{prefix}-%")
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
    return {r["sensor_id"] for r in rows}


def lag_of(worker, topic: str) -> dict[int, float]:
    """``sensorstream_consumer_lag`` of ``topic`` per partition, as the worker serves it."""
    return {int(dict(labels)["partition"]): value
            for (name, labels), value in worker.metrics().items()
            if name == "sensorstream_consumer_lag" and dict(labels)["topic"] == topic}


async def backlog(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Per partition: the log end (a fetch's high watermark) minus the group's committed
    offset (0 when none), read with a client of our own."""
    return {p: end - (done or 0)
            for p, (done, end) in (await commits_and_ends(bootstrap, group, topic)).items()}


async def lag_is_backlog(worker, bootstrap: str, group: str, topic: str) -> dict | None:
    """The worker's lag of ``topic`` when it equals the backlog read independently (the
    same before and after the scrape, so no commit fell in between)."""
    before = await backlog(bootstrap, group, topic)
    served = lag_of(worker, topic)
    after = await backlog(bootstrap, group, topic)
    return served if before == after and served == before else None


async def sigterm(worker, deadline: float) -> tuple[float, int | None]:
    """SIGTERM ``worker``; the seconds until it exited (or ``deadline`` passed) and its
    status (None: still running)."""
    worker.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    while worker.process.poll() is None and time.monotonic() - sent < deadline:
        await asyncio.sleep(0.05)
    took, code = time.monotonic() - sent, worker.process.poll()
    print(f"SIGTERM to exit: {took:.2f} s, status {code}")
    return took, code


def steady(prefix: str, sensors: range, at: float) -> list[tuple[bytes, bytes]]:
    """One reading of each sensor ``prefix``-N, all within a second of ``at`` at the same
    temperature: no window seals and nothing is anomalous, so the readings are the only
    rows the sink holds."""
    return [(f"{prefix}-{i}".encode(), orjson.dumps({
        "sensor_id": f"{prefix}-{i}", "ts": at + i / 1000, "temperature": 21.5}))
        for i in sensors]


async def test_sigterm_while_the_sink_retries_stops_in_time_and_a_restart_loses_nothing(
        make_worker, app_env, bootstrap, stack):
    env = {**app_env, **PG_ENV}
    topic, group = env["SENSORSTREAM_INPUT_TOPICS"], env["SENSORSTREAM_APP_ID"]
    by_sensor = f"{group}-readings-by-sensor"
    at = time.time() - 600
    before, during, paused = (steady("shut", range(0, 100), at),
                              steady("shut", range(100, 600), at),
                              steady("shut", range(600, 900), at))
    expected = {key.decode() for batch in (before, during, paused) for key, _v in batch}
    assert len(expected) == 900

    worker = make_worker(**PG_ENV).start()
    await worker.ready()
    await produce(bootstrap, topic, before)

    async def first_stored() -> bool:
        return len(await stored_sensors(env, "shut") or ()) == len(before)
    await eventually(first_stored, "the first readings in PostgreSQL", 60)

    stack.stop_service("postgres")
    try:
        await produce(bootstrap, topic, during)

        def retrying() -> bool:
            status, body = worker.get("/ready")
            samples = worker.metrics()
            return (status == 503 and body["sinks"]["postgres"]["ok"] is False
                    and samples[("sensorstream_sink_paused", frozenset())] == 1
                    and counter(samples, "sensorstream_sink_retries_total", sink="postgres",
                                dataset="readings") > 0)
        await eventually(retrying, "the PostgreSQL sink retrying, the worker paused", 30)

        # The real backlog while paused: the input produced now is never fetched.
        await produce(bootstrap, topic, paused)
        lags = await eventually(lambda: lag_is_backlog(worker, bootstrap, group, topic),
                                "the input's lag = log end - committed while paused", 30,
                                interval=0.5)
        assert sum(lags.values()) >= len(paused), lags
        await eventually(lambda: lag_is_backlog(worker, bootstrap, group, by_sensor),
                         "the hand-overs' lag = log end - committed while paused", 30,
                         interval=0.5)
        held = await backlog(bootstrap, group, by_sensor)
        assert sum(held.values()) > 0, "hand-overs the sink did not store were committed"

        took, code = await sigterm(worker, SHUTDOWN_S + 30)
        assert code is not None and took <= SHUTDOWN_S + MARGIN_S, (
            f"still running {took:.1f} s after SIGTERM:\n{worker.log_tail()}")
        stop_log = worker.log.read_text().split("Signal received: 15", 1)[1]
        assert '"level":"error"' not in stop_log and '"level":"critical"' not in stop_log, (
            stop_log[-4000:])
        after_exit = await backlog(bootstrap, group, by_sensor)
        assert sum(after_exit.values()) > 0, "the stop committed hand-overs never stored"
    finally:
        await asyncio.to_thread(stack.up)

    restarted = make_worker(**PG_ENV).start()
    await restarted.ready()

    async def all_stored() -> bool:
        return len(await stored_sensors(env, "shut") or ()) >= len(expected)
    await eventually(all_stored, f"{len(expected)} readings in PostgreSQL after the restart",
                     120, interval=0.5)
    got = await stored_sensors(env, "shut")
    assert got == expected, (sorted(expected - got)[:3], sorted(got - expected)[:3])


async def test_the_lag_of_paused_partitions_is_the_real_backlog(
        make_worker, app_env, bootstrap):
    """An operator's pause holds the input while the worker's other topics flow. The
    paused partitions' fetched records wait in the client's buffer, which is not fetched
    again until they are taken: their high watermark stopped at the first fetch after
    the pause (the issue's lag of 12 for a backlog of 1,231)."""
    extra = {"SENSORSTREAM_API_TOKENS": TOKENS, "SENSORSTREAM_SINKS": "none"}
    topic, group = app_env["SENSORSTREAM_INPUT_TOPICS"], app_env["SENSORSTREAM_APP_ID"]
    worker = make_worker(**extra).start()
    await worker.ready()
    await produce(bootstrap, topic, readings_of("flow", 40, time.time() - 900))

    async def committed() -> bool:
        return (set((await backlog(bootstrap, group, topic)).values()) == {0}
                and lag_of(worker, topic) == {0: 0, 1: 0, 2: 0, 3: 0})
    await eventually(committed, "the first readings committed, no lag", 60)

    status, body, _ = request(worker.url + "/admin/pause", OPS, "POST", {"topic": topic})
    assert status == 200, body
    first, then = 600, 631
    await produce(bootstrap, topic, readings_of("held", first, time.time() - 800))
    lags = await eventually(lambda: lag_is_backlog(worker, bootstrap, group, topic),
                            "the paused input's lag = log end - committed", 30, interval=0.5)
    assert sum(lags.values()) == first, lags
    await produce(bootstrap, topic, readings_of("more", then, time.time() - 700))

    async def all_counted() -> dict | None:
        lags = await lag_is_backlog(worker, bootstrap, group, topic)
        return lags if lags and sum(lags.values()) == first + then else None
    await eventually(all_counted, f"the paused input's lag at {first + then}", 30,
                     interval=0.5)
    status, text, _ = request(worker.url + "/fleet?scope=local", CI)
    assert status == 200 and text["workers"][0]["lag"] >= first + then, text

    status, body, _ = request(worker.url + "/admin/resume", OPS, "POST", {"topic": topic})
    assert status == 200, body
    await eventually(lambda: sum(lag_of(worker, topic).values()) == 0,
                     "the lag back to 0 once resumed", 60)

    # Nothing held: SIGTERM stops the worker cleanly, well within the default 30 s, and
    # gives nothing up.
    took, code = await sigterm(worker, 40)
    assert code == 0 and took < 10, (took, code, worker.log_tail())
    assert "not stored within the drain" not in worker.log.read_text()
