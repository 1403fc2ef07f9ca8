"""The Serve ingress: one WebSocket per call from the edge, transcripts back (DESIGN.md, the contract).

Theory of operation
-------------------
``/v1/calls/{call_id}/stream`` takes the edge's conversation (:mod:`pbx_edge.ai_link.protocol`):
a ``start``, then binary batches of 20 ms frames of both legs and JSON controls, then ``end``.

- Each leg has an :class:`UtteranceCutter` here in the ingress: a :class:`~ai_serve.stt.vad.StreamingVad`
  (Silero through onnxruntime, about 0.1 ms per frame, cheap enough for the receive loop) plus the
  audio since ``pre_roll`` before the utterance started. When the VAD ends an utterance the cutter
  returns its PCM (``pre_roll`` before the start to ``tail`` after the end) as an :class:`Utterance`.
- Each utterance becomes one task calling the STT deployment through its ``DeploymentHandle``
  (``await stt.transcribe.remote(pcm, language)``), so the receive loop never waits for a decode.
  A per-leg emitter task awaits those tasks in the order the utterances ended and sends one final
  :class:`~pbx_edge.ai_link.protocol.TranscriptEvent` each (empty transcripts are not sent): results
  stay in order per leg while the two legs proceed independently. Partials are not produced yet.
- ``gap`` (or a frame flagged as first after a gap): the leg's open utterance is finalized with what
  was heard and its VAD is reset. ``end``: both legs are flushed, every pending transcript is sent,
  then the socket is closed with 1000. A second ``start`` on the same socket (``resume``) is accepted
  and the stream goes on; a reconnection gets a fresh :class:`CallStream`, media times continue.
- A bad first message closes with :data:`~pbx_edge.ai_link.protocol.CLOSE_REJECTED`; a bad message
  later is logged and skipped. A lost socket cancels the call's tasks (the edge reconnects).
"""

# No ``from __future__ import annotations`` here: Serve pickles the ingress class by value, and the
# copy of each route's function keeps only the globals its code uses, so FastAPI could not resolve a
# string annotation such as 'WebSocket' in the replica (the socket would fail validation, close 1008).

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, WebSocket
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from pbx_edge.ai_link.protocol import (
    CLOSE_DONE,
    CLOSE_REJECTED,
    FRAME_BYTES,
    AudioFrame,
    EndMessage,
    GapMessage,
    LegName,
    ProtocolError,
    StartMessage,
    TranscriptEvent,
    decode_batch,
    parse_edge_message,
)

from .stt.vad import FRAME_SECONDS, EnergyScorer, SpeechEnd, SpeechScorer, StreamingVad, VadConfig

__all__ = [
    "CallStream",
    "IngressOptions",
    "SttIngress",
    "Utterance",
    "UtteranceCutter",
    "segments_to_event",
]

_LOG = logging.getLogger(__name__)
_NO_SPACE_LANGUAGES = frozenset({"ja", "zh", "th", "lo", "my", "yue"})

Transcribe = Callable[[bytes, str | None], Coroutine[Any, Any, list[dict[str, Any]]]]
Send = Callable[[str], Awaitable[None]]


class IngressOptions(BaseModel):
    """Constructor arguments of :class:`SttIngress` (the ``ingress`` part of the builder args)."""

    model_config = ConfigDict(extra="forbid")

    scorer: Literal["silero", "energy"] = "silero"
    min_speech_ms: int = Field(200, ge=0)
    end_silence_ms: int = Field(400, ge=20)  # the VAD's share of end-of-speech → final latency
    max_utterance_s: float = Field(25.0, gt=0)
    pre_roll: float = Field(0.2, ge=0)  # audio before the VAD's start sent too: Whisper needs the onset
    tail: float = Field(0.15, ge=0)
    drain_timeout_s: float = Field(30.0, gt=0)  # on ``end``: wait this long for pending transcripts

    def vad_config(self) -> VadConfig:
        return VadConfig(
            min_speech_ms=self.min_speech_ms,
            end_silence_ms=self.end_silence_ms,
            max_utterance_s=self.max_utterance_s,
        )

    def make_scorer(self) -> SpeechScorer:
        if self.scorer == "energy":
            return EnergyScorer()
        from .stt.vad import SileroOnnxScorer

        return SileroOnnxScorer()


# ------------------------------------------------------------------------------ per-leg cutting


@dataclass(frozen=True, slots=True)
class Utterance:
    """One utterance of a leg: media times of the speech (seconds) and the PCM to transcribe."""

    leg: LegName
    number: int  # per leg, from 1
    start: float
    end: float
    pcm: bytes  # s16le 16 kHz, from pre_roll before ``start`` to tail after ``end``
    detected_at: float  # media time at which the VAD decided it was over
    forced: bool = False


