"""The speaker-diarization role as a Ray Serve deployment: utterance embeddings and whole recordings.

- ``embed(pcm)``: one s16le 16 kHz utterance (as the ingress cuts them) → its unit-norm speaker
  embedding, or None when it holds under ``min_speech_s`` of speech. The ingress keeps one
  :class:`~ai_serve.diarization.online.OnlineSpeakers` per leg and turns embeddings into S1, S2, ...
  (the state of a call lives with the call, not in this stateless, replicated role).
- ``diarize(pcm, num_speakers)``: a mono recording → ``[{"start", "end", "speaker"}]``: our VAD +
  embeddings + clustering (:func:`~ai_serve.diarization.recording.diarize_audio`), or pyannote's full
  pipeline when ``pipeline_path`` is set (GPU).

Both run in one worker thread, off the replica's event loop. The ``resemblyzer`` backend is numpy on
CPU (~0.08 RTF here); ``pyannote`` runs on ``device: cuda`` with ``num_gpus`` in ``ray_actor_options``
and weights from local paths (``model_path``, ``pipeline_path``): no hub.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from ..diarization.clustering import DEFAULT_THRESHOLD
from ..diarization.embedders import create_embedder
from ..diarization.recording import DiarizationParams, PyannotePipelineDiarizer, diarize_audio
from ..stt.vad import EnergyScorer, SileroOnnxScorer, SpeechScorer

__all__ = ["DiarizationDeployment", "DiarizationOptions"]

_LOG = logging.getLogger(__name__)


class DiarizationOptions(BaseModel):
    """Constructor arguments of :class:`DiarizationDeployment` (the ``diarization`` builder args)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["resemblyzer", "pyannote"] = "resemblyzer"
    model_path: str | None = None  # resemblyzer: pretrained.pt/.npz (None: the wheel's); pyannote: required
    pipeline_path: str | None = None  # pyannote pipeline config.yaml for diarize(); None: our clustering
    device: str = "cpu"  # "cuda" for pyannote, with num_gpus > 0 in ray_actor_options
    threshold: float = Field(DEFAULT_THRESHOLD, ge=-1.0, le=1.0)  # offline clustering, cosine
    min_speech_s: float = Field(0.5, ge=0.0)  # embed() answers None below this much speech
    vad: Literal["silero", "energy"] = "silero"  # diarize()'s speech regions


@serve.deployment(name="DiarizationDeployment", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=16)
class DiarizationDeployment:
    """Speaker embeddings per utterance and diarization of recordings; see the module docstring."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = opts = DiarizationOptions.model_validate(options or {})
        self.embedder = create_embedder(
            opts.backend, model_path=opts.model_path, device=opts.device, min_speech_s=opts.min_speech_s
        )
        self.pipeline = (
            PyannotePipelineDiarizer(opts.pipeline_path, device=opts.device) if opts.pipeline_path else None
        )
        self.params = DiarizationParams(threshold=opts.threshold, min_speech_s=max(opts.min_speech_s, 0.15))
        self._scorer: SpeechScorer = SileroOnnxScorer() if opts.vad == "silero" else EnergyScorer()
        # One thread: the VAD scorer is stateful and the CPU model gains nothing from more.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarization")
        _LOG.info("diarization replica ready: %s on %s", opts.backend, opts.device)

    def _embed(self, pcm: bytes) -> list[float] | None:
        vector = self.embedder.embed(np.frombuffer(pcm, dtype="<i2"))
        return None if vector is None else [float(x) for x in vector]

    def _diarize(self, pcm: bytes, num_speakers: int | None) -> list[dict[str, Any]]:
        audio = np.frombuffer(pcm, dtype="<i2")
        if self.pipeline is not None:
            turns = self.pipeline.diarize(audio, num_speakers)
        else:
            self._scorer.reset()
            turns = diarize_audio(
                audio, self.embedder, num_speakers=num_speakers, params=self.params, scorer=self._scorer
            )
        return [t.as_dict() for t in turns]

    async def embed(self, pcm: bytes) -> list[float] | None:
        """s16le 16 kHz utterance → normalised embedding; None when shorter than ``min_speech_s``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed, pcm)

    async def diarize(self, pcm: bytes, num_speakers: int | None = None) -> list[dict[str, Any]]:
        """s16le 16 kHz mono recording → ``[{"start", "end", "speaker"}]`` in time order."""
        if num_speakers is not None and num_speakers < 1:
            raise ValueError(f"num_speakers must be >= 1, got {num_speakers}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._diarize, pcm, num_speakers)

    def check_health(self) -> None:
        """Serve's health probe: a closed model makes the replica restart."""
        if not self.embedder.loaded:
            raise RuntimeError("speaker-embedding model is not loaded")
        if self.pipeline is not None and not self.pipeline.loaded:
            raise RuntimeError("pyannote pipeline is not loaded")

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
