"""RTP port pool for the relay: a sans-I/O allocator of UDP ports, eight per call.

The pool never opens a socket itself; the relay asks it for ports when a call is set up
(:meth:`PortPool.allocate`), binds them, and gives them back when the call ends
(:meth:`PortPool.release`). The only I/O is the optional ``probe`` callback, which the relay
supplies (see :func:`default_probe`) to find ports another process already holds.

Range and blocks
----------------
``start`` and ``end`` are both inclusive (like ``rtpstart``/``rtpend`` elsewhere): the pool uses the
ports ``start .. end``. ``start`` must be even. The range is cut into blocks of 8 consecutive ports
beginning at ``start + 8*k``; a tail shorter than 8 ports is left unused. One block serves one call,
so the pool holds ``(end - start + 1) // 8`` calls at most (fewer if ``max_calls`` is lower).

The 8 ports of a call (block base ``b``, always even)
------------------------------------------------------
=========  ===================  ==========================================================
port       field                use
=========  ===================  ==========================================================
``b + 0``  ``caller_rtp``       RTP toward the caller (A leg): the port written in the SDP
                                sent to the caller; the caller's media arrives here and the
                                callee's media is sent to the caller from here.
``b + 1``  ``caller_rtcp``      RTCP of that stream (RFC 3550: RTCP = RTP + 1).
``b + 2``  ``caller_aux_rtp``   RTP of the call's second media stream (the second m-line,
                                e.g. video next to audio) toward the caller; bound only
                                when such a stream is negotiated.
``b + 3``  ``caller_aux_rtcp``  RTCP of that second stream.
``b + 4``  ``callee_rtp``       RTP toward the callee (B leg): the port written in the SDP
                                sent to the callee.
``b + 5``  ``callee_rtcp``      RTCP of that stream.
``b + 6``  ``callee_aux_rtp``   RTP of the second media stream toward the callee, as above.
``b + 7``  ``callee_aux_rtcp``  RTCP of the B leg's second stream.
=========  ===================  ==========================================================

Every RTP port is even and its RTCP port is the next (odd) one, as RFC 3550 section 11 asks.

Reuse order
-----------
Free blocks sit in a FIFO queue: a released block goes to the *back*, and a new call takes the block
at the *front*, i.e. the one free for the longest time. A port just freed is thus not handed straight
to the next call: packets of the ended call still in flight (late RTP, the last RTCP reports, a far
end that has not processed the BYE yet) would otherwise land in the new call's stream, mixing audio
or confusing SSRC/sequence tracking. With N free blocks, a freed port idles for about N call setups.

Unbindable ports
----------------
If ``probe(port)`` returns False for the RTP port of any pair of a block (the probe checks ``port``
and ``port + 1``), another process holds it: the block is set aside as *unusable* for ``cooldown``
seconds and the next free block is tried. This is not an error; only when no block is left does
:meth:`PortPool.allocate` raise :class:`MediaUnavailable`. After the cool-down the block rejoins the
back of the free queue and is probed again when its turn comes.

Cost
----
``allocate`` and ``release`` are O(1) (amortised: a block set aside is probed at most once per
cool-down), using a deque of free blocks and a dict of live calls; memory is O(blocks). A bigger range
needs only a configuration change.

The pool is not thread-safe: use it from the edge's event loop (as the B2BUA does), or guard it.
"""

from __future__ import annotations

import math
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pbx_edge.media.interface import MediaUnavailable

PORTS_PER_CALL = 8
"""Ports reserved per call: two RTP/RTCP pairs per leg, two legs."""

DEFAULT_COOLDOWN_S = 30.0
"""How long a block whose ports another process holds stays out of the free queue."""

DEFAULT_RETRY_AFTER_S = 5
"""Retry-After (seconds) when the pool is full of live calls (no hint when a call will end)."""


