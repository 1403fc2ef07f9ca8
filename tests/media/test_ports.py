"""Tests for the RTP port pool (pbx_edge.media.ports)."""

from __future__ import annotations

import random
import socket

import pytest

from pbx_edge.media.interface import MediaUnavailable
from pbx_edge.media.ports import CallPorts, PoolUsage, PortPool, default_probe


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProbe:
    """Reports the ports in ``busy`` (or their RTCP neighbour) as unbindable; records calls."""

    def __init__(self, busy: set[int] | None = None) -> None:
        self.busy: set[int] = busy if busy is not None else set()
        self.calls: list[int] = []

    def __call__(self, port: int) -> bool:
        self.calls.append(port)
        return port not in self.busy and port + 1 not in self.busy


# --- layout -------------------------------------------------------------------------------------


def test_allocation_layout() -> None:
    pool = PortPool(10000, 10999, max_calls=1000)
    seen: set[int] = set()
    for i in range(pool.blocks):
        ports = pool.allocate(f"call-{i}")
        assert isinstance(ports, CallPorts)
        assert ports.call_id == f"call-{i}"
        allp = ports.all()
        assert len(allp) == 8
        assert len(set(allp)) == 8
        assert allp == tuple(range(ports.base, ports.base + 8))
        assert (ports.base - 10000) % 8 == 0
        for rtp in ports.rtp_ports():
            assert rtp % 2 == 0
        assert ports.caller_rtcp == ports.caller_rtp + 1
        assert ports.caller_aux_rtcp == ports.caller_aux_rtp + 1
        assert ports.callee_rtcp == ports.callee_rtp + 1
        assert ports.callee_aux_rtcp == ports.callee_aux_rtp + 1
        assert all(10000 <= p <= 10999 for p in allp)
        assert seen.isdisjoint(allp)
        seen.update(allp)
    assert pool.blocks == 1000 // 8  # 125 blocks, the 0-port tail: 1000 ports = exactly 125 blocks
    assert len(seen) == 1000


def test_field_order_matches_all() -> None:
    ports = PortPool(20000, 20007, max_calls=1).allocate("x")
    assert ports.all() == (
        ports.caller_rtp,
        ports.caller_rtcp,
        ports.caller_aux_rtp,
        ports.caller_aux_rtcp,
        ports.callee_rtp,
        ports.callee_rtcp,
        ports.callee_aux_rtp,
        ports.callee_aux_rtcp,
    )
    assert ports.all() == tuple(range(20000, 20008))


def test_call_ports_is_frozen() -> None:
    ports = PortPool(20000, 20007, max_calls=1).allocate("x")
    with pytest.raises(AttributeError):
        ports.caller_rtp = 1  # type: ignore[misc]


def test_end_is_inclusive_and_tail_unused() -> None:
    pool = PortPool(30000, 30020, max_calls=100)  # 21 ports: 2 blocks, 5-port tail unused
    a = pool.allocate("a")
    b = pool.allocate("b")
    assert a.all() == tuple(range(30000, 30008))
    assert b.all() == tuple(range(30008, 30016))
    with pytest.raises(MediaUnavailable):
        pool.allocate("c")
    assert PortPool(30000, 30007, max_calls=1).blocks == 1


# --- exhaustion / max_calls -----------------------------------------------------------------------


def test_exhaustion_raises_media_unavailable_with_retry_after() -> None:
    pool = PortPool(40000, 40031, max_calls=100)  # 4 blocks
    for i in range(4):
        pool.allocate(f"c{i}")
    with pytest.raises(MediaUnavailable) as exc_info:
        pool.allocate("c4")
    assert str(exc_info.value) == "port pool exhausted"
    assert isinstance(exc_info.value.retry_after, int)
    assert exc_info.value.retry_after >= 1
    assert "c4" not in pool
    # freeing one makes room again
    assert pool.release("c2")
    assert pool.allocate("c4").base == 40016


def test_retry_after_is_configurable() -> None:
    pool = PortPool(40000, 40007, max_calls=5, retry_after=17)
    pool.allocate("a")
    with pytest.raises(MediaUnavailable) as exc_info:
        pool.allocate("b")
    assert exc_info.value.retry_after == 17


def test_max_calls_limits_live_calls() -> None:
    pool = PortPool(40000, 40999, max_calls=3)
    assert pool.total_calls == 3
    for i in range(3):
        pool.allocate(f"c{i}")
    with pytest.raises(MediaUnavailable) as exc_info:
        pool.allocate("c3")
    assert exc_info.value.retry_after >= 1
    pool.release("c0")
    pool.allocate("c3")
    with pytest.raises(MediaUnavailable):
        pool.allocate("c4")


def test_duplicate_call_id_is_value_error() -> None:
    pool = PortPool(40000, 40999, max_calls=10)
    first = pool.allocate("dup")
    with pytest.raises(ValueError, match="dup"):
        pool.allocate("dup")
    assert pool.get("dup") == first
    assert pool.usage().allocated_calls == 1
    pool.release("dup")
    pool.allocate("dup")  # fine again once released


