"""The retrieval role as a Ray Serve deployment: a question in, the best knowledge items out.

``await handle.search.remote("how do I reset my password", k=5, language="en")`` returns a list of
dicts (:meth:`ai_serve.retrieval.Hit.to_dict`: score, question, answer, language, id, payload and the
dense/wording/keyword component scores). The replica embeds the query with its own embedder (the text
embedding backend, in process: one short query does not gain from the embedding deployment's
batching) and searches the knowledge base (:mod:`pipelines.knowledge_base`; a Qdrant server by
``knowledge_base.url`` in production). Local mode's folder can be opened by one process only, so a
replica reads a private copy that follows the original (:class:`pipelines.kb_snapshot.LocalSnapshot`)
and the nightly job can still write it. The work runs in one worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from pipelines.kb_snapshot import LocalSnapshot
from pipelines.knowledge_base import KnowledgeBase, KnowledgeBaseConfig

from ..embeddings.backends import TextEmbedder
from ..retrieval.retriever import Engine, Retriever
from .embeddings import EmbeddingOptions

__all__ = ["RetrieverDeployment", "RetrieverOptions"]

_LOG = logging.getLogger(__name__)
MAX_QUERY_CHARS = 2000


class RetrieverOptions(BaseModel):
    """Constructor arguments of :class:`RetrieverDeployment`."""

    model_config = ConfigDict(extra="forbid")

    knowledge_base: KnowledgeBaseConfig = Field(default_factory=KnowledgeBaseConfig)
    embeddings: EmbeddingOptions = Field(default_factory=EmbeddingOptions)
    engine: Engine = "auto"
    k: int = Field(5, ge=1, le=100)  # defaults of search()
    hybrid_alpha: float = Field(0.9, ge=0, le=1)  # bench: pipeline eval (keyword ranks as a tie-break)
    rerank: bool = False
    review_status: list[str] | None = None  # e.g. ["approved"] to serve reviewed knowledge only
    candidates: int = Field(50, ge=1)
    wording_weight: float = Field(1.0, ge=0)  # the question-wordings rank, relative to dense (0: off)
    refresh_s: float = Field(5.0, gt=0)  # local mode: how often to look for a newer knowledge base


@serve.deployment(name="RetrieverDeployment", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
class RetrieverDeployment:
    """A :class:`~ai_serve.retrieval.Retriever` behind ``search(query, ...) -> list[dict]``."""

    def __init__(
        self, options: dict[str, Any] | None = None, *, embedder: TextEmbedder | None = None
    ) -> None:
        """``embedder`` overrides the configured backend (tests, or an embedder shared in process)."""
        self.options = RetrieverOptions.model_validate(options or {})
        kb_config = self.options.knowledge_base
        self.snapshot = (
            LocalSnapshot(kb_config, check_interval=self.options.refresh_s) if kb_config.path else None
        )
        self.kb = self.snapshot.current() if self.snapshot is not None else KnowledgeBase(kb_config)
        self.embedder: TextEmbedder = embedder if embedder is not None else self.options.embeddings.create()
        self.retriever = self._new_retriever()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieve")
        _LOG.info("retriever replica ready: %s, %s engine", self.embedder.model_name, self.retriever.engine)
        older = [name for name in self.kb.collections() if not self.kb.has_wordings(name)]
        if older:  # a base built before the wording rank: searched without it until re-extracted
            _LOG.warning(
                "knowledge base collections %s predate question wordings: re-extract their range "
                "(smartpbx pipeline extract) into a new base to search every wording callers used",
                ", ".join(older),
            )

    async def search(
        self,
        query: str,
        *,
        k: int | None = None,
        language: str | None = None,
        business_unit: str | None = None,
        review_status: str | list[str] | None = None,
        hybrid_alpha: float | None = None,
        rerank: bool | None = None,
    ) -> list[dict[str, Any]]:
        """The best items for ``query``; ValueError/TypeError for a bad request."""
        if not isinstance(query, str):
            raise TypeError("query must be a string")
        if not query.strip() or len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"query must be 1 to {MAX_QUERY_CHARS} characters")
        kwargs: dict[str, Any] = {
            "k": k if k is not None else self.options.k,
            "language": language,
            "business_unit": business_unit,
            "review_status": review_status if review_status is not None else self.options.review_status,
            "hybrid_alpha": hybrid_alpha if hybrid_alpha is not None else self.options.hybrid_alpha,
            "rerank": rerank if rerank is not None else self.options.rerank,
        }
        loop = asyncio.get_running_loop()
        hits = await loop.run_in_executor(self._executor, lambda: self._current().search(query, **kwargs))
        return [hit.to_dict() for hit in hits]

    def _new_retriever(self) -> Retriever:
        return Retriever(
            self.kb, self.embedder, engine=self.options.engine, candidates=self.options.candidates,
            wording_weight=self.options.wording_weight,
        )  # fmt: skip

    def _current(self) -> Retriever:
        """The retriever over the newest snapshot (local mode), rebuilt when the snapshot moved."""
        if self.snapshot is not None:
            kb = self.snapshot.current()
            if kb is not self.kb:
                self.kb = kb
                self.retriever = self._new_retriever()
        return self.retriever

    def check_health(self) -> None:
        """Serve's health probe: the embedder is loaded and Qdrant answers."""
        if getattr(self.embedder, "_model", True) is None:
            raise RuntimeError("embedding model is not loaded")
        self.kb.client.get_collections()

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
        snapshot = getattr(self, "snapshot", None)
        if snapshot is not None:
            snapshot.close()
