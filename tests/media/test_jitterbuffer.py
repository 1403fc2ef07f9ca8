from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbx_edge.media.jitterbuffer import Gap, JitterBuffer
from pbx_edge.media.rtp import RtpPacket, seq_distance

SSRC = 0x1234


def pkt(seq: int, ssrc: int = SSRC, step: int = 160, base_seq: int = 0, base_ts: int = 1000) -> RtpPacket:
    ts = (base_ts + seq_distance(base_seq, seq & 0xFFFF) * step) & 0xFFFFFFFF
    return RtpPacket(payload_type=0, sequence_number=seq & 0xFFFF, timestamp=ts, ssrc=ssrc, payload=b"x")


def drain(jb: JitterBuffer) -> list[int | str]:
    """Pop until None; packets as their sequence number, gaps as 'gap:N'."""
    out: list[int | str] = []
    while (item := jb.pop()) is not None:
        out.append(item.sequence_number if isinstance(item, RtpPacket) else f"gap:{item.sequence}")
    return out


def check_invariant(jb: JitterBuffer) -> None:
    s = jb.stats
    assert s["received"] == s["played"] + s["duplicates"] + s["late"] + s["discarded"] + len(jb)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        JitterBuffer(capacity=0)
    with pytest.raises(ValueError, match="prefetch must be between 1 and capacity"):
        JitterBuffer(capacity=4, prefetch=5)
    with pytest.raises(ValueError, match="prefetch must be between 1 and capacity"):
        JitterBuffer(prefetch=0)


def test_empty_pop_returns_none() -> None:
    jb = JitterBuffer()
    assert jb.pop() is None
    assert jb.stats == {
        "received": 0,
        "played": 0,
        "duplicates": 0,
        "late": 0,
        "lost": 0,
        "resets": 0,
        "discarded": 0,
    }


def test_prefetch_holds_until_enough_packets() -> None:
    jb = JitterBuffer(prefetch=3)
    jb.push(pkt(10))
    jb.push(pkt(11))
    assert jb.pop() is None
    jb.push(pkt(12))
    assert drain(jb) == [10, 11, 12]
    assert jb.stats["played"] == 3


def test_in_order_stream_keeps_flowing_after_prefetch() -> None:
    jb = JitterBuffer(prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(1))
    played = []
    for seq in range(2, 50):
        item = jb.pop()
        assert isinstance(item, RtpPacket)
        played.append(item.sequence_number)
        jb.push(pkt(seq))
    assert played == list(range(48))
    check_invariant(jb)


def test_underrun_rebuffers() -> None:
    jb = JitterBuffer(prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(1))
    assert drain(jb) == [0, 1]
    jb.push(pkt(2))
    assert jb.pop() is None  # back to prefetching
    jb.push(pkt(3))
    assert drain(jb) == [2, 3]


def test_reorder() -> None:
    jb = JitterBuffer(prefetch=4)
    for seq in (3, 1, 2, 0):
        jb.push(pkt(seq))
    assert drain(jb) == [0, 1, 2, 3]
    assert jb.stats["lost"] == 0


def test_earlier_packet_before_playout_moves_start_back() -> None:
    jb = JitterBuffer(prefetch=3)
    jb.push(pkt(5))
    jb.push(pkt(6))
    jb.push(pkt(4))
    assert drain(jb) == [4, 5, 6]
    assert jb.stats["late"] == 0


def test_duplicates_dropped_and_counted() -> None:
    jb = JitterBuffer(prefetch=2)
    jb.push(pkt(1))
    jb.push(pkt(1))
    jb.push(pkt(2))
    jb.push(pkt(2))
    assert drain(jb) == [1, 2]
    assert jb.stats["duplicates"] == 2
    assert jb.stats["received"] == 4
    check_invariant(jb)


def test_late_packet_after_play_dropped() -> None:
    jb = JitterBuffer(prefetch=2)
    for seq in (1, 2, 3):
        jb.push(pkt(seq))
    assert drain(jb) == [1, 2, 3]
    jb.push(pkt(2))  # already played: duplicate of the past, counted as late
    jb.push(pkt(0))  # older than anything played
    assert jb.stats["late"] == 2
    assert jb.pop() is None
    check_invariant(jb)


def test_gap_when_packet_missing_and_buffer_full_enough() -> None:
    jb = JitterBuffer(prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(2))
    jb.push(pkt(3))
    first = jb.pop()
    assert isinstance(first, RtpPacket)
    assert first.sequence_number == 0
    gap = jb.pop()
    assert gap == Gap(sequence=1, timestamp_hint=1000 + 160)
    assert drain(jb) == [2, 3]
    assert jb.stats["lost"] == 1
    assert jb.stats["played"] == 3


