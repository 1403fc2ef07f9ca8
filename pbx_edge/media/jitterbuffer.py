"""A jitter buffer for one RTP stream, feeding the decoded-audio tap.

Pure bookkeeping: no asyncio, no clock reads. The consumer calls :meth:`JitterBuffer.pop` once per
packet interval (20 ms) and gets either the next packet in sequence order, a :class:`Gap` telling it
to conceal one missing packet, or None when nothing is ready yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rtp import RtpPacket, seq_distance, ts_distance

DEFAULT_TIMESTAMP_STEP = 160  # 20 ms at 8 kHz, used only when the stream has not shown its own


@dataclass(frozen=True)
class Gap:
    """A missing packet the consumer should conceal; ``timestamp_hint`` is its estimated RTP timestamp."""

    sequence: int
    timestamp_hint: int


class JitterBuffer:
    """Reorders one RTP stream by sequence number (16-bit wrap-around) and reports losses.

    - Duplicates and packets older than what was already played are dropped and counted.
    - Playout starts (and restarts after an underrun) once ``prefetch`` packets are buffered.
    - A missing packet becomes a :class:`Gap` once later packets are present and at least
      ``prefetch`` packets are buffered; until then :meth:`pop` waits for it (returns None).
    - A packet more than ``capacity`` ahead of the next one to play pushes the window forward:
      slots skipped that way count as lost, buffered packets skipped count as discarded.
    - An SSRC change resets the buffer. So does a sequence jump of more than ``capacity * 4`` once a
      second packet confirms it (within ``capacity`` of the first); a lone far packet is discarded.

    Stats: received, played, duplicates, late, lost, resets, and discarded (packets accepted but
    thrown away unplayed on a window overflow, a reset or an unconfirmed jump). At any time
    ``received == played + duplicates + late + discarded + len(buffer)``.
    """

    def __init__(self, capacity: int = 16, prefetch: int = 2) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 1 <= prefetch <= capacity:
            raise ValueError("prefetch must be between 1 and capacity")
        self.capacity = capacity
        self.prefetch = prefetch
        self._packets: dict[int, RtpPacket] = {}
        self._ssrc: int | None = None
        self._head: int | None = None  # next sequence number to hand out
        self._last: RtpPacket | None = None  # last packet played since the last reset
        self._ts_step = DEFAULT_TIMESTAMP_STEP
        self._playing = False
        self._moved = False  # the head has moved past something since the last reset
        self._jump: RtpPacket | None = None  # a packet far from the head, awaiting confirmation
        self._stats = {
            "received": 0,
            "played": 0,
            "duplicates": 0,
            "late": 0,
            "lost": 0,
            "resets": 0,
            "discarded": 0,
        }

    def __len__(self) -> int:
        """Packets held: buffered ones plus one held back after a large sequence jump."""
        return len(self._packets) + (self._jump is not None)

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def push(self, packet: RtpPacket) -> None:
        self._stats["received"] += 1
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            self._reset()
        self._ssrc = packet.ssrc
        seq = packet.sequence_number

        if self._head is None:
            self._head = seq
            self._packets[seq] = packet
            return

        distance = seq_distance(self._head, seq)
        if abs(distance) > self.capacity * 4:
            self._jumped(packet)
            return
        if self._jump is not None:
            self._stats["discarded"] += 1  # an isolated stray packet, not a restarted stream
            self._jump = None

        if distance < 0:
            # Before the head has moved, an earlier packet moves the start back if the window allows.
            if not self._moved and self._span_with(seq) <= self.capacity:
                self._head = seq
                self._packets[seq] = packet
            else:
                self._stats["late"] += 1
            return

        if seq in self._packets:
            self._stats["duplicates"] += 1
            return

        if distance >= self.capacity:
            self._advance(distance - self.capacity + 1)
        self._packets[seq] = packet

    def pop(self) -> RtpPacket | Gap | None:
        if not self._packets or self._head is None:
            self._playing = False
            return None
        if not self._playing:
            if len(self._packets) < self.prefetch:
                return None
            self._playing = True

        head = self._head
        packet = self._packets.pop(head, None)
        if packet is not None:
            if self._last is not None:
                step = seq_distance(self._last.sequence_number, head)
                delta = ts_distance(self._last.timestamp, packet.timestamp)
                if step > 0 and delta > 0:
                    self._ts_step = delta // step
            self._last = packet
            self._moved = True
            self._head = (head + 1) & 0xFFFF
            self._stats["played"] += 1
            return packet

        if len(self._packets) < self.prefetch:
            return None  # give the missing packet a chance to arrive
        gap = Gap(sequence=head, timestamp_hint=self._timestamp_hint(head))
        self._head = (head + 1) & 0xFFFF
        self._moved = True
        self._stats["lost"] += 1
        return gap

    def _span_with(self, seq: int) -> int:
        """Number of sequence slots from ``seq`` to the newest buffered packet, both included."""
        newest = max((seq_distance(seq, s) for s in self._packets), default=0)
        return newest + 1

    def _advance(self, count: int) -> None:
        assert self._head is not None
        self._moved = True
        for _ in range(count):
            if self._packets.pop(self._head, None) is None:
                self._stats["lost"] += 1
            else:
                self._stats["discarded"] += 1
            self._head = (self._head + 1) & 0xFFFF

    def _timestamp_hint(self, seq: int) -> int:
        nxt = min(self._packets.values(), key=lambda p: seq_distance(seq, p.sequence_number))
        if self._last is not None:
            seq_span = seq_distance(self._last.sequence_number, nxt.sequence_number)
            ts_span = ts_distance(self._last.timestamp, nxt.timestamp)
            offset = seq_distance(self._last.sequence_number, seq)
            if seq_span > 0:
                return (self._last.timestamp + ts_span * offset // seq_span) & 0xFFFFFFFF
        ahead = seq_distance(seq, nxt.sequence_number)
        return (nxt.timestamp - ahead * self._ts_step) & 0xFFFFFFFF

    def _jumped(self, packet: RtpPacket) -> None:
        """A packet more than ``capacity * 4`` away from the head (RFC 3550 A.1 style probation).

        One such packet is held back; the stream is reset only when the next far packet follows it
        closely (within ``capacity``), so a single stray or very stale packet cannot flush the buffer.
        """
        candidate = self._jump
        if candidate is not None:
            ahead = seq_distance(candidate.sequence_number, packet.sequence_number)
            if 0 < ahead <= self.capacity:
                self._jump = None
                self._reset()
                self._head = candidate.sequence_number
                self._packets[candidate.sequence_number] = candidate
                self._packets[packet.sequence_number] = packet
                return
            if -self.capacity <= ahead < 0:
                self._jump = None
                self._reset()
                self._head = packet.sequence_number
                self._packets[candidate.sequence_number] = candidate
                self._packets[packet.sequence_number] = packet
                return
            self._stats["discarded"] += 1
        self._jump = packet

    def _reset(self) -> None:
        self._stats["resets"] += 1
        self._stats["discarded"] += len(self._packets)
        if self._jump is not None:
            self._stats["discarded"] += 1
            self._jump = None
        self._packets.clear()
        self._head = None
        self._last = None
        self._playing = False
        self._moved = False
        self._ts_step = DEFAULT_TIMESTAMP_STEP
