"""Q&A extraction: exchanges in, validated knowledge items (:class:`QAItem`) and counted rejects out.

Two backends behind one interface (:class:`Extractor`), measured by the same evaluation:

- :class:`AdjacencyExtractor`: CPU, offline, non-generative. The question is the customer's words
  with fillers and greetings stripped; the answer is the sentence(s) of the agent's reply that carry
  content (numbers, times, prices, named things), with non-answers (``let me check``) dropped. The
  135M model of the CPU stack cannot be trusted to extract facts (MODELS.md): this is the CPU path.
- :class:`LlmExtractor`: an :mod:`ai_serve.llm` chat backend rewrites each exchange as JSON
  ``{"question", "answer", "is_fact"}`` under ``json_schema`` constrained decoding; the output is
  validated with pydantic and the request retried once when it is invalid.

Both run every item through the same :func:`validate_item`: question and answer non-empty, the
language is the exchange's, no PII left (:func:`~pipelines.pii.mask_pii` would change nothing), the
answer does not merely repeat the question. Every exchange ends as exactly one item or one
:class:`Reject` with a reason from :data:`REJECT_REASONS`.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ai_serve.eval.speech import char_errors, normalize
from ai_serve.llm import ChatBackend, LlmError

from .exchanges import (
    detect_language,
    is_backchannel,
    is_polar_answer,
    is_question,
    is_small_talk,
    split_sentences,
    strip_fillers,
    strip_leading_small_talk,
)
from .models import Exchange, Language, QAItem
from .pii import mask_pii

__all__ = [
    "LLM_ANSWER_SCHEMA",
    "REJECT_REASONS",
    "AdjacencyExtractor",
    "ExtractResult",
    "Extractor",
    "LlmExtractor",
    "LlmExtractorStats",
    "Reject",
    "content_sentences",
    "is_non_answer",
    "normalize_question",
    "validate_item",
]

REJECT_REASONS = (
    "empty_question",
    "empty_answer",
    "non_answer",
    "answer_too_short",
    "answer_too_long",
    "language_mismatch",
    "unmasked_pii",
    "answer_repeats_question",
    "not_a_fact",
    "invalid_output",
    "llm_error",
)


@dataclass(frozen=True, slots=True)
class Reject:
    """An exchange that produced no item, and why (``reason`` is one of :data:`REJECT_REASONS`)."""

    reason: str
    exchange: Exchange
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ExtractResult:
    items: list[QAItem] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def reject_counts(self) -> dict[str, int]:
        return dict(Counter(r.reason for r in self.rejects))


# ------------------------------------------------------------------------------ validation
def _language_ok(text: str, language: Language) -> bool:
    letters = re.findall(r"[A-Za-z\uac00-\ud7a3]", text)
    return len(letters) < 3 or detect_language([text]) == language


def _repeats(question: str, answer: str) -> bool:
    """The answer only echoes the question: near-identical text, or no word the question lacks."""
    q, a = "".join(normalize(question)), "".join(normalize(answer))
    if not a:
        return True
    edits, length = char_errors(question, answer)
    if length and edits / max(length, len(a)) <= 0.2:
        return True
    q_words = set(normalize(question))
    a_words = [w for w in normalize(answer) if not is_polar_answer(w)]
    return bool(a_words) and all(w in q_words for w in a_words) and not re.search(r"\d", a.replace(q, ""))


def validate_item(question: str, answer: str, exchange: Exchange) -> Reject | None:
    """The checks every extractor's output passes (see the module docstring); None when it passes."""
    if not question.strip() or len(question.strip()) < 3:
        return Reject("empty_question", exchange)
    if not answer.strip():
        return Reject("empty_answer", exchange)
    if not (_language_ok(question, exchange.language) and _language_ok(answer, exchange.language)):
        return Reject("language_mismatch", exchange, f"expected {exchange.language}")
    for text in (question, answer):
        masked = mask_pii(text, exchange.language)
        if masked.changed:
            return Reject("unmasked_pii", exchange, ",".join(sorted(masked.counts)))
    if _repeats(question, answer):
        return Reject("answer_repeats_question", exchange)
    return None


def _item(question: str, answer: str, exchange: Exchange) -> QAItem:
    return QAItem(
        question=question,
        answer=answer,
        language=exchange.language,
        source_call_ids=(exchange.call_id,),
        first_seen=exchange.answered_at,
        last_seen=exchange.answered_at,
        business_unit=exchange.business_unit,
    )


class Extractor(ABC):
    """Exchanges to validated items; every exchange becomes one item or one reject."""

    name: ClassVar[str]

    @abstractmethod
    def extract(self, exchanges: Sequence[Exchange]) -> ExtractResult:
        """Extract synchronously (a Ray Data stage calls this)."""

    async def aextract(self, exchanges: Sequence[Exchange]) -> ExtractResult:
        """Extract from async code; the default runs :meth:`extract`."""
        return self.extract(exchanges)


