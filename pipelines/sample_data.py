"""A seeded sample call store: two-party calls to four fictional businesses in English and Korean,
and the gold facts behind them (the knowledge pipeline's demo data and its evaluation's ground truth).

Layout (the edge's call store, pbx_edge/ai_link/transcripts.py, schema 2)::

    <root>/<YYYY-MM-DD>/<call_id>.jsonl   one record per final segment or gap, in arrival order
    <root>/gold_facts.jsonl               one GoldFact per line (the facts the calls actually asked)

The caller is always the customer and the callee the agent; the callee number says which business was
called (:data:`BUSINESS_BY_CALLEE`). Both legs' clocks start when the call is answered. Calls mix small
talk, PII (names, phone numbers, e-mail and postal addresses, card numbers, Korean resident registration
numbers), one to three questions asked with a fact's paraphrase, answers split over two turns, after a
clarifying question or after the customer interrupts, ASR-like noise and the odd gap. A fact's
``held_out`` paraphrases are never said in a call. Same arguments, same bytes.

CLI: ``python -m pipelines.sample_data OUT --calls 320 --seed 7``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pipelines._sample_content import BUSINESSES, TEXT, BusinessSpec, FactSpec
from pipelines.models import GoldFact, Language

__all__ = [
    "BUSINESS_BY_CALLEE",
    "DEFAULT_START_DAY",
    "GOLD_FILE",
    "SampleSummary",
    "all_gold_facts",
    "generate",
    "main",
    "read_gold_facts",
]

BUSINESS_BY_CALLEE: dict[str, str] = {b.callee: b.unit for b in BUSINESSES}
"""Callee number -> business unit: 1100 maple-clinic, 1200 skyline-mobile, 1300 rocket-parcel,
1400 harbor-insurance."""

DEFAULT_START_DAY = date(2025, 6, 2)
GOLD_FILE = "gold_facts.jsonl"
SCHEMA_VERSION = 2  # pbx_edge.ai_link.transcripts.SCHEMA_VERSION
DEFAULT_NOISE = 0.06

_Leg = Literal["caller", "callee"]
_CUSTOMER: _Leg = "caller"
_AGENT: _Leg = "callee"
_GAP_REASONS = ("overflow", "stt_failed", "disconnected")

_AGENTS: dict[Language, tuple[str, ...]] = {
    "en": ("Jenny", "Mark", "Priya", "Tom", "Alicia", "Daniel"),
    "ko": ("김지은", "박상민", "이수진", "최영호", "정미래", "한동욱"),
}
_EN_FIRST = ("Emma", "Liam", "Olivia", "Noah", "Ava", "Ethan", "Sophia", "Mason", "Mia", "Lucas", "Grace")
_EN_LAST = ("Carter", "Nguyen", "Patel", "Johnson", "Garcia", "Walker", "Brooks", "Romero", "Fischer")
_EN_STREETS = ("Oak", "Maple", "Cedar", "Lakeview", "Hillcrest", "Pine", "Elm", "Sunset")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December")  # fmt: skip
_KO_NAMES = (  # (name, romanized for e-mail addresses)
    ("김민준", "minjun.kim"), ("이서연", "seoyeon.lee"), ("박지훈", "jihoon.park"), ("최수아", "sua.choi"),
    ("정도윤", "doyun.jung"), ("강하은", "haeun.kang"), ("조예준", "yejun.cho"), ("윤지우", "jiwoo.yoon"),
    ("장서준", "seojun.jang"), ("임하린", "harin.lim"), ("오지민", "jimin.oh"), ("신유나", "yuna.shin"),
)  # fmt: skip
_KO_DISTRICTS = ("마포구", "강남구", "송파구", "서초구", "관악구", "은평구", "성동구")
_KO_ROADS = ("월드컵로", "테헤란로", "올림픽로", "반포대로", "관악로", "통일로", "왕십리로")
_EMAIL_DOMAINS = {"en": ("example.com", "mail.example.org"), "ko": ("example.co.kr", "mail.example.kr")}


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`generate` wrote."""

    root: Path
    gold_path: Path
    calls: int
    segments: int
    gaps: int
    facts: int  # gold facts written (those asked in at least one call)
    days: tuple[str, ...]
    calls_by_business: dict[str, int] = field(default_factory=dict)
    calls_by_language: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "gold_path": str(self.gold_path),
            "calls": self.calls,
            "segments": self.segments,
            "gaps": self.gaps,
            "facts": self.facts,
            "days": list(self.days),
            "calls_by_business": dict(self.calls_by_business),
            "calls_by_language": dict(self.calls_by_language),
        }


