"""PII masking in English and Korean: what must be masked, and business facts that must not be."""

from __future__ import annotations

import pytest

from pipelines.pii import MaskResult, luhn_valid, mask_pii

# (text, expected masked text, expected counts)
MASKED_EN = [
    ("My name is John Smith.", "My name is [NAME].", {"NAME": 1}),
    (
        "my name is john smith, calling about my order",
        "my name is [NAME], calling about my order",
        {"NAME": 1},
    ),
    ("Hi, this is Sarah from Acme.", "Hi, this is [NAME] from Acme.", {"NAME": 1}),
    ("I'm John Smith, I booked a table.", "I'm [NAME], I booked a table.", {"NAME": 1}),
    ("It's under the name Jennifer Lopez.", "It's under the name [NAME].", {"NAME": 1}),
    ("Dr. Kim is in on Mondays.", "Dr. [NAME] is in on Mondays.", {"NAME": 1}),
    ("Please ask for Mike.", "Please ask for [NAME].", {"NAME": 1}),
    ("That's S-M-I-T-H.", "That's [NAME].", {"NAME": 1}),
    ("Email me at john.smith@example.com please", "Email me at [EMAIL] please", {"EMAIL": 1}),
    ("it's john dot smith at gmail dot com", "it's [EMAIL]", {"EMAIL": 1}),
    ("Call me at (415) 555-0132.", "Call me at [PHONE].", {"PHONE": 1}),
    ("my cell is 415-555-0132", "my cell is [PHONE]", {"PHONE": 1}),
    ("reach me on +1 415 555 0132", "reach me on [PHONE]", {"PHONE": 1}),
    ("my UK number is +44 20 7946 0958", "my UK number is [PHONE]", {"PHONE": 1}),
    (
        "my number is zero one zero, one two three four, five six seven eight",
        "my number is [PHONE]",
        {"PHONE": 1},
    ),
    ("four one five five five five zero one three two", "[PHONE]", {"PHONE": 1}),
    ("Card 4111 1111 1111 1111 exp 12/25", "Card [CARD] exp 12/25", {"CARD": 1}),
    ("the card is 4111-1111-1111-1111", "the card is [CARD]", {"CARD": 1}),
    ("amex 3782 822463 10005", "amex [CARD]", {"CARD": 1}),
    ("number 4012888888881881", "number [CARD]", {"CARD": 1}),
    ("I live at 123 Main Street, Apt 4B.", "I live at [ADDRESS].", {"ADDRESS": 1}),
    ("send it to 42 West 3rd Avenue", "send it to [ADDRESS]", {"ADDRESS": 1}),
    ("deliver to 7 Elm Rd. Suite 200", "deliver to [ADDRESS]", {"ADDRESS": 1}),
    ("it's apartment 12 on the corner", "it's [ADDRESS] on the corner", {"ADDRESS": 1}),
    (
        "My name is Tom Lee, my number is 415-555-0132 and my email is tom@lee.io",
        "My name is [NAME], my number is [PHONE] and my email is [EMAIL]",
        {"NAME": 1, "PHONE": 1, "EMAIL": 1},
    ),
]

