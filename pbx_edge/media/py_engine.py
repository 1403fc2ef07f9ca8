"""The pure-asyncio relay engine: one ``loop.add_reader`` per socket, drained to empty per wake-up.

It is the fallback when the native engine (:mod:`pbx_edge.media.native`) is not built, and the
reference the native one is tested against. Per packet it costs one ``recvfrom`` and one ``sendto``
plus a few dict-free attribute reads; the semantics are those of :mod:`pbx_edge.media.engine`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from pbx_edge.media.engine import (
    SIDE_A,
    SIDE_B,
    Address,
    EngineStats,
    SideStats,
    StreamSockets,
    StreamStats,
    TapCallback,
)

_BUFFER = 2048
_BATCH = 64  # packets drained per wake-up before yielding to other sockets


def _is_rtcp(data: bytes) -> bool:
    return len(data) > 1 and 200 <= data[1] <= 204


class _Side:
    """One side of a stream: its two sockets, where to send to it, and its counters."""

    __slots__ = ("forward", "rtcp", "rtp", "sdp_rtcp", "sdp_rtp", "stats")

    def __init__(self, rtp: socket.socket, rtcp: socket.socket) -> None:
        self.rtp = rtp
        self.rtcp = rtcp
        self.sdp_rtp: Address | None = None
        self.sdp_rtcp: Address | None = None
        self.forward = True  # relay the other side's media to this side
        self.stats = SideStats()

    def rtp_destination(self) -> Address | None:
        return self.stats.rtp_latched or self.sdp_rtp

    def rtcp_destination(self) -> Address | None:
        return self.stats.rtcp_latched or self.sdp_rtcp


class _Stream:
    __slots__ = ("sides", "stream_id", "tap", "tap_pt")

    def __init__(self, stream_id: int, sockets: StreamSockets) -> None:
        self.stream_id = stream_id
        self.sides = (_Side(sockets.a_rtp, sockets.a_rtcp), _Side(sockets.b_rtp, sockets.b_rtcp))
        self.tap = False
        self.tap_pt = -1  # with tap False: copy only this payload type (-1: none)


class PythonRelayEngine:
    """Relay on the asyncio loop itself. Good for a few hundred calls per core (see bench/relay.py)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.on_tap: TapCallback | None = None
        self._streams: dict[int, _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        self._totals = EngineStats()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = self._loop.time

    async def stop(self) -> None:
        for stream_id in list(self._streams):
            self.remove_stream(stream_id)

    # --- control ---------------------------------------------------------------------------------
    def add_stream(self, stream_id: int, sockets: StreamSockets) -> None:
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id} already exists")
        loop = self._loop
        if loop is None:
            raise RuntimeError("engine not started")
        stream = _Stream(stream_id, sockets)
        self._streams[stream_id] = stream
        for side in (SIDE_A, SIDE_B):
            here, there = stream.sides[side], stream.sides[1 - side]
            for sock in here.rtp, here.rtcp:
                sock.setblocking(False)
            loop.add_reader(here.rtp.fileno(), self._on_readable, stream, here, there, side, False)
            loop.add_reader(here.rtcp.fileno(), self._on_readable, stream, here, there, side, True)

    def set_remote(self, stream_id: int, side: int, rtp: Address | None, rtcp: Address | None) -> None:
        here = self._streams[stream_id].sides[side]
        if rtp != here.sdp_rtp:
            here.stats.rtp_latched = None
        if rtcp != here.sdp_rtcp:
            here.stats.rtcp_latched = None
        here.sdp_rtp, here.sdp_rtcp = rtp, rtcp

    def set_forwarding(self, stream_id: int, to_side: int, enabled: bool) -> None:
        self._streams[stream_id].sides[to_side].forward = enabled

    def set_tap(self, stream_id: int, enabled: bool, payload_type: int | None = None) -> None:
        stream = self._streams[stream_id]
        stream.tap = enabled
        stream.tap_pt = -1 if payload_type is None else payload_type

    def send(self, stream_id: int, to_side: int, data: bytes, rtcp: bool = False) -> bool:
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        there = stream.sides[to_side]
        return self._send_to(there, data, rtcp)

    def remove_stream(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        for side in stream.sides:
            for sock in side.rtp, side.rtcp:
                if self._loop is not None:
                    self._loop.remove_reader(sock.fileno())
                sock.close()

    def stream_stats(self, stream_id: int) -> StreamStats:
        a, b = self._streams[stream_id].sides
        return StreamStats(a=a.stats, b=b.stats)

    def stats(self) -> EngineStats:
        totals = self._totals
        return EngineStats(
            streams=len(self._streams),
            packets_relayed=totals.packets_relayed,
            bytes_relayed=totals.bytes_relayed,
            packets_dropped=totals.packets_dropped,
            tap_drops=totals.tap_drops,
        )

    # --- data plane ------------------------------------------------------------------------------
    def _on_readable(self, stream: _Stream, here: _Side, there: _Side, side: int, rtcp: bool) -> None:
        sock = here.rtcp if rtcp else here.rtp
        stats = here.stats
        totals = self._totals
        assert self._clock is not None
        now = self._clock()
        for _ in range(_BATCH):
            try:
                data, source = sock.recvfrom(_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP errors surfacing on the socket: nothing to relay
                continue
            latched = stats.rtcp_latched if rtcp else stats.rtp_latched
            if latched is None:
                if rtcp:
                    stats.rtcp_latched = source[:2]
                else:
                    stats.rtp_latched = source[:2]
            elif source[:2] != latched:
                stats.strangers += 1
                totals.packets_dropped += 1
                continue
            stats.last_rx = now
            if rtcp or _is_rtcp(data):
                stats.rtcp_packets_in += 1
            else:
                stats.rtp_packets_in += 1
                stats.rtp_bytes_in += len(data)
                if (stream.tap or data[1] & 0x7F == stream.tap_pt) and self.on_tap is not None:
                    self.on_tap(stream.stream_id, side, data, now)
            if there.forward and self._send_to(there, data, rtcp):
                totals.packets_relayed += 1
                totals.bytes_relayed += len(data)

    def _send_to(self, there: _Side, data: bytes, rtcp: bool) -> bool:
        destination = there.rtcp_destination() if rtcp else there.rtp_destination()
        stats = there.stats
        if destination is None:
            stats.send_errors += 1
            self._totals.packets_dropped += 1
            return False
        try:
            (there.rtcp if rtcp else there.rtp).sendto(data, destination)
        except OSError:  # buffer full or ICMP unreachable: RTP is loss tolerant, count and go on
            stats.send_errors += 1
            self._totals.packets_dropped += 1
            return False
        if rtcp or _is_rtcp(data):
            stats.rtcp_packets_out += 1
        else:
            stats.rtp_packets_out += 1
            stats.rtp_bytes_out += len(data)
        return True