class UtteranceCutter:
    """VAD + audio buffer of one leg; pure (no clock, no I/O): frames in, utterances out."""

    def __init__(self, leg: LegName, vad: StreamingVad, *, pre_roll: float = 0.2, tail: float = 0.15) -> None:
        self.leg = leg
        self.vad = vad
        self.pre_roll = pre_roll
        self.tail = tail
        self.utterances = 0
        self._keep_idle = pre_roll + vad.config.min_speech_ms / 1000 + 2 * FRAME_SECONDS
        self._frames: deque[tuple[float, bytes]] = deque()
        self._start: float | None = None  # media time of the open utterance's start
        self._pending: list[SpeechEnd] = []  # ends waiting for their tail audio
        self.last_media_time = 0.0

    def feed(self, pcm: bytes, media_time: float) -> list[Utterance]:
        """Process one 20 ms frame starting at ``media_time``; return the utterances it completed."""
        self._frames.append((media_time, pcm))
        frame_end = media_time + FRAME_SECONDS
        self.last_media_time = frame_end
        for ev in self.vad.feed(pcm, media_time):
            if isinstance(ev, SpeechEnd):
                self._pending.append(ev)
                self._start = None
            else:
                self._start = ev.start
        ready = [ev for ev in self._pending if ev.forced or frame_end >= ev.end + self.tail - 1e-9]
        self._pending = [ev for ev in self._pending if ev not in ready]
        done = [self._cut(ev) for ev in ready]
        self._trim()
        return done

    def flush(self) -> list[Utterance]:
        """End of the leg's stream: finalize what is open or waiting for its tail."""
        ends = self._pending + [
            ev for ev in self.vad.flush(self.last_media_time) if isinstance(ev, SpeechEnd)
        ]
        self._pending = []
        self._start = None
        done = [self._cut(ev) for ev in ends]
        self._frames.clear()
        return done

    def reset(self) -> list[Utterance]:
        """A gap in the leg's media: finalize what was heard, then start the VAD afresh."""
        done = self.flush()
        self.vad.reset()
        return done

    def _cut(self, ev: SpeechEnd) -> Utterance:
        lo = ev.start - self.pre_roll
        hi = ev.end + (0.0 if ev.forced else self.tail)
        pcm = b"".join(p for t, p in self._frames if lo - 1e-9 <= t < hi - 1e-9)
        self.utterances += 1
        return Utterance(self.leg, self.utterances, ev.start, ev.end, pcm, ev.detected_at, ev.forced)

    def _trim(self) -> None:
        starts = [ev.start for ev in self._pending]
        if self._start is not None:
            starts.append(self._start)
        keep_from = (min(starts) - self.pre_roll) if starts else self.last_media_time - self._keep_idle
        while self._frames and self._frames[0][0] < keep_from - 1e-9:
            self._frames.popleft()


def segments_to_event(
    call_id: str, utterance: Utterance, segments: Sequence[dict[str, Any]], language: str | None
) -> TranscriptEvent | None:
    """A final transcript from the STT deployment's segments; None when nothing was said."""
    texts = [str(s["text"]).strip() for s in segments if str(s.get("text", "")).strip()]
    if not texts:
        return None
    lang = next((s.get("language") for s in segments if s.get("language")), None) or language
    weights = [max(float(s["end"]) - float(s["start"]), 1e-3) for s in segments]
    weighted = sum(w * float(s["confidence"]) for w, s in zip(weights, segments, strict=True))
    confidence = weighted / sum(weights)
    sep = "" if lang in _NO_SPACE_LANGUAGES else " "
    return TranscriptEvent(
        final=True,
        leg=utterance.leg,
        text=sep.join(texts),
        start=utterance.start,
        end=utterance.end,
        confidence=min(1.0, max(0.0, confidence)),
        language=lang,
        id=f"{call_id}:{utterance.leg}:{utterance.number}",
    )


# ------------------------------------------------------------------------------------ one call


