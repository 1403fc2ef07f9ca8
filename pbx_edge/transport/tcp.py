"""asyncio TCP adapter: accepted and outgoing connections, each with a stream framer.

Connections are keyed by the peer's (host, port) so that the core addresses them as an
:class:`Endpoint`. A message to a peer with no connection opens one; bytes wait until it is up.
A connection that fails reports a transport error for that endpoint to the core.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.framing import PONG, StreamFramer
from pbx_edge.sip.message import SipParseError

Deliver = Callable[[bytes, Endpoint], None]
Failed = Callable[[Endpoint], None]


class TcpConnection(asyncio.Protocol):
    def __init__(self, manager: TcpManager, max_size: int) -> None:
        self.manager = manager
        self.framer = StreamFramer(max_size=max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Endpoint | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Endpoint("TCP", str(host), int(port))
        self.manager.connections[self.peer] = self

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        framer = self.framer
        pings = framer.pings_received
        try:
            messages = framer.feed(data)
        except SipParseError:
            self.close()  # the stream cannot be re-synchronised
            return
        for _ in range(framer.pings_received - pings):
            self.send(PONG)  # RFC 5626 §4.4.1: answer a CRLFCRLF keep-alive with CRLF
        for message in messages:
            self.manager.deliver(message, self.peer)
        if framer.error is not None:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.manager.connections.get(self.peer) is self:
            del self.manager.connections[self.peer]

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpManager:
    def __init__(self, deliver: Deliver, failed: Failed, max_size: int) -> None:
        self.deliver = deliver
        self.failed = failed
        self.max_size = max_size
        self.connections: dict[Endpoint, TcpConnection] = {}
        self.servers: list[asyncio.Server] = []
        self._pending: dict[Endpoint, list[bytes]] = {}
        self._connecting: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: TcpConnection(self, self.max_size), host, port, reuse_address=True
        )
        self.servers.append(server)

    def send(self, data: bytes, dest: Endpoint) -> None:
        conn = self.connections.get(dest)
        if conn is not None:
            conn.send(data)
            return
        queue = self._pending.get(dest)
        if queue is not None:
            queue.append(data)
            return
        self._pending[dest] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(dest))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, dest: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: TcpConnection(self, self.max_size), dest.host, dest.port),
                timeout=5.0,
            )
        except (OSError, TimeoutError):
            self._pending.pop(dest, None)
            self.failed(dest)
            return
        conn = self.connections.get(dest)
        for data in self._pending.pop(dest, []):
            if conn is not None:
                conn.send(data)

    async def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        for server in self.servers:
            server.close()
        for conn in list(self.connections.values()):
            conn.close()
        for server in self.servers:
            await server.wait_closed()
