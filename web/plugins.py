"""``/plugins``: which plugins this worker runs (app.plugins), and a log line saying so."""

from __future__ import annotations

import logging
from dataclasses import asdict

from faust import web

from app.main import app, settings
from app.plugins import GROUP, LOADED, SETTING

log = logging.getLogger(__name__)


def _choice() -> str:
    return settings.plugins if isinstance(settings.plugins, str) else ",".join(settings.plugins)


@app.page("/plugins")
async def list_plugins(self: web.View, request: web.Request) -> web.Response:
    """The plugins loaded here: name, module, distribution and version."""
    return self.json({"setting": _choice(), "group": GROUP,
                      "plugins": [asdict(plugin) for plugin in LOADED]})


@app.task
async def report_plugins() -> None:
    """Logged once the worker runs: plugins are loaded before logging is set up."""
    log.info("plugins: %s", ", ".join(p.name for p in LOADED) or "none", extra={
        "setting": f"{SETTING}={_choice()}",
        "plugins": [f"{p.name}={p.module} ({p.distribution} {p.version})" for p in LOADED]})
