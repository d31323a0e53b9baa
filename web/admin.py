"""Operators' controls under ``/admin/``; each needs a bearer token (app.auth) and is
logged with the token's name: log levels, pausing input topics for the whole group, the
lake's seal/upload/staging actions, the sinks' states."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from faust import web

from app import admin_requests, pauses
from app.auth import TOKEN_NAME
from app.contract import format_ts
from app.main import app, settings
from app.topics import KAFKA, readings
from sinks.active import SINKS, sink_states, started
from sinks.lake import LakeSink
from stream.consumer import (
    active_partitions,
    bundle_end,
    forget_buffered,
    guard_pauses,
    paused_partitions,
)
from web.group import answer, ask_others, me
from web.params import BadRequest, bad_request, scope

log = logging.getLogger("sensorstream.admin")

LEVELS = ("debug", "info", "warning", "error", "critical")
#: Longest logger name ``/admin/log-level`` takes (dotted module names are far shorter).
MAX_LOGGER_NAME = 200


@app.page("/admin/log-level")
class LogLevel(web.View):
    """Change a logger's level at run time, to look closer at a live problem without a
    restart (which would rebuild the tables)."""

    async def post(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self.json({"error": 'expected a JSON body such as {"level": "debug"}'},
                             status=400)
        if not isinstance(body, dict):
            return self.json({"error": 'expected a JSON object such as {"level": "debug"}'},
                             status=400)
        level = body.get("level")
        name = body.get("logger", "")
        if not isinstance(level, str) or level.lower() not in LEVELS:
            return self.json({"error": f"level must be one of: {', '.join(LEVELS)}"},
                             status=400)
        if not isinstance(name, str) or len(name) > MAX_LOGGER_NAME or not name.isprintable():
            # A logger, once named, lives as long as the process: bounded, printable.
            return self.json({"error": "logger must be a logger name (default: the root) "
                                       f"of printable characters, at most {MAX_LOGGER_NAME}"},
                             status=400)
        logger = logging.getLogger(name or None)
        previous = logging.getLevelName(logger.level).lower()
        logger.setLevel(level.upper())
        who = request[TOKEN_NAME]
        log.warning("log level changed", extra={"by": who, "target_logger": name or "root",
                                                "level": level.lower(), "previous": previous})
        return self.json({"logger": name or "root", "level": level.lower(),
                          "previous": previous, "by": who})


# -- pausing and resuming input topics for the whole group ----------------------------------

HOLDS = pauses.Holds(readings.topics)
CONTROL = pauses.Control(pauses.control_topic(settings.app_id), KAFKA,
                         lambda change: _apply(change, "control topic"), lambda: _known())


@app.on_rebalance_complete.connect
async def _before_resume(_app: object, **_kwargs: object) -> None:
    """Sent before Faust resumes the assigned partitions, at every rebalance."""
    guard_pauses(app.consumer, HOLDS)


async def _enforce() -> None:
    """Pause this worker's running partitions of held topics; resume the withheld ones
    whose hold lifted."""
    consumer = app.consumer
    guard_pauses(consumer, HOLDS)
    try:
        assignment = consumer.assignment()
    except Exception:  # not started yet: the rebalance hook applies the holds
        return
    running = {tp for tp in assignment
               if HOLDS.held(tp.topic) and tp not in paused_partitions(consumer)}
    if running:
        consumer.pause_partitions(running)
        # A partition Faust marked buffer-full would be fetched again once its buffer
        # drains (Consumer.on_buffer_drop), paused or not.
        forget_buffered(consumer, running)
        HOLDS.withheld |= running  # to resume when the pause is lifted
    free = HOLDS.releasable(assignment)
    if free:
        await _resume(consumer, free)


async def _resume(consumer: Any, tps: set[Any]) -> None:
    """Resume ``tps``, each from the offset after the last bundle delivered to the agents
    (stream.transport): Faust drops the rest of a fetch of a partition paused while it was
    being handed over, and would otherwise fetch on past those records."""
    generation = app.consumer_generation_id
    for tp in tps:
        end = bundle_end(consumer, tp, generation)
        if end is not None:
            await consumer.seek(tp, end)
    if app.consumer_generation_id == generation:  # else the rebalance resumes them
        consumer.resume_partitions(tps & consumer.assignment())


async def _apply(change: pauses.Change, source: str) -> None:
    if HOLDS.apply(change):
        await _enforce()
        log.info("input topic %s", "paused" if change.paused else "resumed", extra={
            "topic": change.topic, "by": change.by, "via": source})


async def _known() -> None:
    HOLDS.known = True
    await _enforce()
    log.info("operators' pauses read", extra={"paused_topics": sorted(HOLDS.paused())})


@app.task
async def follow_pauses() -> None:
    await CONTROL.follow()


def _held_partitions() -> dict[str, list[int]]:
    """This worker's partitions held by an operator's pause, per topic."""
    consumer = app.consumer
    try:
        assignment = consumer.assignment()
    except Exception:
        return {}
    held: dict[str, list[int]] = {}
    for tp in sorted(assignment):
        if HOLDS.held(tp.topic) and tp not in active_partitions(consumer):
            held.setdefault(tp.topic, []).append(tp.partition)
    return held


def _paused_topics() -> dict[str, dict[str, str]]:
    return {topic: {"since": format_ts(int(change.at * 1_000_000)), "by": change.by}
            for topic, change in HOLDS.paused().items()}


async def _forward(request: web.Request, method: str, path: str,
                   body: dict[str, Any] | None = None,
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """What the other workers of the group answer to the same call with ``scope=local``,
    sent with the caller's token (so they log the same name); and who did not answer."""
    headers = {"Authorization": request.headers.get("Authorization", "")}

    async def call(url: str) -> dict[str, Any]:
        async with app.http_client.request(method, f"{url}{path}?scope=local", json=body,
                                           headers=headers, timeout=30) as response:
            answer = await response.json()
            if response.status >= 300:
                return {"worker": url, "status": response.status, **answer}
            return answer

    return await ask_others(call)