# ------------------------------------------------------------------------------- adjacency
_NON_ANSWER = re.compile(
    r"\b(?:let me (?:check|see|look|find out|ask|transfer)|hold on|one (?:moment|second|sec)"
    r"|just a (?:moment|second|sec)|i don't know|i do not know|i'm not sure|i am not sure|not sure"
    r"|i(?:'ll| will) (?:have to )?(?:check|find out|ask|transfer you|get back to you)|i can't say"
    r"|no idea|good question|bear with me|i'll put you through|please hold)\b"
    r"|잠시만|잠깐만|확인해\s?(?:보겠|볼게|드릴게|드리겠)|확인\s?후|모르겠|잘 모르|글쎄요"
    r"|담당자\S*\s?연결|연결해\s?드리|기다려\s?주",
    re.IGNORECASE,
)
_CONTENT = re.compile(
    r"\d|[$€£₩%]|(?-i:(?<=[a-z0-9,] )[A-Z][a-z]+)|\b(?:(?:mon|tues|wednes|thurs|fri|satur|sun)days?"
    r"|weekdays?|weekends?|noon|midnight|morning|afternoon|evening|a\.?m\.?|p\.?m\.?|dollars?|cents?|free"
    r"|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred"
    r"|thousand|half|every|daily|online|website|parking|street|floor|minutes?|hours?|days?|weeks?|months?)\b"
    r"|\[(?:ADDRESS|PHONE|EMAIL|NAME)\]"
    r"|[0-9일이삼사오육칠팔구십백천만]\s?(?:시|분|원|층|번|개|명|일|주|개월|년|살|퍼센트|프로)"
    r"|[월화수목금토일]요일|평일|주말|공휴일|오전|오후|정오|무료|할인|주차|예약|온라인|홈페이지|매일|매주",
    re.IGNORECASE,
)


def is_non_answer(sentence: str) -> bool:
    """``let me check``, ``I don't know``, ``잠시만요``: the agent did not answer (yet)."""
    return bool(_NON_ANSWER.search(sentence))


def normalize_question(question: str, language: Language) -> str:
    """The customer's question without fillers or greetings, ending with a question mark."""
    parts = [strip_leading_small_talk(s) for s in split_sentences(question) if not is_small_talk(s)]
    parts = [p for p in parts if p]
    if parts and is_question(parts[-1], language) and not parts[-1].endswith("?"):
        parts[-1] = parts[-1].rstrip(".!") + "?"
    text = re.sub(r"\s+", " ", " ".join(parts)).strip(" ,")
    return text[:1].upper() + text[1:] if language == "en" else text


_EN_POLAR_PREFIX = re.compile(r"\s*(yes|no)\b[,!]?\s+(?=\S)", re.IGNORECASE)


def content_sentences(answer: str) -> tuple[list[str], bool]:
    """The answer's sentences worth keeping, and whether any non-answer sentence was dropped.

    Sentences with content (numbers, times, prices, named things) are preferred; without any, the
    substantive sentences are kept (``You can park behind the building.``).
    """
    kept: list[str] = []
    dropped_non_answer = False
    for raw in split_sentences(answer):
        if is_backchannel(raw):
            if is_polar_answer(raw):
                kept.append(raw.strip())  # a bare "Yes." / "네": an answer to a yes/no question only
            continue
        prefix = _EN_POLAR_PREFIX.match(raw.strip())  # "Yes, we do": the yes is part of the answer
        s = strip_fillers(raw.strip()[prefix.end() :] if prefix else raw)
        if not s or is_small_talk(s):
            continue
        if prefix:
            s = f"{prefix.group(1).capitalize()}, {s}"
        if is_non_answer(s):
            dropped_non_answer = True
            continue
        kept.append(s[:1].upper() + s[1:] if s[:1].isascii() else s)
    rich = [s for s in kept if _CONTENT.search(s)]
    polar = [s for s in kept if is_polar_answer(s)][:1]
    chosen = rich if rich else kept
    if rich and polar and polar[0] not in rich:
        chosen = polar + rich  # "Yes." then "We open at 10 on Sundays."
    return chosen, dropped_non_answer


class AdjacencyExtractor(Extractor):
    """The offline, non-generative extractor (see the module docstring)."""

    name = "adjacency"

    def __init__(self, *, min_answer_chars: int = 2, max_answer_chars: int = 400) -> None:
        self.min_answer_chars = min_answer_chars
        self.max_answer_chars = max_answer_chars

    def extract_one(self, exchange: Exchange) -> QAItem | Reject:
        question = normalize_question(exchange.question, exchange.language)
        if len(question) < 3:
            return Reject("empty_question", exchange)
        sentences, dropped = content_sentences(exchange.answer)
        answer = " ".join(sentences)
        if not answer:
            return Reject("non_answer" if dropped else "empty_answer", exchange)
        if len(answer) < self.min_answer_chars:
            return Reject("answer_too_short", exchange)
        if len(answer) > self.max_answer_chars:
            return Reject("answer_too_long", exchange, f"{len(answer)} chars")
        if all(is_polar_answer(s) and is_backchannel(s) for s in sentences) and not _polar_question(question):
            return Reject("non_answer", exchange, "a bare yes/no to an open question")
        return validate_item(question, answer, exchange) or _item(question, answer, exchange)

    def extract(self, exchanges: Sequence[Exchange]) -> ExtractResult:
        result = ExtractResult()
        for exchange in exchanges:
            out = self.extract_one(exchange)
            if isinstance(out, Reject):
                result.rejects.append(out)
            else:
                result.items.append(out)
        return result