class CallStream:
    """The AI side of one connection: cuts both legs, transcribes, sends finals in order per leg.

    Owns one emitter task per leg and one task per utterance; :meth:`finish` drains them,
    :meth:`cancel` drops them. Knows nothing of WebSockets: ``send`` and ``transcribe`` are injected.
    """

    def __init__(
        self,
        start: StartMessage,
        options: IngressOptions,
        transcribe: Transcribe,
        send: Send,
        scorer_factory: Callable[[], SpeechScorer] | None = None,
    ) -> None:
        self.start = start
        self.options = options
        self.language: str | None = None if start.language == "auto" else start.language
        self._transcribe = transcribe
        self._send = send
        make_scorer = scorer_factory or options.make_scorer
        self.cutters: dict[LegName, UtteranceCutter] = {
            leg: UtteranceCutter(
                leg,
                StreamingVad(make_scorer(), options.vad_config()),
                pre_roll=options.pre_roll,
                tail=options.tail,
            )
            for leg in ("caller", "callee")
        }
        self._queues: dict[LegName, asyncio.Queue[asyncio.Task[list[dict[str, Any]]] | None]] = {}
        self._pending: dict[asyncio.Task[list[dict[str, Any]]], Utterance] = {}
        self._emitters: list[asyncio.Task[None]] = []
        for leg in self.cutters:
            queue: asyncio.Queue[asyncio.Task[list[dict[str, Any]]] | None] = asyncio.Queue()
            self._queues[leg] = queue
            self._emitters.append(asyncio.create_task(self._emit(queue), name=f"emit-{start.call_id}-{leg}"))
        self.sent = 0

    def feed_frames(self, frames: Sequence[AudioFrame]) -> None:
        for frame in frames:
            cutter = self.cutters[frame.leg.label]
            if frame.after_gap:
                self._submit(cutter.reset())
            if len(frame.pcm) == FRAME_BYTES:
                self._submit(cutter.feed(frame.pcm, frame.media_time))

    def gap(self, message: GapMessage) -> None:
        self._submit(self.cutters[message.leg].reset())

    def _submit(self, utterances: list[Utterance]) -> None:
        for utt in utterances:
            if not utt.pcm:
                continue
            task = asyncio.create_task(
                self._transcribe(utt.pcm, self.language), name=f"stt-{utt.leg}-{utt.number}"
            )
            self._pending[task] = utt
            self._queues[utt.leg].put_nowait(task)

    async def _emit(self, queue: asyncio.Queue[asyncio.Task[list[dict[str, Any]]] | None]) -> None:
        while (task := await queue.get()) is not None:
            utt = self._pending.pop(task)
            try:
                segments = await task
            except Exception:
                _LOG.warning("call %s: STT failed for %s utterance %d", self.start.call_id, utt.leg,
                             utt.number, exc_info=True)  # fmt: skip
                continue
            event = segments_to_event(self.start.call_id, utt, segments, self.language)
            if event is not None:
                await self._send(event.to_json())
                self.sent += 1

    async def finish(self) -> None:
        """``end``: flush both legs, send every pending transcript, stop the emitters."""
        for cutter in self.cutters.values():
            self._submit(cutter.flush())
        for queue in self._queues.values():
            queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.gather(*self._emitters), self.options.drain_timeout_s)
        except TimeoutError:
            _LOG.warning("call %s: transcripts still pending after %.0f s, dropped", self.start.call_id,
                         self.options.drain_timeout_s)  # fmt: skip
            await self.cancel()

    async def cancel(self) -> None:
        """The socket is gone: drop pending work."""
        tasks = [*self._emitters, *self._pending]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pending.clear()


# ------------------------------------------------------------------------------------- Serve

app = FastAPI(title="SmartPBX AI ingress")


@serve.deployment(name="SttIngress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=200)
@serve.ingress(app)
class SttIngress:
    """WebSocket ingress of the live transcription app; holds the STT deployment's handle."""

    def __init__(self, stt: DeploymentHandle[Any], options: dict[str, Any] | None = None) -> None:
        self.stt = stt
        self.options = IngressOptions.model_validate(options or {})
        self.options.make_scorer()  # fail at deploy time, not on the first call, if the VAD is missing
        self.active_calls = 0

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "active_calls": self.active_calls}

    async def _transcribe(self, pcm: bytes, language: str | None) -> list[dict[str, Any]]:
        segments: list[dict[str, Any]] = await self.stt.transcribe.remote(pcm, language)
        return segments

    @app.websocket("/v1/calls/{call_id}/stream")
    async def stream(self, ws: WebSocket, call_id: str) -> None:
        await ws.accept()
        first = await ws.receive()
        try:
            if first["type"] == "websocket.disconnect":
                return
            start = parse_edge_message(first.get("text") or first.get("bytes") or b"")
            if not isinstance(start, StartMessage):
                raise ProtocolError(f"the first message must be 'start', got {start.type!r}")
            if start.call_id != call_id:
                raise ProtocolError(f"start.call_id {start.call_id!r} does not match the path's {call_id!r}")
        except ProtocolError as exc:
            _LOG.warning("call %s rejected: %s", call_id, exc)
            await ws.close(CLOSE_REJECTED, str(exc)[:120])
            return

        lock = asyncio.Lock()

        async def send(text: str) -> None:
            async with lock:
                await ws.send_text(text)

        call = CallStream(start, self.options, self._transcribe, send)
        self.active_calls += 1
        t0 = time.monotonic()
        ended = False
        try:
            ended = await self._receive(ws, call)
            if ended:
                await call.finish()
                await ws.close(CLOSE_DONE)
        finally:
            self.active_calls -= 1
            if not ended:
                await call.cancel()
            _LOG.info("call %s: %s after %.1f s, %d transcripts", call_id, "ended" if ended else "lost",
                      time.monotonic() - t0, call.sent)  # fmt: skip

    @staticmethod
    async def _receive(ws: WebSocket, call: CallStream) -> bool:
        """The receive loop; True when the edge sent ``end``, False when the socket went away."""
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return False
            data = message.get("bytes")
            try:
                if data is not None:
                    call.feed_frames(decode_batch(data))
                    continue
                control = parse_edge_message(message.get("text") or "")
            except ProtocolError as exc:
                _LOG.warning("call %s: skipped a bad message: %s", call.start.call_id, exc)
                continue
            if isinstance(control, EndMessage):
                return True
            if isinstance(control, GapMessage):
                call.gap(control)
            elif isinstance(control, StartMessage):
                _LOG.info(
                    "call %s: start again on the same socket (resume=%s)", control.call_id, control.resume
                )
            # hold/unhold/transfer/dtmf: nothing to do for transcription yet
