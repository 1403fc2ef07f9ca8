"""asyncio UDP adapter: datagrams in to the core, datagrams out from it. No SIP logic here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from pbx_edge.sip.endpoint import Endpoint

Deliver = Callable[[bytes, Endpoint], None]


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver
        self.transport: asyncio.DatagramTransport | None = None
        self.send_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.deliver(data, Endpoint("UDP", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction layer's timers handle the loss.
        self.send_errors += 1

    def send(self, data: bytes, dest: Endpoint) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, (dest.host, dest.port))


async def open_udp(host: str, port: int, deliver: Deliver) -> UdpProtocol:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: UdpProtocol(deliver), local_addr=(host, port), reuse_port=False
    )
    return protocol
