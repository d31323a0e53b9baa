"""Structured logs: one JSON object per line, with secrets masked."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

import orjson

_SECRET = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@\s]+)@"
    # ``key=value``, ``key: value`` and the quoted forms of a dict's or JSON's repr
    # (``'sasl_plain_password': '...'``).
    r"|(?P<key>password|passwd|secret|token|aws_secret_access_key)(?P<sep>['\"]?\s*[=:]\s*)"
    r"(?P<val>'[^']*'|\"[^\"]*\"|[^\s,;&'\"}]+)",
    re.IGNORECASE,
)
#: ``LogRecord`` attributes that are not extra context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def mask_secrets(text: str) -> str:
    """Hide passwords in URLs (``user:***@``) and ``password=...`` pairs."""

    def repl(m: re.Match[str]) -> str:
        if m.group("scheme"):
            return f"{m.group('scheme')}{m.group('user')}:***@"
        quote = m.group("val")[0] if m.group("val")[0] in "'\"" else ""
        return f"{m.group('key')}{m.group('sep')}{quote}***{quote}"

    return _SECRET.sub(repl, text)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}``; extra context such as topic,
    partition and offset comes from ``logger.info(..., extra={...})``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_secrets(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _masked(value, key)
        if record.exc_info:
            entry["exc"] = mask_secrets(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


_SECRET_NAME = re.compile(r"(password|passwd|secret|token|secret_access_key)$", re.IGNORECASE)


def _masked(value: Any, name: object = "") -> Any:
    """Extra context with its text masked (an error message can carry a DSN), and the
    whole value of a field whose name says it is secret."""
    if value is not None and isinstance(name, str) and _SECRET_NAME.search(name):
        return "***"
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return mask_secrets(str(value))


class Throttle:
    """At most one log line per key every ``seconds``, for events that come in floods
    (dead letters): the log shows examples without growing with the input."""

    def __init__(self, seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> int | None:
        """None while ``key`` is held back; otherwise how many were held back since
        its last line."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


def logging_config() -> dict[str, Any]:
    """dictConfig merged into Faust's own, so ``faust worker -l LEVEL`` still sets the level."""
    return {
        "merge": True,
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json",
                        "stream": "ext://sys.stderr"},
        },
    }


def configure(level: str = "INFO") -> None:
    """For the command-line tools that run outside a Faust worker."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
