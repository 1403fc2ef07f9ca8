"""The SDP the edge answers an attended caller with (pbx_edge/media/local_answer.py), written by
itself and recorded on a real relay session (real sockets: the injector then plays to the caller
in the codec the answer chose)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import numpy as np
import pytest

from pbx_edge.media.codecs import get_codec
from pbx_edge.media.interface import SdpKind, SdpRejected, Side
from pbx_edge.media.local_answer import answer_locally, build_answer
from pbx_edge.media.py_engine import PythonRelayEngine
from pbx_edge.media.relay import RelayMedia
from pbx_edge.media.sdp import SessionDescription
from pbx_edge.ops.config import MediaConfig
from tests.media.free_ports import free_udp_range

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"


def _offer(formats: str, rtpmaps: str = "", port: int = 6000, extra_m: str = "") -> SessionDescription:
    text = (
        f"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        f"{extra_m}m=audio {port} RTP/AVP {formats}\r\n{rtpmaps}a=sendrecv\r\n"
    )
    return SessionDescription.parse(text.encode())


def test_answer_picks_the_first_offered_codec_we_encode_and_telephone_event() -> None:
    offer = _offer(
        "9 18 8 0 101",
        "a=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
    )
    answer = build_answer(offer, "192.0.2.1", [20000, 20002])
    (audio,) = answer.media
    assert (audio.port, audio.formats) == (20000, ("8", "101"))
    assert answer.connection is not None and answer.connection.address == "192.0.2.1"
    lines = {str(line) for line in audio.lines}
    assert {"a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"} <= lines
    assert "a=sendrecv" in lines
    again = bytes(answer)
    assert SessionDescription.parse(again) == answer  # a well-formed body


def test_answer_keeps_a_dynamic_opus_payload_type() -> None:
    offer = _offer("111 0", "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n")
    (audio,) = build_answer(offer, HOST, [20000]).media
    assert audio.formats == ("111",)
    assert {str(line) for line in audio.lines} >= {"a=rtpmap:111 opus/48000/2", "a=fmtp:111 useinbandfec=1"}


def test_other_streams_are_refused_with_port_zero() -> None:
    offer = _offer("0", extra_m="m=video 7000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")
    video, audio = build_answer(offer, HOST, [20000, 20002]).media
    assert (video.media, video.port) == ("video", 0)
    assert (audio.media, audio.port, audio.formats) == ("audio", 20002, ("0",))


def test_an_offer_without_a_codec_we_encode_is_refused() -> None:
    with pytest.raises(SdpRejected) as caught:
        build_answer(_offer("9 18", "a=rtpmap:9 G722/8000\r\n"), HOST, [20000])
    assert caught.value.status == 488 and "codec" in caught.value.reason


@pytest.fixture
async def relay() -> AsyncIterator[RelayMedia]:
    base = free_udp_range(16, start=6400)
    config = MediaConfig(port_start=base, port_end=base + 15)
    loop = asyncio.get_running_loop()
    media = RelayMedia(config, PythonRelayEngine(clock=loop.time), loop.time)
    await media.engine.start()
    yield media
    await media.stop()


async def test_answer_locally_makes_the_relay_play_to_the_caller_in_the_answered_codec(
    relay: RelayMedia,
) -> None:
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind((HOST, 0))
    phone.setblocking(False)
    port = phone.getsockname()[1]
    try:
        session = relay.open_session("call-1")
        offer = _offer("8 0", "a=rtpmap:8 PCMA/8000\r\n", port=port)
        session.rewrite(Side.CALLER, SdpKind.OFFER, bytes(offer).replace(b"10.0.0.9", HOST.encode()))
        answer = SessionDescription.parse(answer_locally(session, Side.CALLER))
        assert answer.media[0].port == session.ports.caller_rtp
        assert session.codec() == "PCMA/8000"
        t = np.arange(8000) / 16000
        tone = (np.sin(2 * np.pi * 800 * t) * 8000).astype("<i2").tobytes()
        session.play(Side.CALLER, tone)
        await asyncio.sleep(0.7)
        packets = []
        while True:
            try:
                packets.append(phone.recv(2048))
            except BlockingIOError:
                break
        assert len(packets) >= 20
        assert {p[1] & 0x7F for p in packets} == {8}
        pcm = np.concatenate([get_codec("PCMA").new_decoder().decode(p[12:]) for p in packets])
        assert float(np.abs(pcm).mean()) > 1000
    finally:
        phone.close()
