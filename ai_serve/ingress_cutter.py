"""The ingress's per-leg cutting, its options and the transcript events (pure: no clock, no I/O).

:class:`UtteranceCutter` turns one leg's 20 ms frames into :class:`Utterance` objects with a
:class:`~ai_serve.stt.vad.StreamingVad`; besides the utterances the VAD ended, it offers the open
utterance so far (for partials) and a *speculation* after ``early_silence`` seconds of silence (for
speculative finals). :class:`~ai_serve.ingress_call.CallStream` drives it; see that module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pbx_edge.ai_link.protocol import LegName, TranscriptEvent

from .stt.vad import FRAME_SECONDS, EnergyScorer, SpeechEnd, SpeechScorer, StreamingVad, VadConfig

__all__ = ["IngressOptions", "Utterance", "UtteranceCutter", "segments_to_event"]

_NO_SPACE_LANGUAGES = frozenset({"ja", "zh", "th", "lo", "my", "yue"})
_EPS = 1e-6


class IngressOptions(BaseModel):
    """Constructor arguments of the ingress (the ``ingress`` part of the builder args)."""

    model_config = ConfigDict(extra="forbid")

    scorer: Literal["silero", "energy"] = "silero"
    min_speech_ms: int = Field(200, ge=0)
    end_silence_ms: int = Field(400, ge=20)  # the VAD's confirmation: the floor of end-of-speech → final
    max_utterance_s: float = Field(25.0, gt=0)
    pre_roll: float = Field(0.2, ge=0)  # audio before the VAD's start sent too: Whisper needs the onset
    tail: float = Field(0.15, ge=0)
    drain_timeout_s: float = Field(30.0, gt=0)  # on ``end``: wait this long for pending transcripts
    # Speculative final: start the final decode after this much silence (None: wait for end_silence_ms).
    early_silence_ms: int | None = Field(None, ge=20)
    # Partials: decode the open utterance every this many seconds of media time (None: no partials).
    partial_interval_s: float | None = Field(None, gt=0)
    min_partial_audio_s: float = Field(0.6, ge=0)  # no partial of less speech than this
    partial_max_in_flight: int = Field(2, ge=1)  # STT requests of this replica above which partials wait
    stt_timeout_s: float = Field(30.0, gt=0)  # one STT request; a timeout counts as a failure (no retry)
    # Speaker labels within each leg (conference, speakerphone): each final's utterance is embedded by
    # the diarization deployment, in parallel with its decode, and labelled online (S1, S2, ...).
    diarize: bool = True
    speaker_threshold: float = Field(0.72, ge=-1, le=1)  # cosine to a speaker's centroid to join it
    max_speakers_per_leg: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _early_before_end(self) -> IngressOptions:
        if self.early_silence_ms is not None and self.early_silence_ms >= self.end_silence_ms:
            raise ValueError(
                f"early_silence_ms ({self.early_silence_ms}) must be less than end_silence_ms "
                f"({self.end_silence_ms}), or null to turn speculative finals off"
            )
        return self

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
    number: int  # per leg, from 1, given at the VAD's start
    start: float
    end: float
    pcm: bytes  # s16le 16 kHz, from pre_roll before ``start`` to tail after ``end``
    detected_at: float  # media time at which the VAD decided it was over (or the speculation was made)
    forced: bool = False
    speculative: bool = False  # the PCM was cut after early_silence_ms (its tail may be shorter)


class UtteranceCutter:
    """VAD + audio buffer of one leg; pure (no clock, no I/O): frames in, utterances out.

    After each :meth:`feed`, :attr:`speculation` is the open utterance cut after ``early_silence``
    seconds of silence (None while speech goes on); :meth:`open_audio` is the open utterance so far.
    """

    def __init__(
        self,
        leg: LegName,
        vad: StreamingVad,
        *,
        pre_roll: float = 0.2,
        tail: float = 0.15,
        early_silence: float | None = None,
    ) -> None:
        self.leg = leg
        self.vad = vad
        self.pre_roll = pre_roll
        self.tail = tail
        self.early_silence = early_silence
        self.utterances = 0  # numbers given
        self._keep_idle = pre_roll + vad.config.min_speech_ms / 1000 + 2 * FRAME_SECONDS
        self._frames: deque[tuple[float, bytes]] = deque()
        self._start: float | None = None  # media time of the open utterance's start
        self.open_number: int | None = None
        self.last_voiced_end = 0.0  # end of the open utterance's last voiced frame
        self.speculation: Utterance | None = None
        self.speculations = 0
        self.discarded = 0  # speculations dropped because speech resumed (or a forced cut came)
        self._pending: list[tuple[SpeechEnd, int]] = []  # ends waiting for their tail audio
        self.last_media_time = 0.0

    @property
    def open_start(self) -> float | None:
        return self._start

    def feed(self, pcm: bytes, media_time: float) -> list[Utterance]:
        """Process one 20 ms frame starting at ``media_time``; return the utterances it completed."""
        self._frames.append((media_time, pcm))
        frame_end = media_time + FRAME_SECONDS
        self.last_media_time = frame_end
        for ev in self.vad.feed(pcm, media_time):
            if isinstance(ev, SpeechEnd):
                number = self.open_number if self.open_number is not None else self._new_number()
                self._pending.append((ev, number))
                self._start = None
                self.open_number = None
            else:
                self._start = ev.start
                self.open_number = self._new_number()
                self.last_voiced_end = frame_end
        if self.open_number is not None and self.vad.voiced:
            self.last_voiced_end = frame_end
            if self.speculation is not None:  # speech resumed: the speculation is void
                self.speculation = None
                self.discarded += 1
        ready = [p for p in self._pending if p[0].forced or frame_end >= p[0].end + self.tail - 1e-9]
        self._pending = [p for p in self._pending if p not in ready]
        done = [self._cut(ev, number) for ev, number in ready]
        self._maybe_speculate(frame_end)
        self._trim()
        return done

    def flush(self) -> list[Utterance]:
        """End of the leg's stream: finalize what is open or waiting for its tail."""
        ends = list(self._pending)
        for ev in self.vad.flush(self.last_media_time):
            if isinstance(ev, SpeechEnd):
                ends.append((ev, self.open_number if self.open_number is not None else self._new_number()))
        self._pending = []
        self._start = None
        self.open_number = None
        done = [self._cut(ev, number) for ev, number in ends]
        if self.speculation is not None:
            self.speculation = None
            self.discarded += 1
        self._frames.clear()
        return done

    def reset(self) -> list[Utterance]:
        """A gap in the leg's media: finalize what was heard, then start the VAD afresh."""
        done = self.flush()
        self.vad.reset()
        return done

    def open_audio(self) -> tuple[int, float, float, bytes] | None:
        """(number, start, media end, PCM from pre_roll before the start) of the open utterance."""
        if self.open_number is None or self._start is None:
            return None
        lo = self._start - self.pre_roll
        pcm = b"".join(p for t, p in self._frames if t >= lo - 1e-9)
        return self.open_number, self._start, self.last_media_time, pcm

    def _new_number(self) -> int:
        self.utterances += 1
        return self.utterances

    def _maybe_speculate(self, frame_end: float) -> None:
        if (
            self.early_silence is None
            or self.open_number is None
            or self._start is None
            or self.speculation is not None
            or frame_end - self.last_voiced_end + _EPS < self.early_silence
            or frame_end - self.last_voiced_end + _EPS >= self.early_silence + FRAME_SECONDS
        ):
            return  # (the last test: one speculation per silence, at its early_silence mark)
        end = self.last_voiced_end
        hi = min(end + self.tail, frame_end)
        pcm = self._slice(self._start - self.pre_roll, hi)
        self.speculation = Utterance(
            self.leg, self.open_number, self._start, end, pcm, frame_end, speculative=True
        )
        self.speculations += 1

    def _slice(self, lo: float, hi: float) -> bytes:
        return b"".join(p for t, p in self._frames if lo - 1e-9 <= t < hi - 1e-9)

    def _cut(self, ev: SpeechEnd, number: int) -> Utterance:
        spec = self.speculation
        if spec is not None and spec.number == number:
            self.speculation = None
            if not ev.forced and abs(spec.end - ev.end) < _EPS:
                return replace(spec, detected_at=ev.detected_at)
            self.discarded += 1
        hi = ev.end + (0.0 if ev.forced else self.tail)
        pcm = self._slice(ev.start - self.pre_roll, hi)
        return Utterance(self.leg, number, ev.start, ev.end, pcm, ev.detected_at, ev.forced)

    def _trim(self) -> None:
        starts = [ev.start for ev, _ in self._pending]
        if self._start is not None:
            starts.append(self._start)
        keep_from = (min(starts) - self.pre_roll) if starts else self.last_media_time - self._keep_idle
        while self._frames and self._frames[0][0] < keep_from - 1e-9:
            self._frames.popleft()


def segments_to_event(
    call_id: str,
    utterance: Utterance,
    segments: Sequence[dict[str, Any]],
    language: str | None,
    *,
    final: bool = True,
) -> TranscriptEvent | None:
    """A transcript event from the STT deployment's segments; None when nothing was said."""
    texts = [str(s["text"]).strip() for s in segments if str(s.get("text", "")).strip()]
    if not texts:
        return None
    lang = next((s.get("language") for s in segments if s.get("language")), None) or language
    weights = [max(float(s["end"]) - float(s["start"]), 1e-3) for s in segments]
    weighted = sum(w * float(s["confidence"]) for w, s in zip(weights, segments, strict=True))
    confidence = weighted / sum(weights)
    sep = "" if lang in _NO_SPACE_LANGUAGES else " "
    return TranscriptEvent(
        final=final,
        leg=utterance.leg,
        text=sep.join(texts),
        start=utterance.start,
        end=utterance.end,
        confidence=min(1.0, max(0.0, confidence)),
        language=lang,
        id=f"{call_id}:{utterance.leg}:{utterance.number}",
    )
