"""Slot extraction from English and Korean transcripts: phone numbers, numbers, dates, choices."""

from __future__ import annotations

from datetime import date

import pytest

from ai_serve.agents.slots import (
    extract_date,
    extract_number,
    extract_phone,
    extract_slot,
    match_choice,
    normalize,
)

WEDNESDAY = date(2025, 6, 4)
PLANS = {
    "basic": ["basic plan", "cheapest plan", "베이직", "기본 요금제"],
    "unlimited": ["unlimited plan", "unlimited data", "무제한", "무제한 요금제"],
}


def test_normalize() -> None:
    assert normalize("  Hello,   WORLD!  ") == "hello world"
    assert normalize("It's 2.5, ok?") == "it s 2.5 ok"
    full_width = (
        "".join(chr(ord(c) + 0xFEE0) for c in "ABC") + " " + "".join(chr(ord(c) + 0xFEE0) for c in "123")
    )
    assert normalize(full_width) == "abc 123"  # full-width forms from some keyboards


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("my number is 010-1234-5678", "01012345678"),
        ("it's +82 10 1234 5678, thanks", "+821012345678"),
        ("(555) 123-4567", "5551234567"),
        ("five five five one two three four", "5551234"),
        ("oh one oh, double five five, one two three four", "0105551234"),
        ("공일공 일이삼사 오육칠팔이에요", "01012345678"),
        ("제 번호는 공일공 일이삼사에 오육칠팔", "01012345678"),
        ("공 일 공 구 팔 칠 육 오 사 삼 이", "01098765432"),
        ("010 1234 5678 이에요", "01012345678"),
    ],
)
def test_phone(text: str, digits: str) -> None:
    assert extract_phone(text) == digits


@pytest.mark.parametrize(
    "text",
    [
        "call extension 1201",
        "이 번호로 해 주세요",
        "one two three",
        "no number here",
        "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6",
    ],
)
def test_not_a_phone(text: str) -> None:
    assert extract_phone(text) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("I need 2.5 gigabytes", 2.5),
        ("25,000 won", 25000),
        ("twenty five", 25),
        ("one hundred and five lines", 105),
        ("a thousand", 1000),
        ("two hundred thousand", 200000),
        ("세 개요", 3),
        ("두명", 2),
        ("다섯", 5),
        ("열두 명", 12),
        ("스물다섯", 25),
        ("하나요", 1),
        ("삼십오", 35),
        ("2만 5천 원", 25000),
        ("이만오천원", 25000),
        ("네 개 주세요", 4),
    ],
)
def test_number(text: str, value: float) -> None:
    result = extract_number(text)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    "text", ["네 알겠습니다", "세금 얼마예요", "no numbers at all", "an apple", "이 요금제요"]
)
def test_not_a_number(text: str) -> None:
    # "네" alone is "yes", "세금" is "tax": counter forms count only before a counter; "이" alone is "this"
    assert extract_number(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", date(2025, 6, 4)),
        ("tomorrow please", date(2025, 6, 5)),
        ("the day after tomorrow", date(2025, 6, 6)),
        ("Friday", date(2025, 6, 6)),
        ("on Wednesday", date(2025, 6, 4)),  # today is the coming Wednesday
        ("Monday", date(2025, 6, 9)),
        ("next Friday", date(2025, 6, 13)),
        ("this Friday", date(2025, 6, 6)),
        ("in 3 days", date(2025, 6, 7)),
        ("June 13th", date(2025, 6, 13)),
        ("the 3rd of July", date(2025, 7, 3)),
        ("May 1", date(2026, 5, 1)),  # passed this year: next year
        ("6/20", date(2025, 6, 20)),
        ("2025-07-01", date(2025, 7, 1)),
        ("오늘", date(2025, 6, 4)),
        ("내일이요", date(2025, 6, 5)),
        ("모레", date(2025, 6, 6)),
        ("내일모레", date(2025, 6, 6)),
        ("글피", date(2025, 6, 7)),
        ("금요일에요", date(2025, 6, 6)),
        ("다음 주 금요일", date(2025, 6, 13)),
        ("이번 주 토요일", date(2025, 6, 7)),
        ("6월 13일", date(2025, 6, 13)),
        ("13일부터", date(2025, 6, 13)),
        ("3일", date(2025, 7, 3)),  # the 3rd has passed this month
    ],
)
def test_date(text: str, expected: date) -> None:
    assert extract_date(text, WEDNESDAY) == expected


@pytest.mark.parametrize("text", ["sometime soon", "2025-02-30", "February 30", "요일은 몰라요"])
def test_not_a_date(text: str) -> None:
    assert extract_date(text, WEDNESDAY) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("switch me to unlimited", "unlimited"),
        ("the unlimted one", "unlimited"),  # a misspelt transcript
        ("Unlimited Plan.", "unlimited"),
        ("the cheapest plan please", "basic"),
        ("무제한으로 바꿔 주세요", "unlimited"),
        ("베이직 요금제요", "basic"),
        ("기본 요금제로요", "basic"),
    ],
)
def test_choice(text: str, value: str) -> None:
    assert match_choice(text, PLANS) == value


@pytest.mark.parametrize("text", ["basic or unlimited?", "the premium one", "프리미엄", ""])
def test_no_choice(text: str) -> None:
    assert match_choice(text, PLANS) is None


def test_extract_slot_dispatches_by_type() -> None:
    assert extract_slot("phone", "010 1234 5678", WEDNESDAY) == "01012345678"
    assert extract_slot("number", "twenty", WEDNESDAY) == 20
    assert extract_slot("date", "내일", WEDNESDAY) == date(2025, 6, 5)
    assert extract_slot("choice", "무제한", WEDNESDAY, PLANS) == "unlimited"
    assert extract_slot("string", "  Gangnam station  ", WEDNESDAY) == "Gangnam station"
    assert extract_slot("string", "   ", WEDNESDAY) is None
    with pytest.raises(ValueError, match="unknown slot type"):
        extract_slot("colour", "red", WEDNESDAY)
