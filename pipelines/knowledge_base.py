"""The knowledge base in Qdrant: monthly collections, deterministic ids, dedupe/merge on upsert.

Layout
    One collection per month, ``{prefix}_YYYY_MM``, chosen by the item's ``last_seen`` (UTC). Each has
    a named dense vector (cosine, ``dim``: the question+answer passage), a named multivector of the
    point's question wordings (cosine, ``MAX_SIM``: see "Wordings"), a named sparse vector (keyword
    terms from :mod:`pipelines.sparse`, ``Modifier.IDF`` so Qdrant applies the IDF at query time), and
    keyword payload indexes on ``language``, ``business_unit``, ``review_status`` and ``run_ids``
    (server only: local mode ignores payload indexes). A point whose ``last_seen`` moves into a later
    month on a merge moves to that month's collection.

Recent months
    A Qdrant alias names one collection, so "search the recent months" is done by the reader:
    :meth:`KnowledgeBase.recent_collections` lists the newest ``months_searched`` collections and the
    retriever queries each and merges the hits. The alias ``{prefix}_recent`` is still kept pointing
    at the newest collection for clients that want a single name.

Ids and merging
    A point's id is ``uuid5(NAMESPACE, "language|business_unit|canonical question")``
    (:func:`point_id`): the canonical question is NFKC, casefolded, punctuation dropped, spaces
    collapsed, so the same fact extracted twice lands on the same id in any process. On
    :meth:`KnowledgeBase.upsert` an item whose id exists, or whose dense vector is within
    ``near_duplicate_threshold`` cosine of a point of the same language and business unit, merges into
    that point: source call ids united, ``first_seen`` min, ``last_seen`` max, ``support`` = number of
    distinct source calls, labels united, the stored question, answer, review status and vector kept
    (a reviewer's decision sticks), the item's question wording added to the point's wordings.
    Re-running the same range therefore changes nothing.

Wordings
    Near-duplicate merging folds differently worded questions with one answer into one point; each
    wording is kept, because a caller may later ask in any of them. ``questions`` (payload) lists the
    point's distinct wordings (distinct by :func:`canonical_question`): its own ``question`` first,
    then the others by how many source calls said them (most first, ties by canonical form), at most
    ``max_wordings``. They are derived from ``runs`` like the sources, so a re-run changes nothing and
    :meth:`KnowledgeBase.replace_run` takes a run's wordings out again. A wording is embedded as a
    *query* (what a caller asks) when the writer passes ``question_vectors`` (one per item, of its
    question) to :meth:`KnowledgeBase.upsert`; those vectors form the ``wording_vector`` multivector,
    one row per embedded wording, in the order of ``questions``; ``embedded_questions`` (payload)
    holds the indexes into ``questions`` that have a row (a writer without query vectors, or a
    wording that comes back within the cap after its vector was dropped with it, leaves a wording
    without a row). The retriever ranks points by the best cosine between the query and any row.
    Collections made before wordings existed have no such vector: their points keep ``questions`` in
    the payload only (re-extract into a new base to search them).

Runs
    Every point records which runs produced it and, per run, its calls and first/last seen
    (``runs`` payload; ``run_ids`` for filtering). A ``run_id`` names what was processed, e.g. the
    day range ``"2024-05-01..2024-05-07"``, not one execution: re-running the range with the same id
    is idempotent. :meth:`KnowledgeBase.replace_run` re-runs a range after a fix: the run's previous
    contribution is taken out of every point (a point nothing else supports is deleted) and the new
    items are merged in, in one pass, so a fact the fixed run produces again keeps its id and review
    status.

Local mode (``path`` folder, or ``:memory:`` when neither ``url`` nor ``path`` is set) by default; a
Qdrant server by ``url``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from .kb_points import (
    NAMESPACE,
    canonical_key,
    canonical_question,
    derive_payload,
    merge_item,
    month_of,
    new_payload,
    point_id,
)
from .models import QAItem
from .sparse import KeywordVectorizer, SparseTerms

__all__ = [
    "NAMESPACE",
    "KnowledgeBase",
    "KnowledgeBaseConfig",
    "StoredPoint",
    "UpsertReport",
    "canonical_key",
    "canonical_question",
    "month_of",
    "point_id",
]

_INDEXED = ("language", "business_unit", "review_status", "run_ids")
_ITEM_FIELDS = tuple(QAItem.model_fields)


class KnowledgeBaseConfig(BaseModel):
    """Where the knowledge base lives and how it is laid out."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None  # a Qdrant server, e.g. http://qdrant:6333
    api_key: str | None = None
    path: str | None = None  # local mode folder; neither url nor path: local mode in memory
    prefix: str = Field("knowledge", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    months_searched: int = Field(3, ge=1)
    dim: int = Field(384, ge=1)
    dense_vector: str = "dense"
    sparse_vector: str = "sparse"
    wording_vector: str = "wordings"  # multivector of the question wordings (MAX_SIM)
    max_wordings: int = Field(16, ge=1)  # question wordings kept per point, its own first
    near_duplicate_threshold: float | None = Field(0.97, gt=0, le=1)  # cosine; None: exact ids only
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _one_location(self) -> KnowledgeBaseConfig:
        if self.url is not None and self.path is not None:
            raise ValueError("set url (a Qdrant server) or path (local mode), not both")
        return self

    @property
    def alias(self) -> str:
        return f"{self.prefix}_recent"


@dataclass(slots=True)
class UpsertReport:
    """What a write did, per item (``inserted``/``merged``/``unchanged``) and per point (``removed``).

    An item is ``unchanged`` when the point it maps to ends up exactly as it was; ``ids`` holds the
    point each item went to (its own id, or the near-duplicate it merged into)."""

    inserted: int = 0
    merged: int = 0
    unchanged: int = 0
    removed: int = 0
    ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StoredPoint:
    """One point as read back: id, collection, payload, dense vector, wording vectors (rows of
    ``payload["embedded_questions"]``; ``(0, 0)`` when none)."""

    id: str
    collection: str
    payload: dict[str, Any]
    vector: npt.NDArray[np.float32]
    wordings: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @property
    def item(self) -> QAItem:
        return QAItem.model_validate({k: self.payload[k] for k in _ITEM_FIELDS if k in self.payload})


def _stored_wordings(point: StoredPoint) -> dict[str, npt.NDArray[np.float32]]:
    """Canonical wording -> its stored query vector (from ``embedded_questions`` and the rows)."""
    questions = point.payload.get("questions", [])
    rows = point.payload.get("embedded_questions", [])
    if len(rows) != len(point.wordings):
        return {}  # not written by this code (or edited by hand): treat as not embedded
    return {canonical_question(questions[i]): point.wordings[n] for n, i in enumerate(rows)}


@dataclass(slots=True)
class _Pending:
    payload: dict[str, Any] | None  # None: deleted (a run's only contribution taken away)
    vector: npt.NDArray[np.float32]
    original: dict[str, Any] | None  # as stored before this write (None: new point)
    collection: str | None  # where it is stored now
    items: list[int] = field(default_factory=list)
    wordings: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)  # canonical -> vector


