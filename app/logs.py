"""Structured logs: one JSON object per line, with secrets masked."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

_SECRET = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<password>[^@\s]+)@"
    r"|(?P<key>password|passwd|secret|token|aws_secret_access_key)(?P<sep>\s*[=:]\s*)(?P<val>[^\s,;&]+)",
    re.IGNORECASE,
)
#: ``LogRecord`` attributes that are not extra context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def mask_secrets(text: str) -> str:
    """Hide passwords in URLs (``user:***@``) and ``password=...`` pairs."""

    def repl(m: re.Match[str]) -> str:
        if m.group("scheme"):
            return f"{m.group('scheme')}{m.group('user')}:***@"
        return f"{m.group('key')}{m.group('sep')}***"

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
                entry[key] = value
        if record.exc_info:
            entry["exc"] = mask_secrets(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


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