@dataclass(frozen=True, slots=True)
class CallPorts:
    """The 8 ports of one call; see the module docstring for what each is for."""

    call_id: str
    caller_rtp: int
    caller_rtcp: int
    caller_aux_rtp: int
    caller_aux_rtcp: int
    callee_rtp: int
    callee_rtcp: int
    callee_aux_rtp: int
    callee_aux_rtcp: int

    @classmethod
    def from_base(cls, call_id: str, base: int) -> CallPorts:
        return cls(call_id, *range(base, base + PORTS_PER_CALL))

    @property
    def base(self) -> int:
        """First port of the block (== ``caller_rtp``)."""
        return self.caller_rtp

    def all(self) -> tuple[int, int, int, int, int, int, int, int]:
        return (
            self.caller_rtp,
            self.caller_rtcp,
            self.caller_aux_rtp,
            self.caller_aux_rtcp,
            self.callee_rtp,
            self.callee_rtcp,
            self.callee_aux_rtp,
            self.callee_aux_rtcp,
        )

    def rtp_ports(self) -> tuple[int, int, int, int]:
        """The four RTP ports (each one's RTCP port is RTP + 1)."""
        return (self.caller_rtp, self.caller_aux_rtp, self.callee_rtp, self.callee_aux_rtp)


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A snapshot of the pool, for metrics and the admin API."""

    allocated_calls: int
    total_calls: int
    allocated_ports: int
    total_ports: int
    unusable_blocks: int


class PortPool:
    """Hands out blocks of 8 UDP ports to calls; see the module docstring."""

    def __init__(
        self,
        start: int,
        end: int,
        max_calls: int,
        probe: Callable[[int], bool] | None = None,
        *,
        cooldown: float = DEFAULT_COOLDOWN_S,
        retry_after: int = DEFAULT_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(start, bool) or not isinstance(start, int) or start < 1 or start > 65535:
            raise ValueError(f"start must be a port number in 1..65535, got {start!r}")
        if start % 2:
            raise ValueError(f"start must be even (RTP ports are even), got {start}")
        if isinstance(end, bool) or not isinstance(end, int) or end > 65535:
            raise ValueError(f"end must be a port number up to 65535, got {end!r}")
        if end <= start:
            raise ValueError(f"end must be greater than start ({start}), got {end}")
        blocks = (end - start + 1) // PORTS_PER_CALL
        if blocks < 1:
            raise ValueError(
                f"end: range {start}..{end} holds {end - start + 1} ports, "
                f"fewer than one block of {PORTS_PER_CALL}"
            )
        if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
            raise ValueError(f"max_calls must be a positive integer, got {max_calls!r}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be >= 0, got {cooldown!r}")
        if retry_after < 1:
            raise ValueError(f"retry_after must be >= 1, got {retry_after!r}")

        self.start = start
        self.end = end
        self.max_calls = max_calls
        self.blocks = blocks
        self._probe = probe
        self._cooldown = cooldown
        self._retry_after = retry_after
        self._clock = clock
        # Block bases, front = free longest. Every block is in exactly one of: _free, _live, _unusable.
        self._free: deque[int] = deque(range(start, start + blocks * PORTS_PER_CALL, PORTS_PER_CALL))
        self._live: dict[str, CallPorts] = {}
        # (base, usable again at) in cool-down order: the cool-down is constant, so the deque is
        # sorted by time and expired entries are always at the front.
        self._unusable: deque[tuple[int, float]] = deque()

    @property
    def total_calls(self) -> int:
        """Calls the pool can hold at once: ``min(max_calls, blocks)``."""
        return min(self.max_calls, self.blocks)

    def allocate(self, call_id: str) -> CallPorts:
        """Reserve a block for ``call_id``.

        Raises ValueError if ``call_id`` already holds ports, :class:`MediaUnavailable` when
        ``max_calls`` calls are live or no usable block is free.
        """
        if call_id in self._live:
            raise ValueError(f"call {call_id!r} already holds ports")
        if len(self._live) >= self.max_calls:
            raise MediaUnavailable("port pool exhausted", retry_after=self._retry_after)
        now = self._clock()
        self._recover(now)
        free = self._free
        while free:
            base = free.popleft()
            if self._probe is not None and not self._block_bindable(base):
                self._unusable.append((base, now + self._cooldown))
                continue
            ports = CallPorts.from_base(call_id, base)
            self._live[call_id] = ports
            return ports
        raise MediaUnavailable("port pool exhausted", retry_after=self._exhausted_retry_after(now))

    def release(self, call_id: str) -> bool:
        """Give back the block of ``call_id``; False (never an error) if it holds none."""
        ports = self._live.pop(call_id, None)
        if ports is None:
            return False
        self._free.append(ports.base)
        return True

    def get(self, call_id: str) -> CallPorts | None:
        """The ports ``call_id`` holds, or None."""
        return self._live.get(call_id)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._live

    def __len__(self) -> int:
        return len(self._live)

    def usage(self) -> PoolUsage:
        self._recover(self._clock())
        calls = len(self._live)
        return PoolUsage(
            allocated_calls=calls,
            total_calls=self.total_calls,
            allocated_ports=calls * PORTS_PER_CALL,
            total_ports=self.blocks * PORTS_PER_CALL,
            unusable_blocks=len(self._unusable),
        )

    def _block_bindable(self, base: int) -> bool:
        probe = self._probe
        assert probe is not None
        return all(probe(rtp) for rtp in range(base, base + PORTS_PER_CALL, 2))

    def _recover(self, now: float) -> None:
        """Blocks whose cool-down is over rejoin the back of the free queue."""
        unusable = self._unusable
        while unusable and unusable[0][1] <= now:
            self._free.append(unusable.popleft()[0])

    def _exhausted_retry_after(self, now: float) -> int:
        if self._unusable:
            # A block set aside comes back then; it may well be bindable by that time.
            wait = math.ceil(self._unusable[0][1] - now)
            return max(1, min(wait, self._retry_after))
        return self._retry_after


def default_probe(host: str) -> Callable[[int], bool]:
    """A probe that binds UDP sockets on ``port`` and ``port + 1`` on ``host``, then closes them.

    Returns True only if both binds succeed (the RTP/RTCP pair is free right now). ``host`` may be
    an IPv4 or IPv6 address; ``""`` or ``"0.0.0.0"`` probe the wildcard address.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def probe(port: int) -> bool:
        socks: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                s = socket.socket(family, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, p))
        except OSError:
            return False
        finally:
            for s in socks:
                s.close()
        return True

    return probe
