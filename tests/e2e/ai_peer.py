"""The AI side of the edge <-> AI contract as a small WebSocket server on loopback, for end-to-end
tests of the edge: a peer that speaks the contract, not the thing under test.

The base serves each call's stream (``/v1/calls/{call_id}/stream``) on a free port, keeps what the
edge sends (``start`` messages, the control messages after them, the audio frames) and closes the
stream on ``end``. A subclass says when it has heard enough (:meth:`AiPeer.ready`) and what it then
does, once per stream, while the edge goes on sending (:meth:`AiPeer.answer`).
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from typing import Any, Self

from aiohttp import WSMsgType, web

from pbx_edge.ai_link.protocol import AudioFrame, decode_batch
from tests.e2e.harness import LOOPBACK


class AiPeer(ABC):
    """Serves the stream on ``LOOPBACK:port`` between ``start()`` and ``stop()`` (or ``async with``)."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.controls: list[dict[str, Any]] = []
        self.frames: list[AudioFrame] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @abstractmethod
    def ready(self) -> bool:
        """Whether the peer has heard enough to :meth:`answer`; asked after every message."""

    @abstractmethod
    async def answer(self, ws: web.WebSocketResponse) -> None:
        """What the peer does once ready (a task of its own: the edge's messages keep coming)."""

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        answering: asyncio.Task[None] | None = None
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                (self.starts if data["type"] == "start" else self.controls).append(data)
                if data["type"] == "end":
                    await ws.close()  # done: the edge need not wait for last transcripts
                    continue
            elif msg.type == WSMsgType.BINARY:
                self.frames.extend(decode_batch(msg.data))
            if answering is None and self.ready():
                answering = asyncio.create_task(self.answer(ws))
        if answering is not None:
            await answering
        return ws

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/calls/{call_id}/stream", self.stream)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOOPBACK, 0).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
