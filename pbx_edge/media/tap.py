"""The decoded-audio tap: RTP packets of one call leg in, exact 20 ms frames of 16 kHz PCM out.

Theory of operation
-------------------
:class:`LegTap` is sans-I/O: the relay hands it every RTP packet it received from one leg together
with the loop time of arrival, and the tap calls ``emit`` with each :class:`TapFrame` that packet
completes. Per packet:

1. RTCP and datagrams that are not RTP are counted and dropped.
2. The payload type is looked up in the leg's map (from its SDP). RFC 4733 ``telephone-event``
   packets go to a :class:`~pbx_edge.media.dtmf.DtmfDetector` at once (a digit is reported once,
   whatever the redundancy) and then, like audio and comfort noise, into the jitter buffer so that
   the stream's sequence numbers stay contiguous. Unknown types and codecs that are not registered
   are counted and dropped.
3. The :class:`~pbx_edge.media.jitterbuffer.JitterBuffer` puts packets back in sequence order and
   drops late ones and duplicates. We pop from it right after each push, so an in-order stream
   adds no delay; a missing packet holds back those behind it until ``prefetch`` packets wait.
4. The output timeline follows the RTP timestamps, not the packet count: before a packet is decoded,
   the span between the previous packet's end and this packet's timestamp is filled. That single
   rule covers lost packets, the sequence numbers taken by DTMF events, silence suppression and odd
   packet times (10, 30, 60 ms). The fill is the codec's own concealment when its decoder has
   ``conceal(samples)`` (Opus, with in-band FEC from the packet that follows when the decoder takes
   ``next_payload``), else the last packet repeated under a fade; after ``max_conceal`` seconds, and
   after comfort noise, it is silence.
5. Audio is decoded with a decoder for the packet's codec (a new one whenever the codec changes),
   resampled to 16 kHz by a streaming :class:`~pbx_edge.media.resample.Resampler`, and cut into
   frames of exactly 320 samples.

A stream restarts in a new *segment* when the SSRC changes, when the timestamps jump backwards or
further ahead than ``max_fill`` seconds, or when the RTP clock rate changes. The old segment is
drained (its last partial frame padded with silence), the decoder and resampler start afresh, and
the new segment's ``media_time`` continues from the old one's end plus the time that passed between
the packets. ``TapFrame.seq`` counts every frame of the leg, concealed ones included, so it always
goes up by one; ``media_time`` is ``segment start + 20 ms * frames in the segment``, hence exact and
monotonic.

:class:`TapQueue` and :class:`TapFanout` are the asyncio side: bounded queues that never block the
relay (the oldest frame goes when a consumer falls behind), one per subscriber.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from .codecs.base import Codec, Decoder, PcmArray, get_codec
from .dtmf import DtmfDetector
from .interface import Side
from .jitterbuffer import JitterBuffer
from .resample import Resampler
from .rtp import RtpPacket, is_rtcp, ts_distance

__all__ = [
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "TAP_SAMPLE_RATE",
    "LegTap",
    "TapFanout",
    "TapFrame",
    "TapQueue",
    "TapQueueClosed",
    "TapStats",
]

TAP_SAMPLE_RATE = 16000
FRAME_SECONDS = 0.02
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
FRAME_BYTES = 2 * FRAME_SAMPLES
DEFAULT_QUEUE_FRAMES = 250  # 5 s
_CHEAP_RESAMPLE_RATE = 32000  # decoders at this rate or above use the fixed-rate resampler

PayloadTypes = dict[int, tuple[str, int, int]]
EmitCallback = Callable[["TapFrame"], None]
DtmfCallback = Callable[[str, Side, float], None]


class TapFrame(NamedTuple):
    """20 ms of one leg's audio: 320 samples of mono s16le at 16 kHz."""

    leg: Side
    seq: int  # per-leg frame counter, +1 per frame, concealed frames included
    media_time: float  # seconds since the leg's first packet, from RTP timestamps
    arrival: float  # loop time of the feed() whose packet completed this frame (latency probe)
    pcm: bytes  # FRAME_BYTES bytes


