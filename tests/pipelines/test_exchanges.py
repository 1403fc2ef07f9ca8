"""Segmentation of hand-built calls into question/answer exchanges (both languages)."""

from __future__ import annotations

import pytest

from pipelines.exchanges import (
    detect_language,
    is_backchannel,
    is_question,
    is_small_talk,
    segment_exchanges,
    split_sentences,
    strip_fillers,
)
from pipelines.models import CallRecord, Leg, Turn


def make_call(
    *turns: tuple[Leg, str], call_id: str = "c1", business_unit: str | None = "dental"
) -> CallRecord:
    """A call whose turns last 1 s each, 0.5 s apart, in the given order."""
    out = [Turn(leg=leg, text=text, start=i * 1.5, end=i * 1.5 + 1.0) for i, (leg, text) in enumerate(turns)]
    return CallRecord(
        call_id=call_id,
        day="2025-01-02",
        answered_at=1_735_800_000.0,
        turns=tuple(out),
        business_unit=business_unit,
    )


def qa(call: CallRecord, **kwargs: object) -> list[tuple[str, str]]:
    return [(e.question, e.answer) for e in segment_exchanges(call, **kwargs)]  # type: ignore[arg-type]


def test_adjacency_pairs_with_metadata() -> None:
    call = make_call(
        ("callee", "Thank you for calling Bright Dental, how can I help you?"),
        ("caller", "What time do you open on Saturdays?"),
        ("callee", "We open at 9 on Saturdays."),
        ("caller", "How much is a cleaning?"),
        ("callee", "A cleaning is $120."),
    )
    exchanges = segment_exchanges(call)
    assert [(e.question, e.answer) for e in exchanges] == [
        ("What time do you open on Saturdays?", "We open at 9 on Saturdays."),
        ("How much is a cleaning?", "A cleaning is $120."),
    ]
    first = exchanges[0]
    assert first.language == "en" and first.asked_by == "caller" and first.call_id == "c1"
    assert first.business_unit == "dental" and first.answered_at == call.answered_at
    assert (first.start, first.end) == (1.5, 4.0)


def test_answer_split_over_turns_with_backchannel_is_merged() -> None:
    call = make_call(
        ("caller", "um so what time do you open on saturdays"),
        ("callee", "On Saturdays we open at 9"),
        ("caller", "uh huh"),
        ("callee", "and we close at 2 pm."),
        ("caller", "okay great"),
    )
    assert qa(call) == [
        ("um so what time do you open on saturdays?", "On Saturdays we open at 9 and we close at 2 pm.")
    ]


def test_clarifying_question_is_skipped_and_reply_joins_question() -> None:
    call = make_call(
        ("caller", "How much is a cleaning?"),
        ("callee", "For adults or children?"),
        ("caller", "Adults."),
        ("callee", "It's $120 for adults. Anything else?"),
    )
    assert qa(call) == [("How much is a cleaning? Adults.", "It's $120 for adults.")]


def test_agent_questions_never_open_an_exchange() -> None:
    call = make_call(
        ("callee", "Can I have your date of birth?"),
        ("caller", "It's March 3rd."),
        ("callee", "Would you like the morning or the afternoon?"),
        ("caller", "Morning, please."),
    )
    assert qa(call) == []


def test_small_talk_is_excluded() -> None:
    call = make_call(
        ("caller", "Hi, how are you?"),
        ("callee", "I'm good, thanks. How can I help?"),
        ("caller", "Hi! Do you take walk-ins?"),
        ("callee", "Yes, we take walk-ins until 5 pm."),
        ("caller", "Thank you so much!"),
        ("callee", "You're welcome, have a nice day."),
    )
    assert qa(call) == [("Do you take walk-ins?", "Yes, we take walk-ins until 5 pm.")]


def test_bare_yes_is_an_answer_when_nothing_else_answers() -> None:
    call = make_call(("caller", "Do you have parking?"), ("callee", "Yes."), ("caller", "Great."))
    assert qa(call) == [("Do you have parking?", "Yes.")]


def test_unanswered_question_and_new_customer_statement() -> None:
    call = make_call(
        ("caller", "Do you sell gift cards?"),
        ("caller", "Never mind. What are your hours?"),  # asked again before any answer: one question
        ("callee", "We're open 9 to 6."),
        ("caller", "I'll come tomorrow then."),  # the customer moved on: the exchange is closed
        ("callee", "We also have a sale this week."),
        ("caller", "Is there a fee for late cancellations?"),
    )
    assert qa(call) == [("Do you sell gift cards? Never mind. What are your hours?", "We're open 9 to 6.")]


def test_customer_leg_can_be_the_callee() -> None:
    call = make_call(("callee", "When is my order arriving?"), ("caller", "It ships on Monday."))
    assert qa(call) == []
    assert qa(call, customer_leg="callee") == [("When is my order arriving?", "It ships on Monday.")]


def test_korean_call() -> None:
    call = make_call(
        ("callee", "안녕하세요 스마트치과입니다 무엇을 도와드릴까요"),
        ("caller", "네 안녕하세요 혹시 토요일에도 진료하나요"),
        ("callee", "네"),
        ("callee", "토요일은 오전 9시부터 오후 2시까지 진료해요"),
        ("caller", "네"),
        ("caller", "스케일링 가격이 얼마예요"),
        ("callee", "성인이세요?"),
        ("caller", "네 성인이요"),
        ("callee", "성인은 3만원입니다"),
        ("caller", "주차 되나요"),
        ("callee", "네"),
        ("caller", "감사합니다"),
        ("callee", "감사합니다 좋은 하루 되세요"),
    )
    exchanges = segment_exchanges(call)
    assert {e.language for e in exchanges} == {"ko"}
    assert [(e.question, e.answer) for e in exchanges] == [
        ("네 안녕하세요 혹시 토요일에도 진료하나요?", "토요일은 오전 9시부터 오후 2시까지 진료해요."),
        ("스케일링 가격이 얼마예요? 네 성인이요.", "성인은 3만원입니다."),
        ("주차 되나요?", "네."),
    ]


