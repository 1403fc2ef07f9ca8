"""The edge node in-process over real loopback sockets: UDP, TCP framing, TCP->UDP call relay."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import cast

import pytest

from pbx_edge.edge import EdgeNode
from pbx_edge.ops.config import parse_config
from pbx_edge.sip.message import Request, Response, parse_message
from pbx_edge.sip.responses import make_response


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        for _ in range(50):
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
                return int(port)
            except OSError:
                udp.close()
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raise RuntimeError("no free port")


class Callee(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[Request | Response] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.addr: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.addr = addr
        self.received.put_nowait(parse_message(data))


@pytest.fixture
async def edge() -> AsyncIterator[tuple[EdgeNode, int, Callee, int]]:
    loop = asyncio.get_running_loop()
    callee = Callee()
    callee_transport, _ = await loop.create_datagram_endpoint(lambda: callee, local_addr=("127.0.0.1", 0))
    callee_port = callee_transport.get_extra_info("sockname")[1]
    port = _free_port()
    config = parse_config(
        {
            "sip": {
                "listen": [
                    {"transport": "udp", "host": "127.0.0.1", "port": port},
                    {"transport": "tcp", "host": "127.0.0.1", "port": port},
                ]
            },
            "routing": {"static_routes": [{"prefix": "", "target": f"sip:127.0.0.1:{callee_port}"}]},
        },
        environ={},
    )
    node = EdgeNode(config)
    await node.start()
    yield node, port, callee, callee_port
    await node.stop()
    callee_transport.close()


def _request(method: str, port: int, transport: str, local_port: int, call_id: str) -> bytes:
    return (
        f"{method} sip:bob@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch=z9hG4bK{call_id};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\n"
        f"Contact: <sip:alice@127.0.0.1:{local_port}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def test_options_over_udp(edge: tuple[EdgeNode, int, Callee, int]) -> None:
    _, port, _, _ = edge
    loop = asyncio.get_running_loop()
    client = Callee()
    transport, _ = await loop.create_datagram_endpoint(lambda: client, local_addr=("127.0.0.1", 0))
    local_port = transport.get_extra_info("sockname")[1]
    transport.sendto(_request("OPTIONS", port, "UDP", local_port, "opt-udp"), ("127.0.0.1", port))
    reply = await asyncio.wait_for(client.received.get(), 5)
    assert isinstance(reply, Response) and reply.status == 200
    assert reply.top_via.params.get("rport") == str(local_port)
    transport.close()


async def test_tcp_call_is_relayed_to_udp_callee(edge: tuple[EdgeNode, int, Callee, int]) -> None:
    node, port, callee, _ = edge
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    local_port = writer.get_extra_info("sockname")[1]
    # two messages in one segment, then a keep-alive: the framer must split them
    writer.write(_request("OPTIONS", port, "TCP", local_port, "opt-tcp") + b"\r\n\r\n")
    writer.write(_request("INVITE", port, "TCP", local_port, "inv-tcp"))
    await writer.drain()
    b_invite = await asyncio.wait_for(callee.received.get(), 5)
    assert isinstance(b_invite, Request) and b_invite.method == "INVITE"
    assert b_invite.call_id != "inv-tcp"
    assert callee.transport is not None and callee.addr is not None
    callee.transport.sendto(bytes(make_response(b_invite, 486, "Busy Here", to_tag="b1")), callee.addr)
    statuses: list[int] = []
    data = b""
    while 486 not in statuses:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, "edge closed the connection"
        data += chunk
        while b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            msg = parse_message(head + b"\r\n\r\n", stream=False)
            assert isinstance(msg, Response)
            statuses.append(msg.status)
            data = rest
    assert statuses == [200, 100, 486]
    ack = await asyncio.wait_for(callee.received.get(), 5)
    assert isinstance(ack, Request) and ack.method == "ACK"
    writer.close()
    assert not node.core.calls
