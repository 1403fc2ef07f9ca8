"""The asyncio face of the C relay: :class:`NativeRelayEngine` implements ``RelayEngine``.

The data plane runs in C threads (see ``relay.c``): Python only hands over the sockets' fds, sets
addresses and flags, reads counters and delivers tap copies. The asyncio loop never sees a relayed
packet, so it stays free for SIP however many calls are up.

Ownership: :meth:`NativeRelayEngine.add_stream` detaches the four sockets (the Python objects become
closed shells) and the C side closes the fds on removal, after taking them out of its epoll set.
Control calls are synchronous: they take the shard's mutex, which the relay thread holds for at
most one socket drain (a few tens of microseconds).

Tap: the C threads pack the tapped RTP packets of one drain into one datagram on a Unix socketpair
(records of ``<stream id u64, arrival f64, length u16, side u16>`` + packet, native byte order); the
loop reads the other end with ``add_reader`` and calls ``on_tap`` per packet. A full socketpair
buffer drops the datagram and counts its packets in ``tap_drops``: the relay never waits.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import os
import socket
import struct
import weakref

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
from pbx_edge.media.native.build import CEngineStats, CSideStats, CStreamStats, load_library

logger = logging.getLogger(__name__)

_TAP_RECORD = struct.Struct("=QdHH")  # stream id, arrival, length, side: relay.c's TAP_HEADER
_TAP_DATAGRAM = 65536
_TAP_READS_PER_WAKE = 64  # datagrams read per loop wake-up before yielding to other callbacks
# struct sockaddr_in / sockaddr_in6: family in host order, port and flow info in network order
_SOCKADDR_IN = struct.Struct("=H2s4s8x")
_SOCKADDR_IN6 = struct.Struct("=H2sI16sI")
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_KIND_RTP, _KIND_RTCP = 0, 1
_ENOENT = 2


class NativeRelayEngineError(RuntimeError):
    """The native library is missing or refused an operation."""


def _sockaddr(family: int, address: Address | None) -> bytes:
    """``address`` as a raw ``sockaddr`` for a socket of ``family``; empty bytes for "none".

    Port 0 and unspecified hosts (0.0.0.0, ::) mean "no address" in SDP; on Linux sending to
    0.0.0.0 would reach the local host, so they are treated as none. IPv4 hosts are mapped to
    ``::ffff:a.b.c.d`` for IPv6 sockets (and back for IPv4 ones). Host names are refused: resolving
    is the caller's job, and a DNS lookup has no place on this path.
    """
    if address is None:
        return b""
    host, port = address[0], address[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"not an IP address literal: {host!r}") from None
    if port == 0 or ip.is_unspecified:
        return b""
    if family == socket.AF_INET:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.version != 4:
            raise ValueError(f"IPv6 address {host} for an IPv4 socket")
        return _SOCKADDR_IN.pack(socket.AF_INET, port.to_bytes(2, "big"), ip.packed)
    if family == socket.AF_INET6:
        scope = 0
        if ip.version == 4:
            ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
        elif isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            scope = int(ip.scope_id) if ip.scope_id.isdigit() else socket.if_nametoindex(ip.scope_id)
        return _SOCKADDR_IN6.pack(socket.AF_INET6, port.to_bytes(2, "big"), 0, ip.packed, scope)
    raise ValueError(f"unsupported address family {family}")


def _side_stats(c: CSideStats) -> SideStats:
    rtp_latched = (c.rtp_latched_host.decode(), c.rtp_latched_port) if c.rtp_latched_port else None
    rtcp_latched = (c.rtcp_latched_host.decode(), c.rtcp_latched_port) if c.rtcp_latched_port else None
    return SideStats(
        rtp_packets_in=c.rtp_packets_in,
        rtp_bytes_in=c.rtp_bytes_in,
        rtcp_packets_in=c.rtcp_packets_in,
        rtp_packets_out=c.rtp_packets_out,
        rtp_bytes_out=c.rtp_bytes_out,
        rtcp_packets_out=c.rtcp_packets_out,
        strangers=c.strangers,
        send_errors=c.send_errors,
        last_rx=c.last_rx if c.last_rx >= 0 else None,
        rtp_latched=rtp_latched,
        rtcp_latched=rtcp_latched,
    )


class _Stream:
    __slots__ = ("families", "handle")

    def __init__(self, handle: int, families: tuple[int, int]) -> None:
        self.handle = handle
        self.families = families  # address family of side A's and side B's sockets


class NativeRelayEngine:
    """Relay in C threads with recvmmsg/sendmmsg batching; same semantics as ``PythonRelayEngine``,
    except that a datagram larger than 2048 bytes is dropped (counted in ``packets_dropped``) rather
    than relayed truncated, and an SDP address of 0.0.0.0/:: or port 0 counts as none.

    ``threads``: relay threads, streams sharded by ``stream_id % threads``. One is right for a
    2-core box (the other core runs the asyncio loop). ``tap_buffer_bytes``: send buffer of the tap
    socketpair, i.e. how far the tap consumer may fall behind before copies are dropped.
    ``coalesce_us``: when a relay thread is not saturated it sleeps this long between passes, so
    that it picks packets up in batches rather than waking once per packet; it trades up to that
    much added latency for fewer wake-ups (0, the default, waits on epoll only).
    """

    def __init__(
        self, threads: int = 1, tap_buffer_bytes: int = 4 * 1024 * 1024, coalesce_us: int = 0
    ) -> None:
        lib = load_library()
        if lib is None:
            raise NativeRelayEngineError(
                "native relay library not built: run `python -m pbx_edge.media.native.build`"
            )
        if not 1 <= threads <= 64:
            raise ValueError(f"threads must be 1..64, got {threads}")
        if not 0 <= coalesce_us <= 100_000:
            raise ValueError(f"coalesce_us must be 0..100000, got {coalesce_us}")
        self.on_tap: TapCallback | None = None
        self._lib = lib
        self._threads = threads
        self._coalesce_us = coalesce_us
        self._tap_buffer_bytes = tap_buffer_bytes
        self._relay: int | None = None
        self._finalizer: weakref.finalize[..., NativeRelayEngine] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tap_reader: socket.socket | None = None
        self._tap_buf = bytearray(_TAP_DATAGRAM)
        self._streams: dict[int, _Stream] = {}
        self._final_stats: EngineStats | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the relay threads and the tap reader on the running loop."""
        if self._relay is not None:
            return
        loop = asyncio.get_running_loop()
        reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            _set_buffer(writer, socket.SO_SNDBUF, _SO_SNDBUFFORCE, self._tap_buffer_bytes)
            _set_buffer(reader, socket.SO_RCVBUF, _SO_RCVBUFFORCE, self._tap_buffer_bytes)
            reader.setblocking(False)
            writer.setblocking(False)
            err = ctypes.c_int(0)
            relay = self._lib.relay_create(
                self._threads, writer.fileno(), self._coalesce_us, ctypes.byref(err)
            )
            if not relay:
                raise OSError(err.value, f"relay_create: {os.strerror(err.value)}")
        except BaseException:
            reader.close()
            writer.close()
            raise
        writer.detach()  # the C side owns and closes it now
        self._relay = relay
        self._finalizer = weakref.finalize(self, self._lib.relay_destroy, relay)
        self._loop = loop
        self._tap_reader = reader
        self._final_stats = None
        loop.add_reader(reader.fileno(), self._on_tap_readable)

    async def stop(self) -> None:
        """Remove every stream (closing its sockets), stop the threads, close the tap socketpair."""
        if self._relay is None:
            return
        for stream_id in list(self._streams):
            self.remove_stream(stream_id)
        self._final_stats = self.stats()
        if self._finalizer is not None:
            self._finalizer()  # relay_destroy: joins the threads, closes the tap writer
        self._relay = None
        self._finalizer = None
        if self._tap_reader is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._tap_reader.fileno())
            self._tap_reader.close()
            self._tap_reader = None
        self._loop = None

    # --- control ---------------------------------------------------------------------------------
    def add_stream(self, stream_id: int, sockets: StreamSockets) -> None:
        relay = self._require_started()
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id} already exists")
        if not 0 <= stream_id < 2**64:
            raise ValueError(f"stream id must fit in 64 bits unsigned, got {stream_id}")
        socks = sockets.all()
        for sock in socks:
            if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                raise ValueError(f"not a UDP socket: {sock!r}")
            if sock.fileno() < 0:
                raise ValueError("socket is closed")
        if sockets.a_rtp.family != sockets.a_rtcp.family or sockets.b_rtp.family != sockets.b_rtcp.family:
            raise ValueError("RTP and RTCP sockets of one side must share an address family")
        families = (sockets.a_rtp.family, sockets.b_rtp.family)
        for sock in socks:
            sock.setblocking(False)
        fds = (ctypes.c_int * 4)(*(sock.fileno() for sock in socks))
        handle = self._lib.relay_add(relay, stream_id, fds)
        if handle < 0:
            raise OSError(-handle, f"relay_add: {os.strerror(-handle)}")
        for sock in socks:
            sock.detach()
        self._streams[stream_id] = _Stream(handle, families)

    def set_remote(self, stream_id: int, side: int, rtp: Address | None, rtcp: Address | None) -> None:
        stream = self._streams[stream_id]
        family = stream.families[_check_side(side)]
        raw = (_sockaddr(family, rtp), _sockaddr(family, rtcp))  # validate both before applying
        for kind in (_KIND_RTP, _KIND_RTCP):
            self._check(
                self._lib.relay_set_remote(self._relay, stream.handle, side, kind, raw[kind], len(raw[kind]))
            )

    def set_forwarding(self, stream_id: int, to_side: int, enabled: bool) -> None:
        stream = self._streams[stream_id]
        self._check(self._lib.relay_set_forwarding(self._relay, stream.handle, _check_side(to_side), enabled))

    def set_tap(self, stream_id: int, enabled: bool, payload_type: int | None = None) -> None:
        stream = self._streams[stream_id]
        pt = -1 if payload_type is None else payload_type
        self._check(self._lib.relay_set_tap(self._relay, stream.handle, enabled, pt))

    def send(self, stream_id: int, to_side: int, data: bytes, rtcp: bool = False) -> bool:
        stream = self._streams.get(stream_id)
        if stream is None or self._relay is None:
            return False
        payload = bytes(data)
        result: int = self._lib.relay_send(
            self._relay, stream.handle, _check_side(to_side), rtcp, payload, len(payload)
        )
        return result == 1

    def stream_stats(self, stream_id: int) -> StreamStats:
        stream = self._streams[stream_id]
        out = CStreamStats()
        self._check(self._lib.relay_stream_stats(self._relay, stream.handle, ctypes.byref(out)))
        return StreamStats(a=_side_stats(out.side[SIDE_A]), b=_side_stats(out.side[SIDE_B]))

    def stats(self) -> EngineStats:
        if self._relay is None:
            return self._final_stats if self._final_stats is not None else EngineStats()
        out = CEngineStats()
        self._lib.relay_stats(self._relay, ctypes.byref(out))
        return EngineStats(
            streams=out.streams,
            packets_relayed=out.packets_relayed,
            bytes_relayed=out.bytes_relayed,
            packets_dropped=out.packets_dropped,
            tap_drops=out.tap_drops,
        )

    def remove_stream(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None or self._relay is None:
            return
        self._check(self._lib.relay_remove(self._relay, stream.handle))

    def thread_cpu_seconds(self) -> list[float]:
        """CPU time used by each relay thread so far (for benchmarks and ops)."""
        if self._relay is None:
            return []
        return [float(self._lib.relay_thread_cpu(self._relay, i)) for i in range(self._threads)]

    # --- internals -------------------------------------------------------------------------------
    def _require_started(self) -> int:
        if self._relay is None:
            raise RuntimeError("engine not started")
        return self._relay

    @staticmethod
    def _check(rc: int) -> None:
        if rc == -_ENOENT:
            raise KeyError("stream unknown to the native relay")
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))

    def _on_tap_readable(self) -> None:
        """Drain tap datagrams (bounded per wake-up) and hand each packet to ``on_tap``."""
        reader = self._tap_reader
        if reader is None:
            return
        buf = self._tap_buf
        record = _TAP_RECORD
        header = record.size
        for _ in range(_TAP_READS_PER_WAKE):
            try:
                n = reader.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            callback = self.on_tap
            if callback is None:
                continue
            offset = 0
            while offset + header <= n:
                stream_id, arrival, length, side = record.unpack_from(buf, offset)
                offset += header
                packet = bytes(buf[offset : offset + length])
                offset += length
                try:
                    callback(stream_id, side, packet, arrival)
                except Exception:
                    logger.exception("on_tap callback failed for stream %d", stream_id)


def _check_side(side: int) -> int:
    if side not in (SIDE_A, SIDE_B):
        raise ValueError(f"side must be SIDE_A or SIDE_B, got {side}")
    return side


def _set_buffer(sock: socket.socket, option: int, force_option: int, size: int) -> None:
    """Set a socket buffer size, past ``net.core.*mem_max`` when the process may (CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_option, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
