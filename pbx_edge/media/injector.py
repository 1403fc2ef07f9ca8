"""Injection: play audio (prompts, TTS) into one leg as an RTP stream of its own, paced by the relay.

:class:`Injector` is sans-I/O. The relay calls :meth:`Injector.packets_due` every 20 ms or so with
the loop time and sends what it returns; nothing here reads a clock or sleeps.

RTP rules (RFC 3550, RFC 3551):

* One SSRC for the injector's whole life; sequence numbers continue across plays, stops and silences.
* RTP timestamps follow the time that passes: talk spurt ``k`` starting at time ``t`` gets timestamp
  ``base + (t - clock) * clock_rate``, then +20 ms worth per packet, so timestamp and wall clock stay
  consistent across silences (the receiver's jitter estimate and lip-sync depend on that).
* The marker bit is set on the first packet of each talk spurt: the first packet after idle or after
  :meth:`Injector.stop`.
* The RTP clock is the codec's (8000 for G.711, 48000 for Opus), the audio is encoded at the codec's
  sample rate, 20 ms per packet.

Pacing: the first packet of a talk spurt goes out at once; then one packet per 20 ms slot of ``now``.
A driver that woke up late gets the slots it missed, but at most ``max_burst`` packets in one call:
beyond that the missed slots are skipped (their timestamps too), so a stalled loop does not blast
seconds of audio at the far end when it resumes.

Audio queued by consecutive :meth:`Injector.play` calls plays back to back, resampled as one signal;
only when the queue runs dry is the last partial frame padded with silence.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from .codecs.base import Codec, PcmArray
from .resample import Resampler, pcm_from_bytes
from .rtp import RtpPacket

__all__ = ["DEFAULT_MAX_BURST", "PTIME", "Injector", "PlayableAudio"]

PlayableAudio = bytes | npt.NDArray[np.int16] | npt.NDArray[np.float32] | npt.NDArray[np.float64]

PTIME = 0.02  # seconds of audio per packet
DEFAULT_MAX_BURST = 3  # packets a late driver may catch up on in one call
# A slot counts as come this much early: loops with millisecond timers (uvloop) may wake up to 1 ms
# before the time asked, and a packet 1 ms early is harmless where a wasted wake-up is not.
_SLOT_TOLERANCE = 0.001


class Injector:
    """A per-leg RTP player for one codec and payload type.

    ``clock`` is the driver's clock reading when the injector is created: the origin of the RTP
    timestamps. ``on_finished`` is called (from :meth:`packets_due`, after the packet list is built)
    each time everything queued has been sent, so an attendant can start its next prompt; it is not
    called on :meth:`stop`, whose caller knows already.
    """

    def __init__(
        self,
        codec: Codec,
        payload_type: int,
        ssrc: int | None = None,
        clock: float = 0.0,
        *,
        on_finished: Callable[[], None] | None = None,
        max_burst: int = DEFAULT_MAX_BURST,
        initial_sequence: int | None = None,
        initial_timestamp: int | None = None,
    ) -> None:
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type must be 0-127, got {payload_type}")
        if max_burst < 1:
            raise ValueError("max_burst must be at least 1")
        self.codec = codec
        self.payload_type = payload_type
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        self.on_finished = on_finished
        self.max_burst = max_burst
        self.sample_rate = codec.info.sample_rate
        self.clock_rate = codec.info.clock_rate
        self.frame_samples = round(self.sample_rate * PTIME)  # per packet, at the codec's rate
        self.frame_ticks = round(self.clock_rate * PTIME)  # RTP timestamp units per packet
        self._encoder = codec.new_encoder()
        self._origin = clock
        self._ts_base = secrets.randbits(32) if initial_timestamp is None else initial_timestamp
        self._seq = (secrets.randbits(16) if initial_sequence is None else initial_sequence) & 0xFFFF

        self._buf: PcmArray = np.zeros(0, dtype=np.int16)  # queued audio at the codec's rate
        self._pos = 0  # next sample of _buf to send
        self._resampler: Resampler | None = None

        self._in_spurt = False
        self._drained = False  # the queue ran dry after the spurt's last packet
        self._marker = False  # the spurt's first packet is still to go
        self._spurt_start = 0.0  # time of the spurt's first slot
        self._slot = 0  # slots of the spurt handed out or skipped so far
        self._spurt_ticks = 0  # RTP timestamp offset of the spurt's first packet from the base
        self._last_slot_end: float | None = None  # end of the last slot that carried a packet
        self._notify = False  # on_finished is owed once the current packets_due returns

        self.packets_sent = 0
        self.talk_spurts = 0
        self.slots_skipped = 0  # slots a stalled driver missed, beyond max_burst
        self.dropped_ms = 0.0  # audio discarded by stop(), in total

    # -- queueing ---------------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        """Whether queued audio remains to be sent."""
        return self._pos < len(self._buf) or (self._resampler is not None and self._resampler.pending)

    @property
    def queued_ms(self) -> float:
        """Audio queued and not yet sent, in milliseconds (the resampler's held-back tail included)."""
        samples = len(self._buf) - self._pos
        if self._resampler is not None and self._resampler.pending:
            samples += round(self._resampler.delay)
        return 1000.0 * samples / self.sample_rate

    def play(self, pcm: PlayableAudio, sample_rate: int = 16000) -> float:
        """Queue mono audio after what is already queued; returns its duration in milliseconds.

        ``pcm`` is s16le bytes, an int16 array, or a float array in [-1, 1] (clipped) as TTS engines
        produce. It is resampled to the codec's rate as one signal with the audio queued before it.
        """
        samples = _as_int16(pcm)
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        if self._resampler is None or self._resampler.in_rate != sample_rate:
            self._flush_resampler()
            self._resampler = Resampler(sample_rate, self.sample_rate)
        converted = self._resampler.process(samples)
        if self._resampler.passthrough:
            converted = converted.copy()  # the caller may reuse its buffer
        self._append(converted)
        return 1000.0 * len(samples) / sample_rate

    def stop(self) -> int:
        """Barge-in: drop everything queued at once; returns how many milliseconds were dropped.

        The next :meth:`play` starts a new talk spurt (marker bit set).
        """
        dropped = self.queued_ms
        self._buf = np.zeros(0, dtype=np.int16)
        self._pos = 0
        if self._resampler is not None:
            self._resampler.reset()
        self._in_spurt = False
        self._notify = False
        self.dropped_ms += dropped
        return round(dropped)

    # -- pacing -----------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the next packet is due (for a driver that sleeps), or None when nothing is queued."""
        if not self.playing:
            return None
        if self._in_spurt:
            return self._spurt_start + self._slot * PTIME
        return self._origin if self._last_slot_end is None else self._last_slot_end

    def packets_due(self, now: float) -> list[bytes]:
        """The RTP packets whose 20 ms slot has come by ``now``, in order."""
        out: list[bytes] = []
        if self._in_spurt and self._drained:
            # The queue ran dry after the last packet. Audio queued since then continues the spurt
            # only if it is there for the very next slot; once a slot has passed empty, it is over.
            next_slot = self._spurt_start + self._slot * PTIME
            empty_slot = not self.playing and now >= next_slot - _SLOT_TOLERANCE
            if empty_slot or now >= next_slot + PTIME - _SLOT_TOLERANCE:
                self._in_spurt = False
        if not self._in_spurt:
            if not self.playing:
                return out
            self._start_spurt(now)
        due = math.floor((now - self._spurt_start + _SLOT_TOLERANCE) / PTIME) + 1 - self._slot
        if due > self.max_burst:
            skipped = due - self.max_burst
            self._slot += skipped
            self.slots_skipped += skipped
            due = self.max_burst
        for _ in range(max(due, 0)):
            payload = self._next_payload()
            if payload is None:
                self._in_spurt = False  # a slot with nothing to send: the talk spurt is over
                break
            out.append(self._packet(payload, marker=self._marker))
            self._marker = False
            self._slot += 1
            self._last_slot_end = self._spurt_start + self._slot * PTIME
            self._drained = not self.playing
            if self._drained:
                self._notify = True
        if self._notify:
            self._notify = False
            if self.on_finished is not None:
                self.on_finished()
        return out

    def _start_spurt(self, now: float) -> None:
        start = now if self._last_slot_end is None else max(now, self._last_slot_end)
        ticks = round((start - self._origin) * self.clock_rate)
        if self.talk_spurts:
            # Never reuse timestamps of the previous spurt, whatever the float rounding did.
            ticks = max(ticks, self._spurt_ticks + self._slot * self.frame_ticks)
        self._in_spurt = True
        self._drained = False
        self._marker = True
        self._spurt_start = start
        self._spurt_ticks = ticks
        self._slot = 0
        self.talk_spurts += 1

    def _packet(self, payload: bytes, *, marker: bool) -> bytes:
        timestamp = (self._ts_base + self._spurt_ticks + self._slot * self.frame_ticks) & 0xFFFFFFFF
        packet = RtpPacket(
            payload_type=self.payload_type,
            marker=marker,
            sequence_number=self._seq,
            timestamp=timestamp,
            ssrc=self.ssrc,
            payload=payload,
        )
        self._seq = (self._seq + 1) & 0xFFFF
        self.packets_sent += 1
        return bytes(packet)

    # -- audio buffer -----------------------------------------------------------------------------

    def _next_payload(self) -> bytes | None:
        """Encode the next 20 ms; the tail of the queue is padded with silence. None when empty."""
        n = self.frame_samples
        if len(self._buf) - self._pos < n:
            self._flush_resampler()
        left = len(self._buf) - self._pos
        if left <= 0:
            return None
        if left >= n:
            frame = self._buf[self._pos : self._pos + n]
        else:
            frame = np.zeros(n, dtype=np.int16)
            frame[:left] = self._buf[self._pos :]
        self._pos += min(n, left)
        return self._encoder.encode(frame)

    def _flush_resampler(self) -> None:
        if self._resampler is not None:
            self._append(self._resampler.flush())

    def _append(self, samples: PcmArray) -> None:
        if not len(samples):
            return
        rest = self._buf[self._pos :]
        self._buf = np.concatenate((rest, samples)) if len(rest) else samples
        self._pos = 0


def _as_int16(pcm: PlayableAudio) -> PcmArray:
    if isinstance(pcm, bytes | bytearray | memoryview):
        return pcm_from_bytes(pcm)
    if not isinstance(pcm, np.ndarray):
        raise TypeError(f"PCM must be bytes or a numpy array, got {type(pcm).__name__}")
    if pcm.ndim != 1:
        raise ValueError(f"PCM must be mono (1-D), got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.int16, copy=False)
    if np.issubdtype(pcm.dtype, np.floating):
        scaled: npt.NDArray[np.float64] = np.clip(pcm.astype(np.float64), -1.0, 1.0) * 32767.0
        return np.round(scaled).astype(np.int16)
    raise TypeError(f"PCM array must be int16 or float, got {pcm.dtype}")
