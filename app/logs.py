"""Structured logs: one JSON object per line, with secrets masked."""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

import orjson

#: Where a secret can start: a URL's ``scheme://user:`` (its password runs to the next
#: ``@``, found by ``mask_secrets``), or a ``key=value`` pair and the quoted forms of a
#: dict's or JSON's repr (``'sasl_plain_password': '...'``).
#:
#: Linear in the text's length, because log lines carry what requests send (issue 18:
#: the former single pattern tried a scheme at every letter of a run and scanned to its
#: end, quadratic: a refused 16 KB path took 1.7 s of the event loop). A scheme is tried
#: only where a run of scheme characters starts (the lookbehind), the run and the user
#: are possessive, and the password's end is looked up, not rescanned, per URL.
_KEY = (r"(?P<key>password|passwd|secret|token|aws_secret_access_key)"
        r"(?P<sep>['\"]?\s*+[=:]\s*+)"
        r"(?P<val>'[^']*+'|\"[^\"]*+\"|[^\s,;&'\"}]++)")
_START = re.compile(
    r"(?<![a-z0-9+.-])(?P<scheme>[0-9+.-]*+[a-z][a-z0-9+.-]*+://)(?P<user>[^:/@\s]++):"
    rf"|{_KEY}",
    re.IGNORECASE,
)
_KEY_WORDS = ("password", "passwd", "secret", "token")  #: each key holds one of them
_KEY_AT = re.compile(_KEY, re.IGNORECASE)
_PASSWORD_END = re.compile(r"[@\s]")

#: Longest text a log field keeps (``msg``, each extra string, the logger's name); more
#: is cut with a marker saying how long it was. Requests put paths, logger names and
#: parameters into log lines: a line's size must not be theirs to choose.
FIELD_MAX_CHARS = 500
#: ``msg`` may hold a little more (a formatted error with its context).
MESSAGE_MAX_CHARS = 2_000
#: A traceback keeps its start and its end (the exception's own line).
EXC_MAX_CHARS = 8_000
#: Items kept of a list or dict in the extra context.
ITEMS_MAX = 50

#: ``LogRecord`` attributes that are not extra context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def mask_secrets(text: str) -> str:
    """Hide passwords in URLs (``user:***@``) and ``password=...`` pairs, in time linear
    in the text's length."""
    lowered = text.lower()
    if "://" not in text and not any(word in lowered for word in _KEY_WORDS):
        return text  # most lines: a substring search is ~100x faster than the pattern
    out: list[str] = []
    last = pos = 0
    stop = -1  # the next "@" or whitespace at or after the last URL's user (memo)
    while (m := _START.search(text, pos)) is not None:
        if m.group("scheme") is not None:
            end = m.end()
            if stop < end:
                found = _PASSWORD_END.search(text, end)
                stop = found.start() if found else len(text)
            if end < stop < len(text) and text[stop] == "@":
                out += (text[last:m.start()], m.group("scheme"), m.group("user"), ":***@")
                last = pos = stop + 1
                continue
            # No password there: what the former pattern tried next at this position.
            m_start = m.start()
            m = _KEY_AT.match(text, m_start)
            if m is None:
                pos = m_start + 1
                continue
        val = m.group("val")
        quote = val[0] if val[0] in "'\"" else ""
        out += (text[last:m.start()], m.group("key"), m.group("sep"), f"{quote}***{quote}")
        last = pos = m.end()
    out.append(text[last:])
    return "".join(out)


def bounded(text: str, limit: int = FIELD_MAX_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, with a marker and its full length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[cut: {len(text)} chars]"


def _bounded_middle(text: str, limit: int) -> str:
    """A traceback cut in its middle: where it started and how it ended both stay."""
    if len(text) <= limit:
        return text
    head = limit // 4
    return (f"{text[:head]}\n…[cut: {len(text)} chars]…\n"
            f"{text[len(text) - (limit - head):]}")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra}``; extra context such as topic,
    partition and offset comes from ``logger.info(..., extra={...})``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": bounded(record.name),
            "msg": bounded(mask_secrets(record.getMessage()), MESSAGE_MAX_CHARS),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[bounded(key)] = _masked(value, key)
        if record.exc_info:
            entry["exc"] = _bounded_middle(mask_secrets(self.formatException(record.exc_info)),
                                           EXC_MAX_CHARS)
        return orjson.dumps(entry, default=str).decode()


_SECRET_NAME = re.compile(r"(password|passwd|secret|token|secret_access_key)$", re.IGNORECASE)


def _masked(value: Any, name: object = "") -> Any:
    """Extra context with its text masked (an error message can carry a DSN), and the
    whole value of a field whose name says it is secret; every string bounded
    (masked first, so a cut never leaves half a password unmasked), and at most
    ``ITEMS_MAX`` items of a container."""
    if value is not None and isinstance(name, str) and _SECRET_NAME.search(name):
        return "***"
    if isinstance(value, str):
        return bounded(mask_secrets(value))
    if isinstance(value, dict):
        items = list(itertools.islice(value.items(), ITEMS_MAX))
        found = {bounded(str(k)): _masked(v, k) for k, v in items}
        if len(value) > ITEMS_MAX:
            found["…"] = f"[cut: {len(value)} items]"
        return found
    if isinstance(value, list | tuple | set | frozenset):
        found_items = [_masked(v) for v in itertools.islice(value, ITEMS_MAX)]
        if len(value) > ITEMS_MAX:
            found_items.append(f"…[cut: {len(value)} items]")
        return found_items
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        # A 5,000-digit int would raise in orjson (and in str() past 4,300 digits).
        return value if -(2**63) <= value < 2**64 else f"[int of {value.bit_length()} bits]"
    if isinstance(value, float):
        return value
    return bounded(mask_secrets(str(value)))


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
