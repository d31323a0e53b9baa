"""What the operators' commands share: running on an event loop of their own, and
option callbacks that refuse a bad value with a message naming the option."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn

import click
from faust.cli import AppCommand


class DirectCommand(AppCommand):
    """An app command on an event loop of its own, without a Faust worker around it
    (nothing of the app is started), so that it handles SIGINT/SIGTERM itself (flush,
    checkpoint) instead of being cancelled; ``run`` returns the exit status."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        from app.logs import configure

        level = (self._loglevel or "info").upper()
        configure({"WARN": "WARNING", "CRIT": "CRITICAL"}.get(level, level))
        logging.getLogger("aiokafka").setLevel(logging.WARNING)  # a line per coordinator
        status = asyncio.run(self.run(*self.args, *args, **{**self.kwargs, **kwargs}))
        raise SystemExit(status or 0)


def duration(_ctx: click.Context, param: click.Parameter, value: str) -> float:
    """A duration option (``500ms``, ``30s``, ``5m``, ...) in seconds, not negative."""
    from app.settings import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None
    if seconds < 0:
        raise click.BadParameter("must not be negative", param=param)
    return seconds
