"""Keyword arguments of the project's own aiokafka clients (loader, replay, re-reads).

One place builds them from the settings, so every client the service opens reaches
the broker the same way the Faust worker does.
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """``bootstrap_servers`` and the connection's security options for aiokafka."""
    return {"bootstrap_servers": settings.bootstrap}
