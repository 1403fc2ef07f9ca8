"""pipelines.knowledge_base on local-mode Qdrant: ids, idempotent merges, near duplicates, months, runs."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError
from qdrant_client import models as qm

from pipelines.knowledge_base import (
    KnowledgeBase,
    KnowledgeBaseConfig,
    canonical_question,
    month_of,
    point_id,
)
from pipelines.models import QAItem
from pipelines.sparse import KeywordVectorizer, tokenize

DIM = 16


def ts(year: int, month: int, day: int = 10) -> float:
    return datetime(year, month, day, 12, tzinfo=UTC).timestamp()


def item(question: str, call: str, when: float, **kw: object) -> QAItem:
    fields: dict[str, object] = {
        "question": question,
        "answer": kw.pop("answer", f"answer to {question}"),
        "language": kw.pop("language", "en"),
        "source_call_ids": (call,),
        "first_seen": when,
        "last_seen": when,
        "business_unit": kw.pop("business_unit", "clinic"),
    }
    fields.update(kw)
    return QAItem.model_validate(fields)


def vec(seed: int) -> npt.NDArray[np.float32]:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: npt.NDArray[np.float32], eps: float, seed: int = 99) -> npt.NDArray[np.float32]:
    out = v + eps * vec(seed)
    return np.asarray(out / np.linalg.norm(out), dtype=np.float32)


@pytest.fixture
def kb() -> KnowledgeBase:
    return KnowledgeBase(KnowledgeBaseConfig(dim=DIM))


def test_config_forbids_extras_and_both_locations() -> None:
    with pytest.raises(ValidationError):
        KnowledgeBaseConfig(dims=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="not both"):
        KnowledgeBaseConfig(url="http://qdrant:6333", path="/tmp/x")


def test_point_ids_are_deterministic_across_processes() -> None:
    here = point_id("en", "Dental Clinic", "What are your opening hours?")
    assert here == "274c13b9-ff2a-52ac-ac0f-5200d9fecdec"  # the namespace must never change
    code = (
        "from pipelines.knowledge_base import point_id\n"
        "print(point_id('en', 'Dental Clinic', 'What are your opening hours?'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert out.stdout.strip() == here
    # the canonical form ignores case, punctuation and spacing, not language, unit or wording
    assert point_id("en", "dental clinic ", "what are your  opening hours") == here
    assert canonical_question("  What's  the PRICE?! ") == "what s the price"
    assert point_id("ko", "Dental Clinic", "What are your opening hours?") != here
    assert point_id("en", "Bakery", "What are your opening hours?") != here
    assert point_id("en", "Dental Clinic", "When do you open?") != here


def test_rerun_of_the_same_items_changes_nothing(kb: KnowledgeBase) -> None:
    items = [
        item("What are your opening hours?", "c1", ts(2024, 5)),
        item("Do you take walk-ins?", "c2", ts(2024, 5)),
    ]
    vectors = np.stack([vec(1), vec(2)])
    first = kb.upsert(items, vectors, run_id="2024-05-10")
    assert (first.inserted, first.merged, first.unchanged) == (2, 0, 0)
    version = kb.version
    again = kb.upsert(items, vectors, run_id="2024-05-10")
    assert (again.inserted, again.merged, again.unchanged) == (0, 0, 2)
    assert again.ids == first.ids
    assert kb.version == version  # nothing written
    stored = kb.get(first.ids)
    assert kb.count() == 2
    assert [stored[i].item.support for i in first.ids] == [1, 1]
    assert stored[first.ids[0]].item.source_call_ids == ("c1",)


def test_replace_run_again_merges_exactly_as_the_first_time(kb: KnowledgeBase) -> None:
    """An item whose own point a *later* item of the same run made went to its near-duplicate on
    the first run; a re-run must send it there again, not to the point that now exists."""
    base = vec(1)
    items = [
        item("Can I book a visit online?", "c1", ts(2024, 5)),
        item("How can I make an appointment?", "c2", ts(2024, 5)),  # near c1's point
        item("How can I make an appointment?", "c3", ts(2024, 5), answer="Call us."),  # far from it
        item("Do you take walk-ins?", "c4", ts(2024, 5)),
    ]
    vectors = np.stack([base, near(base, 0.05), vec(3), near(base, 0.05, seed=5)])
    first = kb.replace_run("run-1", items, vectors)
    assert first.ids[1] == first.ids[0] != first.ids[2]
    assert first.ids[3] == first.ids[0]
    for _ in range(2):
        again = kb.replace_run("run-1", items, vectors)
        assert (again.inserted, again.merged, again.unchanged, again.removed) == (0, 0, 4, 0)
        assert again.ids == first.ids


def test_new_source_call_merges_and_counts_support_once(kb: KnowledgeBase) -> None:
    a = item("What are your opening hours?", "c1", ts(2024, 5, 1))
    kb.upsert([a], vec(1)[None], run_id="r1")
    b = item("what are your opening hours", "c7", ts(2024, 5, 20), labels=("hours",))
    report = kb.upsert([b, b], np.stack([vec(5), vec(5)]), run_id="r2")  # twice in one batch
    assert (report.inserted, report.merged, report.unchanged) == (0, 2, 0)
    (point,) = kb.get(report.ids[:1]).values()
    merged = point.item
    assert merged.question == "What are your opening hours?"  # the stored wording is kept
    assert merged.source_call_ids == ("c1", "c7")
    assert merged.support == 2
    assert merged.first_seen == ts(2024, 5, 1) and merged.last_seen == ts(2024, 5, 20)
    assert merged.labels == ("hours",)
    assert point.payload["run_ids"] == ["r1", "r2"]
    assert np.allclose(point.vector, vec(1), atol=1e-5)  # the stored vector is kept
    assert kb.upsert([b], vec(5)[None], run_id="r2").unchanged == 1


def test_near_duplicates_merge_within_language_and_unit(kb: KnowledgeBase) -> None:
    base = vec(3)
    kb.upsert([item("How much is a cleaning?", "c1", ts(2024, 5))], base[None], run_id="r1")
    close = near(base, 0.05)
    assert float(close @ base) > 0.97
    dup = item("What does a teeth cleaning cost?", "c2", ts(2024, 5))
    other_unit = item("What does a teeth cleaning cost?", "c3", ts(2024, 5), business_unit="bakery")
    far = item("Is parking free?", "c4", ts(2024, 5))
    report = kb.upsert([dup, other_unit, far], np.stack([close, close, near(base, 0.6)]), run_id="r2")
    assert (report.inserted, report.merged) == (2, 1)
    assert report.ids[0] == point_id("en", "clinic", "How much is a cleaning?")
    assert kb.count() == 3
    assert kb.get(report.ids[:1])[report.ids[0]].item.support == 2
    # re-running the same batch finds the same near duplicate: nothing changes
    again = kb.upsert([dup, other_unit, far], np.stack([close, close, near(base, 0.6)]), run_id="r2")
    assert again.unchanged == 3 and again.ids == report.ids
    # exact ids only when near-duplicate merging is off
    off = KnowledgeBase(KnowledgeBaseConfig(dim=DIM, near_duplicate_threshold=None))
    off.upsert([item("How much is a cleaning?", "c1", ts(2024, 5))], base[None])
    assert off.upsert([dup], close[None]).inserted == 1


def test_monthly_collections_alias_and_moves(kb: KnowledgeBase) -> None:
    months = [(2024, m) for m in (1, 2, 3, 4, 5)]
    items = [item(f"Question number {m}?", f"c{m}", ts(y, m)) for y, m in months]
    kb.upsert(items, np.stack([vec(m) for _, m in months]))
    assert kb.collections() == [f"knowledge_2024_0{m}" for m in (1, 2, 3, 4, 5)]
    assert kb.recent_collections() == ["knowledge_2024_05", "knowledge_2024_04", "knowledge_2024_03"]
    assert kb.recent_collections(now=ts(2024, 3, 28)) == [
        "knowledge_2024_03",
        "knowledge_2024_02",
        "knowledge_2024_01",
    ]
    assert kb.recent_collections(now=ts(2025, 1)) == []
    aliases = {a.alias_name: a.collection_name for a in kb.client.get_aliases().aliases}
    assert aliases == {"knowledge_recent": "knowledge_2024_05"}
    # seen again in June: the January point moves to the June collection
    report = kb.upsert([item("Question number 1?", "c99", ts(2024, 6))], vec(1)[None], run_id="june")
    assert report.merged == 1
    (point,) = kb.get(report.ids).values()
    assert point.collection == "knowledge_2024_06" and point.item.support == 2
    assert kb.client.count("knowledge_2024_01").count == 0
    assert kb.count() == 5
    aliases = {a.alias_name: a.collection_name for a in kb.client.get_aliases().aliases}
    assert aliases["knowledge_recent"] == "knowledge_2024_06"
    assert month_of(ts(2024, 6)) == "2024_06"


def test_replace_run_swaps_what_the_run_produced(kb: KnowledgeBase) -> None:
    hours, walkins, parking = "What are your opening hours?", "Do you take walk-ins?", "Is parking free?"
    kb.upsert([item(hours, "c1", ts(2024, 5, 3)), item(walkins, "c2", ts(2024, 5, 3))],
              np.stack([vec(1), vec(2)]), run_id="d3")  # fmt: skip
    kb.upsert([item(hours, "c5", ts(2024, 5, 9))], vec(1)[None], run_id="d9")
    hours_id, walkins_id = point_id("en", "clinic", hours), point_id("en", "clinic", walkins)
    # a reviewer approves the walk-ins answer
    kb.client.set_payload(
        kb.get([walkins_id])[walkins_id].collection, {"review_status": "approved"}, [walkins_id]
    )
    # the fixed extractor finds walk-ins again (same call), no longer the hours, and a new fact
    report = kb.replace_run(
        "d3",
        [item(walkins, "c2", ts(2024, 5, 3)), item(parking, "c3", ts(2024, 5, 3))],
        np.stack([vec(2), vec(4)]),
    )
    assert (report.inserted, report.unchanged, report.removed) == (1, 1, 0)
    stored = kb.get([hours_id, walkins_id])
    assert stored[hours_id].item.source_call_ids == ("c5",)  # d9's support stays, d3's is gone
    assert stored[hours_id].item.first_seen == ts(2024, 5, 9)
    assert stored[hours_id].payload["run_ids"] == ["d9"]
    assert stored[walkins_id].item.review_status == "approved"
    # replacing with nothing removes the points the run alone produced
    report = kb.replace_run("d3", [], np.zeros((0, DIM)))
    assert report.removed == 2
    assert set(kb.get([hours_id, walkins_id, point_id("en", "clinic", parking)])) == {hours_id}
    assert kb.count() == 1


def test_vectors_are_validated(kb: KnowledgeBase) -> None:
    with pytest.raises(ValueError, match="shape"):
        kb.upsert([item("What are your opening hours?", "c1", ts(2024, 5))], np.ones((1, DIM + 1)))
    with pytest.raises(ValueError, match="zeros"):
        kb.upsert([item("What are your opening hours?", "c1", ts(2024, 5))], np.zeros((1, DIM)))


def test_local_folder_persists(tmp_path: Path) -> None:
    config = KnowledgeBaseConfig(dim=DIM, path=str(tmp_path / "qdrant"))
    kb = KnowledgeBase(config)
    items = [item("What are your opening hours?", "c1", ts(2024, 5))]
    ids = kb.upsert(items, vec(1)[None]).ids
    kb.close()
    reopened = KnowledgeBase(config)
    assert reopened.count() == 1
    assert reopened.upsert(items, vec(1)[None]).unchanged == 1
    assert reopened.get(ids)[ids[0]].item.question == "What are your opening hours?"
    reopened.close()


def test_keyword_vectorizer() -> None:
    assert tokenize("What's the Wi-Fi password?") == ["wi", "fi", "password"]
    assert tokenize("환불은 언제 되나요?") == ["환불은", "환불", "언제", "되나요", "되나"]
    v = KeywordVectorizer()
    doc = v.document("password password reset")
    assert doc.indices == sorted(doc.indices) and len(doc.indices) == 2
    assert max(doc.values) == pytest.approx(2 * 2.2 / 3.2)  # saturated tf of "password"
    assert v.query("password password") == v.query("Password")
    assert not v.query("the of and")


# ------------------------------------------------------------------------------ question wordings


def wording_rows(kb: KnowledgeBase, pid: str) -> tuple[list[str], list[int], npt.NDArray[np.float32]]:
    point = kb.get([pid])[pid]
    return point.payload["questions"], point.payload["embedded_questions"], point.wordings


def test_wordings_are_kept_on_merge_most_said_first(kb: KnowledgeBase) -> None:
    base = vec(1)
    own = item("How much is a cleaning?", "c1", ts(2024, 5))
    first = kb.upsert([own], base[None], run_id="r1", question_vectors=vec(11)[None])
    pid = first.ids[0]
    others = [
        item("What does a teeth cleaning cost?", "c2", ts(2024, 5)),
        item("Price of a cleaning?", "c3", ts(2024, 5)),
        item("price of a cleaning", "c4", ts(2024, 5)),  # the same wording (canonical form), 2nd call
        item("how much is a cleaning", "c5", ts(2024, 5)),  # the point's own wording again
    ]
    qv = np.stack([vec(12), vec(13), vec(14), vec(15)])
    report = kb.upsert(others, np.stack([near(base, 0.05, s) for s in (2, 3, 4, 5)]), run_id="r1",
                       question_vectors=qv)  # fmt: skip
    assert report.ids == [pid] * 4 and report.merged == 4
    questions, embedded, rows = wording_rows(kb, pid)
    # own first, then by calls that said it (2 > 1), then by canonical form; texts: the least of a form
    assert questions == [
        "How much is a cleaning?",
        "Price of a cleaning?",
        "What does a teeth cleaning cost?",
    ]
    assert embedded == [0, 1, 2]
    # each wording keeps the first query vector it came with
    assert np.allclose(rows, np.stack([vec(11), vec(13), vec(12)]), atol=1e-5)
    assert kb.get([pid])[pid].item.question == "How much is a cleaning?"  # the point's wording stays


def test_wordings_are_capped(kb: KnowledgeBase) -> None:
    capped = KnowledgeBase(KnowledgeBaseConfig(dim=DIM, max_wordings=3))
    base = vec(1)
    wordings = ["Is there parking?", "Where do I park?", "Can I park here?", "Any parking nearby?"]
    items = [item(q, f"c{n}", ts(2024, 5)) for n, q in enumerate(wordings)]
    items.append(item("Where do I park?", "c9", ts(2024, 5)))  # said twice: ranks before the others
    vectors = np.stack([base] + [near(base, 0.03, s) for s in range(4)])
    report = capped.upsert(items, vectors, question_vectors=np.stack([vec(20 + n) for n in range(5)]))
    assert len(set(report.ids)) == 1
    questions, embedded, rows = wording_rows(capped, report.ids[0])
    assert questions == ["Is there parking?", "Where do I park?", "Any parking nearby?"]
    assert embedded == [0, 1, 2] and rows.shape == (3, DIM)
    assert np.allclose(rows, np.stack([vec(20), vec(21), vec(23)]), atol=1e-5)


def test_wordings_leave_with_their_run_and_reruns_change_nothing(kb: KnowledgeBase) -> None:
    base = vec(1)
    r1 = [
        item("Do you take walk-ins?", "c1", ts(2024, 5, 3)),
        item("Can I just walk in?", "c2", ts(2024, 5, 3)),
    ]
    r1_vectors, r1_asked = np.stack([base, near(base, 0.05)]), np.stack([vec(31), vec(32)])
    pid = kb.replace_run("d3", r1, r1_vectors, question_vectors=r1_asked).ids[0]
    r2 = [item("Walk-in appointments possible?", "c3", ts(2024, 5, 9))]
    kb.replace_run("d9", r2, near(base, 0.05, 7)[None], question_vectors=vec(33)[None])
    questions, embedded, rows = wording_rows(kb, pid)
    assert questions == ["Do you take walk-ins?", "Can I just walk in?", "Walk-in appointments possible?"]
    assert embedded == [0, 1, 2]

    version = kb.version  # the same range again, by either call: nothing changes
    again = kb.replace_run("d3", r1, r1_vectors, question_vectors=r1_asked)
    assert (again.inserted, again.merged, again.unchanged, again.removed) == (0, 0, 2, 0)
    assert (
        kb.upsert(r2, near(base, 0.05, 7)[None], run_id="d9", question_vectors=vec(33)[None]).unchanged == 1
    )
    assert kb.version == version

    # d9 re-run with nothing: its wording (and that wording's vector) goes, d3's stay
    assert kb.replace_run("d9", [], np.zeros((0, DIM)), question_vectors=np.zeros((0, DIM))).removed == 0
    questions, embedded, rows = wording_rows(kb, pid)
    assert questions == ["Do you take walk-ins?", "Can I just walk in?"] and embedded == [0, 1]
    assert np.allclose(rows, r1_asked, atol=1e-5)
    # d3 re-run after a fix that no longer finds "Can I just walk in?"
    kb.replace_run("d3", r1[:1], r1_vectors[:1], question_vectors=r1_asked[:1])
    questions, embedded, rows = wording_rows(kb, pid)
    assert questions == ["Do you take walk-ins?"] and embedded == [0]
    assert np.allclose(rows, r1_asked[:1], atol=1e-5)


def test_wordings_without_query_vectors_are_kept_and_embedded_later(kb: KnowledgeBase) -> None:
    base = vec(1)
    items = [item("Is parking free?", "c1", ts(2024, 5)), item("Do I pay for parking?", "c2", ts(2024, 5))]
    vectors = np.stack([base, near(base, 0.05)])
    pid = kb.upsert(items, vectors).ids[0]  # an older caller: passage vectors only
    questions, embedded, rows = wording_rows(kb, pid)
    assert questions == ["Is parking free?", "Do I pay for parking?"] and embedded == [] and rows.size == 0
    assert kb.upsert(items, vectors).unchanged == 2
    # the same items with query vectors: the payload now says which wordings have a vector
    report = kb.upsert(items, vectors, question_vectors=np.stack([vec(41), vec(42)]))
    assert report.merged == 2
    questions, embedded, rows = wording_rows(kb, pid)
    assert embedded == [0, 1] and np.allclose(rows, np.stack([vec(41), vec(42)]), atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        kb.upsert(items, vectors, question_vectors=np.ones((1, DIM)))


def test_a_collection_made_before_wordings_still_takes_writes(kb: KnowledgeBase) -> None:
    name = kb.collection_name("2024_05")
    kb.client.create_collection(  # the layout before wordings: dense and sparse only
        name,
        vectors_config={"dense": qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)},
        sparse_vectors_config={"sparse": qm.SparseVectorParams(modifier=qm.Modifier.IDF)},
    )
    assert not kb.has_wordings(name)
    items = [item("Is parking free?", "c1", ts(2024, 5)), item("Do I pay for parking?", "c2", ts(2024, 5))]
    vectors = np.stack([vec(1), near(vec(1), 0.05)])
    pid = kb.upsert(items, vectors, question_vectors=np.stack([vec(2), vec(3)])).ids[0]
    questions, embedded, rows = wording_rows(kb, pid)
    assert questions == ["Is parking free?", "Do I pay for parking?"] and embedded == [] and rows.size == 0
    # a new month's collection gets the wording vector
    june = kb.upsert(
        [item("Is parking free?", "c3", ts(2024, 6))], vec(1)[None], question_vectors=vec(2)[None]
    )
    assert kb.has_wordings(kb.collection_name("2024_06"))
    assert wording_rows(kb, june.ids[0])[1] == [0]  # moved: the one vector it has is stored now
