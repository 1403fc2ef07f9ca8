"""DTMF: RFC 4733 telephone-event parsing and per-stream digit detection, and SIP INFO DTMF.

RFC 4733 payload (section 2.3)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     event     |E|R| volume    |          duration             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

All packets of one event carry the same RTP timestamp (the event's start); the sender repeats the
final packet (E bit set) three times. :class:`DtmfDetector` turns that stream into one digit per
event. Everything here is synchronous and reads no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# RFC 4733 section 3.2: events 0-15 are the DTMF digits.
DTMF_EVENTS = "0123456789*#ABCD"
_MAX_DURATION = 0xFFFF
# A new timestamp without the marker bit, for the same still-running event, after a segment whose
# duration reached (nearly) the 16-bit limit is a long-duration continuation (RFC 4733 2.5.1.3).
_LONG_SEGMENT_MIN = 0xF000
_DONE_HISTORY = 16


def event_to_digit(event: int) -> str | None:
    """The DTMF digit for telephone-event ``event`` (0-15), or None for any other event."""
    if 0 <= event < len(DTMF_EVENTS):
        return DTMF_EVENTS[event]
    return None


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One decoded RFC 4733 telephone-event payload."""

    event: int  # 0-255; 0-15 are DTMF digits
    end: bool  # E bit
    volume: int  # 0-63, in -dBm0 (power level with sign dropped)
    duration: int  # in RTP timestamp units, 0-65535

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse the first event of ``payload``; raises ValueError when it is shorter than 4 bytes."""
        if len(payload) < 4:
            raise ValueError(f"telephone-event payload too short: {len(payload)} bytes, need 4")
        return cls(
            event=payload[0],
            end=bool(payload[1] & 0x80),
            volume=payload[1] & 0x3F,
            duration=(payload[2] << 8) | payload[3],
        )

    @property
    def digit(self) -> str | None:
        """The DTMF digit, or None when the event is not a DTMF digit (e.g. 16, flash)."""
        return event_to_digit(self.event)

    def serialize(self) -> bytes:
        """The 4-byte payload for this event (R bit zero)."""
        if not 0 <= self.event <= 0xFF:
            raise ValueError(f"event out of range: {self.event}")
        if not 0 <= self.volume <= 0x3F:
            raise ValueError(f"volume out of range: {self.volume}")
        if not 0 <= self.duration <= _MAX_DURATION:
            raise ValueError(f"duration out of range: {self.duration}")
        return bytes(
            (self.event, (0x80 if self.end else 0) | self.volume, self.duration >> 8, self.duration & 0xFF)
        )


class DtmfDetector:
    """Per-stream RFC 4733 digit detector: each DTMF event is reported exactly once.

    Events are identified by their RTP timestamp. A digit is reported on the first end-bit packet
    of its event (the redundant end packets and retransmissions are ignored), or, when all of an
    event's end packets were lost, on the first packet of the next event's timestamp. Late packets
    of an event already finished are ignored. Malformed payloads and non-DTMF events (16-255) are
    dropped and counted.

    :meth:`feed` returns at most one digit; in the rare case that one packet completes two digits
    (a lost-end event followed by an event whose only surviving packet is an end packet), the second
    is returned by the next :meth:`feed` call or by :meth:`flush`.
    """

    __slots__ = (
        "_current_duration",
        "_current_ended",
        "_current_event",
        "_current_reported",
        "_current_ts",
        "_done",
        "_done_order",
        "_pending",
        "ignored_events",
        "malformed",
    )

    def __init__(self) -> None:
        self._current_ts: int | None = None
        self._current_event = 0
        self._current_ended = False
        self._current_reported = False
        self._current_duration = 0
        self._done: set[int] = set()
        self._done_order: deque[int] = deque()
        self._pending: deque[str] = deque()
        self.malformed = 0  # payloads shorter than 4 bytes
        self.ignored_events = 0  # packets carrying a non-DTMF event

    def feed(self, packet_timestamp: int, marker: bool, payload: bytes) -> str | None:
        """Process one telephone-event RTP packet; return a digit when one is complete."""
        try:
            te = TelephoneEvent.parse(payload)
        except ValueError:
            self.malformed += 1
            return self._next_pending()
        if te.digit is None:
            self.ignored_events += 1
            return self._next_pending()
        ts = packet_timestamp & 0xFFFFFFFF

        if ts == self._current_ts:
            self._current_duration = max(self._current_duration, te.duration)
            if te.end and not self._current_ended:
                self._current_ended = True
                self._report_current()
            return self._next_pending()

        if ts in self._done:  # late or retransmitted packet of an event already finished
            return self._next_pending()

        if self._is_continuation(marker, te):
            # Long-duration event: same event, new segment timestamp; not a new digit.
            reported = self._current_reported
            self._retire_current()
            self._start(ts, te.event, te.duration, reported=reported)
            if te.end:
                self._current_ended = True
                self._report_current()
            return self._next_pending()

        # A new event: the previous one, if its end was never seen, is reported now.
        if self._current_ts is not None:
            self._report_current()
            self._retire_current()
        self._start(ts, te.event, te.duration, reported=False)
        if te.end:
            self._current_ended = True
            self._report_current()
        return self._next_pending()

    def flush(self) -> list[str]:
        """Every digit not yet returned, including a current event whose end was never seen.

        Call it when the stream ends (BYE, payload type change).
        """
        if self._current_ts is not None:
            self._report_current()
        digits = list(self._pending)
        self._pending.clear()
        return digits

    def _is_continuation(self, marker: bool, te: TelephoneEvent) -> bool:
        return (
            self._current_ts is not None
            and not marker
            and not self._current_ended
            and te.event == self._current_event
            and self._current_duration >= _LONG_SEGMENT_MIN
        )

    def _start(self, ts: int, event: int, duration: int, *, reported: bool) -> None:
        self._current_ts = ts
        self._current_event = event
        self._current_ended = False
        self._current_reported = reported
        self._current_duration = duration

    def _report_current(self) -> None:
        if not self._current_reported:
            self._current_reported = True
            self._pending.append(DTMF_EVENTS[self._current_event])

    def _retire_current(self) -> None:
        ts = self._current_ts
        if ts is None:
            return
        self._done.add(ts)
        self._done_order.append(ts)
        if len(self._done_order) > _DONE_HISTORY:
            self._done.discard(self._done_order.popleft())

    def _next_pending(self) -> str | None:
        return self._pending.popleft() if self._pending else None


_INFO_DIGITS = {d: d for d in DTMF_EVENTS}
# dtmf-relay senders sometimes use the event number: "10" -> "*", "11" -> "#", "12"-"15" -> "A"-"D"
_INFO_RELAY_SIGNALS = {**_INFO_DIGITS, **{str(i): DTMF_EVENTS[i] for i in range(len(DTMF_EVENTS))}}


def _info_signal(value: str, table: dict[str, str]) -> str | None:
    return table.get(value.strip().upper())


def parse_info_dtmf(content_type: str, body: bytes) -> str | None:
    """The digit of a SIP INFO DTMF body, or None when there is none.

    ``application/dtmf-relay`` carries ``Signal=5\\r\\nDuration=160``; ``application/dtmf`` carries
    just ``5``. Digits are ``0``-``9``, ``*``, ``#``, ``A``-``D`` (case-insensitive); the event
    numbers ``10``-``15`` are accepted in ``Signal=`` for ``*``, ``#``, ``A``-``D``.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", errors="replace")
    if media_type == "application/dtmf-relay":
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip().lower() == "signal":
                return _info_signal(value, _INFO_RELAY_SIGNALS)
        return None
    if media_type == "application/dtmf":
        return _info_signal(text, _INFO_DIGITS)
    return None
