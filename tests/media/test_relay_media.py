"""RelayMedia / RelaySession: SDP rewrite, real sockets through the asyncio engine, pool, inactivity."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pbx_edge.media.interface import MediaUnavailable, SdpKind, SdpRejected, Side
from pbx_edge.media.py_engine import PythonRelayEngine
from pbx_edge.media.relay import RelayMedia
from pbx_edge.media.sdp import SessionDescription
from pbx_edge.ops.config import MediaConfig

from .free_ports import free_udp_range

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _sdp(port: int, *, extra: str = "", host: str = HOST, video: int | None = None) -> bytes:
    text = (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        f"a=fmtp:101 0-15\r\n{extra}"
    )
    if video is not None:
        text += f"m=video {video} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    return text.encode()


@pytest.fixture
async def media(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RelayMedia, Clock, list[str]]]:
    params: dict[str, Any] = getattr(request, "param", {})
    base = free_udp_range(64)
    config = MediaConfig(port_start=base, port_end=base + 63, **params)
    clock = Clock()
    inactive: list[str] = []

    def on_inactive(call_id: str, reason: str) -> bool:
        """What the edge does: hang up a talking call (closing its media), leave a ringing one."""
        inactive.append(call_id)
        if call_id.startswith("ringing"):
            return False
        relay.sessions[call_id].close()
        return True

    relay = RelayMedia(config, PythonRelayEngine(clock=clock), clock, on_inactive)
    await relay.engine.start()
    yield relay, clock, inactive
    await relay.stop()


def _phone() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


async def _recv(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 2.0)
    return data


async def test_offer_and_answer_point_each_side_at_its_relay_port(
    media: tuple[RelayMedia, Clock, list[str]],
) -> None:
    relay, _, _ = media
    session = relay.open_session("c1")
    caller, callee = _phone(), _phone()
    offer = session.rewrite(Side.CALLER, SdpKind.OFFER, _sdp(caller.getsockname()[1]))
    sent_to_callee = SessionDescription.parse(offer)
    assert sent_to_callee.media[0].port == session.ports.callee_rtp
    assert sent_to_callee.connection is not None and sent_to_callee.connection.address == HOST
    # Only c= and the m= port changed: every other line is there, in order.
    original = _sdp(caller.getsockname()[1]).split(b"\r\n")
    rewritten = offer.split(b"\r\n")
    changed = [i for i, (x, y) in enumerate(zip(original, rewritten, strict=True)) if x != y]
    assert changed == [5]  # the m= line (c= already said 127.0.0.1)
    answer = session.rewrite(Side.CALLEE, SdpKind.ANSWER, _sdp(callee.getsockname()[1]))
    assert SessionDescription.parse(answer).media[0].port == session.ports.caller_rtp

    payload = bytes([0x80, 0, 0, 1]) + bytes(8) + bytes(range(160))
    caller.sendto(payload, (HOST, session.ports.caller_rtp))
    assert await _recv(callee) == payload
    callee.sendto(payload[::-1], (HOST, session.ports.callee_rtp))
    assert await _recv(caller) == payload[::-1]
    caller.close()
    callee.close()


async def test_streams_port_zero_video_and_hold(media: tuple[RelayMedia, Clock, list[str]]) -> None:
    relay, _, _ = media
    session = relay.open_session("c2")
    out = SessionDescription.parse(session.rewrite(Side.CALLER, SdpKind.OFFER, _sdp(4000, video=0)))
    assert [m.port for m in out.media] == [session.ports.callee_rtp, 0]
    out = SessionDescription.parse(session.rewrite(Side.CALLEE, SdpKind.OFFER, _sdp(5000, video=5002)))
    assert [m.port for m in out.media] == [session.ports.caller_rtp, session.ports.caller_aux_rtp]
    assert not session.on_hold
    held = session.rewrite(Side.CALLER, SdpKind.OFFER, _sdp(4000, host="0.0.0.0", extra="a=sendonly\r\n"))
    assert b"c=IN IP4 0.0.0.0\r\n" in held and b"a=sendonly\r\n" in held
    assert session.on_hold
    three = _sdp(4000, video=4002) + b"m=audio 4004 RTP/AVP 0\r\n"
    with pytest.raises(SdpRejected) as rejected:
        session.rewrite(Side.CALLER, SdpKind.OFFER, three)
    assert rejected.value.status == 488
    with pytest.raises(SdpRejected) as malformed:
        session.rewrite(Side.CALLER, SdpKind.OFFER, b"v=0\r\nthis is not sdp\r\n")
    assert malformed.value.status == 400


@pytest.mark.parametrize("media", [{"max_calls": 2}], indirect=True)
async def test_exhaustion_raises_and_close_gives_everything_back(
    media: tuple[RelayMedia, Clock, list[str]],
) -> None:
    relay, _, _ = media
    fds = len(os.listdir("/proc/self/fd"))
    first = relay.open_session("a")
    first.rewrite(Side.CALLER, SdpKind.OFFER, _sdp(4000))
    relay.open_session("b")
    with pytest.raises(MediaUnavailable) as exhausted:
        relay.open_session("c")
    assert exhausted.value.retry_after >= 1
    usage = relay.usage()
    assert (usage.allocated_calls, usage.total_calls, usage.allocated_ports) == (2, 2, 16)
    first.close()
    first.close()  # idempotent
    relay.sessions["b"].close()
    assert relay.usage().allocated_calls == 0
    assert relay.engine.stats().streams == 0
    assert len(os.listdir("/proc/self/fd")) == fds
    with pytest.raises(SdpRejected):
        first.rewrite(Side.CALLER, SdpKind.OFFER, _sdp(4000))


async def test_a_port_held_by_another_process_is_skipped(media: tuple[RelayMedia, Clock, list[str]]) -> None:
    relay, _, _ = media
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind((HOST, relay.config.port_start + 4))  # the first block's callee RTP port
    try:
        session = relay.open_session("x")
        assert session.ports.base == relay.config.port_start + 8
        assert relay.usage().unusable_blocks == 1
    finally:
        squatter.close()


@pytest.mark.parametrize("media", [{"inactivity_timeout": 10, "hold_timeout": 100}], indirect=True)
async def test_inactivity_ends_silent_calls_only(media: tuple[RelayMedia, Clock, list[str]]) -> None:
    relay, clock, inactive = media
    talking = relay.open_session("talking")
    caller = _phone()
    talking.rewrite(Side.CALLER, SdpKind.OFFER, _sdp(caller.getsockname()[1]))
    silent = relay.open_session("silent")
    silent.rewrite(Side.CALLER, SdpKind.OFFER, _sdp(4000))
    held = relay.open_session("held")
    held.rewrite(Side.CALLER, SdpKind.OFFER, _sdp(4000, extra="a=inactive\r\n"))
    ringing = relay.open_session("ringing")
    clock.now += 9
    caller.sendto(bytes([0x80, 0]) + bytes(170), (HOST, talking.ports.caller_rtp))
    await asyncio.sleep(0.05)
    assert relay.engine.stream_stats(talking.stream_ids[0] or 0).a.last_rx == clock.now
    clock.now += 2
    assert relay.check_inactivity(clock.now) == ["silent"]
    assert sorted(inactive) == ["ringing", "silent"]
    assert ringing.idle_since == clock.now  # not answered yet: its idle clock restarts
    clock.now += 20
    assert relay.check_inactivity(clock.now) == ["talking"]
    clock.now += 80
    assert relay.check_inactivity(clock.now) == ["held"]
    assert list(relay.sessions) == ["ringing"]
    caller.close()
