"""Offline clustering of a recording's speaker embeddings: agglomerative, average linkage, cosine.

Every embedding starts as its own cluster; the two clusters with the highest *average* pairwise cosine
similarity are merged, again and again, until either no pair reaches ``threshold`` (the number of
speakers is found) or ``num_speakers`` clusters are left (it is given). Average linkage keeps one
noisy embedding from chaining two speakers together, which single linkage would do.

The similarity matrix is updated in place by the Lance-Williams rule for average linkage (the merged
row is the size-weighted mean of the two rows), so a merge costs O(n²) and the whole run O(n³) in the
worst case: about a second for 1,000 segments, fine for calls and meetings of a few hundred turns.
Pure numpy, no state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_THRESHOLD", "cluster_embeddings", "cosine_matrix", "speaker_labels"]

# Average cosine above which two clusters are one speaker, for the resemblyzer embedder: espeak voices
# of one speaker score 0.91-0.94 across sentences, the closest distinct voices 0.82-0.88, human voices
# lower (measured in tests/ai_serve/test_diarization.py). Calibrate per embedder.
DEFAULT_THRESHOLD = 0.7


def cosine_matrix(embeddings: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Pairwise cosine similarities of the rows (normalised here, zero rows stay zero)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, dim) array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    return np.asarray(x @ x.T)


def cluster_embeddings(
    embeddings: npt.ArrayLike,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    num_speakers: int | None = None,
    weights: npt.ArrayLike | None = None,
) -> npt.NDArray[np.intp]:
    """Cluster index per row, numbered 0, 1, ... in order of first appearance.

    ``weights`` (e.g. segment durations) weigh each row in the average linkage; default 1 each.
    With ``num_speakers`` the threshold is ignored and min(num_speakers, n) clusters are returned.
    """
    sim = cosine_matrix(embeddings)
    n = sim.shape[0]
    if num_speakers is not None and num_speakers < 1:
        raise ValueError(f"num_speakers must be >= 1, got {num_speakers}")
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    sizes = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if sizes.shape != (n,) or np.any(sizes <= 0):
        raise ValueError(f"weights must be {n} positive numbers")
    sizes = sizes.copy()
    owner = np.arange(n)  # row -> the representative row of its cluster
    np.fill_diagonal(sim, -np.inf)
    target = 1 if num_speakers is None else min(num_speakers, n)
    clusters = n
    while clusters > target:
        flat = int(np.argmax(sim))
        i, j = divmod(flat, n)
        if num_speakers is None and sim[i, j] < threshold:
            break
        merged = (sizes[i] * sim[i] + sizes[j] * sim[j]) / (sizes[i] + sizes[j])
        sim[i, :] = merged
        sim[:, i] = merged
        sim[j, :] = -np.inf
        sim[:, j] = -np.inf
        sim[i, i] = -np.inf  # retired rows/columns stay -inf: -inf in either source row gives -inf
        sizes[i] += sizes[j]
        owner[owner == j] = i
        clusters -= 1
    return _first_appearance(owner)


def _first_appearance(owner: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
    order: dict[int, int] = {}
    out = np.empty(owner.size, dtype=np.intp)
    for k, rep in enumerate(owner.tolist()):
        out[k] = order.setdefault(rep, len(order))
    return out


def speaker_labels(clusters: npt.ArrayLike) -> list[str]:
    """Cluster indices 0, 1, ... as the labels used in transcripts: "S1", "S2", ..."""
    return [f"S{int(c) + 1}" for c in np.asarray(clusters).reshape(-1)]