class KnowledgeBase:
    """Q&A items in monthly Qdrant collections (see the module docstring)."""

    def __init__(
        self, config: KnowledgeBaseConfig | None = None, *, client: QdrantClient | None = None
    ) -> None:
        self.config = config or KnowledgeBaseConfig()
        if client is not None:
            self.client = client
        elif self.config.url is not None:
            self.client = QdrantClient(
                url=self.config.url, api_key=self.config.api_key, timeout=int(self.config.timeout_s)
            )
        else:
            self.client = (
                QdrantClient(path=self.config.path) if self.config.path else QdrantClient(":memory:")
            )
        self.local = self._client_is_local(self.client)
        self.vectorizer = KeywordVectorizer()
        self.version = 0  # bumped on every write: readers cache per version
        self._has_wordings: dict[str, bool] = {}
        self._lock = threading.RLock()
        self._pattern = re.compile(rf"^{re.escape(self.config.prefix)}_(\d{{4}})_(\d{{2}})$")

    @staticmethod
    def _client_is_local(client: QdrantClient) -> bool:
        return type(getattr(client, "_client", None)).__name__.startswith("QdrantLocal")

    def close(self) -> None:
        self.client.close()

    # ---------------------------------------------------------------------------------- collections

    def collection_name(self, month: str) -> str:
        """``{prefix}_YYYY_MM`` for a month ``YYYY_MM``."""
        return f"{self.config.prefix}_{month}"

    def collections(self) -> list[str]:
        """All monthly collections of this prefix, oldest first."""
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if self._pattern.match(n))

    def recent_collections(self, now: float | None = None) -> list[str]:
        """The collections a search covers, newest first.

        Without ``now``: the newest ``months_searched`` collections that exist. With ``now``: those of
        the ``months_searched`` calendar months ending with ``now``'s month."""
        names = self.collections()
        if now is None:
            return names[::-1][: self.config.months_searched]
        year, month = (int(x) for x in month_of(now).split("_"))
        wanted = []
        for _ in range(self.config.months_searched):
            wanted.append(self.collection_name(f"{year:04d}_{month:02d}"))
            year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        existing = set(names)
        return [n for n in wanted if n in existing]

    def has_wordings(self, collection: str) -> bool:
        """Whether ``collection`` has the wording multivector (collections made before it do not)."""
        known = self._has_wordings.get(collection)
        if known is None:
            vectors = self.client.get_collection(collection).config.params.vectors
            known = isinstance(vectors, dict) and self.config.wording_vector in vectors
            self._has_wordings[collection] = known
        return known

    def _ensure_collection(self, name: str) -> None:
        if self.client.collection_exists(name):
            return
        cosine = qm.Distance.COSINE
        max_sim = qm.MultiVectorConfig(comparator=qm.MultiVectorComparator.MAX_SIM)
        self.client.create_collection(
            name,
            vectors_config={
                self.config.dense_vector: qm.VectorParams(size=self.config.dim, distance=cosine),
                self.config.wording_vector: qm.VectorParams(
                    size=self.config.dim, distance=cosine, multivector_config=max_sim
                ),
            },
            sparse_vectors_config={
                self.config.sparse_vector: qm.SparseVectorParams(modifier=qm.Modifier.IDF)
            },
        )
        if not self.local:  # local mode ignores payload indexes (and warns)
            for key in _INDEXED:
                self.client.create_payload_index(name, key, qm.PayloadSchemaType.KEYWORD)

    def _update_alias(self) -> None:
        names = self.collections()
        alias = self.config.alias
        current = {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}
        if not names or current.get(alias) == names[-1]:
            return
        ops: list[qm.CreateAliasOperation | qm.DeleteAliasOperation] = []
        if alias in current:
            ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
        ops.append(
            qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=names[-1], alias_name=alias))
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    # ---------------------------------------------------------------------------------------- reads

    def search_filter(
        self,
        *,
        language: str | None = None,
        business_unit: str | None = None,
        review_status: str | Sequence[str] | None = None,
    ) -> qm.Filter | None:
        """A Qdrant filter for the retriever's options (None: no condition)."""
        must: list[qm.Condition] = []
        if language is not None:
            must.append(qm.FieldCondition(key="language", match=qm.MatchValue(value=language)))
        if business_unit is not None:
            must.append(qm.FieldCondition(key="business_unit", match=qm.MatchValue(value=business_unit)))
        if review_status is not None:
            statuses = [review_status] if isinstance(review_status, str) else list(review_status)
            must.append(qm.FieldCondition(key="review_status", match=qm.MatchAny(any=statuses)))
        return qm.Filter(must=must) if must else None

    def _record(self, collection: str, record: qm.Record) -> StoredPoint:
        vectors = record.vector
        dense = vectors.get(self.config.dense_vector) if isinstance(vectors, dict) else vectors
        rows = vectors.get(self.config.wording_vector) if isinstance(vectors, dict) else None
        return StoredPoint(
            id=str(record.id),
            collection=collection,
            payload=dict(record.payload or {}),
            vector=np.asarray(dense if dense is not None else [], dtype=np.float32),
            wordings=np.asarray(rows, dtype=np.float32).reshape(-1, self.config.dim)
            if rows
            else np.zeros((0, 0), np.float32),
        )

    def _vector_names(self, collection: str, *, sparse: bool, wordings: bool) -> list[str]:
        names = [self.config.dense_vector]
        if sparse:
            names.append(self.config.sparse_vector)
        if wordings and self.has_wordings(collection):
            names.append(self.config.wording_vector)
        return names

    def get(self, ids: Sequence[str], collections: Sequence[str] | None = None) -> dict[str, StoredPoint]:
        """The stored points among ``ids`` (in any monthly collection unless ``collections``)."""
        found: dict[str, StoredPoint] = {}
        if not ids:
            return found
        for name in collections if collections is not None else self.collections():
            records = self.client.retrieve(
                name, list(ids), with_payload=True,
                with_vectors=self._vector_names(name, sparse=False, wordings=True),
            )  # fmt: skip
            for record in records:
                found[str(record.id)] = self._record(name, record)
        return found

    def points(
        self,
        collection: str,
        *,
        scroll_filter: qm.Filter | None = None,
        with_sparse: bool = False,
        with_wordings: bool = False,
    ) -> Iterator[tuple[StoredPoint, qm.SparseVector | None]]:
        """Every point of one collection (dense vector; sparse and wording vectors when asked)."""
        names = self._vector_names(collection, sparse=with_sparse, wordings=with_wordings)
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                collection, scroll_filter=scroll_filter, limit=1024, offset=offset,
                with_payload=True, with_vectors=names,
            )  # fmt: skip
            for record in records:
                sparse = (
                    record.vector.get(self.config.sparse_vector) if isinstance(record.vector, dict) else None
                )
                yield (
                    self._record(collection, record),
                    sparse if isinstance(sparse, qm.SparseVector) else None,
                )
            if offset is None:
                return

    def count(self) -> int:
        """Points over all monthly collections."""
        return sum(self.client.count(name, exact=True).count for name in self.collections())

    # --------------------------------------------------------------------------------------- writes

    def upsert(
        self,
        items: Sequence[QAItem],
        vectors: npt.ArrayLike,
        *,
        run_id: str = "default",
        near_duplicates: bool = True,
        question_vectors: npt.ArrayLike | None = None,
    ) -> UpsertReport:
        """Merge ``items`` (with their passage vectors, ``(n, dim)``) into the knowledge base.

        ``question_vectors``: ``(n, dim)`` query embeddings of the items' questions, stored as the
        wording vectors (see "Wordings"); without them the wordings are kept in the payload only."""
        with self._lock:
            return self._apply(
                items, vectors, run_id=run_id, drop_run=False, near_duplicates=near_duplicates,
                question_vectors=question_vectors,
            )  # fmt: skip

    def replace_run(
        self,
        run_id: str,
        items: Sequence[QAItem],
        vectors: npt.ArrayLike,
        *,
        near_duplicates: bool = True,
        question_vectors: npt.ArrayLike | None = None,
    ) -> UpsertReport:
        """Replace what run ``run_id`` contributed by ``items`` (a re-run of a range after a fix)."""
        with self._lock:
            return self._apply(
                items, vectors, run_id=run_id, drop_run=True, near_duplicates=near_duplicates,
                question_vectors=question_vectors,
            )  # fmt: skip

    def _check(self, items: Sequence[QAItem], vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        arr = np.asarray(vectors, dtype=np.float32).reshape(len(items), -1) if len(items) else None
        if arr is None:
            return np.zeros((0, self.config.dim), np.float32)
        if arr.shape != (len(items), self.config.dim):
            raise ValueError(f"vectors must have shape {(len(items), self.config.dim)}, got {arr.shape}")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if not np.all(norms > 0):
            raise ValueError("a vector is all zeros")
        return np.ascontiguousarray(arr / norms, dtype=np.float32)

    def _near_duplicate(
        self, item: QAItem, vector: npt.NDArray[np.float32], pending: dict[str, _Pending]
    ) -> str | None:
        """The id of a point within ``near_duplicate_threshold`` of ``vector`` (same language, unit)."""
        threshold = self.config.near_duplicate_threshold
        if threshold is None:
            return None
        best_id, best = None, threshold
        for pid, p in pending.items():  # this write's points first (not stored yet, or changed)
            if p.payload is None or p.payload["language"] != item.language:
                continue
            if p.payload.get("business_unit") != item.business_unit:
                continue
            score = float(p.vector @ vector)
            if score >= best:
                best_id, best = pid, score
        # The stored state of a point this write has loaded is superseded by ``pending`` (searched
        # above), so such points are left out here. That matters for a re-run: the points only this
        # run made are loaded emptied (payload None) and come back as their first item arrives, so
        # an item sees exactly the points the first run had made by then, and merges the same way.
        flt = qm.Filter(
            must=[
                qm.FieldCondition(key="language", match=qm.MatchValue(value=item.language)),
                qm.FieldCondition(key="business_unit", match=qm.MatchValue(value=item.business_unit))
                if item.business_unit is not None
                else qm.IsNullCondition(is_null=qm.PayloadField(key="business_unit")),
            ],
            must_not=[qm.HasIdCondition(has_id=list(pending))] if pending else None,
        )
        for name in self.collections():
            hits = self.client.query_points(
                name, query=vector.tolist(), using=self.config.dense_vector, query_filter=flt,
                limit=1, score_threshold=best, with_payload=False,
            ).points  # fmt: skip
            if hits and hits[0].score >= best:
                best_id, best = str(hits[0].id), hits[0].score
        return best_id

    def _apply(
        self,
        items: Sequence[QAItem],
        vectors: npt.ArrayLike,
        *,
        run_id: str,
        drop_run: bool,
        near_duplicates: bool,
        question_vectors: npt.ArrayLike | None = None,
    ) -> UpsertReport:
        if not run_id:
            raise ValueError("run_id must not be empty")
        items = list(items)
        unit = self._check(items, vectors)
        asked = self._check(items, question_vectors) if question_vectors is not None else None
        cap = self.config.max_wordings
        pending: dict[str, _Pending] = {}

        def stored(sp: StoredPoint, payload: dict[str, Any] | None) -> _Pending:
            entry = _Pending(payload, sp.vector, dict(sp.payload), sp.collection)
            entry.wordings = _stored_wordings(sp)
            return entry

        def load(points: dict[str, StoredPoint]) -> None:
            for pid, sp in points.items():
                if pid not in pending:
                    pending[pid] = stored(sp, sp.payload)

        if drop_run:  # take the run's contribution out of every point it touched
            run_filter = qm.Filter(must=[qm.FieldCondition(key="run_ids", match=qm.MatchAny(any=[run_id]))])
            for name in self.collections():
                for sp, _ in self.points(name, scroll_filter=run_filter, with_wordings=True):
                    runs = {k: v for k, v in sp.payload["runs"].items() if k != run_id}
                    payload = derive_payload({**sp.payload, "runs": runs}, cap) if runs else None
                    pending[sp.id] = stored(sp, payload)
        load(self.get([point_id(i.language, i.business_unit, i.question) for i in items]))

        for n, (item, vector) in enumerate(zip(items, unit, strict=True)):
            pid = point_id(item.language, item.business_unit, item.question)
            own = pending.get(pid)
            # A point emptied by drop_run counts as absent until an item revives it, as on the
            # first run, where it did not exist before its first item.
            if (own is None or own.payload is None) and near_duplicates:
                dup = self._near_duplicate(item, vector, pending)
                if dup is not None:
                    load(self.get([dup]))
                    pid = dup
            entry = pending.get(pid)
            if entry is None:
                entry = pending[pid] = _Pending(None, vector, None, None)
            if entry.payload is None:  # new, or emptied by drop_run: this item's wording and vector
                base = new_payload(item)
                if entry.original is not None:  # keep what a reviewer decided about the revived point
                    for key in ("question", "answer", "review_status", "labels"):
                        base[key] = entry.original[key]
                    base["key"] = entry.original.get("key", base["key"])
                else:
                    entry.vector = vector
                entry.payload = base
            entry.payload = merge_item(entry.payload, item, run_id, cap)
            if asked is not None:  # the first vector of a wording stays (a re-run changes nothing)
                entry.wordings.setdefault(canonical_question(item.question), asked[n])
            entry.items.append(n)

        report = UpsertReport(ids=[""] * len(items))
        upserts: dict[str, list[qm.PointStruct]] = {}
        deletes: dict[str, list[str]] = {}
        with_wordings: dict[str, bool] = {}  # target collection -> has the wording multivector
        for pid, entry in pending.items():
            rows: npt.NDArray[np.float32] | None = None
            target = self.collection_name(entry.payload["month"]) if entry.payload is not None else ""
            if entry.payload is not None:
                if target not in with_wordings:
                    exists = self.client.collection_exists(target)
                    with_wordings[target] = not exists or self.has_wordings(target)
                rows = self._embedded(entry, with_wordings[target])
            for k, n in enumerate(entry.items):
                report.ids[n] = pid
                if entry.payload == entry.original:
                    report.unchanged += 1
                elif entry.original is None and k == 0:
                    report.inserted += 1
                else:
                    report.merged += 1
            if entry.payload == entry.original:
                continue
            if entry.payload is None:
                if entry.collection is not None:
                    deletes.setdefault(entry.collection, []).append(pid)
                    report.removed += 1
                continue
            if entry.collection is not None and entry.collection != target:
                deletes.setdefault(entry.collection, []).append(pid)
            upserts.setdefault(target, []).append(self._point(pid, entry.payload, entry.vector, rows))
        for name, points in upserts.items():
            self._ensure_collection(name)
            self.client.upsert(name, points, wait=True)
        for name, pids in deletes.items():
            self.client.delete(name, points_selector=qm.PointIdsList(points=list(pids)), wait=True)
        if upserts or deletes:
            self.version += 1
            self._update_alias()
        return report

    @staticmethod
    def _embedded(entry: _Pending, supported: bool) -> npt.NDArray[np.float32] | None:
        """Set ``embedded_questions`` in the entry's payload; the wording rows to store (or None)."""
        if entry.payload is None or "questions" not in entry.payload:
            return None  # deleted, or an old point this write did not touch
        found = [
            (i, entry.wordings[c])
            for i, c in enumerate(canonical_question(q) for q in entry.payload["questions"])
            if supported and c in entry.wordings
        ]
        entry.payload["embedded_questions"] = [i for i, _ in found]
        return np.stack([v for _, v in found]) if found else None

    def _point(
        self,
        pid: str,
        payload: dict[str, Any],
        vector: npt.NDArray[np.float32],
        wordings: npt.NDArray[np.float32] | None,
    ) -> qm.PointStruct:
        sparse: SparseTerms = self.vectorizer.document(f"{payload['question']} {payload['answer']}")
        vec: dict[str, Any] = {self.config.dense_vector: vector.tolist()}
        if wordings is not None:
            vec[self.config.wording_vector] = wordings.tolist()
        if sparse:
            vec[self.config.sparse_vector] = qm.SparseVector(indices=sparse.indices, values=sparse.values)
        return qm.PointStruct(id=pid, vector=vec, payload=payload)
