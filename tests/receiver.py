"""A real HTTP server on loopback for the notification tests: records every POST and
answers with the statuses queued (then 204); it can stop and start again on its port."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.integration.harness import free_port


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.statuses: list[int] = []
        #: Each request: its ``path``, ``headers`` and ``body``.
        self.got: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append({"path": request.path, "headers": dict(request.headers),
                         "body": await request.read()})
        return web.Response(status=self.statuses.pop(0) if self.statuses else 204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"