def test_missing_packet_waited_for_while_buffer_thin() -> None:
    jb = JitterBuffer(prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(1))
    jb.push(pkt(3))
    assert drain(jb) == [0, 1]  # 2 is missing and only one packet is buffered: wait
    jb.push(pkt(2))  # it arrives in time
    jb.push(pkt(4))
    assert drain(jb) == [2, 3, 4]
    assert jb.stats["lost"] == 0


def test_packet_arriving_after_its_gap_is_late() -> None:
    jb = JitterBuffer(prefetch=2)
    for seq in (0, 2, 3):
        jb.push(pkt(seq))
    assert drain(jb) == [0, "gap:1", 2, 3]
    jb.push(pkt(1))
    assert jb.stats["late"] == 1
    assert jb.pop() is None


def test_gap_timestamp_hint_interpolates_and_wraps() -> None:
    jb = JitterBuffer(prefetch=2)
    base_ts = 0xFFFFFF00
    jb.push(pkt(10, base_seq=10, base_ts=base_ts))
    jb.push(pkt(13, base_seq=10, base_ts=base_ts))
    jb.push(pkt(14, base_seq=10, base_ts=base_ts))
    assert isinstance(jb.pop(), RtpPacket)
    g1 = jb.pop()
    g2 = jb.pop()
    assert g1 == Gap(11, (base_ts + 160) & 0xFFFFFFFF)
    assert g2 == Gap(12, (base_ts + 320) & 0xFFFFFFFF)


def test_gap_hint_without_played_packet_uses_step() -> None:
    # Overflow skips the head before anything was played: the hint counts back from the next packet.
    jb = JitterBuffer(capacity=4, prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(6))  # window is 4: the head moves to 3, slots 1..2 lost, packet 0 discarded
    jb.push(pkt(5))
    assert jb.stats["discarded"] == 1
    assert jb.stats["lost"] == 2
    assert jb.pop() == Gap(3, 1000 + 3 * 160)
    assert drain(jb) == ["gap:4", 5, 6]
    check_invariant(jb)


def test_overflow_pushes_window_forward() -> None:
    jb = JitterBuffer(capacity=4, prefetch=2)
    for seq in range(4):
        jb.push(pkt(seq))
    jb.push(pkt(5))  # span would be 6 > 4: 0 and 1 discarded
    assert jb.stats["discarded"] == 2
    assert drain(jb) == [2, 3]  # 4 is missing and only 5 is buffered: wait for it
    jb.push(pkt(6))
    assert drain(jb) == ["gap:4", 5, 6]
    check_invariant(jb)


def test_wrap_around() -> None:
    jb = JitterBuffer(prefetch=3)
    for seq in (65534, 0, 65535, 1):
        jb.push(pkt(seq, base_seq=65534))
    assert drain(jb) == [65534, 65535, 0, 1]
    jb.push(pkt(65533, base_seq=65534))
    assert jb.stats["late"] == 1
    assert jb.stats["resets"] == 0


def test_wrap_around_gap() -> None:
    jb = JitterBuffer(prefetch=2)
    for seq in (65534, 0, 1):
        jb.push(pkt(seq, base_seq=65534))
    assert drain(jb) == [65534, "gap:65535", 0, 1]


def test_ssrc_change_resets() -> None:
    jb = JitterBuffer(prefetch=2)
    jb.push(pkt(100))
    jb.push(pkt(101))
    jb.push(pkt(102))
    assert jb.pop() is not None
    jb.push(pkt(7, ssrc=0x9999))
    assert jb.stats["resets"] == 1
    assert jb.stats["discarded"] == 2
    assert jb.pop() is None  # prefetching again
    jb.push(pkt(8, ssrc=0x9999))
    assert drain(jb) == [7, 8]
    check_invariant(jb)


@pytest.mark.parametrize("jump", [65, 1000, -70, -1000])
def test_large_sequence_jump_resets(jump: int) -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    jb.push(pkt(30000))
    jb.push(pkt(30001))
    assert drain(jb) == [30000, 30001]
    jb.push(pkt(30002 + jump))
    jb.push(pkt(30003 + jump))
    assert jb.stats["resets"] == 1
    assert drain(jb) == [30002 + jump, 30003 + jump]


def test_confirmation_may_arrive_reordered() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(1))
    assert drain(jb) == [0, 1]
    jb.push(pkt(5003))
    jb.push(pkt(5001))
    assert jb.stats["resets"] == 1
    jb.push(pkt(5002))
    assert drain(jb) == [5001, 5002, 5003]
    check_invariant(jb)


def test_lone_stray_packet_does_not_reset() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    for seq in range(5):
        jb.push(pkt(seq))
    assert drain(jb) == [0, 1, 2, 3, 4]
    jb.push(pkt(40000))  # a stray (or very stale) packet far from the stream
    assert len(jb) == 1
    jb.push(pkt(5))
    jb.push(pkt(6))
    assert jb.stats["resets"] == 0
    assert jb.stats["discarded"] == 1
    assert drain(jb) == [5, 6]
    check_invariant(jb)


