"""One call's audio beyond plain relaying: decoded-audio tap, DTMF events, injection, recording.

The relay engine hands over copies of the call's RTP (``on_tap``) only while someone needs them:

- *events only* (the default for every call): the engine copies only the packets whose payload
  type is the negotiated ``telephone-event`` one, so RFC 4733 digits are reported for every call
  while the audio stays in the engine's fast path;
- *full tap* while a consumer subscribed (the AI link, a recorder, a test): every RTP packet of
  both legs goes through a :class:`~pbx_edge.media.tap.LegTap` (jitter buffer, decode, 16 kHz
  frames) into a :class:`~pbx_edge.media.tap.TapFanout`, one bounded queue per subscriber.

Injection: :meth:`CallAudio.play` queues PCM for one leg on an
:class:`~pbx_edge.media.injector.Injector` in the leg's negotiated codec; packets leave from the
leg's own relay socket, paced by ``loop.call_at``. While a leg is played to (or bridged to the
injector), the other leg's media is not forwarded to it, so the far end hears one stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pbx_edge.media.codecs import get_codec
from pbx_edge.media.codecs.base import Codec
from pbx_edge.media.dtmf import DtmfDetector
from pbx_edge.media.engine import SIDE_A, SIDE_B
from pbx_edge.media.injector import Injector, PlayableAudio
from pbx_edge.media.interface import MediaUnavailable, Side
from pbx_edge.media.payload_types import audio_payload_types
from pbx_edge.media.recording import CallRecorder
from pbx_edge.media.rtp import RtpPacket
from pbx_edge.media.sdp import SessionDescription
from pbx_edge.media.tap import LegTap, TapFanout, TapFrame, TapQueue

if TYPE_CHECKING:
    from pbx_edge.media.relay import RelaySession

log = logging.getLogger("pbx_edge.media")

ENGINE_SIDE = {Side.CALLER: SIDE_A, Side.CALLEE: SIDE_B}
SIDE_OF = {SIDE_A: Side.CALLER, SIDE_B: Side.CALLEE}
OTHER = {Side.CALLER: Side.CALLEE, Side.CALLEE: Side.CALLER}
NOT_AUDIO = frozenset({"TELEPHONE-EVENT", "CN", "RED"})

# (call id, leg that pressed the key, digit)
DtmfListener = Callable[[str, Side, str], None]


def _payload_types(sdp: SessionDescription | None) -> dict[int, tuple[str, int, int]]:
    return audio_payload_types(sdp) if sdp is not None else {}


class CallAudio:
    def __init__(
        self,
        session: RelaySession,
        queue_frames: int,
        on_dtmf: DtmfListener | None = None,
        recording_dir: Path | None = None,
    ) -> None:
        self.session = session
        self.queue_frames = queue_frames
        self.on_dtmf = on_dtmf
        self.fanout = TapFanout()
        self.taps: dict[Side, LegTap] = {}
        self.detectors = {Side.CALLER: DtmfDetector(), Side.CALLEE: DtmfDetector()}
        self.injectors: dict[Side, Injector] = {}
        self.bridged: set[Side] = set()
        self.digits: list[tuple[Side, str]] = []
        self._timers: dict[Side, asyncio.TimerHandle] = {}
        self.subscribed: list[TapQueue] = []  # every queue handed out, for the drop count
        self.recorder: CallRecorder | None = None
        self._recording_queue: TapQueue | None = None
        self._recording_task: asyncio.Task[None] | None = None
        if recording_dir is not None:
            self._start_recording(recording_dir)

    # --- engine plumbing -------------------------------------------------------------------------
    @property
    def stream_id(self) -> int | None:
        return self.session.audio_stream_id()

    @property
    def full_tap(self) -> bool:
        return len(self.fanout) > 0

    def apply(self) -> None:
        """Push the tap mode to the engine; called after each SDP exchange and subscription change."""
        stream_id = self.stream_id
        if stream_id is None:
            return
        engine = self.session.manager.engine
        if self.full_tap:
            engine.set_tap(stream_id, True)
        else:
            engine.set_tap(stream_id, False, self._event_payload_type())
        for side in (Side.CALLER, Side.CALLEE):
            mapping = self._decode_map(side)
            if side in self.taps:
                self.taps[side].update_payload_types(mapping)

    def _event_payload_type(self) -> int | None:
        for side in (Side.CALLEE, Side.CALLER):
            for pt, (name, _, _) in _payload_types(self.session.sdp.get(side)).items():
                if name.upper() == "TELEPHONE-EVENT":
                    return pt
        return None

    def _decode_map(self, from_side: Side) -> dict[int, tuple[str, int, int]]:
        """Payload types in packets *from* ``from_side``: the receiver's numbering wins (RFC 3264)."""
        own = _payload_types(self.session.sdp.get(from_side))
        theirs = _payload_types(self.session.sdp.get(OTHER[from_side]))
        return {**own, **theirs}

    def on_packet(self, engine_side: int, packet: bytes, arrival: float) -> None:
        side = SIDE_OF[engine_side]
        tap = self.taps.get(side)
        if tap is not None and self.full_tap:
            tap.feed(packet, arrival)
            return
        try:
            rtp = RtpPacket.parse(packet)
        except ValueError:
            return
        digit = self.detectors[side].feed(rtp.timestamp, rtp.marker, rtp.payload)
        if digit is not None:
            self._report_dtmf(digit, side, arrival)

    def _report_dtmf(self, digit: str, side: Side, when: float) -> None:
        self.digits.append((side, digit))
        if self.on_dtmf is not None:
            self.on_dtmf(self.session.call_id, side, digit)

    # --- tap -------------------------------------------------------------------------------------
    def subscribe(self, capacity: int | None = None) -> TapQueue:
        """A queue of this call's decoded frames (both legs); see :class:`TapQueue`."""
        for side in (Side.CALLER, Side.CALLEE):
            if side not in self.taps:
                self.taps[side] = LegTap(side, self._decode_map(side), self._publish, self._report_dtmf)
        queue = self.fanout.subscribe(capacity or self.queue_frames)
        self.subscribed.append(queue)
        self.apply()
        return queue

    def unsubscribe(self, queue: TapQueue) -> None:
        self.fanout.unsubscribe(queue)
        self.apply()

    def _publish(self, frame: TapFrame) -> None:
        self.fanout.publish(frame)

    @property
    def tap_drops(self) -> int:
        """Frames dropped because a subscriber fell behind, over the call's life."""
        return sum(queue.dropped for queue in self.subscribed)

    # --- recording -------------------------------------------------------------------------------
    def _start_recording(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.recorder = CallRecorder(directory / f"{self.session.call_id}.wav")
        queue = self._recording_queue = self.subscribe()
        self._recording_task = asyncio.get_running_loop().create_task(self._record(queue))

    async def _record(self, queue: TapQueue) -> None:
        async for frame in queue:
            self._write(frame)

    def _write(self, frame: TapFrame) -> None:
        if self.recorder is not None:
            self.recorder.add(frame.leg.value, frame.media_time, frame.pcm)

    # --- injection -------------------------------------------------------------------------------
    def play(self, leg: Side, pcm: PlayableAudio, sample_rate: int = 16000) -> float:
        """Queue audio for ``leg`` to hear; returns its duration in ms. The other leg's media is
        held back from ``leg`` until the audio ends (or for good while bridged)."""
        injector = self.injectors.get(leg) or self._new_injector(leg)
        duration = injector.play(pcm, sample_rate)
        self._hold_forwarding(leg, True)
        self._schedule(leg)
        return duration

    def stop_playback(self, leg: Side) -> int:
        """Barge-in: drop what is queued for ``leg`` at once; returns the milliseconds dropped."""
        injector = self.injectors.get(leg)
        if injector is None:
            return 0
        dropped = injector.stop()
        handle = self._timers.pop(leg, None)
        if handle is not None:
            handle.cancel()
        self._hold_forwarding(leg, False)
        return dropped

    def bridge_to_injector(self, leg: Side, bridged: bool = True) -> None:
        """Make ``leg`` hear only what is played to it (an AI attendant), or the other leg again."""
        if bridged:
            self.bridged.add(leg)
        else:
            self.bridged.discard(leg)
        self._hold_forwarding(leg, bridged)

    def playing(self, leg: Side) -> bool:
        injector = self.injectors.get(leg)
        return injector is not None and injector.playing

    def _new_injector(self, leg: Side) -> Injector:
        codec, pt = self._send_codec(leg)
        loop = asyncio.get_running_loop()
        injector = Injector(codec, pt, clock=loop.time(), on_finished=lambda: self._finished(leg))
        self.injectors[leg] = injector
        return injector

    def codec_name(self) -> str | None:
        """``encoding/clock`` of the answer's first audio payload type, None before an answer."""
        answer = self.session.sdp.get(self.session.answer_from) if self.session.answer_from else None
        for name, clock, _ in _payload_types(answer).values():
            if name.upper() not in NOT_AUDIO:
                return f"{name}/{clock}"
        return None

    def _send_codec(self, leg: Side) -> tuple[Codec, int]:
        """The codec ``leg`` receives: the answer's first audio codec we can encode, numbered as
        ``leg``'s own SDP numbers it."""
        answer = self.session.sdp.get(self.session.answer_from) if self.session.answer_from else None
        candidates = list(_payload_types(answer).items()) + list(self._decode_map(OTHER[leg]).items())
        own = {name.upper(): pt for pt, (name, _, _) in _payload_types(self.session.sdp.get(leg)).items()}
        for pt, (name, _, _) in candidates:
            if name.upper() in NOT_AUDIO:
                continue
            try:
                codec = get_codec(name)
            except KeyError:
                continue
            return codec, own.get(name.upper(), pt)
        raise MediaUnavailable(f"no codec to play to the {leg.value}: nothing negotiated that we encode")

    def _hold_forwarding(self, leg: Side, hold: bool) -> None:
        stream_id = self.stream_id
        if stream_id is None:
            return
        forward = not hold and leg not in self.bridged and not self.playing(leg)
        self.session.manager.engine.set_forwarding(stream_id, ENGINE_SIDE[leg], forward)

    def _finished(self, leg: Side) -> None:
        self._hold_forwarding(leg, False)

    def _schedule(self, leg: Side) -> None:
        if leg in self._timers:
            return
        injector = self.injectors[leg]
        due = injector.next_due()
        if due is None:
            return
        loop = asyncio.get_running_loop()
        self._timers[leg] = loop.call_at(due, self._pump, leg)

    def _pump(self, leg: Side) -> None:
        self._timers.pop(leg, None)
        injector = self.injectors.get(leg)
        stream_id = self.stream_id
        if injector is None or stream_id is None:
            return
        engine = self.session.manager.engine
        for packet in injector.packets_due(asyncio.get_running_loop().time()):
            engine.send(stream_id, ENGINE_SIDE[leg], packet)
        self._schedule(leg)

    # --- end -------------------------------------------------------------------------------------
    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for tap in self.taps.values():
            tap.flush()
        self.fanout.close()
        if self._recording_task is not None:
            self._recording_task.cancel()
        if self._recording_queue is not None:  # what the recorder had not written yet
            while (frame := self._recording_queue.get_nowait()) is not None:
                self._write(frame)
        if self.recorder is not None:
            self.recorder.close()
