"""A lossy UDP relay to put between SIPp and the edge: drops, duplicates and reorders datagrams.

One :class:`UdpPipe` joins two fixed peers through two loopback sockets::

    left peer  <-->  [left socket | right socket]  <-->  right peer

A datagram that arrives on the left socket is sent from the right socket to the right peer; one that
arrives on the right socket is sent from the left socket to the left peer. Each direction has its own
seeded random generator, so a run is reproducible for a given seed and traffic order.

To make *every* message of a SIP leg cross the relay, the endpoint on the left must advertise the
pipe's right socket in its Via and Contact (SIPp: ``uac_lossy.xml`` with ``-key adv_port``), and the
endpoint on the right must advertise the pipe's left socket (``uas_lossy.xml``): then responses and
in-dialog requests addressed to those URIs come back through the pipe too.

Use it from tests through :class:`ShimThread` (an event loop in a background thread), or as a command::

    python -m tests.e2e.lossy_udp_shim --left-port 7000 --right-port 7001 \\
        --right-peer 127.0.0.1:5060 --loss 0.2 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast

Addr = tuple[str, int]

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LossProfile:
    """What the relay does to each datagram, per direction.

    ``loss`` is the probability a datagram is dropped; a datagram that survives is duplicated with
    probability ``duplicate`` and held back ``reorder_delay`` seconds (so later datagrams overtake it)
    with probability ``reorder``.
    """

    loss: float = 0.2
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay: float = 0.05
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.reorder_delay < 0:
            raise ValueError(f"reorder_delay must be >= 0, got {self.reorder_delay}")


@dataclass
class DirectionStats:
    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass
class PipeStats:
    left_to_right: DirectionStats = field(default_factory=DirectionStats)
    right_to_left: DirectionStats = field(default_factory=DirectionStats)

    def __str__(self) -> str:
        def one(d: DirectionStats) -> str:
            return (
                f"recv={d.received} fwd={d.forwarded} drop={d.dropped} "
                f"dup={d.duplicated} reorder={d.reordered}"
            )

        return f"left->right [{one(self.left_to_right)}]; right->left [{one(self.right_to_left)}]"


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Addr], None]) -> None:
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self._on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that is not up (yet): a lost datagram, nothing more.
        pass


class _Direction:
    """The lossy path one way: decides each datagram's fate and sends it (maybe late, maybe twice)."""

    def __init__(self, profile: LossProfile, seed: int, stats: DirectionStats) -> None:
        self._profile = profile
        self._rng = random.Random(seed)
        self._stats = stats
        self._pending: set[asyncio.TimerHandle] = set()

    def relay(self, loop: asyncio.AbstractEventLoop, out: _Socket, data: bytes, dest: Addr) -> None:
        self._stats.received += 1
        p = self._profile
        if self._rng.random() < p.loss:
            self._stats.dropped += 1
            return
        copies = 2 if self._rng.random() < p.duplicate else 1
        if copies == 2:
            self._stats.duplicated += 1
        if self._rng.random() < p.reorder:
            self._stats.reordered += 1
            handle: asyncio.TimerHandle | None = None

            def late() -> None:
                if handle is not None:
                    self._pending.discard(handle)
                self._send(out, data, dest, copies)

            handle = loop.call_later(p.reorder_delay, late)
            self._pending.add(handle)
        else:
            self._send(out, data, dest, copies)

    def _send(self, out: _Socket, data: bytes, dest: Addr, copies: int) -> None:
        if out.transport is None or out.transport.is_closing():
            return
        for _ in range(copies):
            out.transport.sendto(data, dest)
            self._stats.forwarded += 1

    def cancel(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()


class UdpPipe:
    """Relays datagrams between a left and a right peer through two sockets, lossily.

    ``left_peer`` may be None (or change): with ``learn_left=True`` the pipe sends right-to-left
    traffic to whoever last sent on the left socket. The right peer is fixed. ``tap``, when given,
    sees every datagram as it arrives: ``tap(direction, data, time.perf_counter_ns())`` with
    direction ``"l2r"`` or ``"r2l"`` (the signalling benchmark timestamps SIP messages this way).
    """

    def __init__(
        self,
        right_peer: Addr,
        profile: LossProfile,
        *,
        left_peer: Addr | None = None,
        learn_left: bool = True,
        host: str = LOOPBACK,
        left_port: int = 0,
        right_port: int = 0,
        name: str = "pipe",
        tap: Callable[[str, bytes, int], None] | None = None,
    ) -> None:
        self.name = name
        self._tap = tap
        self.right_peer = right_peer
        self.left_peer = left_peer
        self._learn_left = learn_left
        self._host = host
        self._ports = (left_port, right_port)
        self.stats = PipeStats()
        self._l2r = _Direction(profile, profile.seed * 2 + 1, self.stats.left_to_right)
        self._r2l = _Direction(profile, profile.seed * 2 + 2, self.stats.right_to_left)
        self._left: _Socket | None = None
        self._right: _Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def left_addr(self) -> Addr:
        """Where the left peer sends: the pipe's left socket."""
        return self._bound(self._left)

    @property
    def right_addr(self) -> Addr:
        """Where the right peer sends (and what the left peer advertises): the right socket."""
        return self._bound(self._right)

    @staticmethod
    def _bound(sock: _Socket | None) -> Addr:
        if sock is None or sock.transport is None:
            raise RuntimeError("pipe not started")
        host, port = sock.transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        left = _Socket(self._from_left)
        right = _Socket(self._from_right)
        await loop.create_datagram_endpoint(lambda: left, local_addr=(self._host, self._ports[0]))
        try:
            await loop.create_datagram_endpoint(lambda: right, local_addr=(self._host, self._ports[1]))
        except OSError:
            assert left.transport is not None
            left.transport.close()
            raise
        self._left, self._right = left, right

    def _from_left(self, data: bytes, addr: Addr) -> None:
        if self._tap is not None:
            self._tap("l2r", data, time.perf_counter_ns())
        if self._learn_left or self.left_peer is None:
            self.left_peer = addr
        assert self._loop is not None and self._right is not None
        self._l2r.relay(self._loop, self._right, data, self.right_peer)

    def _from_right(self, data: bytes, addr: Addr) -> None:
        if self._tap is not None:
            self._tap("r2l", data, time.perf_counter_ns())
        assert self._loop is not None and self._left is not None
        if self.left_peer is None:
            self.stats.right_to_left.received += 1
            self.stats.right_to_left.dropped += 1
            return
        self._r2l.relay(self._loop, self._left, data, self.left_peer)

    async def stop(self) -> None:
        self._l2r.cancel()
        self._r2l.cancel()
        for sock in (self._left, self._right):
            if sock is not None and sock.transport is not None:
                sock.transport.close()
        await asyncio.sleep(0)


class ShimThread:
    """Runs :class:`UdpPipe` objects on an event loop in a daemon thread (for synchronous tests).

    ``with ShimThread() as shim: pipe = shim.add(UdpPipe(...))`` starts the pipe and returns it
    bound; leaving the block stops every pipe and the loop.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="lossy-udp-shim", daemon=True)
        self._pipes: list[UdpPipe] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> ShimThread:
        self._thread.start()
        return self

    def add(self, pipe: UdpPipe, timeout: float = 5.0) -> UdpPipe:
        asyncio.run_coroutine_threadsafe(pipe.start(), self._loop).result(timeout)
        self._pipes.append(pipe)
        return pipe

    def stop(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        for pipe in self._pipes:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(pipe.stop(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ShimThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _addr(text: str) -> Addr:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host, int(port))


async def _serve(args: argparse.Namespace) -> None:
    profile = LossProfile(
        loss=args.loss,
        duplicate=args.duplicate,
        reorder=args.reorder,
        reorder_delay=args.reorder_delay,
        seed=args.seed,
    )
    pipe = UdpPipe(
        args.right_peer,
        profile,
        left_peer=args.left_peer,
        learn_left=args.left_peer is None,
        host=args.host,
        left_port=args.left_port,
        right_port=args.right_port,
    )
    await pipe.start()
    print(
        f"lossy pipe: left {pipe.left_addr[0]}:{pipe.left_addr[1]} <-> right "
        f"{pipe.right_addr[0]}:{pipe.right_addr[1]} -> {args.right_peer[0]}:{args.right_peer[1]} "
        f"({profile})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.duration > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
    finally:
        await pipe.stop()
        print(f"lossy pipe stats: {pipe.stats}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--host", default=LOOPBACK, help="address both sockets bind to")
    parser.add_argument("--left-port", type=int, default=0)
    parser.add_argument("--right-port", type=int, default=0)
    parser.add_argument("--left-peer", type=_addr, default=None, help="fixed left peer (default: learn)")
    parser.add_argument("--right-peer", type=_addr, required=True, help="HOST:PORT to relay to")
    parser.add_argument("--loss", type=float, default=0.2)
    parser.add_argument("--duplicate", type=float, default=0.0)
    parser.add_argument("--reorder", type=float, default=0.0)
    parser.add_argument("--reorder-delay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until a signal)")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