def test_two_unrelated_far_packets_do_not_reset() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(1))
    jb.push(pkt(20000))
    jb.push(pkt(40000))  # far from the first stray too: it replaces it as the candidate
    assert jb.stats["resets"] == 0
    assert jb.stats["discarded"] == 1
    assert drain(jb) == [0, 1]
    jb.push(pkt(40001))  # confirms the second one
    assert jb.stats["resets"] == 1
    assert drain(jb) == [40000, 40001]
    check_invariant(jb)


def test_ssrc_change_discards_pending_jump() -> None:
    jb = JitterBuffer(prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(30000))
    jb.push(pkt(5, ssrc=0x42))
    s = jb.stats
    assert s["resets"] == 1
    assert s["discarded"] == 2
    assert len(jb) == 1
    check_invariant(jb)


def test_jump_within_four_capacities_does_not_reset() -> None:
    jb = JitterBuffer(capacity=16, prefetch=2)
    jb.push(pkt(0))
    jb.push(pkt(1))
    assert drain(jb) == [0, 1]
    jb.push(pkt(2 + 64))
    jb.push(pkt(3 + 64))
    assert jb.stats["resets"] == 0
    out = drain(jb)
    assert out[-2:] == [66, 67]
    assert all(isinstance(x, str) for x in out[:-2])
    check_invariant(jb)


def test_stats_returns_copy() -> None:
    jb = JitterBuffer()
    jb.stats["received"] = 99
    assert jb.stats["received"] == 0


@settings(max_examples=300)
@given(
    start=st.integers(0, 0xFFFF),
    data=st.data(),
    capacity=st.integers(1, 20),
)
def test_any_permutation_with_drops_never_plays_twice(start: int, data: st.DataObject, capacity: int) -> None:
    # The sequence range stays within 4 * capacity, so no reordering can look like a restarted stream.
    count = data.draw(st.integers(1, 4 * capacity + 1))
    prefetch = data.draw(st.integers(1, capacity))
    jb = JitterBuffer(capacity=capacity, prefetch=prefetch)
    seqs = [(start + i) & 0xFFFF for i in range(count)]
    kept = data.draw(st.lists(st.sampled_from(seqs), unique=True, max_size=count))
    order = data.draw(st.permutations(kept))
    dupes = data.draw(st.lists(st.sampled_from(seqs), max_size=10))
    arrivals = list(order) + dupes
    pops = data.draw(st.lists(st.integers(0, 3), min_size=len(arrivals), max_size=len(arrivals)))

    played: list[int] = []
    emitted: list[int] = []  # played packets and gaps, in emission order

    def take(n: int) -> None:
        for _ in range(n):
            item = jb.pop()
            if item is None:
                return
            if isinstance(item, RtpPacket):
                played.append(item.sequence_number)
                emitted.append(item.sequence_number)
            else:
                assert isinstance(item, Gap)
                emitted.append(item.sequence)

    for seq, n in zip(arrivals, pops, strict=True):
        jb.push(pkt(seq, base_seq=start))
        check_invariant(jb)
        take(n)
        check_invariant(jb)
    take(count + capacity + 2)
    check_invariant(jb)

    assert len(played) == len(set(played))
    assert len(emitted) == len(set(emitted))
    # Everything comes out in sequence order (no reset can happen: one SSRC, jumps < 65).
    offsets = [seq_distance(start, s) for s in emitted]
    assert offsets == sorted(offsets)
    assert set(played) <= set(arrivals)
    stats = jb.stats
    assert stats["played"] == len(played)
    assert stats["resets"] == 0
    # Every distinct packet that arrived was played, or is accounted as late/discarded.
    assert len(played) + stats["late"] + stats["discarded"] + len(jb) >= len(kept)


@settings(max_examples=300)
@given(
    arrivals=st.lists(st.tuples(st.integers(0, 0xFFFF), st.sampled_from([1, 2])), max_size=120),
    pops=st.lists(st.integers(0, 3), max_size=120),
    capacity=st.integers(1, 20),
    prefetch_fraction=st.floats(0, 1),
)
def test_arbitrary_arrivals_never_raise(
    arrivals: list[tuple[int, int]], pops: list[int], capacity: int, prefetch_fraction: float
) -> None:
    prefetch = max(1, min(capacity, round(prefetch_fraction * capacity)))
    jb = JitterBuffer(capacity=capacity, prefetch=prefetch)
    played: list[int] = []
    for i, (seq, ssrc) in enumerate(arrivals):
        jb.push(pkt(seq, ssrc=ssrc))
        check_invariant(jb)
        for _ in range(pops[i] if i < len(pops) else 1):
            item = jb.pop()
            if isinstance(item, RtpPacket):
                played.append(item.sequence_number)
        assert len(jb) <= capacity + 1
        check_invariant(jb)
    if jb.stats["resets"] == 0:
        assert len(played) == len(set(played))