# --- release / FIFO -------------------------------------------------------------------------------


def test_release_is_idempotent() -> None:
    pool = PortPool(50000, 50999, max_calls=1000)
    pool.allocate("a")
    assert pool.release("a") is True
    assert pool.release("a") is False
    assert pool.release("never-seen") is False
    assert pool.usage().allocated_calls == 0
    # the double release did not put the block twice in the free queue
    bases = [pool.allocate(f"c{i}").base for i in range(pool.blocks)]
    assert len(bases) == len(set(bases)) == pool.blocks
    with pytest.raises(MediaUnavailable):
        pool.allocate("one-too-many")


def test_fifo_reuse_just_freed_block_goes_last() -> None:
    pool = PortPool(60000, 60031, max_calls=10)  # blocks 60000, 60008, 60016, 60024
    a = pool.allocate("a")
    assert a.base == 60000
    pool.release("a")
    # the just-freed block is not the next one handed out: the others come first
    assert [pool.allocate(n).base for n in ("b", "c", "d")] == [60008, 60016, 60024]
    assert pool.allocate("e").base == 60000
    # release order decides reuse order
    for name in ("c", "e", "b", "d"):
        pool.release(name)
    assert [pool.allocate(n).base for n in ("f", "g", "h", "i")] == [60016, 60000, 60008, 60024]


# --- probe ----------------------------------------------------------------------------------------


def test_probe_skips_unbindable_block_and_cools_it_down() -> None:
    clock = FakeClock()
    probe = FakeProbe(busy={30013})  # RTCP of the callee pair of block 30008
    pool = PortPool(30000, 30031, max_calls=10, probe=probe, cooldown=30.0, clock=clock)
    assert pool.allocate("a").base == 30000
    assert pool.allocate("b").base == 30016  # 30008 skipped, not fatal
    assert pool.usage().unusable_blocks == 1
    assert pool.allocate("c").base == 30024
    # only the bad block is left, still cooling down -> exhausted
    with pytest.raises(MediaUnavailable) as exc_info:
        pool.allocate("d")
    assert 1 <= exc_info.value.retry_after <= 30
    # after the cool-down it is probed again; the port is now free
    probe.busy.clear()
    clock.now += 30.0
    assert pool.usage().unusable_blocks == 0
    assert pool.allocate("d").base == 30008


def test_probe_checks_each_rtp_port_of_the_block() -> None:
    probe = FakeProbe()
    pool = PortPool(30000, 30007, max_calls=1, probe=probe)
    pool.allocate("a")
    assert sorted(probe.calls) == [30000, 30002, 30004, 30006]


def test_block_still_busy_after_cooldown_is_set_aside_again() -> None:
    clock = FakeClock()
    probe = FakeProbe(busy={40000})
    pool = PortPool(40000, 40015, max_calls=10, probe=probe, cooldown=10.0, clock=clock)
    assert pool.allocate("a").base == 40008
    clock.now += 10.0
    pool.release("a")
    # 40000 rejoined the back of the queue, behind the just-freed 40008
    assert pool.usage().unusable_blocks == 0
    assert pool.allocate("b").base == 40008
    # 40000 is probed again, still busy: set aside again, not handed out
    with pytest.raises(MediaUnavailable):
        pool.allocate("c")
    assert pool.usage().unusable_blocks == 1


def test_all_blocks_unbindable_raises_with_cooldown_hint() -> None:
    clock = FakeClock()
    probe = FakeProbe(busy=set(range(50000, 50032)))
    pool = PortPool(50000, 50031, max_calls=10, probe=probe, cooldown=3.0, clock=clock)
    with pytest.raises(MediaUnavailable) as exc_info:
        pool.allocate("a")
    assert exc_info.value.retry_after == 3
    assert pool.usage().unusable_blocks == 4
    assert pool.usage().allocated_calls == 0
    clock.now += 3.0
    probe.busy.clear()
    assert pool.allocate("a").base == 50000


# --- usage ----------------------------------------------------------------------------------------


