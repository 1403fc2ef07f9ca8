"""The relay data plane contract: what every RTP relay engine does, whichever language runs it.

A *stream* is one media stream (one SDP m-line) crossing the edge. It owns four bound UDP sockets:
the caller-facing RTP/RTCP pair (side ``A``) and the callee-facing RTP/RTCP pair (side ``B``).
A packet that arrives on side A's RTP socket is sent, bytes unchanged, from side B's RTP socket to
side B's peer, and the reverse; RTCP likewise between the RTCP sockets.

Symmetric latching (RFC 4961 style, what SBCs call "symmetric RTP" / NAT latching): until a side
has sent a packet, media toward it goes to the address its SDP gave (:meth:`RelayEngine.set_remote`).
The first packet received on a socket latches that socket to the packet's source address; from then
on media toward that side goes to the latched address and packets from any other source are
dropped and counted as ``strangers``. RTP and RTCP latch separately. A new SDP address for a side
(re-INVITE, UPDATE) clears that side's latches. SSRC changes and sequence jumps are not inspected.

Engines: :mod:`pbx_edge.media.py_engine` (asyncio, always available) and
:mod:`pbx_edge.media.native` (a C thread with recvmmsg/sendmmsg batching, built by setup).
Every callback an engine makes (``on_tap``) runs on the asyncio loop's thread.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

SIDE_A = 0  # caller-facing sockets
SIDE_B = 1  # callee-facing sockets

Address = tuple[str, int]

# (stream_id, from_side, RTP packet bytes, arrival time on the loop's monotonic clock)
TapCallback = Callable[[int, int, bytes, float], None]


@dataclass(slots=True)
class StreamSockets:
    """Four bound, non-blocking UDP sockets; the engine owns them and closes them on removal."""

    a_rtp: socket.socket
    a_rtcp: socket.socket
    b_rtp: socket.socket
    b_rtcp: socket.socket

    def all(self) -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
        return (self.a_rtp, self.a_rtcp, self.b_rtp, self.b_rtcp)


@dataclass(slots=True)
class SideStats:
    """Counters of one side of a stream. ``*_in`` count packets received from this side's peer
    (accepted ones only), ``*_out`` packets sent toward it (relayed or injected)."""

    rtp_packets_in: int = 0
    rtp_bytes_in: int = 0
    rtcp_packets_in: int = 0
    rtp_packets_out: int = 0
    rtp_bytes_out: int = 0
    rtcp_packets_out: int = 0
    strangers: int = 0  # packets from a source other than the latched one, dropped
    send_errors: int = 0  # sends that failed (no destination yet, socket buffer full, ICMP error)
    last_rx: float | None = None  # monotonic time of the last accepted packet (RTP or RTCP)
    rtp_latched: Address | None = None
    rtcp_latched: Address | None = None


@dataclass(slots=True)
class StreamStats:
    a: SideStats = field(default_factory=SideStats)
    b: SideStats = field(default_factory=SideStats)

    def side(self, side: int) -> SideStats:
        return self.a if side == SIDE_A else self.b


@dataclass(slots=True)
class EngineStats:
    """Totals over the engine's life (streams removed included)."""

    streams: int = 0  # live streams
    packets_relayed: int = 0
    bytes_relayed: int = 0
    packets_dropped: int = 0  # strangers + send errors + packets toward a side with no destination
    tap_drops: int = 0  # tap copies dropped because the consumer was behind


class RelayEngine(Protocol):
    """The calls a relay engine accepts. All of them are made from the asyncio loop's thread."""

    on_tap: TapCallback | None

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Remove every stream (closing its sockets) and stop."""
        ...

    def add_stream(self, stream_id: int, sockets: StreamSockets) -> None:
        """Start relaying between the two socket pairs. ``stream_id`` is unique among live streams."""
        ...

    def set_remote(self, stream_id: int, side: int, rtp: Address | None, rtcp: Address | None) -> None:
        """The address the SDP of ``side`` gave for its RTP and RTCP (None: none / port 0 / 0.0.0.0).
        A changed address clears that side's latches."""
        ...

    def set_forwarding(self, stream_id: int, to_side: int, enabled: bool) -> None:
        """When False, packets from the other side are not relayed to ``to_side`` (the leg listens to
        an injector instead); they are still counted and tapped. True by default."""
        ...

    def set_tap(self, stream_id: int, enabled: bool, payload_type: int | None = None) -> None:
        """When ``enabled``, a copy of every accepted RTP packet (not RTCP) from either side goes
        to ``on_tap``; when not, but ``payload_type`` is given, only the RTP packets of that
        payload type (``telephone-event``: DTMF for every call without copying its audio); else
        none. A copy the consumer cannot take at once is dropped and counted (``tap_drops``); the
        relay never waits for the tap."""
        ...

    def send(self, stream_id: int, to_side: int, data: bytes, rtcp: bool = False) -> bool:
        """Injection: send ``data`` from ``to_side``'s RTP (or RTCP) socket to that side's peer
        (latched address, else the SDP one). False when there is no destination or the send failed."""
        ...

    def stream_stats(self, stream_id: int) -> StreamStats: ...

    def stats(self) -> EngineStats: ...

    def remove_stream(self, stream_id: int) -> None:
        """Stop relaying and close the stream's sockets. Unknown ids are ignored."""
        ...
