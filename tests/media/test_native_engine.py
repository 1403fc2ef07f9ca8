"""Tests for the native relay engine (pbx_edge.media.native) over real loopback UDP sockets.

The library is built once at collection when it is missing or older than ``relay.c`` and a C
compiler exists; otherwise the module is skipped. Every wait is bounded, so nothing can hang.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest

from pbx_edge.media.engine import SIDE_A, SIDE_B, StreamSockets
from pbx_edge.media.native import build as native_build


def _ensure_library() -> None:
    if native_build.needs_build() and native_build.compiler() is not None:
        try:
            native_build.build(verbose=False)
        except native_build.BuildError as exc:
            pytest.skip(f"native relay does not build: {exc}", allow_module_level=True)
    if not native_build.available():
        pytest.skip("native relay library not built and no C compiler", allow_module_level=True)


_ensure_library()

from pbx_edge.media.native import NativeRelayEngine  # noqa: E402

pytestmark = pytest.mark.timeout(20)

HOST = "127.0.0.1"
Addr = tuple[str, int]


def udp(host: str = HOST, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def addr(sock: socket.socket) -> Addr:
    host, port = sock.getsockname()[:2]
    return (host, port)


def rtp(seq: int, payload: bytes = b"\xd5" * 160, ssrc: int = 0xCAFE) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + payload


def rtcp_sr() -> bytes:
    return bytes([0x80, 200, 0, 6]) + bytes(24)


async def recv(sock: socket.socket, timeout: float = 2.0) -> tuple[bytes, Addr]:
    loop = asyncio.get_running_loop()
    data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), timeout)
    return data, (source[0], source[1])


async def nothing(sock: socket.socket, wait: float = 0.1) -> bool:
    """True when no datagram arrives on ``sock`` within ``wait`` seconds."""
    try:
        await recv(sock, wait)
    except TimeoutError:
        return True
    return False


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


class Rig:
    """One stream: four relay sockets, a phone on each side (RTP + RTCP socket), SDP addresses set."""

    def __init__(self, engine: NativeRelayEngine, stream_id: int = 7) -> None:
        self.engine = engine
        self.id = stream_id
        self.relay = StreamSockets(udp(), udp(), udp(), udp())
        self.fds = [s.fileno() for s in self.relay.all()]
        self.a_rtp, self.a_rtcp, self.b_rtp, self.b_rtcp = (addr(s) for s in self.relay.all())
        self.caller_rtp, self.caller_rtcp, self.callee_rtp, self.callee_rtcp = udp(), udp(), udp(), udp()
        self.taps: list[tuple[int, int, bytes, float]] = []
        engine.on_tap = lambda sid, side, data, at: self.taps.append((sid, side, data, at))
        engine.add_stream(stream_id, self.relay)
        engine.set_remote(stream_id, SIDE_A, addr(self.caller_rtp), addr(self.caller_rtcp))
        engine.set_remote(stream_id, SIDE_B, addr(self.callee_rtp), addr(self.callee_rtcp))

    def close(self) -> None:
        for sock in (self.caller_rtp, self.caller_rtcp, self.callee_rtp, self.callee_rtcp):
            sock.close()


@pytest.fixture
async def engine() -> AsyncIterator[NativeRelayEngine]:
    engine = NativeRelayEngine()
    await engine.start()
    yield engine
    await engine.stop()


@pytest.fixture
async def rig(engine: NativeRelayEngine) -> AsyncIterator[Rig]:
    rig = Rig(engine)
    yield rig
    rig.close()


# --- relaying -----------------------------------------------------------------------------------


async def test_relays_rtp_and_rtcp_byte_identical_both_ways(rig: Rig) -> None:
    out = rtp(1, bytes(range(160)))
    rig.caller_rtp.sendto(out, rig.a_rtp)
    assert await recv(rig.callee_rtp) == (out, rig.b_rtp)
    back = rtp(2, bytes(range(159, -1, -1)), ssrc=1)
    rig.callee_rtp.sendto(back, rig.b_rtp)
    assert await recv(rig.caller_rtp) == (back, rig.a_rtp)
    rig.caller_rtcp.sendto(rtcp_sr(), rig.a_rtcp)
    assert await recv(rig.callee_rtcp) == (rtcp_sr(), rig.b_rtcp)
    rig.callee_rtcp.sendto(rtcp_sr(), rig.b_rtcp)
    assert await recv(rig.caller_rtcp) == (rtcp_sr(), rig.a_rtcp)


async def test_sends_to_the_sdp_address_before_latching(rig: Rig) -> None:
    # The callee has sent nothing: its SDP address is the only destination there is.
    rig.caller_rtp.sendto(rtp(1), rig.a_rtp)
    assert (await recv(rig.callee_rtp))[0] == rtp(1)
    stats = rig.engine.stream_stats(rig.id)
    assert stats.b.rtp_latched is None
    assert stats.a.rtp_latched == addr(rig.caller_rtp)
    assert stats.a.rtcp_latched is None  # RTP and RTCP latch separately


async def test_latches_to_the_real_source(rig: Rig) -> None:
    natted = udp()  # the caller's media really comes from here, not from its SDP address
    try:
        natted.sendto(rtp(1), rig.a_rtp)
        await recv(rig.callee_rtp)
        rig.callee_rtp.sendto(rtp(2), rig.b_rtp)
        assert await recv(natted) == (rtp(2), rig.a_rtp)
        assert await nothing(rig.caller_rtp)
        assert rig.engine.stream_stats(rig.id).a.rtp_latched == addr(natted)
    finally:
        natted.close()


async def test_strangers_are_dropped_and_counted_after_latching(rig: Rig) -> None:
    rig.caller_rtp.sendto(rtp(1), rig.a_rtp)
    await recv(rig.callee_rtp)
    stranger = udp()
    try:
        for seq in range(3):
            stranger.sendto(rtp(seq, b"x" * 160), rig.a_rtp)
        await until(lambda: rig.engine.stream_stats(rig.id).a.strangers == 3)
        assert await nothing(rig.callee_rtp)
    finally:
        stranger.close()
    stats = rig.engine.stream_stats(rig.id)
    assert stats.a.rtp_packets_in == 1
    assert rig.engine.stats().packets_dropped == 3
    rig.caller_rtp.sendto(rtp(4), rig.a_rtp)  # the latched source still gets through
    assert (await recv(rig.callee_rtp))[0] == rtp(4)


async def test_a_new_sdp_address_resets_latching(rig: Rig) -> None:
    natted = udp()
    moved = udp()
    try:
        natted.sendto(rtp(1), rig.a_rtp)
        await recv(rig.callee_rtp)
        rig.engine.set_remote(rig.id, SIDE_A, addr(rig.caller_rtp), addr(rig.caller_rtcp))  # unchanged
        assert rig.engine.stream_stats(rig.id).a.rtp_latched == addr(natted)
        rig.engine.set_remote(rig.id, SIDE_A, addr(moved), addr(rig.caller_rtcp))  # re-INVITE
        assert rig.engine.stream_stats(rig.id).a.rtp_latched is None
        rig.callee_rtp.sendto(rtp(2), rig.b_rtp)
        assert (await recv(moved))[0] == rtp(2)
        rig.caller_rtp.sendto(rtp(3), rig.a_rtp)  # whoever speaks first latches again
        assert (await recv(rig.callee_rtp))[0] == rtp(3)
        assert rig.engine.stream_stats(rig.id).a.rtp_latched == addr(rig.caller_rtp)
    finally:
        natted.close()
        moved.close()


async def test_forwarding_off_still_counts_and_taps(rig: Rig) -> None:
    rig.engine.set_tap(rig.id, True)
    rig.engine.set_forwarding(rig.id, SIDE_B, False)
    rig.caller_rtp.sendto(rtp(1), rig.a_rtp)
    await until(lambda: rig.engine.stream_stats(rig.id).a.rtp_packets_in == 1)
    assert await nothing(rig.callee_rtp)
    await until(lambda: len(rig.taps) == 1)
    assert rig.engine.stream_stats(rig.id).b.rtp_packets_out == 0
    rig.callee_rtp.sendto(rtp(2), rig.b_rtp)  # the other direction is untouched
    assert (await recv(rig.caller_rtp))[0] == rtp(2)
    rig.engine.set_forwarding(rig.id, SIDE_B, True)
    rig.caller_rtp.sendto(rtp(3), rig.a_rtp)
    assert (await recv(rig.callee_rtp))[0] == rtp(3)


async def test_rtcp_mux_on_the_rtp_socket_is_relayed_counted_as_rtcp_and_not_tapped(rig: Rig) -> None:
    rig.engine.set_tap(rig.id, True)
    rig.caller_rtp.sendto(rtcp_sr(), rig.a_rtp)
    assert await recv(rig.callee_rtp) == (rtcp_sr(), rig.b_rtp)
    stats = rig.engine.stream_stats(rig.id)
    assert (stats.a.rtcp_packets_in, stats.a.rtp_packets_in) == (1, 0)
    assert (stats.b.rtcp_packets_out, stats.b.rtp_packets_out) == (1, 0)
    await asyncio.sleep(0.05)
    assert rig.taps == []


async def test_oversized_datagrams_are_dropped_and_empty_ones_relayed(rig: Rig) -> None:
    rig.caller_rtp.sendto(b"\x80" * 3000, rig.a_rtp)  # larger than the 2048-byte buffers
    await until(lambda: rig.engine.stats().packets_dropped == 1)
    assert await nothing(rig.callee_rtp)
    assert rig.engine.stream_stats(rig.id).a.rtp_latched is None
    rig.caller_rtp.sendto(b"", rig.a_rtp)
    assert await recv(rig.callee_rtp) == (b"", rig.b_rtp)
    big = rtp(1, bytes(2048 - 12))  # exactly the buffer size still fits
    rig.caller_rtp.sendto(big, rig.a_rtp)
    assert (await recv(rig.callee_rtp))[0] == big


async def test_no_destination_is_a_send_error(rig: Rig) -> None:
    rig.engine.set_remote(rig.id, SIDE_B, None, ("0.0.0.0", 0))
    rig.caller_rtp.sendto(rtp(1), rig.a_rtp)
    rig.caller_rtcp.sendto(rtcp_sr(), rig.a_rtcp)
    await until(lambda: rig.engine.stream_stats(rig.id).b.send_errors == 2)
    assert rig.engine.stats().packets_dropped == 2
    assert rig.engine.stats().packets_relayed == 0


# --- tap ----------------------------------------------------------------------------------------


async def test_tap_delivers_copies_with_stream_side_and_arrival(rig: Rig) -> None:
    rig.engine.set_tap(rig.id, True)
    before = time.monotonic()
    for seq in range(3):
        rig.caller_rtp.sendto(rtp(seq), rig.a_rtp)
        await recv(rig.callee_rtp)
    rig.callee_rtp.sendto(rtp(9, ssrc=2), rig.b_rtp)
    await recv(rig.caller_rtp)
    rig.caller_rtcp.sendto(rtcp_sr(), rig.a_rtcp)
    await recv(rig.callee_rtcp)
    await until(lambda: len(rig.taps) == 4)
    after = time.monotonic()
    assert [(sid, side, data) for sid, side, data, _ in rig.taps] == [
        (rig.id, SIDE_A, rtp(0)),
        (rig.id, SIDE_A, rtp(1)),
        (rig.id, SIDE_A, rtp(2)),
        (rig.id, SIDE_B, rtp(9, ssrc=2)),
    ]
    assert all(before <= at <= after for *_, at in rig.taps)
    rig.engine.set_tap(rig.id, False)
    rig.caller_rtp.sendto(rtp(4), rig.a_rtp)
    await recv(rig.callee_rtp)
    await asyncio.sleep(0.05)
    assert len(rig.taps) == 4


async def test_tap_drops_and_counts_when_the_reader_is_behind() -> None:
    engine = NativeRelayEngine(tap_buffer_bytes=4096)
    await engine.start()
    rig = Rig(engine)
    try:
        rig.engine.set_tap(rig.id, True)
        sent = 300
        for seq in range(sent):  # the loop is blocked here: nobody drains the tap
            rig.caller_rtp.sendto(rtp(seq), rig.a_rtp)
            if seq % 50 == 49:
                time.sleep(0.01)
        deadline = time.monotonic() + 2
        while engine.stream_stats(rig.id).a.rtp_packets_in < sent and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.stream_stats(rig.id).a.rtp_packets_in == sent
        assert engine.stats().packets_relayed == sent  # the relay did not wait for the tap
        drops = engine.stats().tap_drops
        assert 0 < drops < sent
        await until(lambda: len(rig.taps) == sent - drops)
        seqs = [int.from_bytes(data[2:4], "big") for _, _, data, _ in rig.taps]
        assert seqs == sorted(seqs)  # copies arrive in order, with gaps where they were dropped
    finally:
        rig.close()
        await engine.stop()


async def test_tap_callback_errors_do_not_stop_the_tap(rig: Rig) -> None:
    seen: list[bytes] = []

    def flaky(stream_id: int, side: int, data: bytes, at: float) -> None:
        seen.append(data)
        if len(seen) == 1:
            raise RuntimeError("consumer bug")

    rig.engine.on_tap = flaky
    rig.engine.set_tap(rig.id, True)
    rig.caller_rtp.sendto(rtp(1), rig.a_rtp)
    await recv(rig.callee_rtp)
    rig.caller_rtp.sendto(rtp(2), rig.a_rtp)
    await recv(rig.callee_rtp)
    await until(lambda: len(seen) == 2)


# --- injection ----------------------------------------------------------------------------------


async def test_injection_uses_the_leg_socket_and_counts(rig: Rig) -> None:
    engine = rig.engine
    assert engine.send(rig.id, SIDE_B, rtp(1, b"\x01" * 160))
    assert await recv(rig.callee_rtp) == (rtp(1, b"\x01" * 160), rig.b_rtp)
    assert engine.send(rig.id, SIDE_B, rtcp_sr(), rtcp=True)
    assert await recv(rig.callee_rtcp) == (rtcp_sr(), rig.b_rtcp)
    stats = engine.stream_stats(rig.id).b
    assert (stats.rtp_packets_out, stats.rtp_bytes_out, stats.rtcp_packets_out) == (1, 172, 1)
    assert engine.stats().packets_relayed == 0  # injection is not relaying
    natted = udp()
    try:
        natted.sendto(rtp(2), rig.b_rtp)  # the callee latches: injection follows the latch
        await recv(rig.caller_rtp)
        assert engine.send(rig.id, SIDE_B, rtp(3))
        assert (await recv(natted))[0] == rtp(3)
    finally:
        natted.close()
    engine.set_remote(rig.id, SIDE_A, None, None)
    assert not engine.send(rig.id, SIDE_A, rtp(4))
    assert engine.stream_stats(rig.id).a.send_errors == 1
    assert not engine.send(12345, SIDE_A, rtp(4))


# --- stats --------------------------------------------------------------------------------------


async def test_counters(rig: Rig) -> None:
    engine = rig.engine
    assert engine.stream_stats(rig.id).a.last_rx is None
    t0 = time.monotonic()
    for seq in range(5):
        rig.caller_rtp.sendto(rtp(seq), rig.a_rtp)
        await recv(rig.callee_rtp)
    for seq in range(2):
        rig.callee_rtp.sendto(rtp(seq, b"\x00" * 80), rig.b_rtp)
        await recv(rig.caller_rtp)
    rig.caller_rtcp.sendto(rtcp_sr(), rig.a_rtcp)
    await recv(rig.callee_rtcp)
    a, b = engine.stream_stats(rig.id).a, engine.stream_stats(rig.id).b
    assert (a.rtp_packets_in, a.rtp_bytes_in, a.rtcp_packets_in) == (5, 5 * 172, 1)
    assert (a.rtp_packets_out, a.rtp_bytes_out, a.rtcp_packets_out) == (2, 2 * 92, 0)
    assert (b.rtp_packets_in, b.rtp_bytes_in, b.rtcp_packets_in) == (2, 2 * 92, 0)
    assert (b.rtp_packets_out, b.rtp_bytes_out, b.rtcp_packets_out) == (5, 5 * 172, 1)
    assert a.last_rx is not None and t0 <= a.last_rx <= time.monotonic()
    assert a.rtcp_latched == addr(rig.caller_rtcp) and b.rtp_latched == addr(rig.callee_rtp)
    assert (a.strangers, a.send_errors, b.send_errors) == (0, 0, 0)
    totals = engine.stats()
    assert (totals.streams, totals.packets_relayed, totals.packets_dropped) == (1, 8, 0)
    assert totals.bytes_relayed == 5 * 172 + 2 * 92 + len(rtcp_sr())
    with pytest.raises(KeyError):
        engine.stream_stats(999)


# --- lifecycle ----------------------------------------------------------------------------------


async def test_remove_stream_closes_its_sockets(rig: Rig) -> None:
    assert all(s.fileno() == -1 for s in rig.relay.all())  # detached: the engine owns the fds
    rig.engine.remove_stream(rig.id)
    for fd in rig.fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(rig.a_rtp)  # the port is free again
    probe.close()
    rig.engine.remove_stream(rig.id)  # unknown ids are ignored
    assert rig.engine.stats().streams == 0
    assert not rig.engine.send(rig.id, SIDE_A, rtp(1))


async def test_200_streams_added_and_removed_leak_nothing(engine: NativeRelayEngine) -> None:
    before = open_fds()
    for round_ in range(2):
        ids = range(round_ * 1000, round_ * 1000 + 200)
        for stream_id in ids:
            engine.add_stream(stream_id, StreamSockets(udp(), udp(), udp(), udp()))
        assert engine.stats().streams == 200
        assert open_fds() == before + 800
        for stream_id in ids:
            engine.remove_stream(stream_id)
        assert open_fds() == before
    rig = Rig(engine, stream_id=5)  # slots are reused: the engine still relays
    try:
        rig.caller_rtp.sendto(rtp(1), rig.a_rtp)
        assert (await recv(rig.callee_rtp))[0] == rtp(1)
    finally:
        rig.close()


async def test_stop_cleans_everything() -> None:
    fds, tasks = open_fds(), threads()
    engine = NativeRelayEngine(threads=2)
    await engine.start()
    assert threads() == tasks + 2
    rigs = [Rig(engine, stream_id) for stream_id in (1, 2)]  # one per shard
    for r in rigs:
        r.caller_rtp.sendto(rtp(1), r.a_rtp)
        assert (await recv(r.callee_rtp))[0] == rtp(1)
        r.close()
    await engine.stop()
    assert open_fds() == fds
    assert threads() == tasks
    assert engine.stats().streams == 0 and engine.stats().packets_relayed == 2
    await engine.stop()  # idempotent


async def test_control_errors(engine: NativeRelayEngine) -> None:
    rig = Rig(engine, stream_id=3)
    try:
        with pytest.raises(ValueError, match="already exists"):
            engine.add_stream(3, StreamSockets(udp(), udp(), udp(), udp()))
        with pytest.raises(ValueError, match="IP address literal"):
            engine.set_remote(3, SIDE_A, ("phone.example.com", 4000), None)
        with pytest.raises(ValueError, match="side"):
            engine.set_forwarding(3, 2, False)
        with pytest.raises(KeyError):
            engine.set_tap(99, True)
    finally:
        rig.close()
    stopped = NativeRelayEngine()
    sockets = StreamSockets(udp(), udp(), udp(), udp())
    with pytest.raises(RuntimeError, match="not started"):
        stopped.add_stream(1, sockets)
    for sock in sockets.all():  # still ours: the failed add did not take them
        assert sock.fileno() >= 0
        sock.close()


async def test_ipv6_streams() -> None:
    try:
        probe = udp("::1", socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    engine = NativeRelayEngine()
    await engine.start()
    try:
        relay = StreamSockets(*(udp("::1", socket.AF_INET6) for _ in range(4)))
        b_rtp = addr(relay.b_rtp)
        a_rtp = addr(relay.a_rtp)
        callee = udp("::1", socket.AF_INET6)
        engine.add_stream(1, relay)
        engine.set_remote(1, SIDE_B, addr(callee), None)
        probe.sendto(rtp(1), a_rtp)
        assert await recv(callee) == (rtp(1), b_rtp)
        assert engine.stream_stats(1).a.rtp_latched == addr(probe)
        callee.close()
    finally:
        probe.close()
        await engine.stop()


async def test_ipv4_peers_on_dual_stack_ipv6_sockets() -> None:
    try:
        relay = StreamSockets(*(udp("::", socket.AF_INET6) for _ in range(4)))
    except OSError:
        pytest.skip("no IPv6")
    b_port = addr(relay.b_rtp)[1]
    a_port = addr(relay.a_rtp)[1]
    caller, callee = udp(), udp()
    engine = NativeRelayEngine()
    await engine.start()
    try:
        engine.add_stream(1, relay)
        engine.set_remote(1, SIDE_B, addr(callee), None)  # an IPv4 SDP address, mapped for the socket
        caller.sendto(rtp(1), (HOST, a_port))
        assert await recv(callee) == (rtp(1), (HOST, b_port))
        assert engine.stream_stats(1).a.rtp_latched == ("::ffff:127.0.0.1", addr(caller)[1])
    finally:
        caller.close()
        callee.close()
        await engine.stop()


async def test_coalescing_relays_and_stops_promptly() -> None:
    engine = NativeRelayEngine(coalesce_us=2000)
    await engine.start()
    rig = Rig(engine)
    try:
        for seq in range(20):
            rig.caller_rtp.sendto(rtp(seq), rig.a_rtp)
        for seq in range(20):
            assert (await recv(rig.callee_rtp))[0] == rtp(seq)
    finally:
        rig.close()
        started = time.monotonic()
        await engine.stop()
        assert time.monotonic() - started < 0.5
    with pytest.raises(ValueError, match="coalesce_us"):
        NativeRelayEngine(coalesce_us=-1)
