"""The speech-to-text role as a Ray Serve deployment: one utterance of PCM in, segments out.

The ingress cuts each leg into utterances with its own VAD and calls
``await handle.transcribe.remote(pcm_bytes, language)`` once per utterance. ``transcribe`` is a
``@serve.batch`` method: calls arriving within ``batch_wait_timeout_s`` of each other are grouped,
up to ``max_batch_size`` (both tunable at run time through ``user_config``, see :meth:`reconfigure`).

On CPU a batch gains nothing: faster-whisper decodes one utterance at a time, so the batch runs
sequentially in one worker thread (off the replica's event loop) and batching only bounds how many
decodes are queued together. On a GPU (``device: cuda``, fractional ``num_gpus`` in the config) the
same entry point is where a batched backend would decode the whole group in one forward pass.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from ..models import assemble_whisper_base
from ..stt.backends import FasterWhisperBackend, Segment

__all__ = ["SttDeployment", "SttOptions"]

_LOG = logging.getLogger(__name__)


class SttOptions(BaseModel):
    """Constructor arguments of :class:`SttDeployment` (the ``stt`` part of the app's builder args)."""

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = None  # a CTranslate2 Whisper folder; None: whisper-base from its packages
    device: str = "cpu"  # "cuda" with num_gpus > 0 in ray_actor_options
    compute_type: str = "int8"  # "float16" on a GPU
    cpu_threads: int = Field(0, ge=0)  # 0: CTranslate2 chooses
    beam_size: int = Field(1, ge=1)
    default_language: str | None = None


class BatchConfig(BaseModel):
    """The ``user_config`` of the deployment; changed live by ``serve deploy`` without a restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(4, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)


def _segment_dict(segment: Segment) -> dict[str, Any]:
    return asdict(segment)


@serve.deployment(
    name="SttDeployment",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=8,
    user_config=BatchConfig().model_dump(),
)
class SttDeployment:
    """faster-whisper behind ``transcribe(pcm_bytes, language) -> list[segment dict]``."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        opts = SttOptions.model_validate(options or {})
        model_dir = opts.model_path or assemble_whisper_base()
        self.backend = FasterWhisperBackend(
            model_dir,
            device=opts.device,
            compute_type=opts.compute_type,
            cpu_threads=opts.cpu_threads,
            beam_size=opts.beam_size,
            default_language=opts.default_language,
        )
        # One thread: the model decodes one utterance at a time (num_workers=1).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt")
        _LOG.info("STT replica ready: %s on %s, loaded in %.2f s", model_dir, opts.device,
                  self.backend.load_seconds)  # fmt: skip

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (batching knobs) at start and on every config change."""
        config = BatchConfig.model_validate(user_config or {})
        self.transcribe.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined,misc]
        self.transcribe.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined,misc]

    def _decode_batch(self, pcms: list[bytes], languages: list[str | None]) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = []
        for pcm, language in zip(pcms, languages, strict=True):
            try:
                segments = self.backend.transcribe(np.frombuffer(pcm, dtype="<i2"), language)
                out.append([_segment_dict(s) for s in segments])
            except Exception:
                # One bad utterance must not fail the others of its batch.
                _LOG.warning("STT failed on %d bytes of audio", len(pcm), exc_info=True)
                out.append([])
        return out

    # Ray's stubs type batch handlers as one-argument functions; Serve batches each argument.
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)  # type: ignore[arg-type]
    async def transcribe(  # type: ignore[misc]
        self, pcms: list[bytes], languages: list[str | None]
    ) -> list[list[dict[str, Any]]]:
        """Callers pass one s16le 16 kHz utterance and a language (None: detect); see module doc."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decode_batch, pcms, languages)

    def check_health(self) -> None:
        """Serve's health probe: a closed backend makes the replica restart."""
        if getattr(self.backend, "_model", None) is None:
            raise RuntimeError("STT model is not loaded")

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