MASKED_KO = [
    ("제 이름은 김민수입니다.", "제 이름은 [NAME]입니다.", {"NAME": 1}),
    ("제 이름은 민수예요", "제 이름은 [NAME]예요", {"NAME": 1}),
    ("저는 박지영이라고 합니다", "저는 [NAME]이라고 합니다", {"NAME": 1}),
    ("저는 이서연입니다", "저는 [NAME]입니다", {"NAME": 1}),
    ("김민수 고객님 안녕하세요", "[NAME] 고객님 안녕하세요", {"NAME": 1}),
    ("최지훈님 예약 확인됐습니다", "[NAME]님 예약 확인됐습니다", {"NAME": 1}),
    ("민수 씨 오늘 오시나요", "[NAME] 씨 오늘 오시나요", {"NAME": 1}),
    ("전화번호는 010-1234-5678이에요.", "전화번호는 [PHONE]이에요.", {"PHONE": 1}),
    ("01012345678로 문자 주세요", "[PHONE]로 문자 주세요", {"PHONE": 1}),
    ("+82 10 1234 5678 입니다", "[PHONE] 입니다", {"PHONE": 1}),
    ("집 번호는 02-123-4567이요", "집 번호는 [PHONE]이요", {"PHONE": 1}),
    ("031-987-6543으로 연락 주세요", "[PHONE]으로 연락 주세요", {"PHONE": 1}),
    ("번호는 공일공 일이삼사 오육칠팔 입니다", "번호는 [PHONE] 입니다", {"PHONE": 1}),
    ("주민번호는 900101-1234567 입니다", "주민번호는 [RRN] 입니다", {"RRN": 1}),
    ("주민등록번호 851231 2345678", "주민등록번호 [RRN]", {"RRN": 1}),
    ("카드번호는 4111-1111-1111-1111이에요", "카드번호는 [CARD]이에요", {"CARD": 1}),
    ("서울시 강남구 테헤란로 123으로 보내주세요", "[ADDRESS]으로 보내주세요", {"ADDRESS": 1}),
    ("주소는 경기도 성남시 분당구 판교로 256번길 7입니다", "주소는 [ADDRESS]입니다", {"ADDRESS": 1}),
    ("강남구 역삼동 123-45 101동 1203호예요", "[ADDRESS]예요", {"ADDRESS": 1}),
    ("101동 1203호로 배송해 주세요", "[ADDRESS]로 배송해 주세요", {"ADDRESS": 1}),
    ("역삼동 123-45번지요", "[ADDRESS]요", {"ADDRESS": 1}),
    ("이메일은 minsu.kim@naver.com 이에요", "이메일은 [EMAIL] 이에요", {"EMAIL": 1}),
]

# Business facts and ordinary speech: nothing to mask.
KEPT = [
    "It costs $39 a month on plan 5G.",
    "We're open 9 to 6 on weekdays, and 10 to 2 on Saturdays.",
    "The total is $1,249.99 including tax.",
    "Your order number is 1234 5678 9012 3456.",  # not Luhn-valid: an order id, not a card
    "The appointment is on 2024-03-15 at 10:30.",
    "This is Monday's schedule.",
    "I'm Korean. I'm fine, thanks. I am interested in the Premium plan.",
    "This is great, thank you.",
    "Call our support line at 1-800-555-0199.",  # toll-free: the business's own
    "We're located at 12 Oak Street, next to the bank.",
    "Our office is at 500 Market Street.",
    "I spent 2 hours on the road.",
    "요금은 3만 9천원이고 오전 9시부터 오후 6시까지 해요.",
    "가격은 1,200,000원입니다.",
    "대표번호 1588-1234로 전화주세요.",
    "저희 매장은 강남구 테헤란로 123에 있어요.",
    "저는 고객입니다. 저는 학생이에요.",
    "고객님 감사합니다. 선생님은 오후에 오세요.",
    "오늘 날씨가 좋네요.",
    "3층 301호로 오시면 돼요.",  # a room of the business, not a home unit
    "5G 요금제는 월 55,000원입니다.",
    "예약은 010으로 시작하는 번호로 문자 드려요.",
]


@pytest.mark.parametrize(("text", "masked", "counts"), MASKED_EN + MASKED_KO)
def test_masks_pii(text: str, masked: str, counts: dict[str, int]) -> None:
    result = mask_pii(text)
    assert result.text == masked
    assert result.counts == counts
    assert result.changed and result.total == sum(counts.values())


@pytest.mark.parametrize("text", KEPT)
def test_keeps_business_facts_and_ordinary_speech(text: str) -> None:
    result = mask_pii(text)
    assert result == MaskResult(text, {})
    assert not result.changed


@pytest.mark.parametrize("text", [t for t, _, _ in MASKED_EN + MASKED_KO] + KEPT)
def test_masking_is_idempotent(text: str) -> None:
    once = mask_pii(text).text
    again = mask_pii(once)
    assert again.text == once and not again.changed


def test_language_selects_name_rules() -> None:
    assert mask_pii("제 이름은 김민수입니다", "en").text == "제 이름은 김민수입니다"
    assert mask_pii("제 이름은 김민수입니다", "ko").text == "제 이름은 [NAME]입니다"
    # Numbers are looked for whatever the language; Korean calls get the English name rules too.
    assert mask_pii("010-1234-5678", "en").counts == {"PHONE": 1}
    assert mask_pii("My name is John Smith", "ko").counts == {"NAME": 1}


def test_mobile_is_masked_even_in_business_context() -> None:
    assert mask_pii("저희 매장 번호는 010-1234-5678입니다").counts == {"PHONE": 1}
    assert mask_pii("Our store number is 02-555-1234").counts == {}


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("41111a")
