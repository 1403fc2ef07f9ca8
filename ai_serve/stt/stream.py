"""Live transcription of one call leg: 20 ms frames in, partial and final transcripts out.

Theory of operation
-------------------
:class:`LegTranscriber` owns a :class:`~ai_serve.stt.vad.StreamingVad` and an
:class:`~ai_serve.stt.backends.SttBackend`. Every frame goes to the VAD first, then into an audio
buffer:

- Between utterances the buffer keeps only ``pre_roll`` seconds plus the VAD's ``min_speech_ms``, so
  when the VAD reports a :class:`~ai_serve.stt.vad.SpeechStart` (late by ``min_speech_ms``) the audio
  from ``pre_roll`` before the start is still there; Whisper needs the onset.
- While the utterance goes on, the whole utterance so far is re-decoded as a *partial* once
  ``partial_interval`` seconds of media time have passed since the last one and at least
  ``min_partial_audio`` seconds have been heard. Each decode costs about the same whatever the length
  (Whisper pads to 30 s), so to keep CPU bounded the next partial also waits ``decode time /
  max_partial_load``: a backend that takes 0.4 s per decode with ``max_partial_load=0.5`` gets a
  partial every 0.8 s at most, however fast frames arrive. Partials repeat no text already sent.
- At :class:`~ai_serve.stt.vad.SpeechEnd` the utterance (``pre_roll`` before start to ``tail`` after
  end) is decoded once more and one *final* is returned, carrying the VAD's media times, the
  language, and a confidence (duration-weighted mean of the segments' ``exp(avg_logprob)``).

Every result carries the leg's utterance number; partials and the final of an utterance share it. A
final is emitted when there is text, or when partials were sent (then possibly empty, so the layer
above can close what it displayed). A backend error never ends the stream: it is counted and logged;
a failed final falls back to the last partial's text when there was one.

:class:`TranscriberStats` keeps, per utterance, the VAD's decision delay (media time) and the final's
decode time (wall clock); on a real-time stream their sum is the end-of-speech → final latency.

The class is synchronous and does no I/O; a Serve deployment runs it off the event loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .backends import Segment, SttBackend, as_float_pcm
from .vad import FRAME_SECONDS, SAMPLE_RATE, SpeechEnd, SpeechStart, StreamingVad

__all__ = ["LegTranscriber", "TranscriberStats", "TranscriptResult", "UtteranceTiming"]

_LOG = logging.getLogger(__name__)
_NO_SPACE_LANGUAGES = frozenset({"ja", "zh", "th", "lo", "my", "yue"})


@dataclass(frozen=True, slots=True)
class TranscriptResult:
    """A partial or final transcript of one utterance; times are the leg's media times (seconds)."""

    final: bool
    text: str
    start: float
    end: float
    confidence: float
    language: str | None
    utterance: int = 0  # per-leg counter from 1: partials and the final of an utterance share it

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"TranscriptResult.confidence must be within [0, 1], got {self.confidence}")
        if self.end < self.start:
            raise ValueError(f"TranscriptResult.end {self.end} is before start {self.start}")


@dataclass(frozen=True, slots=True)
class UtteranceTiming:
    """Where the time between end of speech and the final went, for one utterance."""

    utterance: int
    end: float  # media time of the end of speech
    detected_at: float  # media time at which the VAD decided the utterance was over
    decode_seconds: float  # wall-clock time of the final decode
    audio_seconds: float  # length of the audio decoded for the final

    @property
    def vad_delay(self) -> float:
        return self.detected_at - self.end

    @property
    def latency(self) -> float:
        """End of speech → final on a real-time stream: VAD delay plus decode time."""
        return self.vad_delay + self.decode_seconds


@dataclass(slots=True)
class TranscriberStats:
    utterances: int = 0
    partial_decodes: int = 0
    partials_emitted: int = 0
    final_decodes: int = 0
    decode_seconds: float = 0.0  # wall clock, partials and finals
    errors: int = 0
    timings: deque[UtteranceTiming] = field(default_factory=lambda: deque(maxlen=256))


def _join(texts: Sequence[str], language: str | None) -> str:
    sep = "" if language in _NO_SPACE_LANGUAGES else " "
    return sep.join(t for t in texts if t).strip()