def fact_id(business: BusinessSpec, language: Language, fact: FactSpec) -> str:
    return f"{business.unit}-{language}-{fact.key}"


def _gold(business: BusinessSpec, language: Language, fact: FactSpec) -> GoldFact:
    return GoldFact(
        fact_id=fact_id(business, language, fact),
        business_unit=business.unit,
        language=language,
        question=fact.question,
        answer=" ".join(fact.answer),
        paraphrases=fact.paraphrases,
        held_out=fact.held_out,
    )


def all_gold_facts() -> list[GoldFact]:
    """Every fact of the content tables (a generated store's gold file holds those its calls asked)."""
    return [
        _gold(business, language, fact)
        for business in BUSINESSES
        for language, facts in business.facts.items()
        for fact in facts
    ]


def read_gold_facts(path: Path | str) -> list[GoldFact]:
    """The gold facts of a sample store (its ``gold_facts.jsonl``, or the root folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / GOLD_FILE
    lines = path.read_text(encoding="utf-8").splitlines()
    return [GoldFact.model_validate_json(line) for line in lines if line.strip()]


@dataclass
class _Utterance:
    leg: _Leg
    text: str
    start: float
    end: float
    kind: Literal["segment", "gap"] = "segment"
    reason: str | None = None


@dataclass(frozen=True)
class _Person:
    name: str
    phone: str
    email: str
    address: str
    card: str
    expiry: str
    rrn: str
    birthday: str


def _person(rng: random.Random, language: Language) -> _Person:
    year, month, day = rng.randint(1955, 2004), rng.randint(1, 12), rng.randint(1, 28)
    if language == "en":
        first, last = rng.choice(_EN_FIRST), rng.choice(_EN_LAST)
        name, handle = f"{first} {last}", f"{first.lower()}.{last.lower()}"
        phone = f"555-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
        address = (
            f"{rng.randint(10, 9999)} {rng.choice(_EN_STREETS)} Street, Apt {rng.randint(1, 40)}, Springfield"
        )
        card = " ".join(["4" + _digits(rng, 3)] + [_digits(rng, 4) for _ in range(3)])
    else:
        name, handle = rng.choice(_KO_NAMES)
        phone = f"010-{rng.randint(2000, 9999)}-{rng.randint(1000, 9999)}"
        address = (
            f"서울시 {rng.choice(_KO_DISTRICTS)} {rng.choice(_KO_ROADS)} {rng.randint(1, 300)}, "
            f"{rng.randint(101, 115)}동 {rng.randint(1, 25)}{rng.randint(1, 4):02d}호"
        )
        card = "-".join(["9" + _digits(rng, 3)] + [_digits(rng, 4) for _ in range(3)])
    sex = rng.randint(1, 2) + (2 if year >= 2000 else 0)
    rrn = f"{year % 100:02d}{month:02d}{day:02d}-{sex}{_digits(rng, 6)}"
    email = f"{handle}{rng.randint(1, 99)}@{rng.choice(_EMAIL_DOMAINS[language])}"
    expiry = f"{rng.randint(1, 12):02d}/{rng.randint(26, 31)}"
    birthday = f"{_EN_MONTHS[month - 1]} {day}, {year}" if language == "en" else f"{year}년 {month}월 {day}일"
    return _Person(name, phone, email, address, card, expiry, rrn, birthday)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randint(0, 9)) for _ in range(n))


def _duration(text: str, language: Language) -> float:
    if language == "en":
        return 0.25 + 0.33 * len(text.split())
    return 0.25 + 0.14 * len(text.replace(" ", ""))


class _Dialogue:
    """Lays utterances out on the call's timeline (seconds since answer, both legs)."""

    def __init__(self, rng: random.Random, language: Language) -> None:
        self.rng = rng
        self.language = language
        self.t = round(rng.uniform(0.3, 1.2), 3)
        self.utterances: list[_Utterance] = []

    def say(self, leg: _Leg, text: str) -> None:
        start, end = self.t, self.t + _duration(text, self.language)
        self.utterances.append(_Utterance(leg, text, round(start, 3), round(end, 3)))
        self.t = round(end + self.rng.uniform(0.2, 0.9), 3)

    def cut_off(self, fragment: str, interruption: str) -> None:
        """The agent starts ``fragment``; the customer talks over its last part."""
        start, end = self.t, self.t + _duration(fragment, self.language)
        overlap_at = start + 0.65 * (end - start)
        cut_end = overlap_at + _duration(interruption, self.language)
        self.utterances.append(_Utterance(_AGENT, fragment, round(start, 3), round(end, 3)))
        self.utterances.append(_Utterance(_CUSTOMER, interruption, round(overlap_at, 3), round(cut_end, 3)))
        self.t = round(max(end, cut_end) + self.rng.uniform(0.2, 0.6), 3)

    def gap(self, leg: _Leg, reason: str) -> None:
        start, end = self.t, self.t + self.rng.uniform(1.5, 6.0)
        self.utterances.append(_Utterance(leg, "", round(start, 3), round(end, 3), kind="gap", reason=reason))
        self.t = round(end + self.rng.uniform(0.2, 0.6), 3)


