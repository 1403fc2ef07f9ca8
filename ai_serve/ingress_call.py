"""The ingress's per-call logic, with no WebSocket and no Ray in it (so it is tested in-process).

Theory of operation
-------------------
Each leg has an :class:`UtteranceCutter` (a :class:`~ai_serve.stt.vad.StreamingVad` plus the audio
since ``pre_roll`` before the open utterance) and an ordered output queue with one emitter task.
Utterance numbers are given when the VAD reports the start, so partials and the final of an
utterance share the id ``{call_id}:{leg}:{number}``.

- **Finals.** When the VAD ends an utterance, a task decodes it through the injected ``transcribe``
  (the STT deployment's handle in Serve) and its slot is queued; the emitter awaits the slots in order,
  so finals stay in order per leg while the two legs go on independently.
- **Speculative finals.** The VAD needs ``end_silence_ms`` of silence to be sure an utterance is over,
  which alone is more than the latency budget. After ``early_silence_ms`` of silence the cutter
  offers a *speculation*: the utterance so far, which the call starts decoding at once. When the VAD
  confirms the end (same start, same end), that decode becomes the final's: the final goes out as soon
  as both the decode and the confirmation are done. When speech resumes first the decode is cancelled
  and discarded, and a later silence speculates again.
- **Partials.** While an utterance is open, every ``partial_interval_s`` of media time the audio so far
  is decoded through ``transcribe_partial`` and sent as ``TranscriptEvent(final=False)`` with the
  utterance's id. At most one partial decode is in flight per leg; none starts while any final decode
  of this ingress replica is in flight or ``partial_max_in_flight`` STT requests are (finals first),
  nor while the leg is speculating or silent (a pause may be the end: on a CPU a partial decode then
  delays the final by up to one decode); the leg's own partial is cancelled when its final starts.
  A partial whose utterance has been closed by the time it is decoded is dropped, so no partial
  follows its final; a partial with the same text as the previous one is not sent.
- **Speakers.** With an injected ``embed`` (the diarization deployment's handle) and
  ``options.diarize``, each final's utterance is embedded while it is decoded, and the leg's
  :class:`~ai_serve.diarization.online.OnlineSpeakers` labels it in the leg's output order (S1, S2...,
  in the final's ``speaker``). An utterance too short to embed keeps the previous label; an embedding
  that fails leaves the final without a label (transcription never waits on diarization failing).
- **Gaps.** A final decode that raises is retried once when the STT replica failed (Ray's
  ``RayActorError``/``ActorDiedError``/``ActorUnavailableError``: Serve routes the retry to another
  replica); when it fails for good a ``TranscriptGap(reason="stt_failed")`` takes the final's place
  in the leg's order. An edge ``gap`` control finalizes what the leg heard before it and is echoed as
  a ``TranscriptGap`` with the same span and reason.

:class:`IngressState` is shared by all calls of one ingress replica: the STT requests in flight (what
"the STT deployment is busy" means here; with several ingress replicas each sees its own share) and
running totals for ``/healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pbx_edge.ai_link.protocol import (
    FRAME_BYTES,
    AudioFrame,
    GapMessage,
    LegName,
    StartMessage,
    TranscriptEvent,
    TranscriptGap,
)

from .diarization.online import OnlineSpeakers
from .ingress_cutter import IngressOptions, Utterance, UtteranceCutter, segments_to_event
from .metrics import IngressMetrics
from .stt.vad import SpeechScorer, StreamingVad

__all__ = [
    "CallStream",
    "IngressOptions",
    "IngressState",
    "Segments",
    "Send",
    "Transcribe",
    "Utterance",
    "UtteranceCutter",
    "is_replica_failure",
    "segments_to_event",
]

_LOG = logging.getLogger(__name__)
_EPS = 1e-6

Segments = list[dict[str, Any]]
Transcribe = Callable[[bytes, str | None], Coroutine[Any, Any, Segments]]
Embed = Callable[[bytes], Coroutine[Any, Any, list[float] | None]]
Send = Callable[[str], Awaitable[None]]
DecodeKind = Literal["final", "partial"]
# What a leg's slot sends: kind, JSON, and the utterance's speaker embedding (finals, when diarizing).
_Result = tuple[Literal["final", "gap"], str, list[float] | None] | None


def is_replica_failure(exc: BaseException) -> bool:
    """The STT replica died or is unreachable (a retry goes to another one); not a bad request."""
    try:
        from ray import exceptions as ray_exceptions
    except ImportError:  # pragma: no cover - ray is a dependency of the ingress
        return False
    kinds: list[type[BaseException]] = [ray_exceptions.RayActorError]
    for name in ("ActorUnavailableError", "ActorDiedError"):
        kind = getattr(ray_exceptions, name, None)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            kinds.append(kind)
    return isinstance(exc, tuple(kinds))


# ------------------------------------------------------------------------------------ one call


@dataclass(slots=True)
class IngressState:
    """Shared by the calls of one ingress replica: STT requests in flight and running totals."""

    finals_in_flight: int = 0
    partials_in_flight: int = 0
    totals: dict[str, int] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        self.totals[key] = self.totals.get(key, 0) + n


@dataclass(slots=True)
class _Slot:
    """One place in a leg's output order: a final's decode, or a message ready to send."""

    kind: Literal["final", "gap"]
    task: asyncio.Task[_Result] | None = None
    text: str | None = None
    end_wall: float | None = None  # when the utterance's last voiced frame arrived (finals)
    speculative: bool = False


@dataclass(slots=True)
class _LegState:
    cutter: UtteranceCutter
    queue: asyncio.Queue[_Slot | None]
    speculation: tuple[Utterance, asyncio.Task[Segments]] | None = None
    partial: asyncio.Task[None] | None = None
    partial_number: int | None = None
    next_partial_at: float = math.inf
    last_partial_text: str | None = None
    busy_counted_at: float = -1.0  # the due time already counted as skipped (busy)
    voiced_wall: float = 0.0
    speakers: OnlineSpeakers | None = None


class CallStream:
    """The AI side of one connection: cuts both legs, transcribes, sends results in order per leg.

    Knows nothing of WebSockets: ``send`` and ``transcribe`` (finals) / ``transcribe_partial``
    (defaults to ``transcribe``) are injected; see the module docstring.
    """

    def __init__(
        self,
        start: StartMessage,
        options: IngressOptions,
        transcribe: Transcribe,
        send: Send,
        scorer_factory: Callable[[], SpeechScorer] | None = None,
        *,
        transcribe_partial: Transcribe | None = None,
        embed: Embed | None = None,
        state: IngressState | None = None,
        metrics: IngressMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.start = start
        self.options = options
        self.language: str | None = None if start.language == "auto" else start.language
        self._transcribe = transcribe
        self._transcribe_partial = transcribe_partial or transcribe
        self._embed = embed if options.diarize else None
        self._send = send
        self.state = state or IngressState()
        self.metrics = metrics
        self._clock = clock
        make_scorer = scorer_factory or options.make_scorer
        early = None if options.early_silence_ms is None else options.early_silence_ms / 1000
        self.legs: dict[LegName, _LegState] = {}
        self._emitters: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        for leg in ("caller", "callee"):
            cutter = UtteranceCutter(
                leg,
                StreamingVad(make_scorer(), options.vad_config()),
                pre_roll=options.pre_roll,
                tail=options.tail,
                early_silence=early,
            )
            state_ = _LegState(cutter, asyncio.Queue())
            if self._embed is not None:
                state_.speakers = OnlineSpeakers(options.speaker_threshold, options.max_speakers_per_leg)
            self.legs[leg] = state_
            self._emitters.append(asyncio.create_task(self._emit(state_), name=f"emit-{start.call_id}-{leg}"))
        self.sent = 0  # finals
        self.partials_sent = 0
        self.gaps_sent = 0
        self.speculative_used = 0
        self.final_latencies: deque[float] = deque(maxlen=1024)  # seconds, last voiced frame in → final out

    @property
    def cutters(self) -> dict[LegName, UtteranceCutter]:
        return {leg: s.cutter for leg, s in self.legs.items()}

    # ----------------------------------------------------------------------------------- input

    def feed_frames(self, frames: Sequence[AudioFrame]) -> None:
        now = self._clock()
        touched: set[LegName] = set()
        for frame in frames:
            leg = self.legs[frame.leg.label]
            touched.add(frame.leg.label)
            if frame.after_gap:
                self._submit(leg, leg.cutter.reset())
            if len(frame.pcm) == FRAME_BYTES:
                done = leg.cutter.feed(frame.pcm, frame.media_time)
                if leg.cutter.open_number is not None and leg.cutter.vad.voiced:
                    leg.voiced_wall = now
                self._submit(leg, done)
        self.state.count("frames", len(frames))
        self.state.count("messages")
        if self.metrics is not None:
            self.metrics.frames.inc(len(frames))
            self.metrics.messages.inc(1)
        for name in touched:
            leg = self.legs[name]
            self._sync_speculation(leg)
            self._maybe_partial(leg)

    def gap(self, message: GapMessage) -> None:
        """The edge lost media of a leg: finalize what it heard, then mark the span as a gap."""
        leg = self.legs[message.leg]
        self._submit(leg, leg.cutter.reset())
        self._sync_speculation(leg)
        self._cancel_partial(leg)
        gap = TranscriptGap(leg=message.leg, start=message.start, end=message.end, reason=message.reason)
        leg.queue.put_nowait(_Slot("gap", text=gap.to_json()))

    # ---------------------------------------------------------------------------------- finals

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call_stt(self, pcm: bytes, kind: DecodeKind) -> Segments:
        transcribe = self._transcribe if kind == "final" else self._transcribe_partial
        attr = "finals_in_flight" if kind == "final" else "partials_in_flight"
        setattr(self.state, attr, getattr(self.state, attr) + 1)
        self._gauge_in_flight()
        try:
            return await asyncio.wait_for(transcribe(pcm, self.language), self.options.stt_timeout_s)
        finally:
            setattr(self.state, attr, getattr(self.state, attr) - 1)
            self._gauge_in_flight()

    def _gauge_in_flight(self) -> None:
        if self.metrics is not None:
            self.metrics.stt_in_flight.set(self.state.finals_in_flight, tags={"kind": "final"})
            self.metrics.stt_in_flight.set(self.state.partials_in_flight, tags={"kind": "partial"})

    def _submit(self, leg: _LegState, utterances: list[Utterance]) -> None:
        for utt in utterances:
            first: asyncio.Task[Segments] | None = None
            if leg.speculation is not None and leg.speculation[0].number == utt.number:
                if utt.speculative:
                    first = leg.speculation[1]
                    self.speculative_used += 1
                    self._count("speculative_used")
                    if self.metrics is not None:
                        self.metrics.speculative.inc(1, tags={"outcome": "used"})
                else:
                    self._discard_speculation(leg)
                leg.speculation = None
            if not utt.pcm:
                continue
            self._cancel_partial(leg)  # its final is on the way: the partial would only delay it
            task = self._spawn(self._final(utt, first), f"stt-{utt.leg}-{utt.number}")
            end_wall = None if utt.forced else leg.voiced_wall
            leg.queue.put_nowait(_Slot("final", task=task, end_wall=end_wall, speculative=first is not None))

    def _sync_speculation(self, leg: _LegState) -> None:
        """Start the decode of a new speculation; cancel the one speech made void."""
        current = leg.cutter.speculation
        if leg.speculation is not None and leg.speculation[0] is not current:
            self._discard_speculation(leg)
            leg.speculation = None
        if current is not None and leg.speculation is None:
            self._cancel_partial(leg)
            task = self._spawn(self._call_stt(current.pcm, "final"), f"spec-{current.leg}-{current.number}")
            leg.speculation = (current, task)

    def _discard_speculation(self, leg: _LegState) -> None:
        if leg.speculation is None:
            return
        leg.speculation[1].cancel()
        self._count("speculative_discarded")
        if self.metrics is not None:
            self.metrics.speculative.inc(1, tags={"outcome": "discarded"})

    async def _final(self, utt: Utterance, first: asyncio.Task[Segments] | None) -> _Result:
        """The final's JSON (None when nothing was said) or, when the STT failed, a transcript gap."""
        retried = False
        pending = first
        embedding = (
            self._spawn(self._embedding(utt), f"embed-{utt.leg}-{utt.number}")
            if self._embed is not None
            else None
        )
        while True:
            try:
                segments = await (pending if pending is not None else self._call_stt(utt.pcm, "final"))
                break
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if pending is not None and not retried and me is not None and not me.cancelling():
                    pending, retried = None, True  # only the speculative decode was cancelled: again
                    continue
                raise
            except Exception as exc:
                pending = None
                if not retried and is_replica_failure(exc):
                    retried = True
                    _LOG.warning("call %s: STT replica failed on %s utterance %d (%s), retrying",
                                 self.start.call_id, utt.leg, utt.number, type(exc).__name__)  # fmt: skip
                    continue
                _LOG.warning("call %s: STT failed for %s utterance %d: %r; sending a gap",
                             self.start.call_id, utt.leg, utt.number, exc)  # fmt: skip
                end = max(utt.start, utt.end)
                gap = TranscriptGap(leg=utt.leg, start=utt.start, end=end, reason="stt_failed")
                if embedding is not None:
                    embedding.cancel()
                return "gap", gap.to_json(), None
        event = segments_to_event(self.start.call_id, utt, segments, self.language)
        if event is None:
            if embedding is not None:
                embedding.cancel()
            return None
        return "final", event.to_json(), (await embedding if embedding is not None else None)

    async def _embedding(self, utt: Utterance) -> list[float] | None:
        """The utterance's speaker embedding; None when too short to embed, [] when it failed."""
        assert self._embed is not None
        try:
            async with asyncio.timeout(self.options.stt_timeout_s):
                return await self._embed(utt.pcm)
        except Exception as exc:
            self._count("diarization_errors")
            _LOG.warning("call %s: no speaker embedding for %s utterance %d: %r", self.start.call_id,
                         utt.leg, utt.number, exc)  # fmt: skip
            return []

    @staticmethod
    def _labelled(leg: _LegState, text: str, embedding: list[float] | None) -> str:
        """The final's JSON with the leg's online speaker label for ``embedding``."""
        if leg.speakers is None or embedding == []:  # no diarization, or it failed: no label
            return text
        label = leg.speakers.assign(np.asarray(embedding, dtype=np.float32) if embedding else None)
        if label is None:
            return text
        event = TranscriptEvent.model_validate_json(text)
        return event.model_copy(update={"speaker": label}).to_json()

    async def _emit(self, leg: _LegState) -> None:
        while (slot := await leg.queue.get()) is not None:
            result: _Result = (slot.kind, slot.text, None) if slot.text is not None else None
            if slot.task is not None:
                try:
                    result = await slot.task
                except Exception:  # _final turns failures into gaps: this is a bug, keep the call alive
                    _LOG.exception("call %s: a final's task failed", self.start.call_id)
                    continue
            if result is None:
                continue
            kind, text, embedding = result
            if kind == "final":
                text = self._labelled(leg, text, embedding)
            await self._send(text)
            if kind == "gap":
                self.gaps_sent += 1
                self._count("gaps")
                if self.metrics is not None:
                    self.metrics.sent("gap")
                continue
            self.sent += 1
            self._count("finals")
            if slot.end_wall:
                latency = self._clock() - slot.end_wall
                self.final_latencies.append(latency)
                if self.metrics is not None:
                    path = "speculative" if slot.speculative else "confirmed"
                    self.metrics.final_latency.observe(latency, tags={"path": path})
            if self.metrics is not None:
                self.metrics.sent("final")

    # -------------------------------------------------------------------------------- partials

    def _maybe_partial(self, leg: _LegState) -> None:
        interval = self.options.partial_interval_s
        cutter = leg.cutter
        if interval is None or leg.partial is not None or cutter.speculation is not None:
            return
        if not cutter.vad.voiced:  # a pause may be the end: a partial now would delay the final
            return
        number, start = cutter.open_number, cutter.open_start
        if number is None or start is None:
            return
        if number != leg.partial_number:
            leg.partial_number, leg.last_partial_text = number, None
            leg.next_partial_at = start + max(interval, self.options.min_partial_audio_s)
        now = cutter.last_media_time
        if now + _EPS < leg.next_partial_at:
            return
        busy = self.state.finals_in_flight + self.state.partials_in_flight
        if self.state.finals_in_flight or busy >= self.options.partial_max_in_flight:
            if leg.busy_counted_at != leg.next_partial_at:  # count each due partial once
                leg.busy_counted_at = leg.next_partial_at
                self._skip_partial("busy")
            return  # try again on the next message
        opened = cutter.open_audio()
        if opened is None:
            return
        leg.next_partial_at = now + interval
        task = self._spawn(self._partial(leg, *opened), f"partial-{cutter.leg}-{number}")
        leg.partial = task

    async def _partial(self, leg: _LegState, number: int, start: float, end: float, pcm: bytes) -> None:
        try:
            try:
                segments = await self._call_stt(pcm, "partial")
            except Exception as exc:
                _LOG.debug("call %s: partial decode failed: %r", self.start.call_id, exc)
                self._skip_partial("error")
                return
            if leg.cutter.open_number != number:  # closed meanwhile: its final is queued or sent
                self._skip_partial("stale")
                return
            utt = Utterance(leg.cutter.leg, number, start, max(start, end), b"", end)
            event = segments_to_event(self.start.call_id, utt, segments, self.language, final=False)
            if event is None or event.text == leg.last_partial_text:
                self._skip_partial("same_text")
                return
            leg.last_partial_text = event.text
            await self._send(event.to_json())
            self.partials_sent += 1
            self._count("partials")
            if self.metrics is not None:
                self.metrics.sent("partial")
        finally:
            if leg.partial is asyncio.current_task():
                leg.partial = None

    def _cancel_partial(self, leg: _LegState) -> None:
        if leg.partial is not None:
            leg.partial.cancel()
            leg.partial = None

    def _skip_partial(self, reason: str) -> None:
        self._count(f"partials_skipped_{reason}")
        if self.metrics is not None:
            self.metrics.partials_skipped.inc(1, tags={"reason": reason})

    def _count(self, key: str) -> None:
        self.state.count(key)

    # ------------------------------------------------------------------------------- lifecycle

    async def finish(self) -> None:
        """``end``: flush both legs, send every pending transcript, stop the emitters."""
        for leg in self.legs.values():
            self._submit(leg, leg.cutter.flush())
            self._sync_speculation(leg)
            self._cancel_partial(leg)
            leg.queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.gather(*self._emitters), self.options.drain_timeout_s)
        except TimeoutError:
            _LOG.warning("call %s: transcripts still pending after %.0f s, dropped", self.start.call_id,
                         self.options.drain_timeout_s)  # fmt: skip
            await self.cancel()

    async def cancel(self) -> None:
        """The socket is gone: drop pending work."""
        tasks = [*self._emitters, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for leg in self.legs.values():
            leg.speculation, leg.partial = None, None
