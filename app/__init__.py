"""sensorstream: ``faust -A app worker``.

The Faust App is built on first access to ``app.app`` so that the plain modules
of this package (settings, contract, simulator, stack) import without Faust.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from app.main import app

        return app
    raise AttributeError(f"module 'app' has no attribute {name!r}")
