"""Hybrid retrieval over the knowledge base: dense + question wordings + keyword, fused, optionally
re-ranked.

:meth:`Retriever.search` embeds the query (``kind="query"``), then over the recent monthly
collections (:meth:`KnowledgeBase.recent_collections`), with the filter (language, business unit,
review status):

1. dense: the ``candidates`` best by cosine, over all the collections together (cosines compare
   across collections);
2. wordings: the ``candidates`` best by the highest cosine between the query and any question
   wording the point has absorbed (each embedded as a query; the ``wordings`` multivector of
   :mod:`pipelines.knowledge_base`, ``MAX_SIM``). A passage vector mixes the question with the
   answer, so a query phrased like one of the questions callers asked scores higher against that
   wording alone; points without wording vectors have no such rank;
3. sparse: the ``candidates`` best by keyword score (IDF-weighted, per collection's statistics);
4. fusion, weighted reciprocal rank: ``alpha / (rrf_k + rank_dense) + wording_weight * alpha /
   (rrf_k + rank_wording) + (1 - alpha) / (rrf_k + rank_sparse)`` (ranks from 1, a missing rank adds
   0). ``hybrid_alpha=1`` is semantic only (dense and wordings), ``0`` keyword only. Ranks rather
   than raw scores, because e5 cosines are compressed (0.73-0.93) and keyword scores are unbounded.
   ``wording_weight`` is 1 by default: the two semantic ranks count the same, keyword ranks stay a
   tie-break (``hybrid_alpha`` 0.9). It was set from that principle, not tuned on the evaluation's
   held-out questions. Qdrant's ``prefetch`` + ``FusionQuery(RRF)`` does the same inside one
   collection (and works in local mode), but a global rank over several collections needs the
   fusion here;
5. ``rerank=True``: a cheap cross-score in place of a cross-encoder over the best ``4 k`` fused:
   ``cosine(query, point) + overlap_weight * overlap``, overlap being the share of the query's
   keyword tokens found in the point's question and answer;
6. ``distinct=True`` (the default): one hit per answer. The knowledge base keeps differently worded
   questions with the same answer as separate items (their question+answer vectors are too far apart
   to merge), so without this a top 3 can be one answer three times; a hit whose answer shares
   ``distinct_overlap`` of its keyword tokens (Jaccard) with a better hit's answer is left out.

Engines: ``"numpy"`` answers from :class:`~ai_serve.retrieval.local_index.LocalIndex` mirrors (local
mode: qdrant-client's local search is a Python scan, see there), ``"qdrant"`` queries Qdrant (a
server: HNSW and payload indexes); ``"auto"`` picks numpy in local mode. Both score the same way
(collections made before wordings existed have no wording rank in either).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from qdrant_client import models as qm

from pipelines.knowledge_base import KnowledgeBase
from pipelines.sparse import tokenize

from ..embeddings.backends import TextEmbedder
from .local_index import LocalIndex, ScoredRow

__all__ = ["Engine", "Hit", "Retriever"]

Engine = Literal["auto", "numpy", "qdrant"]
_Signal = Literal["dense", "wording", "sparse"]  # a ranking's score field of _Candidate


@dataclass(frozen=True, slots=True)
class Hit:
    """One result: the fused (or re-ranked) score, the item, and the component scores (``wording_score``:
    the best cosine between the query and the point's question wordings)."""

    score: float
    question: str
    answer: str
    language: str
    id: str
    payload: dict[str, Any] = field(repr=False)
    dense_score: float | None = None
    sparse_score: float | None = None
    wording_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Candidate:
    row: ScoredRow
    dense: float | None = None
    sparse: float | None = None
    wording: float | None = None
    fused: float = 0.0


class Retriever:
    """Query text in, top-k knowledge items out (see the module docstring)."""

    def __init__(
        self,
        kb: KnowledgeBase,
        embedder: TextEmbedder,
        *,
        engine: Engine = "auto",
        candidates: int = 50,
        rrf_k: int = 60,
        overlap_weight: float = 0.2,
        distinct_overlap: float = 0.6,
        wording_weight: float = 1.0,
    ) -> None:
        if embedder.dim != kb.config.dim:
            raise ValueError(f"embedder dim {embedder.dim} != knowledge base dim {kb.config.dim}")
        if candidates < 1 or rrf_k < 0 or wording_weight < 0:
            raise ValueError("candidates must be >= 1, rrf_k >= 0 and wording_weight >= 0")
        self.kb = kb
        self.embedder = embedder
        self.engine: Literal["numpy", "qdrant"] = (
            ("numpy" if kb.local else "qdrant") if engine == "auto" else engine
        )
        self.candidates = candidates
        self.rrf_k = rrf_k
        self.overlap_weight = overlap_weight
        self.distinct_overlap = distinct_overlap
        self.wording_weight = wording_weight
        self._indexes: dict[str, LocalIndex] = {}
        self._indexed_version = -1
        self._lock = threading.Lock()

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        language: str | None = None,
        business_unit: str | None = None,
        review_status: str | Sequence[str] | None = None,
        hybrid_alpha: float = 0.9,
        rerank: bool = False,
        distinct: bool = True,
        now: float | None = None,
    ) -> list[Hit]:
        """The ``k`` best items for ``query`` (``now``: search the months up to it, else the newest)."""
        if not query.strip():
            raise ValueError("empty query")
        vector = self.embedder.embed([query], "query")[0]
        return self.search_vector(
            query, vector, k=k, language=language, business_unit=business_unit,
            review_status=review_status, hybrid_alpha=hybrid_alpha, rerank=rerank, distinct=distinct,
            now=now,
        )  # fmt: skip

    def search_vector(
        self,
        query: str,
        vector: npt.ArrayLike,
        *,
        k: int = 5,
        language: str | None = None,
        business_unit: str | None = None,
        review_status: str | Sequence[str] | None = None,
        hybrid_alpha: float = 0.9,
        rerank: bool = False,
        distinct: bool = True,
        now: float | None = None,
    ) -> list[Hit]:
        """:meth:`search` with the query already embedded (``vector``: its unit query vector)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not 0.0 <= hybrid_alpha <= 1.0:
            raise ValueError(f"hybrid_alpha must be in [0, 1], got {hybrid_alpha}")
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape != (self.kb.config.dim,):
            raise ValueError(f"query vector must have {self.kb.config.dim} values, got {q.shape}")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        statuses = [review_status] if isinstance(review_status, str) else review_status
        if statuses is not None and not statuses:
            return []  # an empty list of admitted statuses admits nothing
        collections = self.kb.recent_collections(now)
        limit = max(self.candidates, 4 * k if rerank else k)
        sparse = self.kb.vectorizer.query(query) if hybrid_alpha < 1.0 else None
        wordings = hybrid_alpha > 0.0 and self.wording_weight > 0.0
        dense_rows: list[ScoredRow] = []
        wording_rows: list[ScoredRow] = []
        sparse_rows: list[ScoredRow] = []
        if self.engine == "numpy":
            indexes = self._local_indexes(collections)
            for index in indexes:
                keep = index.mask(language, business_unit, statuses)
                if hybrid_alpha > 0.0:
                    dense_rows += index.dense_search(q, keep, limit)
                if wordings:
                    wording_rows += index.wording_search(q, keep, limit)
                if sparse:
                    sparse_rows += index.sparse_search(sparse.indices, sparse.values, keep, limit)
        else:
            flt = self.kb.search_filter(
                language=language, business_unit=business_unit, review_status=statuses
            )
            for name in collections:
                if hybrid_alpha > 0.0:
                    dense_rows += self._qdrant(name, q.tolist(), self.kb.config.dense_vector, flt, limit)
                if wordings and self.kb.has_wordings(name):  # MAX_SIM with one query row: max cosine
                    using = self.kb.config.wording_vector
                    wording_rows += self._qdrant(name, [q.tolist()], using, flt, limit)
                if sparse:
                    sv = qm.SparseVector(indices=sparse.indices, values=sparse.values)
                    sparse_rows += self._qdrant(name, sv, self.kb.config.sparse_vector, flt, limit)
        ranks: tuple[tuple[list[ScoredRow], _Signal, float], ...] = (
            (dense_rows, "dense", hybrid_alpha),
            (wording_rows, "wording", hybrid_alpha * self.wording_weight),
            (sparse_rows, "sparse", 1.0 - hybrid_alpha),
        )
        fused = self._fuse(ranks, limit)
        if rerank:
            fused = self._rerank(query, q, fused[: 4 * k])
        if distinct:
            fused = self._distinct(fused, k)
        return [
            Hit(
                score=c.fused,
                question=c.row.payload.get("question", ""),
                answer=c.row.payload.get("answer", ""),
                language=c.row.payload.get("language", ""),
                id=c.row.id,
                payload=c.row.payload,
                dense_score=c.dense,
                sparse_score=c.sparse,
                wording_score=c.wording,
            )
            for c in fused[:k]
        ]

    # ---------------------------------------------------------------------------------- internals

    def _local_indexes(self, collections: Sequence[str]) -> list[LocalIndex]:
        with self._lock:
            if self._indexed_version != self.kb.version:
                self._indexes.clear()
                self._indexed_version = self.kb.version
            for name in collections:
                if name not in self._indexes:
                    self._indexes[name] = LocalIndex(self.kb, name)
            return [self._indexes[name] for name in collections]

    def _qdrant(
        self, collection: str, query: Any, using: str, flt: qm.Filter | None, limit: int
    ) -> list[ScoredRow]:
        points = self.kb.client.query_points(
            collection, query=query, using=using, query_filter=flt, limit=limit,
            with_payload=True, with_vectors=[self.kb.config.dense_vector],
        ).points  # fmt: skip
        rows = []
        for p in points:
            vec = p.vector.get(self.kb.config.dense_vector) if isinstance(p.vector, dict) else None
            rows.append(
                ScoredRow(str(p.id), float(p.score), dict(p.payload or {}), np.asarray(vec, np.float32))
            )
        return rows

    def _fuse(self, ranks: Sequence[tuple[list[ScoredRow], _Signal, float]], limit: int) -> list[_Candidate]:
        """Weighted RRF of the rankings (rows, which score they are, weight); see the docstring, 4."""
        found: dict[str, _Candidate] = {}
        for rows, signal, weight in ranks:
            rows = sorted(rows, key=lambda r: (-r.score, r.id))[:limit]
            for rank, row in enumerate(rows, start=1):
                c = found.setdefault(row.id, _Candidate(row))
                setattr(c, signal, row.score)
                c.fused += weight / (self.rrf_k + rank)
        return sorted(found.values(), key=lambda c: (-c.fused, c.row.id))

    def _distinct(self, candidates: list[_Candidate], k: int) -> list[_Candidate]:
        """The first ``k`` candidates with different answers (see the module docstring, 5.)."""
        kept: list[_Candidate] = []
        answers: list[set[str]] = []
        for c in candidates:
            tokens = set(tokenize(c.row.payload.get("answer", "")))
            if any(
                len(tokens & other) / max(len(tokens | other), 1) >= self.distinct_overlap
                for other in answers
            ):
                continue
            kept.append(c)
            answers.append(tokens)
            if len(kept) == k:
                break
        return kept

    def _rerank(
        self, query: str, q: npt.NDArray[np.float32], candidates: list[_Candidate]
    ) -> list[_Candidate]:
        tokens = set(tokenize(query))
        for c in candidates:
            vec = c.row.vector
            cosine = float(vec @ q) / max(float(np.linalg.norm(vec)), 1e-12) if vec.size == q.size else 0.0
            if c.dense is None and vec.size == q.size:
                c.dense = cosine
            doc = set(tokenize(f"{c.row.payload.get('question', '')} {c.row.payload.get('answer', '')}"))
            overlap = len(tokens & doc) / len(tokens) if tokens else 0.0
            c.fused = cosine + self.overlap_weight * overlap
        return sorted(candidates, key=lambda c: (-c.fused, c.row.id))
