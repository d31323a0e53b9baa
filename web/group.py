"""Answers gathered from every worker of the group: each serves its own partitions."""

from __future__ import annotations

import asyncio
from typing import Any

from app.auth import service_headers
from app.main import app, settings


async def _remote(url: str, path: str, field: str) -> list[dict[str, Any]]:
    separator = "&" if "?" in path else "?"
    async with app.http_client.get(
            f"{url}{path}{separator}scope=local", timeout=5,
            headers=service_headers(settings.api_tokens, settings.protect_reads)) as response:
        response.raise_for_status()
        return (await response.json())[field]


async def gather(local: list[dict[str, Any]], path: str,
                 field: str) -> tuple[list[dict[str, Any]], list[str]]:
    """``local`` plus what the other workers answer at ``path`` (with ``scope=local``)
    under ``field``; and the workers that did not answer."""
    me = str(app.conf.canonical_url).rstrip("/")
    others = [u.rstrip("/") for u in app.router.tables_metadata() if u.rstrip("/") != me]
    results = await asyncio.gather(*(_remote(u, path, field) for u in others),
                                   return_exceptions=True)
    found, unreachable = list(local), []
    for url, result in zip(others, results, strict=True):
        if isinstance(result, BaseException):
            unreachable.append(url)
        else:
            found.extend(result)
    return found, unreachable


def answer(body: dict[str, Any], unreachable: list[str]) -> dict[str, Any]:
    """``body``, naming the workers that did not answer, if any."""
    return {**body, "unreachable_workers": unreachable} if unreachable else body
