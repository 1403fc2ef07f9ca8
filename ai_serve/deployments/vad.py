"""The VAD / end-of-turn role as a Ray Serve deployment, for offline and uploaded audio.

``await handle.segments.remote(pcm)`` takes a whole recording (s16le 16 kHz mono) and returns its
speech segments ``[{"start": s, "end": s}, ...]`` in seconds, cut by the same
:class:`~ai_serve.stt.vad.StreamingVad` (Silero + hysteresis + end-of-turn silence) the live path
uses, so batch pipelines (re-transcription, evaluation, voicemail) and live calls agree on where
utterances begin and end.

The live path does not call this deployment: the ingress runs a ``StreamingVad`` inline per leg.
Scoring a 20 ms frame costs about 0.1 ms, while a Serve call costs a network hop and a
serialization per frame, 50 times a second per leg: the hop would cost more than the model.

No ``@serve.batch``: the model is stateful per stream (its LSTM state runs through the recording),
so recordings cannot share a forward pass; each call scans one recording in a worker thread, with one
scorer per thread.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from ..stt.vad import (
    FRAME_BYTES,
    SAMPLE_RATE,
    EnergyScorer,
    PySileroScorer,
    SileroOnnxScorer,
    SpeechEnd,
    SpeechScorer,
    StreamingVad,
    VadConfig,
)

__all__ = ["VadDeployment", "VadOptions", "speech_segments"]

MAX_SECONDS = 4 * 3600  # one request: a recording of at most 4 hours


class VadOptions(BaseModel):
    """Constructor arguments of :class:`VadDeployment` (the ``vad`` builder args)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["silero-onnx", "pysilero", "energy"] = "silero-onnx"
    model_path: str | None = None  # silero-onnx: the .onnx file (None: the one faster-whisper ships)
    device: Literal["cpu"] = "cpu"  # a 32 ms window is far too small a job for a GPU
    threads: int = Field(2, ge=1)  # recordings scanned at once
    onset: float = Field(0.5, gt=0, lt=1)
    offset: float = Field(0.35, gt=0, lt=1)
    min_speech_ms: int = Field(200, ge=0)
    end_silence_ms: int = Field(400, ge=20)
    max_utterance_s: float = Field(25.0, gt=0)

    def vad_config(self) -> VadConfig:
        return VadConfig(
            onset=self.onset,
            offset=self.offset,
            min_speech_ms=self.min_speech_ms,
            end_silence_ms=self.end_silence_ms,
            max_utterance_s=self.max_utterance_s,
        )

    def scorer(self) -> SpeechScorer:
        if self.backend == "silero-onnx":
            return SileroOnnxScorer(self.model_path)
        if self.backend == "pysilero":
            return PySileroScorer()
        return EnergyScorer()


def speech_segments(vad: StreamingVad, pcm: bytes) -> list[dict[str, float]]:
    """Run ``vad`` (reset first) over a whole s16le 16 kHz recording; the tail is zero-padded."""
    if len(pcm) % 2:
        raise ValueError(f"s16le audio must have an even number of bytes, got {len(pcm)}")
    if len(pcm) / 2 / SAMPLE_RATE > MAX_SECONDS:
        raise ValueError(f"recording longer than {MAX_SECONDS} s; split it")
    vad.reset()
    data = pcm + b"\0" * ((-len(pcm)) % FRAME_BYTES)
    frame_s = FRAME_BYTES / 2 / SAMPLE_RATE
    ends: list[SpeechEnd] = []
    for i in range(len(data) // FRAME_BYTES):
        events = vad.feed(data[i * FRAME_BYTES : (i + 1) * FRAME_BYTES], round(i * frame_s, 6))
        ends.extend(e for e in events if isinstance(e, SpeechEnd))
    ends.extend(e for e in vad.flush() if isinstance(e, SpeechEnd))
    duration = len(pcm) / 2 / SAMPLE_RATE
    return [{"start": round(e.start, 3), "end": round(min(e.end, duration), 3)} for e in ends]


@serve.deployment(name="VadDeployment", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8)
class VadDeployment:
    """Speech segments of whole recordings; see the module docstring."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = VadOptions.model_validate(options or {})
        self.config = self.options.vad_config()
        # Fails at start, not on the first request, if the model is missing; then probes health.
        self._probe = self.options.scorer()
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=self.options.threads, thread_name_prefix="vad")

    def _vad(self) -> StreamingVad:
        vad: StreamingVad | None = getattr(self._local, "vad", None)
        if vad is None:
            vad = self._local.vad = StreamingVad(self.options.scorer(), self.config)
        return vad

    def _segments(self, pcm: bytes) -> list[dict[str, float]]:
        return speech_segments(self._vad(), pcm)

    async def segments(self, pcm: bytes) -> list[dict[str, float]]:
        """``[{"start", "end"}]`` in seconds for an s16le 16 kHz mono recording."""
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise TypeError(f"pcm must be s16le bytes, got {type(pcm).__name__}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._segments, bytes(pcm))

    def check_health(self) -> None:
        """Serve's health probe: the scorer must still score (about 0.1 ms)."""
        self._probe.reset()
        prob = self._probe.score(np.zeros(self._probe.window_samples, np.float32))
        if not 0.0 <= prob <= 1.0:
            raise RuntimeError(f"VAD scorer returned {prob}, not a probability")

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