async def _body(request: web.Request, example: str) -> dict[str, Any]:
    return admin_requests.json_object(await request.read(), example)


class _Change(web.View):
    """Pause or resume one input topic on every worker of the group."""

    paused: bool

    async def post(self, request: web.Request) -> web.Response:
        who = request[TOKEN_NAME]
        try:
            local = scope(request) == "local"
            body = await _body(request, '{"topic": "readings"}')
            topic = admin_requests.input_topic(body, readings.topics)
            at = admin_requests.forwarded_at(body) if local else time.time()
        except (BadRequest, admin_requests.BadBody) as exc:
            return self.json({"error": str(exc)}, status=400)
        action = "pause" if self.paused else "resume"
        change = pauses.Change(topic, self.paused, at, who)
        if not local:
            try:  # first: the record is what every worker, and any that starts later, obeys
                await asyncio.wait_for(CONTROL.ensured.wait(), 10)
                await app.producer.send_and_wait(CONTROL.topic, *change.encode(), 0, None,
                                                 None)
            except Exception as exc:
                log.warning("%s of %s not recorded: %s", action, topic, exc,
                            extra={"by": who, "action": action, "target": topic})
                return self.json({"error": f"the {action} was not recorded in "
                                           f"{CONTROL.topic}: {type(exc).__name__}: {exc}"},
                                 status=503)
        await _apply(change, "forwarded" if local else "request")
        log.warning("admin: input topic %sd", action, extra={
            "by": who, "action": action, "target": topic, "forwarded": local})
        mine = {"worker": me(), "held_partitions": _held_partitions().get(topic, [])}
        if local:
            return self.json(mine)
        others, unreachable = await _forward(request, "POST", request.path,
                                             {"topic": topic, "at": at})
        return self.json(answer({"topic": topic, "paused": self.paused,
                                 "at": format_ts(int(at * 1_000_000)), "by": who,
                                 "workers": [mine, *others]}, unreachable))


@app.page("/admin/pause")
class Pause(_Change):
    paused = True


@app.page("/admin/resume")
class Resume(_Change):
    paused = False