def test_language_override_and_detection() -> None:
    call = make_call(("caller", "What time do you open?"), ("callee", "At 9."))
    assert segment_exchanges(call, "ko")[0].language == "ko"
    assert detect_language(["안녕하세요 What time"]) == "ko"
    assert detect_language(["What time do you open? 네"]) == "en"
    assert detect_language([]) == "en"


@pytest.mark.parametrize(
    "text",
    [
        "What time do you open?",
        "what time do you open",
        "um so where are you located",
        "Do you take insurance",
        "Is there parking nearby",
        "Can you tell me the price of the premium plan",
        "I'd like to know your hours on Sunday",
        "I was wondering if you deliver",
        "Have you got any openings tomorrow",
        "토요일에도 진료하나요",
        "주차 가능할까요",
        "가격이 얼마예요",
        "언제 문을 열어요",
        "어디에 있어요",
        "예약은 어떻게 해요",
        "영업시간이 궁금해요",
        "몇 시까지 하세요?",
        "취소 수수료가 있습니까",
    ],
)
def test_questions(text: str) -> None:
    assert is_question(text)


@pytest.mark.parametrize(
    "text",
    [
        "We open at 9.",
        "When you arrive, check in at the front desk.",
        "What a deal.",
        "Have a look at our website.",
        "How are you?",
        "Thank you so much!",
        "9시에 열어요",
        "언제든지 오시면 돼요",
        "감사합니다",
        "안녕하세요",
    ],
)
def test_not_questions(text: str) -> None:
    assert not is_question(text)


def test_strict_mode_for_answers() -> None:
    # "몇 분" is also "a few minutes": on the answering leg only strong cues count.
    assert is_question("몇 분 정도 걸려요")
    assert not is_question("몇 분 정도 걸려요", strict=True)
    assert is_question("어떤 걸로 하시겠어요?", strict=True)


def test_backchannels_small_talk_fillers_and_sentences() -> None:
    for text in ("uh huh", "Okay.", "mm-hmm, right", "네", "네 네", "아 그렇군요", "알겠습니다", ""):
        assert is_backchannel(text), text
    for text in ("We open at 9", "네 9시에 열어요", "okay so the price is $39"):
        assert not is_backchannel(text), text
    assert is_small_talk("Hi, how are you?") and is_small_talk("안녕하세요, 감사합니다")
    assert not is_small_talk("Hi, what time do you open?")
    assert strip_fillers("um, uh so well what time do you um open") == "what time do you open"
    assert strip_fillers("음 저기 혹시 주차 되나요") == "주차 되나요"
    assert split_sentences("We open at 9. We close at 6! Why?Yes") == [
        "We open at 9.",
        "We close at 6!",
        "Why?",
        "Yes",
    ]
    assert split_sentences("네 9시에 열어요") == ["네 9시에 열어요"]


def test_a_cut_off_answer_is_dropped_and_the_repetition_kept() -> None:
    turns = (
        Turn(leg="caller", text="How long until I get my lab results?", start=0.0, end=2.0),
        Turn(leg="callee", text="Blood results are usually", start=2.5, end=4.5),
        Turn(leg="caller", text="Hold on, sorry, can you say that again?", start=3.8, end=5.5),  # talks over
        Turn(
            leg="callee", text="Of course. Blood results are usually ready in two days.", start=6.0, end=9.0
        ),
        Turn(leg="caller", text="Is parking free?", start=10.0, end=11.0),
        Turn(leg="callee", text="Parking is free for patients.", start=11.5, end=13.0),
    )
    call = CallRecord(call_id="c9", day="2025-01-02", answered_at=1.0, turns=turns)
    assert qa(call) == [
        ("How long until I get my lab results?", "Of course. Blood results are usually ready in two days."),
        ("Is parking free?", "Parking is free for patients."),
    ]


def test_repeat_request_without_overlap_and_in_korean() -> None:
    call = make_call(
        ("caller", "주차 되나요?"),
        ("callee", "네 주차는 두 시간 무료입니다."),
        ("caller", "네? 죄송한데 다시 한 번만요."),
        ("callee", "주차는 두 시간까지 무료입니다."),
    )
    assert qa(call) == [("주차 되나요?", "주차는 두 시간까지 무료입니다.")]


def test_clarifying_check_without_question_mark_and_its_confirmation() -> None:
    call = make_call(
        ("caller", "when does a new driver get covered"),
        ("callee", "just to make sure you're asking about adding a driver"),
        ("caller", "yes exactly"),
        ("callee", "a new driver is covered from midnight after you add them"),
    )
    assert qa(call) == [
        ("when does a new driver get covered?", "a new driver is covered from midnight after you add them.")
    ]
    korean = make_call(
        ("caller", "무료 견인 몇 번 돼요?"),
        ("callee", "긴급출동 문의 말씀이신가요"),
        ("caller", "네 맞아요."),
        ("callee", "긴급출동은 연 6회까지 무료입니다."),
    )
    assert qa(korean) == [("무료 견인 몇 번 돼요?", "긴급출동은 연 6회까지 무료입니다.")]