def test_usage() -> None:
    pool = PortPool(10000, 10079, max_calls=8)  # 10 blocks, max 8 calls
    assert pool.usage() == PoolUsage(
        allocated_calls=0, total_calls=8, allocated_ports=0, total_ports=80, unusable_blocks=0
    )
    pool.allocate("a")
    pool.allocate("b")
    u = pool.usage()
    assert (u.allocated_calls, u.allocated_ports) == (2, 16)
    assert len(pool) == 2


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"start": 10001, "end": 20000, "max_calls": 1}, "start"),
        ({"start": 0, "end": 20000, "max_calls": 1}, "start"),
        ({"start": -2, "end": 20000, "max_calls": 1}, "start"),
        ({"start": 10000, "end": 10000, "max_calls": 1}, "end"),
        ({"start": 10000, "end": 9000, "max_calls": 1}, "end"),
        ({"start": 10000, "end": 10006, "max_calls": 1}, "end"),  # 7 ports: no full block
        ({"start": 10000, "end": 70000, "max_calls": 1}, "end"),
        ({"start": 10000, "end": 20000, "max_calls": 0}, "max_calls"),
        ({"start": 10000, "end": 20000, "max_calls": -1}, "max_calls"),
    ],
)
def test_validation_errors_name_the_parameter(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        PortPool(kwargs["start"], kwargs["end"], kwargs["max_calls"])


# --- stress ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_calls", "flaky"),
    [(80, False), (100, False), (100, True)],
    ids=["max_calls-bound", "block-bound", "block-bound-flaky-probe"],
)
def test_10000_calls_random_endings_no_leak_no_double_use(max_calls: int, flaky: bool) -> None:
    """10,000 calls ending at random, in random order, with double and stale releases.

    ``flaky``: other processes grab and free random ports, so blocks get set aside and recover.
    """
    rng = random.Random(20261124 + max_calls + flaky)
    clock = FakeClock()
    probe = FakeProbe() if flaky else None
    pool = PortPool(20000, 20799, max_calls=max_calls, probe=probe, cooldown=5.0, clock=clock)
    assert pool.blocks == 100
    cap = min(max_calls, 100)
    live: dict[str, CallPorts] = {}
    in_use: set[int] = set()
    ended: list[str] = []
    started = 0
    refused = 0
    while started < 10_000:
        clock.now += 0.1
        if probe is not None and rng.random() < 0.05:
            if probe.busy and rng.random() < 0.5:
                probe.busy.discard(rng.choice(sorted(probe.busy)))
            else:  # a foreign process can only take a port the pool is not using
                port = rng.randrange(20000, 20800)
                if port not in in_use:
                    probe.busy.add(port)
        if live and rng.random() < 0.45:
            victim = rng.choice(list(live))
            ports = live.pop(victim)
            assert pool.release(victim) is True
            in_use.difference_update(ports.all())
            ended.append(victim)
            if rng.random() < 0.1:
                assert pool.release(victim) is False  # double release (e.g. BYE + timer)
            continue
        if ended and rng.random() < 0.05:
            assert pool.release(rng.choice(ended)) is False  # stale release of an old call
        call_id = f"call-{started}"
        started += 1
        try:
            ports = pool.allocate(call_id)
        except MediaUnavailable as exc:
            refused += 1
            assert exc.retry_after >= 1
            usage = pool.usage()
            # refused only when truly full: every block is live or set aside
            assert len(live) == max_calls or len(live) + usage.unusable_blocks == 100
            continue
        allp = ports.all()
        assert len(set(allp)) == 8
        assert all(20000 <= p <= 20799 for p in allp)
        assert in_use.isdisjoint(allp), "port handed out twice at once"
        if probe is not None:
            assert probe.busy.isdisjoint(allp), "port held by another process handed out"
        in_use.update(allp)
        live[call_id] = ports
        usage = pool.usage()
        assert usage.allocated_calls == len(live) <= cap
        assert usage.allocated_calls + usage.unusable_blocks <= 100
    assert refused > 0  # the pool really was driven to exhaustion
    # end every remaining call, in random order, with some double releases
    rest = list(live)
    rng.shuffle(rest)
    for call_id in rest:
        assert pool.release(call_id) is True
        if rng.random() < 0.3:
            assert pool.release(call_id) is False
    if probe is not None:
        probe.busy.clear()
    clock.now += 5.0  # every set-aside block's cool-down is over
    assert pool.usage() == PoolUsage(
        allocated_calls=0, total_calls=cap, allocated_ports=0, total_ports=800, unusable_blocks=0
    )
    # the pool is whole again: every block is there exactly once
    bases = [pool.allocate(f"final-{i}").base for i in range(cap)]
    assert len(set(bases)) == cap
    with pytest.raises(MediaUnavailable):
        pool.allocate("one-too-many")
    free = list(pool._free)
    assert len(free) == 100 - cap
    assert sorted(free + bases) == list(range(20000, 20800, 8))


# --- default_probe (real sockets) -----------------------------------------------------------------


def _free_even_udp_pair() -> int:
    """An even port whose pair (port, port+1) is bindable on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        port -= port % 2
        if 1024 < port < 65534 and default_probe("127.0.0.1")(port):
            return port
    pytest.skip("no free UDP port pair on loopback")


def test_default_probe_real_sockets() -> None:
    probe = default_probe("127.0.0.1")
    port = _free_even_udp_pair()
    assert probe(port) is True
    assert probe(port) is True  # the probe closed its sockets: probing again still works
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))
        assert probe(port) is False
    # RTCP port held by someone else also makes the pair unbindable
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port + 1))
        assert probe(port) is False
    assert probe(port) is True


def test_default_probe_drives_pool_skipping() -> None:
    port = _free_even_udp_pair()
    start = port - (port % 8)  # block containing the held port
    if start + 16 > 65535:
        pytest.skip("port too high for a two-block range")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))
        pool = PortPool(start, start + 15, max_calls=2, probe=default_probe("127.0.0.1"))
        try:
            got = pool.allocate("a")
        except MediaUnavailable:
            pytest.skip("neighbouring ports busy on this host")
        assert port not in got.all()
        assert pool.usage().unusable_blocks == 1