async def _gathered(view: web.View, request: web.Request,
                    mine: dict[str, Any], group: dict[str, Any]) -> web.Response:
    try:
        local = scope(request) == "local"
    except BadRequest as exc:
        return bad_request(view, exc)
    if local:
        return view.json(mine)
    others, unreachable = await _forward(request, "GET", request.path)
    return view.json(answer({**group, "workers": [mine, *others]}, unreachable))


@app.page("/admin/paused")
class Paused(web.View):
    """The paused input topics (since when, by whom) and the partitions each worker
    holds for them."""

    async def get(self, request: web.Request) -> web.Response:
        mine = {"worker": me(), "pauses_read": HOLDS.known,
                "held_partitions": _held_partitions()}
        return await _gathered(self, request, mine, {"paused": _paused_topics()})


@app.page("/admin/sinks")
class Sinks(web.View):
    """Every worker's sinks (as /ready shows them) and its partitions held by a pause."""

    async def get(self, request: web.Request) -> web.Response:
        mine = {"worker": me(), "sinks": sink_states(), "held_partitions": _held_partitions()}
        return await _gathered(self, request, mine, {"paused": _paused_topics()})


# -- the lake: seal now, retry uploads now, clean staging -----------------------------------


def _lake(view: web.View) -> tuple[LakeSink | None, web.Response | None]:
    lake = next((s for s in SINKS if isinstance(s, LakeSink)), None)
    if lake is None:
        return None, view.json({"error": "the lake sink is not enabled on this worker "
                                         "(SENSORSTREAM_SINKS)"}, status=404)
    if not started.is_set():
        return None, view.json({"error": "the sinks are still starting: try again"},
                               status=409)
    return lake, None


class _LakeAction(web.View):
    """One lake action on this worker, forwarded to the others; logged with who asked."""

    action: str
    example = "{}"

    async def post(self, request: web.Request) -> web.Response:
        who = request[TOKEN_NAME]
        try:
            local = scope(request) == "local"
            body = await _body(request, self.example) if self.example != "{}" else {}
            target = self.target(body)
        except (BadRequest, admin_requests.BadBody) as exc:
            return self.json({"error": str(exc)}, status=400)
        lake, refusal = _lake(self)
        if refusal is not None:
            return refusal
        done = await self.run(lake, target)
        log.warning("admin: lake %s", self.action, extra={
            "by": who, "action": f"lake {self.action}", "target": str(target or "staging"),
            "forwarded": local, "result": done})
        mine = {"worker": me(), **done}
        if local:
            return self.json(mine)
        others, unreachable = await _forward(request, "POST", request.path, body or None)
        return self.json(answer({"action": self.action, "by": who,
                                 "workers": [mine, *others]}, unreachable))

    def target(self, body: dict[str, Any]) -> Any:
        return None

    async def run(self, lake: LakeSink, target: Any) -> dict[str, Any]:
        raise NotImplementedError


@app.page("/admin/lake/seal")
class Seal(_LakeAction):
    """Seal a period now, on the partitions each worker owns."""

    action = "seal"
    example = admin_requests.SEAL_EXAMPLE

    def target(self, body: dict[str, Any]) -> tuple[str, int]:
        return admin_requests.seal_target(body)

    async def run(self, lake: LakeSink, target: tuple[str, int]) -> dict[str, Any]:
        dataset, start = target
        return {"dataset": dataset, "period": format_ts(start),
                "sealed": await lake.seal_now(dataset, start)}


@app.page("/admin/lake/retry-uploads")
class RetryUploads(_LakeAction):
    """Retry the failed uploads now instead of after their backoff."""

    action = "retry-uploads"

    async def run(self, lake: LakeSink, target: None) -> dict[str, Any]:
        return {"queued": lake.retry_uploads()}


@app.page("/admin/lake/cleanup-staging")
class CleanupStaging(_LakeAction):
    """Remove what is safe to remove from the local staging."""

    action = "cleanup-staging"

    async def run(self, lake: LakeSink, target: None) -> dict[str, Any]:
        return await lake.cleanup_staging()
