"""The keyword side of hybrid search: text -> a hashed sparse vector (BM25-like term weights).

- Tokens: NFKC + casefold, Unicode words (``\\w+``); English stop words and one-letter tokens dropped.
  A Korean word (eojeol) of three syllables or more also yields its first two syllables, a crude stem:
  ``환불은``/``환불이`` both give ``환불`` without a morphological analyser (all the bigrams would also
  index verb endings such as ``나요``, which match every question).
- Index of a token: CRC-32 of its UTF-8 bytes (stable across processes and machines, unlike
  ``hash()``); two tokens sharing an index is rare at the vocabulary size of one knowledge base and
  only adds a little noise to the keyword score.
- Weights: a stored text gets BM25's saturated term frequency ``tf * (k1 + 1) / (tf + k1)`` (no length
  normalization: questions and answers are short); a query gets 1 per distinct token. The IDF factor
  is applied by Qdrant at query time (``Modifier.IDF`` on the sparse vector, also honoured by local
  mode), so the corpus statistics never go stale in the stored vectors.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass

__all__ = ["KeywordVectorizer", "SparseTerms", "tokenize"]

_WORD = re.compile(r"\w+", re.UNICODE)
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_STOP_WORDS = (
    "a an and are as at be by can do does for from have how i if in is it me my of on or our so that the"
    " their there this to was we what when where which who why will with you your"
)
_STOP = frozenset(_STOP_WORDS.split())


@dataclass(frozen=True, slots=True)
class SparseTerms:
    """A sparse vector: sorted unique indices and their weights."""

    indices: list[int]
    values: list[float]

    def __bool__(self) -> bool:
        return bool(self.indices)


def tokenize(text: str) -> list[str]:
    """The keyword tokens of ``text`` (with repeats, in order)."""
    tokens: list[str] = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        if _HANGUL.search(word):
            tokens.append(word)
            if len(word) > 2:
                tokens.append(word[:2])
        elif len(word) > 1 and word not in _STOP:
            tokens.append(word)
    return tokens


def _index(token: str) -> int:
    return zlib.crc32(token.encode("utf-8"))


class KeywordVectorizer:
    """Hashed term-frequency vectors for Qdrant's sparse vector (``Modifier.IDF`` adds the IDF)."""

    def __init__(self, k1: float = 1.2) -> None:
        if k1 <= 0:
            raise ValueError(f"k1 must be > 0, got {k1}")
        self.k1 = k1

    def _terms(self, weights: dict[int, float]) -> SparseTerms:
        indices = sorted(weights)
        return SparseTerms(indices, [weights[i] for i in indices])

    def document(self, text: str) -> SparseTerms:
        """The vector of a stored text (question and answer)."""
        counts: Counter[int] = Counter(_index(t) for t in tokenize(text))
        return self._terms({i: tf * (self.k1 + 1) / (tf + self.k1) for i, tf in counts.items()})

    def query(self, text: str) -> SparseTerms:
        """The vector of a query: 1 per distinct token."""
        return self._terms(dict.fromkeys((_index(t) for t in tokenize(text)), 1.0))