@dataclass(slots=True)
class TapStats:
    """Counters of one :class:`LegTap`; the jitter buffer's ones are copied in by ``LegTap.stats``."""

    packets_in: int = 0  # every datagram fed
    rtcp: int = 0  # RTCP (RFC 5761 muxed) dropped
    malformed: int = 0  # not parseable as RTP
    unknown_pt: int = 0  # payload type not in the leg's map
    unsupported: int = 0  # payload type mapped to a codec with no registered decoder
    dtmf_packets: int = 0  # telephone-event packets
    dtmf_digits: int = 0  # digits reported
    decoded: int = 0  # audio packets decoded
    decode_errors: int = 0  # payloads the decoder rejected (concealed instead)
    concealed_samples: int = 0  # at 16 kHz, filled by concealment or silence
    late: int = 0  # from the jitter buffer: arrived after their slot was played
    duplicates: int = 0  # from the jitter buffer
    lost: int = 0  # from the jitter buffer: sequence numbers never received
    segments: int = 0  # stream (re)starts: first packet, SSRC change, timestamp jump
    frames_emitted: int = 0

    @property
    def concealed_frames(self) -> int:
        """Concealed audio in 20 ms frames (rounded)."""
        return (self.concealed_samples + FRAME_SAMPLES // 2) // FRAME_SAMPLES


@runtime_checkable
class _Concealing(Protocol):
    def conceal(self, samples: int) -> PcmArray: ...


@dataclass
class _ArrivedPacket(RtpPacket):
    """An RTP packet that remembers when it arrived, through the jitter buffer."""

    arrival: float = 0.0


class _Kind(Enum):
    AUDIO = "audio"
    EVENT = "telephone-event"
    COMFORT_NOISE = "CN"
    UNSUPPORTED = "unsupported"


class _PayloadKind(NamedTuple):
    kind: _Kind
    clock_rate: int
    codec: Codec | None


def _classify(payload_types: PayloadTypes) -> dict[int, _PayloadKind]:
    kinds: dict[int, _PayloadKind] = {}
    for pt, (encoding, clock_rate, _channels) in payload_types.items():
        name = encoding.lower()
        if name == "telephone-event":
            kinds[pt] = _PayloadKind(_Kind.EVENT, clock_rate, None)
        elif name == "cn":
            kinds[pt] = _PayloadKind(_Kind.COMFORT_NOISE, clock_rate, None)
        else:
            try:
                codec = get_codec(encoding)
            except KeyError:
                kinds[pt] = _PayloadKind(_Kind.UNSUPPORTED, clock_rate, None)
            else:
                kinds[pt] = _PayloadKind(_Kind.AUDIO, clock_rate, codec)
    return kinds


def _accepts_next_payload(decoder: _Concealing) -> bool:
    """Whether ``decoder.conceal`` can rebuild the gap's end from the next packet's FEC."""
    try:
        return "next_payload" in inspect.signature(decoder.conceal).parameters
    except (TypeError, ValueError):
        return False


class LegTap:
    """Decoded-audio tap of one leg; see the module docstring for the pipeline.

    ``max_fill`` (seconds) is the longest timestamp gap filled with concealment or silence; a longer
    one starts a new segment. ``max_conceal`` (seconds) is how much of a gap gets concealed audio
    before it turns to silence.
    """

    def __init__(
        self,
        leg: Side,
        payload_types: PayloadTypes,
        emit: EmitCallback,
        on_dtmf: DtmfCallback | None = None,
        jitter_capacity: int = 16,
        prefetch: int = 2,
        *,
        max_fill: float = 1.0,
        max_conceal: float = 0.06,
    ) -> None:
        self.leg = leg
        self._emit = emit
        self._on_dtmf = on_dtmf
        self._kinds = _classify(payload_types)
        self._jitter = JitterBuffer(jitter_capacity, prefetch)
        self._dtmf = DtmfDetector()
        self._max_fill = max_fill
        self._max_conceal = max_conceal
        self._stats = TapStats()

        self._now = 0.0  # arrival of the packet being fed
        self._first_arrival: float | None = None
        self._ssrc: int | None = None  # SSRC of the audio stream
        self._seq = 0  # next TapFrame.seq
        self._acc: PcmArray = np.zeros(0, dtype=np.int16)  # 16 kHz samples short of a frame

        # The current segment; _next_ts is None between segments.
        self._next_ts: int | None = None  # RTP timestamp where the last played packet ended
        self._clock = 8000
        self._seg_first_ts = 0
        self._seg_start = 0.0  # media time of the segment's first frame
        self._seg_frames = 0
        self._last_arrival: float | None = None  # arrival of the last audio packet played
        self._last_duration = 0.0  # seconds of audio in that packet
        self._silent = False  # comfort noise seen since the last audio packet: fill with silence

        self._codec: Codec | None = None
        self._decoder: Decoder | None = None
        self._decoder_pt = -1
        self._concealer: _Concealing | None = None  # the decoder, when it can conceal
        self._conceal_fec = False
        self._rate = 8000  # decoder output rate
        self._last_pcm: PcmArray | None = None
        self._resampler: Resampler | None = None

    # -- public API -------------------------------------------------------------------------------

    @property
    def stats(self) -> TapStats:
        """A snapshot of the counters, the jitter buffer's late/duplicates/lost included."""
        snapshot = replace(self._stats)
        jitter = self._jitter.stats
        snapshot.late = jitter["late"]
        snapshot.duplicates = jitter["duplicates"]
        snapshot.lost = jitter["lost"]
        return snapshot

    @property
    def media_time(self) -> float:
        """Media time where the next frame will start."""
        return self._seg_start + self._seg_frames * FRAME_SECONDS

    def update_payload_types(self, payload_types: PayloadTypes) -> None:
        """Take the payload type map of a new offer/answer; a changed codec gets a new decoder."""
        self._kinds = _classify(payload_types)

    def feed(self, packet: bytes, arrival: float) -> None:
        """Process one datagram received from this leg at loop time ``arrival``."""
        stats = self._stats
        stats.packets_in += 1
        if self._first_arrival is None:
            self._first_arrival = arrival
        self._now = arrival
        if is_rtcp(packet):
            stats.rtcp += 1
            return
        try:
            rtp = _ArrivedPacket.parse(packet)
        except ValueError:
            stats.malformed += 1
            return
        assert isinstance(rtp, _ArrivedPacket)  # parse() builds ``cls``
        kind = self._kinds.get(rtp.payload_type)
        if kind is None:
            stats.unknown_pt += 1
            return
        if kind.kind is _Kind.EVENT:
            stats.dtmf_packets += 1
            digit = self._dtmf.feed(rtp.timestamp, rtp.marker, rtp.payload)
            if digit is not None:
                self._report_digit(digit, rtp.timestamp)
            if rtp.ssrc != self._ssrc:
                return  # keep an event stream with its own SSRC out of the audio's jitter buffer
        elif kind.kind is _Kind.UNSUPPORTED:
            stats.unsupported += 1
            return
        elif self._ssrc is not None and rtp.ssrc != self._ssrc:
            self._drain(final=True)
            self._end_segment()
        self._ssrc = rtp.ssrc
        rtp.arrival = arrival
        self._jitter.push(rtp)
        self._drain(final=False)

    def flush(self) -> None:
        """End of the stream: play out what the jitter buffer holds, emit the last (padded) frame
        and report a digit whose end packets never came. The tap may be fed again afterwards."""
        self._drain(final=True)
        self._end_segment()
        for digit in self._dtmf.flush():
            self._report_digit(digit, None)

    # -- jitter buffer and timeline -------------------------------------------------------------

    def _drain(self, *, final: bool) -> None:
        """Play every packet the jitter buffer hands out now (all of them when ``final``).

        Gaps are skipped: the timestamp of the next packet tells how much to fill. The loop stops
        while the buffer is empty rather than popping once more, which would end the buffer's
        playing state and make it wait for ``prefetch`` packets again.
        """
        jitter = self._jitter
        prefetch = jitter.prefetch
        if final:
            jitter.prefetch = 1  # no more packets will come to fill a hole: skip it
        try:
            while len(jitter):
                item = jitter.pop()
                if item is None:
                    break
                if isinstance(item, _ArrivedPacket):
                    self._play(item)
        finally:
            jitter.prefetch = prefetch

    def _play(self, rtp: _ArrivedPacket) -> None:
        kind = self._kinds.get(rtp.payload_type)
        if kind is None or kind.kind is _Kind.UNSUPPORTED:
            return  # the map changed while the packet waited
        if kind.kind is _Kind.EVENT:
            return
        if kind.kind is _Kind.COMFORT_NOISE:
            self._silent = True
            return
        codec = kind.codec
        assert codec is not None
        if self._next_ts is None or kind.clock_rate != self._clock:
            self._end_segment()
            self._start_segment(rtp, kind.clock_rate)
        else:
            delta = ts_distance(self._next_ts, rtp.timestamp)
            if delta > self._max_fill * self._clock or delta < -self._clock * max(self._last_duration, 0.02):
                self._end_segment()
                self._start_segment(rtp, kind.clock_rate)
            elif delta > 0:
                self._fill(delta * self._rate // self._clock, rtp)

        if rtp.payload_type != self._decoder_pt or codec is not self._codec:
            self._switch_decoder(rtp.payload_type, codec)
        assert self._decoder is not None
        try:
            pcm = self._decoder.decode(rtp.payload)
        except Exception:  # a codec library may raise anything for a corrupt payload
            self._stats.decode_errors += 1
            samples = round((self._last_duration or FRAME_SECONDS) * self._rate)
            self._fill(samples, None)
            self._advance(rtp, samples)
            return
        self._stats.decoded += 1
        self._silent = False
        self._last_pcm = pcm
        self._push(pcm)
        self._advance(rtp, len(pcm))

    def _advance(self, rtp: _ArrivedPacket, samples: int) -> None:
        self._next_ts = (rtp.timestamp + samples * self._clock // self._rate) & 0xFFFFFFFF
        self._last_duration = samples / self._rate
        self._last_arrival = rtp.arrival

    def _start_segment(self, rtp: _ArrivedPacket, clock_rate: int) -> None:
        assert self._first_arrival is not None
        if self._last_arrival is None:
            start = rtp.arrival - self._first_arrival
        else:
            gap = rtp.arrival - self._last_arrival - self._last_duration
            start = self.media_time + max(0.0, gap)
        self._seg_start = max(start, self.media_time)
        self._seg_frames = 0
        self._seg_first_ts = rtp.timestamp
        self._next_ts = rtp.timestamp
        self._clock = clock_rate
        self._silent = False
        self._codec = None  # a fresh decoder for the new segment
        self._stats.segments += 1

    def _end_segment(self) -> None:
        """Emit everything the segment still holds, the last partial frame padded with silence."""
        if self._resampler is not None:
            tail = self._resampler.flush()
            if len(tail):
                self._frames(tail)
        if len(self._acc):
            pad = np.zeros(FRAME_SAMPLES - len(self._acc), dtype=np.int16)
            self._frames(pad)
        self._next_ts = None
        self._last_pcm = None

    def _switch_decoder(self, payload_type: int, codec: Codec) -> None:
        self._codec = codec
        self._decoder_pt = payload_type
        decoder = self._decoder = codec.new_decoder()
        self._concealer = decoder if isinstance(decoder, _Concealing) else None
        self._conceal_fec = self._concealer is not None and _accepts_next_payload(self._concealer)
        rate = codec.info.sample_rate
        if self._resampler is None or self._resampler.in_rate != rate:
            if self._resampler is not None:
                tail = self._resampler.flush()
                if len(tail):
                    self._frames(tail)
            # From 48 kHz the fixed-rate engine holds back ~37 ms at an eighth of the CPU; from
            # narrowband it would hold back 115 ms, so the low-latency engine is worth its cost.
            self._resampler = Resampler(rate, TAP_SAMPLE_RATE, low_latency=rate < _CHEAP_RESAMPLE_RATE)
        self._rate = rate
        self._last_pcm = None

    # -- concealment ------------------------------------------------------------------------------

    def _fill(self, samples: int, following: RtpPacket | None) -> None:
        """Fill ``samples`` (at the decoder's rate) of missing audio before ``following``."""
        if samples <= 0:
            return
        conceal_max = 0 if self._silent else round(self._max_conceal * self._rate)
        concealed = min(samples, conceal_max)
        parts: list[PcmArray] = []
        decoder = self._concealer
        if concealed and decoder is not None:
            try:
                if self._conceal_fec and following is not None and samples == concealed:
                    parts.append(decoder.conceal(samples, next_payload=following.payload))  # type: ignore[call-arg]
                else:
                    parts.append(decoder.conceal(concealed))
            except Exception:  # concealment is best effort; silence will do
                parts.clear()
        elif concealed and self._last_pcm is not None and len(self._last_pcm):
            parts.append(self._repeat_with_fade(concealed, conceal_max))
        done = sum(len(p) for p in parts)
        if done < samples:
            parts.append(np.zeros(samples - done, dtype=np.int16))
        pcm = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self._stats.concealed_samples += samples * TAP_SAMPLE_RATE // self._rate
        self._push(pcm[:samples])

    def _repeat_with_fade(self, samples: int, fade_length: int) -> PcmArray:
        """The last packet repeated for ``samples``, fading linearly to zero over ``fade_length``."""
        last = self._last_pcm
        assert last is not None
        repeated = np.resize(last, samples).astype(np.float32)
        gain = 1.0 - np.arange(samples, dtype=np.float32) / max(fade_length, 1)
        return (repeated * gain).astype(np.int16)

    # -- output -----------------------------------------------------------------------------------

    def _push(self, pcm: PcmArray) -> None:
        assert self._resampler is not None
        out = self._resampler.process(pcm)
        if len(out):
            self._frames(out)

    def _frames(self, samples: PcmArray) -> None:
        """Append 16 kHz samples and emit every complete frame."""
        buf = np.concatenate((self._acc, samples)) if len(self._acc) else samples
        count = len(buf) // FRAME_SAMPLES
        if count:
            emit = self._emit
            leg = self.leg
            now = self._now
            data = buf[: count * FRAME_SAMPLES].astype("<i2", copy=False).tobytes()
            for i in range(count):
                emit(
                    TapFrame(
                        leg,
                        self._seq,
                        self._seg_start + self._seg_frames * FRAME_SECONDS,
                        now,
                        data[i * FRAME_BYTES : (i + 1) * FRAME_BYTES],
                    )
                )
                self._seq += 1
                self._seg_frames += 1
            self._stats.frames_emitted += count
        self._acc = buf[count * FRAME_SAMPLES :].copy()

    def _report_digit(self, digit: str, timestamp: int | None) -> None:
        self._stats.dtmf_digits += 1
        if self._on_dtmf is None:
            return
        when = self.media_time
        if timestamp is not None and self._next_ts is not None:
            # The event's start on this segment's timeline, unless its timestamp is from elsewhere.
            event_time = self._seg_start + ts_distance(self._seg_first_ts, timestamp) / self._clock
            if self._seg_start <= event_time <= when + self._max_fill:
                when = event_time
        elif self._last_arrival is None and self._first_arrival is not None:
            when = self._now - self._first_arrival  # no audio yet
        self._on_dtmf(digit, self.leg, max(0.0, when))


# ---------------------------------------------------------------------------------------------
# asyncio side
# ---------------------------------------------------------------------------------------------


class TapQueueClosed(Exception):
    """:meth:`TapQueue.get` on a queue that is closed and empty."""


class TapQueue:
    """A bounded frame queue for one consumer; the producer never waits.

    :meth:`put_nowait` drops the *oldest* frame when the queue is full (a consumer that fell behind
    hears the most recent audio, not 5 s old audio) and counts it in ``dropped``. :meth:`close` lets
    consumers take what is queued and then ends ``async for``. Use it from the loop's thread only.
    """

    __slots__ = ("_closed", "_frames", "_getters", "capacity", "dropped", "put_count")

    def __init__(self, capacity: int = DEFAULT_QUEUE_FRAMES) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._frames: deque[TapFrame] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    def put_nowait(self, frame: TapFrame) -> None:
        """Queue ``frame``; when full, drop the oldest. Frames put after :meth:`close` are ignored."""
        if self._closed:
            return
        self.put_count += 1
        if len(self._frames) >= self.capacity:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        self._wake_one()

    def get_nowait(self) -> TapFrame | None:
        """The oldest frame, or None when the queue is empty."""
        return self._frames.popleft() if self._frames else None

    async def get(self) -> TapFrame:
        """The oldest frame, waiting for one; raises :class:`TapQueueClosed` once closed and empty."""
        while not self._frames:
            if self._closed:
                raise TapQueueClosed("tap queue is closed")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._getters:
                    self._getters.remove(waiter)
                elif self._frames:
                    self._wake_one()  # we were woken for a frame we will not take
                raise
        return self._frames.popleft()

    def close(self) -> None:
        """No more frames: waiting consumers wake up, iteration ends once the queue is empty."""
        self._closed = True
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _wake_one(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def __aiter__(self) -> AsyncIterator[TapFrame]:
        return self

    async def __anext__(self) -> TapFrame:
        try:
            return await self.get()
        except TapQueueClosed:
            raise StopAsyncIteration from None


class TapFanout:
    """One :class:`TapQueue` per subscriber (AI link, recorder...), each dropping on its own.

    ``publish`` has the shape of :class:`LegTap`'s ``emit``, so a fanout can serve both legs of a call.
    """

    __slots__ = ("_queues", "published")

    def __init__(self) -> None:
        self._queues: list[TapQueue] = []
        self.published = 0

    def __len__(self) -> int:
        return len(self._queues)

    def subscribe(self, capacity: int = DEFAULT_QUEUE_FRAMES) -> TapQueue:
        queue = TapQueue(capacity)
        self._queues.append(queue)
        return queue

    def unsubscribe(self, queue: TapQueue) -> None:
        """Stop feeding ``queue`` and close it; unknown queues are ignored."""
        if queue in self._queues:
            self._queues.remove(queue)
        queue.close()

    def publish(self, frame: TapFrame) -> None:
        self.published += 1
        for queue in self._queues:
            queue.put_nowait(frame)

    def close(self) -> None:
        """End of the call: close every subscriber's queue."""
        for queue in self._queues:
            queue.close()
        self._queues.clear()