class _FactDeck:
    """Hands out a (business, language)'s facts round-robin in a shuffled order, so that every fact is
    asked once the calls are many enough; paraphrases of a fact likewise in turn."""

    def __init__(self, rng: random.Random, facts: tuple[FactSpec, ...]) -> None:
        self.rng = rng
        self.facts = facts
        self.order: list[int] = []
        self.asked: Counter[str] = Counter()

    def draw(self, count: int) -> list[FactSpec]:
        picked: list[FactSpec] = []
        while len(picked) < min(count, len(self.facts)):
            if not self.order:
                self.order = list(range(len(self.facts)))
                self.rng.shuffle(self.order)
            fact = self.facts[self.order.pop()]
            if fact in picked:
                self.order.insert(0, self.facts.index(fact))
                continue
            picked.append(fact)
        return picked

    def paraphrase(self, fact: FactSpec) -> str:
        text = fact.paraphrases[self.asked[fact.key] % len(fact.paraphrases)]
        self.asked[fact.key] += 1
        return text


def _follow_up(lead_in: str, question: str, language: Language) -> str:
    if language == "en" and not re.match(r"I\b", question):
        question = question[0].lower() + question[1:]
    return lead_in + question


def _conversation(
    rng: random.Random, business: BusinessSpec, language: Language, deck: _FactDeck, person: _Person
) -> tuple[_Dialogue, list[FactSpec]]:
    text = TEXT[language]
    dialogue = _Dialogue(rng, language)
    agent = rng.choice(_AGENTS[language])
    display = business.display[language]
    pii = {
        "name": person.name, "phone": person.phone, "email": person.email, "address": person.address,
        "card": person.card, "expiry": person.expiry, "rrn": person.rrn, "birthday": person.birthday,
    }  # fmt: skip
    dialogue.say(_AGENT, rng.choice(text.greetings).format(business=display, agent=agent))
    if rng.random() < 0.5:
        customer, reply = rng.choice(text.small_talk)
        dialogue.say(_CUSTOMER, customer)
        dialogue.say(_AGENT, reply)
    for ask, answer in rng.sample(text.verification, rng.choice((0, 1, 1, 2, 2, 3))):
        dialogue.say(_AGENT, ask)
        dialogue.say(_CUSTOMER, answer.format(**pii))
    facts = deck.draw(rng.choices((1, 2, 3), weights=(3, 4, 3))[0])
    gap_at = rng.randrange(len(facts)) if rng.random() < 0.08 else -1
    for i, fact in enumerate(facts):
        question = deck.paraphrase(fact)
        if i:
            question = _follow_up(rng.choice(text.lead_ins), question, language)
        dialogue.say(_CUSTOMER, question)
        if gap_at == i:
            dialogue.gap(rng.choice((_CUSTOMER, _AGENT)), rng.choice(_GAP_REASONS))
        answer = " ".join(fact.answer)
        style = rng.choices(("plain", "split", "clarify", "interrupt"), weights=(45, 20, 15, 20))[0]
        if style == "split" and len(fact.answer) > 1:
            dialogue.say(_AGENT, rng.choice(text.prefaces) + fact.answer[0])
            dialogue.say(_CUSTOMER, rng.choice(text.backchannels))
            dialogue.say(_AGENT, " ".join(fact.answer[1:]))
        elif style == "clarify":
            dialogue.say(_AGENT, text.clarify.format(topic=fact.topic))
            dialogue.say(_CUSTOMER, rng.choice(text.confirm))
            dialogue.say(_AGENT, rng.choice(text.prefaces) + answer)
        elif style == "interrupt":
            words = fact.answer[0].split()
            fragment = " ".join(words[: max(2, len(words) // 2)])
            dialogue.cut_off(fragment, rng.choice(text.interruptions))
            dialogue.say(_AGENT, rng.choice(text.resume) + answer)
        else:
            dialogue.say(_AGENT, rng.choice(text.prefaces) + answer)
        if rng.random() < 0.7:
            dialogue.say(_CUSTOMER, rng.choice(text.thanks))
    customer, reply = rng.choice(text.closings)
    dialogue.say(_CUSTOMER, customer)
    dialogue.say(_AGENT, reply.format(business=display))
    return dialogue, facts


_TRAILING_PUNCT = re.compile(r"[.,?!](?=\s|$)")


def _noisy(text: str, language: Language, rng: random.Random, rate: float) -> str:
    """ASR-like damage: dropped, misheard and filler words; lost punctuation and case. Words with
    digits survive (the facts' numbers stay right)."""
    if rate <= 0:
        return text
    table = TEXT[language]
    words = text.split()
    out: list[str] = []
    for word in words:
        roll = rng.random()
        core = word.rstrip(".,?!")
        if any(c.isdigit() for c in word) or roll >= rate:
            out.append(word)
        elif roll < rate * 0.35 and len(words) > 3:
            continue  # dropped
        elif roll < rate * 0.7:
            heard = table.confusions.get(core.lower() if language == "en" else core)
            out.append(heard + word[len(core) :] if heard else word)
        else:
            out.extend((rng.choice(table.fillers), word))
    noisy = " ".join(out)
    if rng.random() < min(1.0, rate * 5):
        noisy = _TRAILING_PUNCT.sub("", noisy)
    if language == "en" and rng.random() < min(1.0, rate * 5):
        noisy = noisy.lower()
    return noisy


def _records(
    call_id: str,
    meta: dict[str, Any],
    dialogue: _Dialogue,
    language: Language,
    noise_rng: random.Random,
    noise: float,
) -> list[dict[str, Any]]:
    answered_at = float(meta["answered_at"])
    rows: list[tuple[float, int, dict[str, Any]]] = []
    for n, utt in enumerate(dialogue.utterances):
        received_at = round(answered_at + utt.end + noise_rng.uniform(0.3, 1.5), 3)
        record: dict[str, Any] = {"schema": SCHEMA_VERSION, "call_id": call_id, **meta}
        record.update(
            kind=utt.kind, leg=utt.leg, speaker=None, text="", start=utt.start, end=utt.end, confidence=None,
            language=None, utterance_id=None, reason=utt.reason, received_at=received_at,
        )  # fmt: skip
        if utt.kind == "segment":
            text = _noisy(utt.text, language, noise_rng, noise)
            confidence = noise_rng.uniform(0.86, 0.98) - (0.2 if text != utt.text else 0.0)
            record.update(
                text=text, confidence=round(confidence, 3), language=language, utterance_id=f"{call_id}-u{n}"
            )
        rows.append((received_at, n, record))
    rows.sort(key=lambda row: (row[0], row[1]))  # the order the edge appended them in
    return [record for _, _, record in rows]


def generate(
    root: Path | str,
    *,
    calls: int = 320,
    seed: int = 7,
    start_day: date = DEFAULT_START_DAY,
    days: int = 7,
    noise: float = DEFAULT_NOISE,
    overwrite: bool = False,
) -> SampleSummary:
    """Write ``calls`` calls over ``days`` UTC days from ``start_day`` under ``root``, and the gold facts
    they ask. ``noise`` is the per-word rate of ASR damage (0: the clean script; the calls' structure
    does not depend on it). Refuses a non-empty ``root`` unless ``overwrite`` (same-named files are
    replaced, nothing is deleted)."""
    if calls < 1 or days < 1:
        raise ValueError("calls and days must be at least 1")
    if not 0 <= noise <= 1:
        raise ValueError("noise is a rate in [0, 1]")
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty (pass overwrite=True / --force to write into it)")
    rng = random.Random(seed)
    noise_rng = random.Random(f"{seed}/asr-noise")
    languages: tuple[Language, ...] = ("en", "ko")
    combos = [(b, lang) for b in BUSINESSES for lang in languages]
    plan: list[tuple[BusinessSpec, Language]] = [combos[i % len(combos)] for i in range(calls)]
    rng.shuffle(plan)
    decks = {(b.unit, lang): _FactDeck(rng, b.facts[lang]) for b, lang in combos}
    asked: set[str] = set()
    segments = gaps = 0
    by_business: Counter[str] = Counter()
    by_language: Counter[str] = Counter()
    day_names: list[str] = []
    for d in range(min(days, calls)):
        day_names.append((start_day + timedelta(days=d)).isoformat())
    for index, (business, language) in enumerate(plan):
        day = start_day + timedelta(days=index % days)
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        answered_at = round(midnight + rng.uniform(3600.0, 22 * 3600.0), 3)
        call_id = f"call-{day:%Y%m%d}-{index:04d}"
        person = _person(rng, language)
        meta = {
            "a_call_id": f"{rng.getrandbits(64):016x}@198.51.100.{rng.randint(2, 250)}",
            "b_call_id": f"{rng.getrandbits(64):016x}@smartpbx",
            "node_id": rng.choice(("edge-1", "edge-2")),
            "caller": person.phone.replace("-", ""),
            "callee": business.callee,
            "answered_at": answered_at,
        }
        dialogue, facts = _conversation(rng, business, language, decks[(business.unit, language)], person)
        asked.update(fact_id(business, language, fact) for fact in facts)
        records = _records(call_id, meta, dialogue, language, noise_rng, noise)
        path = root / day.isoformat() / f"{call_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as out:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        segments += sum(r["kind"] == "segment" for r in records)
        gaps += sum(r["kind"] == "gap" for r in records)
        by_business[business.unit] += 1
        by_language[language] += 1
    gold = [fact for fact in all_gold_facts() if fact.fact_id in asked]
    gold_path = root / GOLD_FILE
    with gold_path.open("w", encoding="utf-8", newline="\n") as out:
        out.writelines(json.dumps(fact.model_dump(mode="json"), ensure_ascii=False) + "\n" for fact in gold)
    return SampleSummary(
        root=root,
        gold_path=gold_path,
        calls=calls,
        segments=segments,
        gaps=gaps,
        facts=len(gold),
        days=tuple(day_names),
        calls_by_business=dict(sorted(by_business.items())),
        calls_by_language=dict(sorted(by_language.items())),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipelines.sample_data OUT [--calls N] [--seed S] [--start-day D] [--days N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.sample_data", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("out", type=Path, help="the call store's root folder to write")
    parser.add_argument("--calls", type=int, default=320)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start-day", type=date.fromisoformat, default=DEFAULT_START_DAY, help="YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE, help="per-word ASR noise rate")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder")
    args = parser.parse_args(argv)
    try:
        summary = generate(
            args.out, calls=args.calls, seed=args.seed, start_day=args.start_day, days=args.days,
            noise=args.noise, overwrite=args.force,
        )  # fmt: skip
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
