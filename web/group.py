"""Answers gathered from every worker of the group: each serves its own partitions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from app.auth import service_headers
from app.main import app, settings

T = TypeVar("T")


async def _remote(url: str, path: str, field: str) -> list[dict[str, Any]]:
    separator = "&" if "?" in path else "?"
    async with app.http_client.get(
            f"{url}{path}{separator}scope=local", timeout=5,
            headers=service_headers(settings.api_tokens, settings.protect_reads)) as response:
        response.raise_for_status()
        return (await response.json())[field]


def me() -> str:
    """This worker's URL, as the others know it."""
    return str(app.conf.canonical_url).rstrip("/")


def others() -> list[str]:
    """The other workers of the group, by URL."""
    return [u.rstrip("/") for u in app.router.tables_metadata() if u.rstrip("/") != me()]


async def ask_others(call: Callable[[str], Awaitable[T]]) -> tuple[list[T], list[str]]:
    """``call`` for every other worker at once: what they answered, and the workers that
    did not answer."""
    urls = others()
    results = await asyncio.gather(*(call(u) for u in urls), return_exceptions=True)
    found: list[T] = []
    unreachable: list[str] = []
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, BaseException):
            unreachable.append(url)
        else:
            found.append(result)
    return found, unreachable


async def gather(local: list[dict[str, Any]], path: str,
                 field: str) -> tuple[list[dict[str, Any]], list[str]]:
    """``local`` plus what the other workers answer at ``path`` (with ``scope=local``)
    under ``field``; and the workers that did not answer."""
    answers, unreachable = await ask_others(lambda url: _remote(url, path, field))
    return [*local, *(item for found in answers for item in found)], unreachable


def answer(body: dict[str, Any], unreachable: list[str]) -> dict[str, Any]:
    """``body``, naming the workers that did not answer, if any."""
    return {**body, "unreachable_workers": unreachable} if unreachable else body
