"""The relay engine contract (pbx_edge/media/engine.py), run against every engine built here.

Real UDP sockets on 127.0.0.1: two "phones" (caller and callee) and the four relay sockets.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from pbx_edge.media.engine import SIDE_A, SIDE_B, RelayEngine, StreamSockets
from pbx_edge.media.engines import native_available
from pbx_edge.media.py_engine import PythonRelayEngine

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"


def _make_native() -> RelayEngine:
    from pbx_edge.media.native import NativeRelayEngine

    return NativeRelayEngine(threads=1)


ENGINES: dict[str, Callable[[], RelayEngine]] = {"python": PythonRelayEngine, "native": _make_native}


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _rtp(seq: int, payload: bytes = b"\x55" * 160, pt: int = 0, ssrc: int = 0x1234) -> bytes:
    header = bytes([0x80, pt]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
    return header + ssrc.to_bytes(4, "big") + payload


async def _recv(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), timeout)
    return data, addr


async def _nothing(sock: socket.socket, wait: float = 0.15) -> bool:
    try:
        await _recv(sock, wait)
    except TimeoutError:
        return True
    return False


class Rig:
    """An engine with one stream and a phone on each side (each phone: an RTP and an RTCP socket)."""

    def __init__(self, engine: RelayEngine) -> None:
        self.engine = engine
        self.relay = StreamSockets(_udp(), _udp(), _udp(), _udp())
        self.ports = [_port(s) for s in self.relay.all()]
        self.caller_rtp, self.caller_rtcp = _udp(), _udp()
        self.callee_rtp, self.callee_rtcp = _udp(), _udp()
        self.taps: list[tuple[int, int, bytes, float]] = []
        engine.on_tap = lambda sid, side, data, at: self.taps.append((sid, side, data, at))
        engine.add_stream(1, self.relay)
        engine.set_remote(1, SIDE_A, (HOST, _port(self.caller_rtp)), (HOST, _port(self.caller_rtcp)))
        engine.set_remote(1, SIDE_B, (HOST, _port(self.callee_rtp)), (HOST, _port(self.callee_rtcp)))

    @property
    def a_rtp(self) -> tuple[str, int]:
        return (HOST, self.ports[0])

    @property
    def a_rtcp(self) -> tuple[str, int]:
        return (HOST, self.ports[1])

    @property
    def b_rtp(self) -> tuple[str, int]:
        return (HOST, self.ports[2])

    @property
    def b_rtcp(self) -> tuple[str, int]:
        return (HOST, self.ports[3])

    def close(self) -> None:
        for sock in (self.caller_rtp, self.caller_rtcp, self.callee_rtp, self.callee_rtcp):
            sock.close()


@pytest.fixture(params=sorted(ENGINES))
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[RelayEngine]:
    if request.param == "native" and not native_available():
        pytest.skip("native relay engine not built (python -m pbx_edge.media.native.build)")
    engine = ENGINES[request.param]()
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture
async def rig(engine: RelayEngine) -> AsyncIterator[Rig]:
    rig = Rig(engine)
    yield rig
    rig.close()


async def test_rtp_and_rtcp_cross_byte_identical_both_ways(rig: Rig) -> None:
    packet = _rtp(1, bytes(range(160)))
    rig.caller_rtp.sendto(packet, rig.a_rtp)
    data, source = await _recv(rig.callee_rtp)
    assert data == packet
    assert source == rig.b_rtp  # sent from the callee-facing socket
    reply = _rtp(7, bytes(reversed(range(160))), ssrc=0x9999)
    rig.callee_rtp.sendto(reply, rig.b_rtp)
    data, source = await _recv(rig.caller_rtp)
    assert (data, source) == (reply, rig.a_rtp)
    report = bytes([0x81, 200, 0, 6]) + bytes(24)
    rig.caller_rtcp.sendto(report, rig.a_rtcp)
    data, source = await _recv(rig.callee_rtcp)
    assert (data, source) == (report, rig.b_rtcp)
    rig.callee_rtcp.sendto(report, rig.b_rtcp)
    assert (await _recv(rig.caller_rtcp))[0] == report
    stats = rig.engine.stream_stats(1)
    assert stats.a.rtp_packets_in == 1 and stats.a.rtcp_packets_in == 1
    assert stats.b.rtp_packets_out == 1 and stats.b.rtp_bytes_out == len(packet)
    assert stats.a.rtp_latched == ("127.0.0.1", _port(rig.caller_rtp))
    assert rig.engine.stats().packets_relayed == 4


async def test_latches_to_the_real_source_and_drops_strangers(rig: Rig) -> None:
    natted = _udp()  # the caller's packets really come from here (a NAT rewrote the port)
    try:
        natted.sendto(_rtp(1), rig.a_rtp)
        await _recv(rig.callee_rtp)
        rig.callee_rtp.sendto(_rtp(2), rig.b_rtp)
        data, _ = await _recv(natted)  # answered to the latched source, not to the SDP address
        assert data == _rtp(2)
        assert await _nothing(rig.caller_rtp)
        stranger = _udp()
        stranger.sendto(_rtp(3, b"evil" * 40), rig.a_rtp)
        assert await _nothing(rig.callee_rtp)
        stranger.close()
        assert rig.engine.stream_stats(1).a.strangers == 1
        # A new SDP address for the caller clears the latch: the SDP address is used again.
        rig.engine.set_remote(1, SIDE_A, (HOST, 9), (HOST, 9))
        rig.engine.set_remote(1, SIDE_A, (HOST, _port(rig.caller_rtp)), (HOST, _port(rig.caller_rtcp)))
        rig.callee_rtp.sendto(_rtp(4), rig.b_rtp)
        assert (await _recv(rig.caller_rtp))[0] == _rtp(4)
    finally:
        natted.close()


async def test_ssrc_changes_and_sequence_jumps_pass(rig: Rig) -> None:
    for seq, ssrc in ((1, 1), (50000, 1), (3, 77), (65535, 77), (0, 77)):
        rig.caller_rtp.sendto(_rtp(seq, ssrc=ssrc), rig.a_rtp)
        assert (await _recv(rig.callee_rtp))[0] == _rtp(seq, ssrc=ssrc)


async def test_forwarding_off_keeps_counting_and_tapping(rig: Rig) -> None:
    rig.engine.set_tap(1, True)
    rig.engine.set_forwarding(1, SIDE_B, False)
    rig.caller_rtp.sendto(_rtp(1), rig.a_rtp)
    assert await _nothing(rig.callee_rtp)
    assert rig.engine.stream_stats(1).a.rtp_packets_in == 1
    await asyncio.sleep(0.05)
    assert [(sid, side, data) for sid, side, data, _ in rig.taps] == [(1, SIDE_A, _rtp(1))]
    rig.engine.set_forwarding(1, SIDE_B, True)
    rig.caller_rtp.sendto(_rtp(2), rig.a_rtp)
    assert (await _recv(rig.callee_rtp))[0] == _rtp(2)


async def test_tap_copies_rtp_of_both_sides_but_not_rtcp(rig: Rig) -> None:
    rig.engine.set_tap(1, True)
    rig.caller_rtp.sendto(_rtp(1), rig.a_rtp)
    await _recv(rig.callee_rtp)
    rig.callee_rtp.sendto(_rtp(2, ssrc=5), rig.b_rtp)
    await _recv(rig.caller_rtp)
    rig.caller_rtcp.sendto(bytes([0x81, 201, 0, 1]) + bytes(4), rig.a_rtcp)
    await _recv(rig.callee_rtcp)
    for _ in range(50):
        if len(rig.taps) >= 2:
            break
        await asyncio.sleep(0.01)
    assert [(side, data) for _, side, data, _ in rig.taps] == [(SIDE_A, _rtp(1)), (SIDE_B, _rtp(2, ssrc=5))]
    rig.engine.set_tap(1, False)
    rig.caller_rtp.sendto(_rtp(3), rig.a_rtp)
    await _recv(rig.callee_rtp)
    await asyncio.sleep(0.05)
    assert len(rig.taps) == 2


async def test_injection_goes_to_the_latched_peer_from_the_leg_socket(rig: Rig) -> None:
    assert rig.engine.send(1, SIDE_B, _rtp(9, b"\x01" * 160))
    data, source = await _recv(rig.callee_rtp)
    assert (data, source) == (_rtp(9, b"\x01" * 160), rig.b_rtp)
    assert rig.engine.send(1, SIDE_A, b"\x81\xc8" + bytes(26), rtcp=True)
    assert (await _recv(rig.caller_rtcp))[1] == rig.a_rtcp
    rig.engine.set_remote(1, SIDE_B, None, None)
    assert not rig.engine.send(1, SIDE_B, _rtp(10))
    assert not rig.engine.send(99, SIDE_B, _rtp(10))


async def test_no_destination_counts_a_drop(rig: Rig) -> None:
    rig.engine.set_remote(1, SIDE_B, None, None)
    rig.caller_rtp.sendto(_rtp(1), rig.a_rtp)
    for _ in range(50):
        if rig.engine.stream_stats(1).b.send_errors:
            break
        await asyncio.sleep(0.01)
    assert rig.engine.stream_stats(1).b.send_errors == 1
    assert rig.engine.stats().packets_dropped >= 1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_streams_added_and_removed_leak_no_descriptor(engine: RelayEngine) -> None:
    before = _open_fds()
    for round_ in range(3):
        ids = range(1000 + round_ * 100, 1100 + round_ * 100)
        for stream_id in ids:
            engine.add_stream(stream_id, StreamSockets(_udp(), _udp(), _udp(), _udp()))
        assert engine.stats().streams == 100
        for stream_id in ids:
            engine.remove_stream(stream_id)
        engine.remove_stream(ids[0])  # unknown now: ignored
    await asyncio.sleep(0.05)
    assert engine.stats().streams == 0
    assert _open_fds() == before


async def test_stop_closes_every_stream(engine: RelayEngine) -> None:
    relay = StreamSockets(_udp(), _udp(), _udp(), _udp())
    port = _port(relay.a_rtp)
    engine.add_stream(5, relay)
    await engine.stop()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((HOST, port))  # the port is free again
    probe.close()
    assert engine.stats().streams == 0


async def test_tap_of_one_payload_type_copies_only_those_packets(rig: Rig) -> None:
    rig.engine.set_tap(1, False, 101)  # telephone-event only: DTMF without the audio
    rig.caller_rtp.sendto(_rtp(1), rig.a_rtp)
    rig.caller_rtp.sendto(_rtp(2, b"\x05\x0a\x00\xa0", pt=101), rig.a_rtp)
    rig.caller_rtp.sendto(_rtp(3, b"\x05\x8a\x00\xa0", pt=101 | 0x80), rig.a_rtp)  # with marker
    for _ in range(3):
        await _recv(rig.callee_rtp)
    for _ in range(50):
        if len(rig.taps) >= 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert [data[1] & 0x7F for _, _, data, _ in rig.taps] == [101, 101]
    rig.engine.set_tap(1, False)
    rig.caller_rtp.sendto(_rtp(4, pt=101), rig.a_rtp)
    await _recv(rig.callee_rtp)
    await asyncio.sleep(0.05)
    assert len(rig.taps) == 2
