"""The speech-to-text role as a Ray Serve deployment: one utterance of PCM in, segments out.

The ingress cuts each leg into utterances with its own VAD and calls
``await handle.transcribe.remote(pcm_bytes, language, kind)`` once per decode (``kind``: ``final``,
or ``partial`` for the audio so far of an open utterance). Requests go through a ``@serve.batch``
method: calls arriving within ``batch_wait_timeout_s`` of each other are grouped, up to
``max_batch_size`` (both tunable at run time through ``user_config``, see :meth:`reconfigure`);
within a batch the finals are decoded before the partials, so a partial never delays a final that
came with it.

Metrics (:mod:`ai_serve.metrics`): decode time by kind, audio seconds decoded (their ratio is the
real-time factor), decodes by outcome, and the queue depth (requests accepted, not answered yet);
:meth:`SttDeployment.stats` returns the same figures for this replica (used by ``bench/stt_latency.py``).

A batch's finals (then its partials) go to the backend together (``transcribe_many``): faster-whisper
with the fitted context encodes them in one pass and decodes them in one ``generate``
(:func:`ai_serve.stt.short_context.decode_fitted_batch`), which on a GPU is the point of batching and on
this CPU still raises throughput (``bench/stt_context.py --batch``); the batch runs in one worker
thread, off the replica's event loop. The decode time of a batch is shared among its utterances in
the metrics.

The backend comes from :class:`SttOptions`: ``backend: faster-whisper`` (the default, CPU or GPU) or
``backend: nemo`` with ``model_path`` a local ``.nemo`` (FastConformer/Parakeet, normally ``device:
cuda``; ``nemo_streaming: true`` decodes through NeMo's cache-aware streaming path).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from ..metrics import SttMetrics
from ..models import assemble_whisper_base
from ..stt import nemo_backend as _nemo_backend  # noqa: F401 - registers "nemo" (NeMo itself loads lazily)
from ..stt.backends import BaseSttBackend, Segment, create_backend

__all__ = ["SttDeployment", "SttOptions"]

_LOG = logging.getLogger(__name__)


class SttOptions(BaseModel):
    """Constructor arguments of :class:`SttDeployment` (the ``stt`` part of the app's builder args)."""

    model_config = ConfigDict(extra="forbid")

    # "nemo": a NeMo FastConformer/Parakeet .nemo on a GPU (ai_serve/stt/nemo_backend.py); needs model_path
    # and nemo_toolkit[asr] installed on the replica. The fields below marked faster-whisper are ignored then.
    backend: Literal["faster-whisper", "nemo"] = "faster-whisper"
    # faster-whisper: a CTranslate2 Whisper folder, None: whisper-base from its packages; nemo: a local .nemo
    model_path: str | None = None
    device: str = "cpu"  # "cuda" with num_gpus > 0 in ray_actor_options
    compute_type: str = "int8"  # "float16" on a GPU
    cpu_threads: int = Field(0, ge=0)  # 0: CTranslate2 chooses
    beam_size: int = Field(1, ge=1)
    default_language: str | None = None
    # "fitted": the encoder sees the utterance + margin instead of 30 s (ai_serve/stt/short_context.py),
    # several times cheaper per decode on CPU; "full": faster-whisper's standard 30 s windows.
    audio_context: Literal["full", "fitted"] = "fitted"
    context_margin_s: float = Field(3.0, ge=0, le=10)  # bench/stt_context.py: 3 s keeps full-window WER
    # NeMo only (compute_type, cpu_threads, beam_size, default_language, audio_context, context_margin_s
    # are faster-whisper's): the model's one language, cache-aware streaming decode, its chunk, batch size.
    nemo_language: str = "en"
    nemo_streaming: bool = False
    nemo_chunk_ms: float | None = Field(None, gt=0)  # None: the model's default look-ahead
    nemo_batch_size: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _nemo_needs_a_model(self) -> SttOptions:
        if self.backend == "nemo" and not self.model_path:
            raise ValueError("backend 'nemo' needs model_path: a local .nemo file (no model hub here)")
        return self

    def build_backend(self) -> BaseSttBackend:
        """The configured backend, loaded (weights on disk; faster-whisper's default assembled once)."""
        if self.backend == "nemo":
            return create_backend(
                "nemo",
                model_path=self.model_path,
                device=self.device,
                language=self.nemo_language,
                streaming=self.nemo_streaming,
                chunk_ms=self.nemo_chunk_ms,
                batch_size=self.nemo_batch_size,
            )
        return create_backend(
            "faster-whisper",
            model_dir=self.model_path or assemble_whisper_base(),
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
            beam_size=self.beam_size,
            default_language=self.default_language,
            audio_context=self.audio_context,
            context_margin_s=self.context_margin_s,
        )


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
    """The configured STT backend behind ``transcribe(pcm_bytes, language) -> list[segment dict]``."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        opts = SttOptions.model_validate(options or {})
        self.backend = opts.build_backend()
        # One thread: the model runs one batch at a time (num_workers=1).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt")
        self.metrics = SttMetrics()
        self.queue_depth = 0
        self.max_queue_depth = 0
        self._stats: dict[str, dict[str, float]] = {
            kind: {"decodes": 0, "errors": 0, "decode_seconds": 0.0, "audio_seconds": 0.0}
            for kind in ("final", "partial")
        }
        self.metrics.queue_depth.set(0)
        _LOG.info("STT replica ready: %s %s on %s, loaded in %.2f s", opts.backend,
                  opts.model_path or "whisper-base", opts.device,
                  getattr(self.backend, "load_seconds", 0.0))  # fmt: skip

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (batching knobs) at start and on every config change."""
        config = BatchConfig.model_validate(user_config or {})
        self._batched.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined,misc]
        self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined,misc]

    def _decode_batch(
        self, pcms: list[bytes], languages: list[str | None], kinds: list[str]
    ) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = [[] for _ in pcms]
        # Finals first, as one backend batch, then the partials: a partial never delays a final.
        for kind in ("final", "partial"):
            group = [n for n, k in enumerate(kinds) if (k == "partial") == (kind == "partial")]
            if not group:
                continue
            t0 = time.perf_counter()
            try:
                results: list[Any] = self.backend.transcribe_many(
                    [np.frombuffer(pcms[n], dtype="<i2") for n in group], [languages[n] for n in group]
                )
            except Exception as e:  # the batch as a whole (a dead model): every utterance failed
                results = [e] * len(group)
            share = (time.perf_counter() - t0) / len(group)
            for n, result in zip(group, results, strict=True):
                ok = not isinstance(result, BaseException)
                if ok:
                    out[n] = [_segment_dict(s) for s in result]
                else:  # one bad utterance does not fail the others of its batch
                    _LOG.warning("STT failed on %d bytes of audio: %s", len(pcms[n]), result)
                self._count(kind, share, len(pcms[n]) / 32000, ok)
        return out

    def _count(self, kind: str, spent: float, audio: float, ok: bool) -> None:
        self.metrics.decoded(kind, spent, audio, ok)  # type: ignore[arg-type]
        stats = self._stats[kind]
        stats["decodes"] += 1
        stats["errors"] += 0 if ok else 1
        stats["decode_seconds"] += spent
        stats["audio_seconds"] += audio

    # Ray's stubs type batch handlers as one-argument functions; Serve batches each argument.
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)  # type: ignore[arg-type]
    async def _batched(  # type: ignore[misc]
        self, pcms: list[bytes], languages: list[str | None], kinds: list[str]
    ) -> list[list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decode_batch, pcms, languages, kinds)

    async def transcribe(self, pcm: bytes, language: str | None, kind: str = "final") -> list[dict[str, Any]]:
        """One s16le 16 kHz utterance, a language (None: detect) and ``final``/``partial``; see module doc."""
        self.queue_depth += 1
        self.max_queue_depth = max(self.max_queue_depth, self.queue_depth)
        self.metrics.queue_depth.set(self.queue_depth)
        try:
            result: list[dict[str, Any]] = await self._batched(pcm, language, kind)  # type: ignore[misc,call-arg]
            return result
        finally:
            self.queue_depth -= 1
            self.metrics.queue_depth.set(self.queue_depth)

    def stats(self) -> dict[str, Any]:
        """This replica's decode figures since it started (the metrics' values, for benchmarks)."""
        return {
            "queue_depth": self.queue_depth,
            "max_queue_depth": self.max_queue_depth,
            **{kind: dict(values) for kind, values in self._stats.items()},
        }

    def check_health(self) -> None:
        """Serve's health probe: a closed backend makes the replica restart."""
        if getattr(self.backend, "_model", None) is None:
            raise RuntimeError("STT model is not loaded")

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