class LegTranscriber:
    """Streaming transcription of one leg; see the module docstring."""

    def __init__(
        self,
        backend: SttBackend,
        vad: StreamingVad,
        language: str | None = None,
        partial_interval: float | None = 0.8,
        *,
        min_partial_audio: float = 0.6,
        max_partial_load: float = 0.5,
        pre_roll: float = 0.2,
        tail: float = 0.15,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``partial_interval=None`` turns partials off; ``language`` forces it (needed for Korean)."""
        if partial_interval is not None and partial_interval <= 0:
            raise ValueError(f"partial_interval must be > 0 or None, got {partial_interval}")
        if not 0.0 < max_partial_load <= 1.0:
            raise ValueError(f"max_partial_load must be within (0, 1], got {max_partial_load}")
        if pre_roll < 0 or tail < 0 or min_partial_audio < 0:
            raise ValueError("pre_roll, tail and min_partial_audio must be >= 0")
        self.backend = backend
        self.vad = vad
        self.language = language
        self.partial_interval = partial_interval
        self.min_partial_audio = min_partial_audio
        self.max_partial_load = max_partial_load
        self.pre_roll = pre_roll
        self.tail = tail
        self._clock = clock
        self.stats = TranscriberStats()
        # Between utterances: enough audio to reach pre_roll before a start reported min_speech late.
        self._idle_keep = pre_roll + vad.config.min_speech_ms / 1000 + 2 * FRAME_SECONDS
        self._frames: deque[tuple[float, npt.NDArray[np.float32]]] = deque()
        self._utterance = 0
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self._in_utterance = False
        self._start = 0.0
        self._next_partial_at = math.inf
        self._last_partial: TranscriptResult | None = None

    def reset(self) -> None:
        """Drop any open utterance and buffered audio (the leg's stream restarted)."""
        self.vad.reset()
        self._frames.clear()
        self._reset_utterance()

    # -------------------------------------------------------------------------------------- feed

    def feed(self, frame: bytes | npt.NDArray[Any], media_time: float) -> list[TranscriptResult]:
        """Process one 20 ms frame starting at ``media_time``; return the transcripts it produced."""
        samples = as_float_pcm(frame)
        events = self.vad.feed(samples, media_time)
        self._frames.append((media_time, samples))
        frame_end = media_time + FRAME_SECONDS
        results: list[TranscriptResult] = []
        ended = False
        for ev in events:
            if isinstance(ev, SpeechStart):
                self._begin(ev)
            elif isinstance(ev, SpeechEnd):
                results.extend(self._finish(ev))
                ended = not ev.forced
        if not self._in_utterance:
            self._trim_idle(frame_end)
        elif not ended and frame_end + 1e-9 >= self._next_partial_at:
            results.extend(self._partial(frame_end))
        return results

    def flush(self, media_time: float | None = None) -> list[TranscriptResult]:
        """End of the leg: finalize an utterance still open."""
        results: list[TranscriptResult] = []
        for ev in self.vad.flush(media_time):
            if isinstance(ev, SpeechEnd):
                results.extend(self._finish(ev))
        self._frames.clear()
        return results

    # --------------------------------------------------------------------------------- internals

    def _begin(self, ev: SpeechStart) -> None:
        self._utterance += 1
        self.stats.utterances += 1
        self._reset_utterance()
        self._in_utterance = True
        self._start = ev.start
        # A start right at a forced cut continues the same speech: no pre-roll overlap.
        keep_from = ev.start - (0.0 if ev.continued else self.pre_roll)
        while self._frames and self._frames[0][0] < keep_from - 1e-9:
            self._frames.popleft()
        if self.partial_interval is not None:
            self._next_partial_at = ev.start + max(self.partial_interval, self.min_partial_audio)

    def _trim_idle(self, now: float) -> None:
        while self._frames and self._frames[0][0] < now - self._idle_keep:
            self._frames.popleft()

    def _audio(self, until: float) -> npt.NDArray[np.float32]:
        chunks = [s for t, s in self._frames if t < until - 1e-9]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def _decode(self, audio: npt.NDArray[np.float32]) -> tuple[list[Segment] | None, float]:
        """(segments, or None when the backend failed; wall-clock seconds spent)."""
        t0 = self._clock()
        segments: list[Segment] | None = None
        try:
            segments = self.backend.transcribe(audio, self.language)
        except Exception:
            self.stats.errors += 1
            _LOG.warning("STT backend failed on %.2f s of audio", audio.size / SAMPLE_RATE, exc_info=True)
        spent = self._clock() - t0
        self.stats.decode_seconds += spent
        return segments, spent

    def _result(self, final: bool, segments: list[Segment], start: float, end: float) -> TranscriptResult:
        language = next((s.language for s in segments if s.language), None) or self.language
        weights = [max(s.end - s.start, 1e-3) for s in segments]
        confidence = (
            sum(w * s.confidence for w, s in zip(weights, segments, strict=True)) / sum(weights)
            if segments
            else 0.0
        )
        text = _join([s.text for s in segments], language)
        return TranscriptResult(final, text, start, end, min(1.0, confidence), language, self._utterance)

    def _partial(self, now: float) -> list[TranscriptResult]:
        segments, spent = self._decode(self._audio(now))
        self.stats.partial_decodes += 1
        interval = self.partial_interval or 0.0
        self._next_partial_at = now + max(interval, spent / self.max_partial_load)
        if not segments:
            return []
        result = self._result(False, segments, self._start, now)
        if self._last_partial is not None and result.text == self._last_partial.text:
            return []
        self._last_partial = result
        self.stats.partials_emitted += 1
        return [result]

    def _finish(self, ev: SpeechEnd) -> list[TranscriptResult]:
        audio = self._audio(ev.end + (0.0 if ev.forced else self.tail))
        segments, spent = self._decode(audio)
        self.stats.final_decodes += 1
        last_partial = self._last_partial
        self._reset_utterance()
        if segments is None:
            if last_partial is None:
                return []
            text, conf, lang = last_partial.text, last_partial.confidence, last_partial.language
            return [TranscriptResult(True, text, ev.start, ev.end, conf, lang, self._utterance)]
        self.stats.timings.append(
            UtteranceTiming(self._utterance, ev.end, ev.detected_at, spent, audio.size / SAMPLE_RATE)
        )
        result = self._result(True, segments, ev.start, ev.end)
        if not result.text and last_partial is None:
            return []
        return [result]
