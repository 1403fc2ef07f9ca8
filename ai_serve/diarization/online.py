"""Online speaker labels within one leg: each utterance's embedding is compared with running centroids.

The live path cannot wait for the end of the call to cluster, so :class:`OnlineSpeakers` labels each
utterance as it is transcribed: the cosine similarity to every known speaker's centroid (the normalised
sum of its embeddings) is computed; the best one at or above ``threshold`` wins and absorbs the
embedding, otherwise a new speaker is opened, unless ``max_speakers`` are already known, in which case
the nearest one is taken. An utterance too short to embed (None) keeps the previous label: in a call,
"yes" or "mm-hm" is far likelier to continue a turn pattern than to open a new speaker.

Labels are "S1", "S2", ... in order of appearance, per leg (one instance per leg). Pure, no clock.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_ONLINE_THRESHOLD", "OnlineSpeakers"]

# Slightly above the offline threshold: a centroid of one utterance is noisier than an average-linkage
# decision over the whole recording, and a wrong merge cannot be undone online.
DEFAULT_ONLINE_THRESHOLD = 0.72


class OnlineSpeakers:
    """Per-leg online speaker assignment; see the module docstring."""

    def __init__(self, threshold: float = DEFAULT_ONLINE_THRESHOLD, max_speakers: int = 4) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        if max_speakers < 1:
            raise ValueError(f"max_speakers must be >= 1, got {max_speakers}")
        self.threshold = threshold
        self.max_speakers = max_speakers
        self._sums: list[npt.NDArray[np.float64]] = []
        self._counts: list[int] = []
        self.last_label: str | None = None
        self.last_similarity: float | None = None  # of the last assignment, for logs and tuning

    @property
    def speakers(self) -> list[str]:
        return [f"S{k + 1}" for k in range(len(self._sums))]

    def counts(self) -> dict[str, int]:
        """Utterances assigned to each speaker so far."""
        return dict(zip(self.speakers, self._counts, strict=True))

    def assign(self, embedding: npt.NDArray[np.floating] | None) -> str | None:
        """The label of this utterance's speaker; None only before any utterance could be embedded."""
        if embedding is None:
            return self.last_label
        v = np.asarray(embedding, dtype=np.float64).reshape(-1)
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("embedding must be a finite, non-zero vector")
        v = v / norm
        if self._sums and v.size != self._sums[0].size:
            raise ValueError(f"embedding has {v.size} dimensions, the leg's speakers {self._sums[0].size}")
        best, best_sim = -1, -np.inf
        for k, s in enumerate(self._sums):
            sim = float(v @ s) / float(np.linalg.norm(s))
            if sim > best_sim:
                best, best_sim = k, sim
        if best < 0 or (best_sim < self.threshold and len(self._sums) < self.max_speakers):
            self._sums.append(v.copy())
            self._counts.append(1)
            best = len(self._sums) - 1
            self.last_similarity = None
        else:
            self._sums[best] += v
            self._counts[best] += 1
            self.last_similarity = best_sim
        self.last_label = f"S{best + 1}"
        return self.last_label

    def reset(self) -> None:
        """Forget every speaker (a new call on a reused instance)."""
        self._sums.clear()
        self._counts.clear()
        self.last_label = None
        self.last_similarity = None
