"""The sample call store: ≥300 seeded calls in the edge's own schema, four businesses in English and
Korean, PII and ASR noise, and gold facts that the calls answer but never ask with a held-out wording."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pbx_edge.ai_link.protocol import TranscriptEvent, TranscriptGap
from pbx_edge.ai_link.transcripts import TranscriptStore
from pbx_edge.ops.models import Event
from pipelines.models import GoldFact
from pipelines.sample_data import (
    BUSINESS_BY_CALLEE,
    DEFAULT_START_DAY,
    GOLD_FILE,
    SampleSummary,
    all_gold_facts,
    generate,
    main,
    read_gold_facts,
)

Store = tuple[Path, SampleSummary]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("noisy")
    return root, generate(root)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("clean")
    return root, generate(root, noise=0.0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


def _calls(root: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        for p in sorted(root.glob("*/*.jsonl"))
    }


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def test_the_store_has_over_300_calls_of_four_businesses_in_two_languages_over_the_days(noisy: Store) -> None:
    root, summary = noisy
    calls = _calls(root)
    assert summary.calls == len(calls) == 320
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == list(summary.days)
    assert summary.days[0] == DEFAULT_START_DAY.isoformat() and len(summary.days) == 7
    languages: Counter[str] = Counter()
    businesses: Counter[str] = Counter()
    for records in calls.values():
        langs = {r["language"] for r in records if r["kind"] == "segment"}
        assert len(langs) == 1  # one language per call
        languages[langs.pop()] += 1
        (callee,) = {r["callee"] for r in records}
        businesses[BUSINESS_BY_CALLEE[callee]] += 1
        assert {r["leg"] for r in records if r["kind"] == "segment"} == {"caller", "callee"}
    assert languages == {"en": 160, "ko": 160} == summary.calls_by_language
    assert businesses == summary.calls_by_business
    assert set(businesses) == {"maple-clinic", "skyline-mobile", "rocket-parcel", "harbor-insurance"}
    assert min(businesses.values()) >= 60
    assert summary.segments == sum(r["kind"] == "segment" for rs in calls.values() for r in rs)
    assert summary.gaps == sum(r["kind"] == "gap" for rs in calls.values() for r in rs) > 0


def test_records_are_what_the_edge_writes_and_the_edge_finds_them(noisy: Store, tmp_path: Path) -> None:
    root, _ = noisy
    call = Event(
        id="e1", name="call.answered", time=1_748_900_000.0, node_id="edge-1", call_id="c1",
        a_call_id="a@x", b_call_id="b@y", caller="1001", callee="1100", data={},
    )  # fmt: skip
    edge = TranscriptStore(tmp_path)
    edge.append(call, TranscriptEvent(final=True, leg="caller", text="hi", start=0.0, end=0.4, id="u1"))
    edge.append(call, TranscriptGap(leg="callee", start=1.0, end=2.0, reason="overflow"))
    segment_keys, gap_keys = (list(r) for r in edge.read("c1", call.time))
    store = TranscriptStore(root)
    for call_id, records in _calls(root).items():
        for r in records:
            assert list(r) == (segment_keys if r["kind"] == "segment" else gap_keys)
            assert r["schema"] == 2 and r["call_id"] == call_id
            assert r["end"] >= r["start"] >= 0
        assert store.find(call_id) == records
        path = store.path_for(call_id, records[0]["answered_at"])
        assert path.exists()  # the day folder is the UTC day of answered_at
    gaps = [r for rs in _calls(root).values() for r in rs if r["kind"] == "gap"]
    assert {g["reason"] for g in gaps} <= {"overflow", "stt_failed", "disconnected"}
    assert all(g["text"] == "" and g["utterance_id"] is None for g in gaps)


def test_same_seed_same_bytes_other_seed_other_calls(noisy: Store, tmp_path: Path) -> None:
    root, summary = noisy
    again = generate(tmp_path / "again")
    assert _files(tmp_path / "again") == _files(root)
    assert (tmp_path / "again" / GOLD_FILE).read_bytes() == (root / GOLD_FILE).read_bytes()
    where = {"root": "", "gold_path": ""}
    assert again.to_json() | where == summary.to_json() | where
    generate(tmp_path / "other", seed=8)
    other = _files(tmp_path / "other")
    assert other.keys() == _files(root).keys()  # ids and days follow the index, the content the seed
    assert sum(other[name] != data for name, data in _files(root).items()) > 300


def test_gold_facts_cover_each_business_and_language(noisy: Store) -> None:
    root, summary = noisy
    gold = read_gold_facts(root)
    assert gold == read_gold_facts(root / GOLD_FILE) == all_gold_facts()  # 320 calls ask every fact
    assert summary.facts == len(gold) == len({f.fact_id for f in gold})
    per = Counter((f.business_unit, f.language) for f in gold)
    assert len(per) == 8 and all(10 <= n <= 15 for n in per.values())
    for fact in gold:
        assert fact.business_unit in BUSINESS_BY_CALLEE.values()
        assert len(fact.paraphrases) >= 2 and len(fact.held_out) >= 2
        assert not set(map(_norm, fact.paraphrases)) & set(map(_norm, fact.held_out))


def _agent_and_customer_text(root: Path) -> dict[tuple[str, str], tuple[str, str]]:
    """(business, language) -> (every agent turn, every customer turn), calls joined by newlines."""
    joined: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for records in _calls(root).values():
        segments = sorted((r for r in records if r["kind"] == "segment"), key=lambda r: r["start"])
        key = (BUSINESS_BY_CALLEE[segments[0]["callee"]], segments[0]["language"])
        agent, customer = joined.setdefault(key, ([], []))
        agent.append(" ".join(r["text"] for r in segments if r["leg"] == "callee"))
        customer.append(" ".join(r["text"] for r in segments if r["leg"] == "caller"))
    return {key: ("\n".join(a), "\n".join(c)) for key, (a, c) in joined.items()}


def test_every_gold_fact_is_answered_by_an_agent_and_asked_by_a_customer(clean: Store) -> None:
    root, _ = clean
    text = _agent_and_customer_text(root)
    for fact in read_gold_facts(root):
        agent, customer = text[(fact.business_unit, fact.language)]
        assert fact.answer in agent, fact.fact_id  # whole, even when split over two turns
        assert any(_norm(p) in _norm(customer) for p in fact.paraphrases), fact.fact_id
        assert fact.answer not in customer


def test_held_out_paraphrases_are_never_said(noisy: Store, clean: Store) -> None:
    gold: list[GoldFact] = read_gold_facts(clean[0])
    for root in (noisy[0], clean[0]):
        blob = _norm("\n".join(r["text"] for rs in _calls(root).values() for r in rs))
        said = [h for fact in gold for h in fact.held_out if _norm(h) in blob]
        assert said == []
    clean_blob = _norm("\n".join(r["text"] for rs in _calls(clean[0]).values() for r in rs))
    assert all(_norm(p) in clean_blob for fact in gold for p in fact.paraphrases[:1])  # the check can fail


PII = {  # digit lookarounds, not \b: Korean letters are word characters
    "rrn": re.compile(r"(?<!\d)\d{6}-[1-4]\d{6}(?!\d)"),
    "email": re.compile(r"[\w.]+@[\w.]+\.[a-z]+"),
    "card": re.compile(r"(?<!\d)\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?!\d)"),
    "ko_phone": re.compile(r"(?<!\d)010-\d{4}-\d{4}(?!\d)"),
    "en_phone": re.compile(r"(?<!\d)555-\d{3}-\d{4}(?!\d)"),
    "address": re.compile(r"\d+ \w+ Street|\S+구 \S+로 \d+"),
}


def test_pii_is_sprinkled_over_the_calls(noisy: Store) -> None:
    texts = [r["text"] for rs in _calls(noisy[0]).values() for r in rs]
    found = {kind: sum(bool(rx.search(t)) for t in texts) for kind, rx in PII.items()}
    assert all(n >= 20 for n in found.values()), found
    calls_with_pii = sum(
        any(rx.search(r["text"]) for rx in PII.values() for r in rs) for rs in _calls(noisy[0]).values()
    )
    assert calls_with_pii >= 200


def test_noise_damages_words_but_not_the_calls_shape_or_numbers(noisy: Store, clean: Store) -> None:
    noisy_calls, clean_calls = _calls(noisy[0]), _calls(clean[0])
    assert noisy_calls.keys() == clean_calls.keys()
    changed = total = 0
    for call_id, records in clean_calls.items():
        by_uid = {r["utterance_id"]: r for r in noisy_calls[call_id]}
        assert len(by_uid) == len(records)
        for r in records:
            if r["kind"] != "segment":
                continue
            heard = by_uid[r["utterance_id"]]
            assert (heard["start"], heard["end"], heard["leg"]) == (r["start"], r["end"], r["leg"])
            assert re.findall(r"\d+", heard["text"]) == re.findall(r"\d+", r["text"])
            total += 1
            changed += heard["text"] != r["text"]
            if heard["text"] != r["text"]:
                assert heard["confidence"] < 0.8
    assert 0.15 < changed / total < 0.8
    words = Counter(w for rs in noisy_calls.values() for r in rs for w in r["text"].split())
    assert words["um"] + words["uh"] > 20 and words["음"] + words["어"] > 20


def test_calls_have_interruptions_and_clarifying_questions(clean: Store) -> None:
    overlaps = clarifying = 0
    for records in _calls(clean[0]).values():
        segments = sorted((r for r in records if r["kind"] == "segment"), key=lambda r: r["start"])
        overlaps += any(
            a["leg"] == "callee" and b["leg"] == "caller" and b["start"] < a["end"]
            for a, b in itertools.pairwise(segments)
        )
        clarifying += any(
            r["leg"] == "callee" and ("Just to make sure" in r["text"] or "문의 말씀이신가요" in r["text"])
            for r in segments
        )
    assert overlaps >= 30 and clarifying >= 30


def test_cli_writes_a_small_store_and_refuses_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store"
    argv = [str(out), "--calls", "12", "--seed", "3", "--start-day", "2025-01-30", "--days", "3"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["calls"] == 12 and summary["days"] == ["2025-01-30", "2025-01-31", "2025-02-01"]
    assert len(list(out.glob("2025-0*/*.jsonl"))) == 12
    assert 0 < len(read_gold_facts(out)) == summary["facts"] <= 36  # only the facts asked
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    with pytest.raises(ValueError):
        generate(tmp_path / "bad", calls=0)
    with pytest.raises(FileExistsError):
        generate(out, start_day=date(2025, 1, 30))
