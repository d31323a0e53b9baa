"""Operators' controls that change state; each needs a bearer token (app.auth)."""

from __future__ import annotations

import logging

import orjson
from faust import web

from app.auth import TOKEN_NAME
from app.main import app

log = logging.getLogger("sensorstream.admin")

LEVELS = ("debug", "info", "warning", "error", "critical")


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
        if not isinstance(name, str):
            return self.json({"error": "logger must be a logger name (default: the root)"},
                             status=400)
        logger = logging.getLogger(name or None)
        previous = logging.getLevelName(logger.level).lower()
        logger.setLevel(level.upper())
        who = request[TOKEN_NAME]
        log.warning("log level changed", extra={"by": who, "target_logger": name or "root",
                                                "level": level.lower(), "previous": previous})
        return self.json({"logger": name or "root", "level": level.lower(),
                          "previous": previous, "by": who})
