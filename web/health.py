"""Liveness and readiness."""

from __future__ import annotations

from faust import web

from app import metrics
from app.main import app
from sinks.active import SINKS, sink_states


def not_ready_reason() -> str | None:
    """Why the worker cannot serve yet, or None when it can."""
    if metrics.FAILED_STAGES:
        return "stage stopped by an error: " + "; ".join(
            f"{stage}: {error}" for stage, error in metrics.FAILED_STAGES.items())
    if not app.started or app.consumer is None:
        return "starting"
    if app.rebalancing:
        return "rebalancing the consumer group"
    if app.in_recovery or not app.tables.recovery.completed.is_set():
        return "recovering tables from their changelogs"
    if not app.consumer.assignment():
        return "no partitions assigned to this worker"
    bad = [name for name, state in sink_states().items() if not state["ok"]]
    if bad:
        return f"sink degraded: {', '.join(bad)} (partitions paused until it recovers)"
    return None


@app.page("/health")
async def health(self: web.View, request: web.Request) -> web.Response:
    return self.json({"status": "ok"})


@app.page("/ready")
async def ready(self: web.View, request: web.Request) -> web.Response:
    reason = not_ready_reason()
    sinks = sink_states() if SINKS else {}
    if reason is not None:
        return self.json({"ready": False, "reason": reason, "sinks": sinks}, status=503)
    return self.json({"ready": True, "partitions": len(app.consumer.assignment()),
                      "sinks": sinks})