_POLAR_EN = re.compile(
    r"^(?:do|does|did|is|isn't|are|aren't|was|were|can|could|will|would|should|shall|may|have|has|am)\b",
    re.IGNORECASE,
)
_WH_KO = re.compile(r"언제|얼마|어디|어떻게|어떤|어느|뭐|무엇|무슨|몇|왜|누구")


def _polar_question(question: str) -> bool:
    """A yes/no question (``Do you take walk-ins?``, ``주차 되나요?``)."""
    return bool(_POLAR_EN.match(question)) or (
        bool(re.search(r"[\uac00-\ud7a3]", question)) and not _WH_KO.search(question)
    )


# ------------------------------------------------------------------------------------- LLM
class _LlmAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=3, max_length=300)
    answer: str = Field(min_length=1, max_length=400)
    is_fact: bool


LLM_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 3, "maxLength": 300},
        "answer": {"type": "string", "minLength": 1, "maxLength": 400},
        "is_fact": {"type": "boolean"},
    },
    "required": ["question", "answer", "is_fact"],
}

SYSTEM_PROMPT = (
    "You turn one question and answer from a phone call to a business into a reusable FAQ entry. "
    'Reply with JSON only: {"question": ..., "answer": ..., "is_fact": ...}. '
    "question: the customer's question as a short standalone question. "
    "answer: only what the business said, short, in the same language; do not invent anything. "
    "is_fact: true when the answer states information about the business (hours, prices, services, "
    "policies, locations); false for non-answers, chit-chat or personal matters. "
    "Keep placeholders such as [NAME] or [PHONE] exactly as written."
)


@dataclass(slots=True)
class LlmExtractorStats:
    """Counters over an :class:`LlmExtractor`'s life: requests, retries and why outputs were invalid."""

    requests: int = 0
    retries: int = 0
    invalid_outputs: int = 0
    llm_errors: int = 0


class LlmExtractor(Extractor):
    """Extraction through an :mod:`ai_serve.llm` chat backend (see the module docstring).

    ``max_concurrency`` requests are in flight at once (vLLM batches them; llama.cpp queues them).
    :meth:`extract` runs its own event loop: from async code call :meth:`aextract`.
    """

    name = "llm"

    def __init__(
        self,
        backend: ChatBackend,
        *,
        max_tokens: int = 160,
        max_concurrency: int = 4,
        retries: int = 1,
        seed: int | None = 0,
    ) -> None:
        self.backend = backend
        self.max_tokens = max_tokens
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.seed = seed
        self.stats = LlmExtractorStats()

    @staticmethod
    def messages(exchange: Exchange) -> list[dict[str, str]]:
        language = "Korean" if exchange.language == "ko" else "English"
        user = (
            f"Language: {language}\nCustomer asked: {exchange.question}\nBusiness answered: {exchange.answer}"
        )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    async def _ask(self, exchange: Exchange) -> _LlmAnswer | Reject:
        messages = self.messages(exchange)
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                messages = [
                    *self.messages(exchange),
                    {"role": "user", "content": f"That reply was invalid ({error}). Reply with JSON only."},
                ]
            self.stats.requests += 1
            try:
                result = await self.backend.chat(
                    messages,
                    max_tokens=self.max_tokens,
                    temperature=0.0 if attempt == 0 else 0.3,
                    json_schema=LLM_ANSWER_SCHEMA,
                    seed=self.seed,
                )
            except LlmError as e:
                self.stats.llm_errors += 1
                if not e.retryable:
                    return Reject("llm_error", exchange, str(e)[:200])
                error = "backend error"
                continue
            try:
                if result.finish_reason == "length":
                    raise ValueError("output cut at max_tokens")
                return _LlmAnswer.model_validate(result.json())
            except (ValueError, ValidationError) as e:  # json.JSONDecodeError is a ValueError
                self.stats.invalid_outputs += 1
                error = str(e).splitlines()[0][:120]
        return Reject("invalid_output", exchange, error)

    async def extract_one(self, exchange: Exchange) -> QAItem | Reject:
        out = await self._ask(exchange)
        if isinstance(out, Reject):
            return out
        if not out.is_fact:
            return Reject("not_a_fact", exchange)
        question, answer = out.question.strip(), out.answer.strip()
        return validate_item(question, answer, exchange) or _item(question, answer, exchange)

    async def aextract(self, exchanges: Sequence[Exchange]) -> ExtractResult:
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(exchange: Exchange) -> QAItem | Reject:
            async with gate:
                return await self.extract_one(exchange)

        result = ExtractResult()
        for out in await asyncio.gather(*(one(e) for e in exchanges)):
            if isinstance(out, Reject):
                result.rejects.append(out)
            else:
                result.items.append(out)
        return result

    def extract(self, exchanges: Sequence[Exchange]) -> ExtractResult:
        return asyncio.run(self.aextract(exchanges))
