"""An in-process search index over one local-mode Qdrant collection (numpy), for fast reads.

qdrant-client's local mode answers queries with a pure-Python scan: on a 2-core CPU a filtered dense
query over 10k points takes ~200 ms and a sparse one ~80 ms, far from the 20 ms target. In local mode
the knowledge base lives in this process anyway (a local folder can be opened by one client only), so
the retriever mirrors each collection into numpy arrays once per write (:attr:`KnowledgeBase.version`)
and answers from them, with Qdrant's own scoring:

- dense: cosine = dot product of unit rows;
- wordings: the best cosine between the query and any of the point's question wordings (Qdrant's
  ``MAX_SIM`` over a cosine multivector, with one query vector); the rows of all points are one
  matrix, and ``np.maximum.reduceat`` takes each point's maximum; points without wordings are left
  out, as Qdrant leaves out points without the vector;
- sparse: ``sum(idf(t) * q_t * d_t)`` with Qdrant's IDF ``ln((N - df + 0.5) / (df + 0.5) + 1)``
  (``Modifier.IDF``; N = points that have a sparse vector, df over the whole collection);
- filters: exact match on ``language`` / ``business_unit``, any-of on ``review_status``.

Against a Qdrant server the retriever queries the server instead (HNSW, payload indexes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.knowledge_base import KnowledgeBase

__all__ = ["LocalIndex", "ScoredRow"]


@dataclass(frozen=True, slots=True)
class ScoredRow:
    """One result of a :class:`LocalIndex` query."""

    id: str
    score: float
    payload: dict[str, Any]
    vector: npt.NDArray[np.float32]


class LocalIndex:
    """Dense matrix, sparse inverted lists and filter columns of one collection."""

    def __init__(self, kb: KnowledgeBase, collection: str) -> None:
        ids: list[str] = []
        payloads: list[dict[str, Any]] = []
        rows: list[npt.NDArray[np.float32]] = []
        terms: list[int] = []
        term_rows: list[int] = []
        term_values: list[float] = []
        wording_rows: list[npt.NDArray[np.float32]] = []
        owners: list[int] = []  # the point of each block of wording rows
        block_starts: list[int] = []  # where each block starts
        wording_count = 0
        points = kb.points(collection, with_sparse=True, with_wordings=True)
        for n, (point, sparse) in enumerate(points):
            ids.append(point.id)
            payloads.append(point.payload)
            rows.append(point.vector)
            if len(point.wordings):
                owners.append(n)
                block_starts.append(wording_count)
                wording_rows.append(point.wordings)
                wording_count += len(point.wordings)
            if sparse is not None:
                terms.extend(sparse.indices)
                term_rows.extend([n] * len(sparse.indices))
                term_values.extend(sparse.values)
        self.collection = collection
        self.ids = ids
        self.payloads = payloads
        self.dense = np.vstack(rows).astype(np.float32) if rows else np.zeros((0, kb.config.dim), np.float32)
        wordings = np.vstack(wording_rows) if wording_rows else np.zeros((0, kb.config.dim), np.float32)
        norms = np.maximum(np.linalg.norm(wordings, axis=1, keepdims=True), 1e-12)
        self.wordings = np.ascontiguousarray(wordings / norms, dtype=np.float32)  # Qdrant normalizes
        self._wording_owners = np.asarray(owners, dtype=np.int64)
        self._wording_starts = np.asarray(block_starts, dtype=np.int64)
        self._has_wordings = np.zeros(len(ids), dtype=bool)
        self._has_wordings[self._wording_owners] = True
        # filter columns as small integer codes (string compares over 100k objects cost milliseconds)
        self._codes: dict[str, dict[str, int]] = {}
        self.columns: dict[str, npt.NDArray[np.int32]] = {}
        for key in ("language", "business_unit", "review_status"):
            codes = self._codes[key] = {}
            values = [str(p.get(key) or "") for p in payloads]
            self.columns[key] = np.array([codes.setdefault(v, len(codes)) for v in values], dtype=np.int32)
        self._masks: dict[tuple[str | None, str | None, tuple[str, ...] | None], npt.NDArray[np.bool_]] = {}
        order = np.argsort(np.asarray(terms, dtype=np.int64), kind="stable")
        sorted_terms = np.asarray(terms, dtype=np.int64)[order]
        self._rows = np.asarray(term_rows, dtype=np.int64)[order]
        self._values = np.asarray(term_values, dtype=np.float32)[order]
        unique, starts, counts = np.unique(sorted_terms, return_index=True, return_counts=True)
        self._postings = {
            int(t): (int(s), int(s + c)) for t, s, c in zip(unique, starts, counts, strict=True)
        }
        self._with_sparse = len(set(term_rows))

    def __len__(self) -> int:
        return len(self.ids)

    def mask(
        self,
        language: str | None = None,
        business_unit: str | None = None,
        review_status: Sequence[str] | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Rows that pass the filter (read-only; cached per filter, the index never changes)."""
        key = (language, business_unit, tuple(sorted(review_status)) if review_status is not None else None)
        keep = self._masks.get(key)
        if keep is not None:
            return keep
        keep = np.ones(len(self.ids), dtype=bool)
        for column, wanted in (("language", language), ("business_unit", business_unit)):
            if wanted is not None:
                keep &= self.columns[column] == self._codes[column].get(wanted, -1)
        if review_status is not None:
            codes = [
                self._codes["review_status"][v] for v in review_status if v in self._codes["review_status"]
            ]
            keep &= np.isin(self.columns["review_status"], np.asarray(codes, dtype=np.int32))
        keep.flags.writeable = False
        if len(self._masks) < 256:
            self._masks[key] = keep
        return keep

    def _top(
        self, scores: npt.NDArray[np.float32], keep: npt.NDArray[np.bool_], limit: int
    ) -> list[ScoredRow]:
        candidates = np.flatnonzero(keep)
        if candidates.size == 0 or limit <= 0:
            return []
        sub = scores[candidates]
        if sub.size > limit:
            part = np.argpartition(-sub, limit - 1)[:limit]
            candidates, sub = candidates[part], sub[part]
        order = np.argsort(-sub, kind="stable")
        return [
            ScoredRow(self.ids[i], float(s), self.payloads[i], self.dense[i])
            for i, s in zip(candidates[order], sub[order], strict=True)
        ]

    def dense_search(
        self, query: npt.NDArray[np.float32], keep: npt.NDArray[np.bool_], limit: int
    ) -> list[ScoredRow]:
        """Cosine top ``limit`` among the rows in ``keep``."""
        if not len(self.ids):
            return []
        return self._top(self.dense @ query, keep, limit)

    def wording_search(
        self, query: npt.NDArray[np.float32], keep: npt.NDArray[np.bool_], limit: int
    ) -> list[ScoredRow]:
        """Top ``limit`` by the best cosine over each point's wordings, among the rows in ``keep``
        that have wordings."""
        if not self._wording_owners.size:
            return []
        best = np.maximum.reduceat(self.wordings @ query, self._wording_starts)
        scores = np.full(len(self.ids), -np.inf, dtype=np.float32)
        scores[self._wording_owners] = best
        return self._top(scores, keep & self._has_wordings, limit)

    def sparse_search(
        self, indices: Sequence[int], values: Sequence[float], keep: npt.NDArray[np.bool_], limit: int
    ) -> list[ScoredRow]:
        """Keyword top ``limit`` (IDF-weighted dot product) among the rows in ``keep`` with a score > 0."""
        scores = np.zeros(len(self.ids), dtype=np.float32)
        n = self._with_sparse
        for term, q in zip(indices, values, strict=True):
            span = self._postings.get(int(term))
            if span is None:
                continue
            df = span[1] - span[0]
            idf = math.log((n - df + 0.5) / (df + 0.5) + 1)
            scores[self._rows[span[0] : span[1]]] += np.float32(idf * q) * self._values[span[0] : span[1]]
        return self._top(scores, keep & (scores > 0), limit)
