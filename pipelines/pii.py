"""PII masking for call transcripts (English and Korean): rules, not a model.

:func:`mask_pii` replaces personal data with typed placeholders (``[NAME]``, ``[PHONE]``, ``[EMAIL]``,
``[ADDRESS]``, ``[CARD]``, ``[RRN]``) before anything from a call becomes knowledge. Detectors run in a
fixed order (e-mail, resident-registration number, card, phone, address, name); a later detector never
touches text an earlier one claimed, and placeholders are never matched again, so masking is idempotent
(``mask_pii(mask_pii(t).text).text == mask_pii(t).text``): the extractors rely on that to reject any
item that still carries PII.

Caught:

- e-mail addresses, written (``a.b@x.co.kr``) or spoken (``john dot smith at gmail dot com``);
- Korean resident/foreigner registration numbers ``YYMMDD-Nxxxxxx`` (valid month and day, N in 1-8;
  the dash may be a space or missing);
- card numbers: 13-19 digits, contiguous or in card groupings (4-4-4-x, 4-6-5, 4-6-4), Luhn-valid;
- phones: Korean mobiles (``010-1234-5678``, ``+82 10 1234 5678``), Korean landlines (``02-123-4567``,
  ``031-123-4567``), North American numbers (``(415) 555-0132``, ``+1 415 555 0132``), other
  international numbers written with ``+``, and spoken digit groups (``zero one zero, one two three
  four, ...``, ``공일공 일이삼사 오육칠팔``) of 8 or more digits;
- addresses: English ``123 Main Street`` (capitalized street name and a street type), with an optional
  ``Apt 4B``/``Suite 200``/``Unit 5`` (also standalone ``Apt 4B``, ``apartment 12``); Korean road and lot
  addresses under a city/province/district (``서울시 강남구 테헤란로 123``, ``강남구 역삼동 123-45``),
  ``역삼동 123-45`` and apartment units ``101동 1203호``;
- names: English after ``my name is``, ``the name is``, ``under the name``, ``speaking with``, ``ask for``,
  and after ``this is``/``I'm``/``I am`` when a capitalized name follows as an introduction
  (``This is Sarah from ...``, ``I'm John Smith, ...``); titles ``Mr./Mrs./Ms./Dr./Prof.`` + name (the
  title stays: ``Dr. [NAME]``); spelled-out names ``S-M-I-T-H``. Korean after ``제 이름은``, in
  ``저는 X입니다`` / ``X라고 합니다`` introductions, and before honorifics (``김민수님``, ``김민수 고객님``,
  ``민수 씨``), with a surname check and a list of nouns that look like names (``고객님``, ``선생님``).

Not caught (documented limits): names without a cue (``Sarah said ...``, ``김민수가 왔어요``); lowercase
English names except right after ``my name is``; an agent's bare introduction (``스마트치과 김민수입니다``);
addresses without a number or without a capitalized street name, road names without a district
(``테헤란로 123``), P.O. boxes, postcodes; numbers spoken in words other than digit by digit (``thirty
four``, ``삼십사``); dates of birth, account or passport numbers, IP addresses.

Kept on purpose (business facts, not personal data): prices (``$39``, ``3만 9천원``, ``1,200,000원``),
hours (``9 to 6``, ``오전 9시``), plan and product names (``plan 5G``), Korean representative numbers
(``1588-1234``), toll-free numbers (``1-800-...``), and addresses and landlines announced as the business's
own (``we're located at 12 Oak Street``, ``저희 매장은 강남구 테헤란로 123에 있어요``; mobiles are masked
even there).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["PII_TYPES", "MaskResult", "luhn_valid", "mask_pii"]

PII_TYPES = ("EMAIL", "RRN", "CARD", "PHONE", "ADDRESS", "NAME")


@dataclass(frozen=True, slots=True)
class MaskResult:
    """The masked text and how many spans of each type were replaced (types absent when zero)."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def changed(self) -> bool:
        return self.total > 0


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


Span = tuple[int, int, str]  # start, end, type
Detector = Callable[[str], Iterator[Span]]

# ASCII only: Korean particles follow numbers directly (010-1234-5678이에요).
_NOT_DIGIT_BEFORE = r"(?<![0-9A-Za-z+])"
_NOT_DIGIT_AFTER = r"(?![0-9A-Za-z])"

# ---------------------------------------------------------------------------------------- e-mail
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.ASCII)
_SPOKEN_EMAIL = re.compile(
    r"\b[a-z0-9]+(?:\s+(?:dot|underscore|dash)\s+[a-z0-9]+)*\s+at\s+[a-z0-9]+"
    r"(?:\s+dot\s+[a-z0-9]+)*\s+dot\s+(?:com|net|org|edu|io|co|kr|us)\b",
    re.IGNORECASE,
)


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end(), "EMAIL"
    for m in _SPOKEN_EMAIL.finditer(text):
        yield m.start(), m.end(), "EMAIL"


# ------------------------------------------------------------------------ resident registration
_RRN = re.compile(
    _NOT_DIGIT_BEFORE + r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\s?-?\s?[1-8]\d{6}" + _NOT_DIGIT_AFTER
)


def _rrns(text: str) -> Iterator[Span]:
    for m in _RRN.finditer(text):
        yield m.start(), m.end(), "RRN"


# ------------------------------------------------------------------------------------------ cards
_CARD = re.compile(
    _NOT_DIGIT_BEFORE
    + r"(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5})"
    + _NOT_DIGIT_AFTER
)


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        if luhn_valid(re.sub(r"\D", "", m.group())):
            yield m.start(), m.end(), "CARD"


# ----------------------------------------------------------------------------------------- phones
_SEP = r"[ .\-]?"
_PHONE_PATTERNS = [
    # Korean mobile, national or +82 (the leading 0 dropped, sometimes kept in parentheses)
    r"(?:\+82" + _SEP + r"(?:\(0\))?|0)1[016789]" + _SEP + r"\d{3,4}" + _SEP + r"\d{4}",
    # Korean landline: 02 (Seoul) or 0[3-6][1-5], optionally +82 without the 0
    r"(?:\+82" + _SEP + r"|0)(?:2|[3-6][1-5]|70)\)?" + _SEP + r"\d{3,4}" + _SEP + r"\d{4}",
    # North American: (415) 555-0132, 415-555-0132, +1 415 555 0132, 1-415-555-0132
    r"(?:\+?1" + _SEP + r")?(?:\(\d{3}\)\s?|\d{3}" + _SEP + r")\d{3}" + _SEP + r"\d{4}",
    # other international numbers, written with +
    r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){2,5}",
]
_PHONE = re.compile(
    _NOT_DIGIT_BEFORE + "(?:" + "|".join(f"(?:{p})" for p in _PHONE_PATTERNS) + ")" + _NOT_DIGIT_AFTER
)
_TOLL_FREE = re.compile(r"^(?:\+?1[ .\-]?)?\(?8(?:00|33|44|55|66|77|88)\b")

_EN_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_EN_DIGIT_WORD = r"(?:zero|oh|o|one|two|three|four|five|six|seven|eight|nine|double|triple)"
_SPOKEN_EN = re.compile(r"\b" + _EN_DIGIT_WORD + r"(?:[\s,\-]+" + _EN_DIGIT_WORD + r")+\b", re.IGNORECASE)
_KO_DIGIT = "공영일이삼사오육륙칠팔구"
_SPOKEN_KO = re.compile(
    rf"(?<![가-힣])[{_KO_DIGIT}]{{2,4}}(?:[\s,\-]+[{_KO_DIGIT}]{{2,4}})+(?![가-힣])"
)  # digit syllables in groups, as phone numbers are read out (공일공 일이삼사 오육칠팔)


def _spoken_en_digits(words: str) -> str:
    out: list[str] = []
    repeat = 1
    for w in re.findall(r"[a-z]+", words.lower()):
        if w == "double":
            repeat = 2
        elif w == "triple":
            repeat = 3
        else:
            out.append(_EN_DIGITS[w] * repeat)
            repeat = 1
    return "".join(out)


def _phones(text: str) -> Iterator[Span]:
    for m in _PHONE.finditer(text):
        number = m.group()
        digits = re.sub(r"\D", "", number)
        if _TOLL_FREE.match(number) or not 8 <= len(digits) <= 15:
            continue
        mobile = digits.startswith(("01", "8201", "821"))
        if not mobile and _business_context(text, m.start()):
            continue
        yield m.start(), m.end(), "PHONE"
    for m in _SPOKEN_EN.finditer(text):
        digits = _spoken_en_digits(m.group())
        if len(digits) >= 13 and luhn_valid(digits):
            yield m.start(), m.end(), "CARD"
        elif len(digits) >= 8:
            yield m.start(), m.end(), "PHONE"
    for m in _SPOKEN_KO.finditer(text):
        if sum(ch in _KO_DIGIT for ch in m.group()) >= 8:
            yield m.start(), m.end(), "PHONE"


# -------------------------------------------------------------------------------------- addresses
_BUSINESS_CUE = re.compile(
    r"(?:\bwe(?:'re| are)\s+(?:located\s+)?(?:at|on|in)\b|\blocated\s+(?:at|on)\b|\bvisit\s+us\b"
    r"|\bour\s+(?:\w+\s+)?(?:office|store|shop|clinic|branch|location|restaurant|salon|number|line|desk)\b"
    r"|\bfind\s+us\b|\bcome\s+(?:by|to)\b|\breach\s+us\b"
    r"|저희|매장|지점|본점|사무실|대표\s?번호|위치)",
    re.IGNORECASE,
)


def _business_context(text: str, start: int, window: int = 40) -> bool:
    """True when the span is announced as the business's own (address, landline) just before it."""
    return _BUSINESS_CUE.search(text[max(0, start - window) : start]) is not None


_STREET_TYPE = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace"
    r"|Parkway|Pkwy|Highway|Hwy|Circle|Square|Sq)\b\.?"
)
_UNIT = r"(?:Apt|Apartment|Suite|Ste|Unit|Room|Rm|#)\.?\s?#?\d+[A-Za-z]?\b"
_EN_ADDRESS = re.compile(
    r"(?<![\w$])\d{1,6}[A-Za-z]?\s+(?:(?:[NSEW]\.?|North|South|East|West)\s+)?"
    r"(?:[A-Z][a-z]+|\d{1,3}(?:st|nd|rd|th))(?:\s+[A-Z][a-z]+){0,2}\s+"
    + _STREET_TYPE
    + r"(?:,?\s+"
    + _UNIT
    + r")?"
)
_EN_UNIT = re.compile(r"(?i:\b(?:apt|apartment|unit)\b)\.?\s?#?\d+[A-Za-z]?\b")
_KO_METRO = (
    r"(?:서울|부산|대구|인천|광주|대전|울산|세종|경기|강원|충북|충남|충청북|충청남|전북|전남|전라북|전라남"
    r"|경북|경남|경상북|경상남|제주)(?:특별시|광역시|특별자치시|특별자치도|도|시)?"
)
_KO_DISTRICT = r"[가-힣]{1,5}(?:시|군|구)"
_KO_NUMBER = r"\d{1,5}(?:-\d{1,4})?"
_KO_ROAD = r"[가-힣0-9]{1,10}(?:로|길)\s?" + _KO_NUMBER + r"(?:\s?번?길\s?\d{1,4})?"
_KO_LOT = r"[가-힣0-9]{1,6}(?:동|읍|면|리|가)\s?" + _KO_NUMBER + r"(?:\s?번지)?"
_KO_UNIT = r"(?:\s?,?\s?\d{1,4}\s?동\s?\d{1,5}\s?호|\s?,?\s?\d{1,5}\s?호)?"
_KO_ADDRESS = re.compile(
    r"(?<![가-힣])(?:(?:"
    + _KO_METRO
    + r"\s?)(?:"
    + _KO_DISTRICT
    + r"\s?){0,2}|(?:"
    + _KO_DISTRICT
    + r"\s?){1,2})"
    r"(?:" + _KO_ROAD + "|" + _KO_LOT + r")" + _KO_UNIT + r"(?!\d)"
)
_KO_LOT_DASH = re.compile(
    r"(?<![가-힣])[가-힣]{1,5}동\s?\d{1,4}-\d{1,4}(?:\s?번지)?" + _KO_UNIT + r"(?![\d-])"
)
_KO_APT_UNIT = re.compile(r"(?<![\d가-힣])\d{1,4}\s?동\s?\d{1,5}\s?호")


def _addresses(text: str) -> Iterator[Span]:
    for rx in (_EN_ADDRESS, _EN_UNIT, _KO_ADDRESS, _KO_LOT_DASH, _KO_APT_UNIT):
        for m in rx.finditer(text):
            if not _business_context(text, m.start()):
                yield m.start(), m.end(), "ADDRESS"


# ------------------------------------------------------------------------------------------ names
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_NOT_NAMES = _words(
    """
    i the a an and or but so not no yes yeah okay ok sorry just calling here from with about for at in on
    to of is am are was be it this that there what who how when where why which sure well hi hello hey
    good fine great thanks thank please still also only really very new looking trying going interested
    glad happy afraid wondering ready done back available open closed free busy here the customer
    monday tuesday wednesday thursday friday saturday sunday january february march april may june july
    august september october november december today tomorrow tonight morning afternoon evening
    english korean american canadian british chinese japanese mister miss calling speaking
    """
)
_CAP_WORD = r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?"
_ANY_WORD = r"[A-Za-z][a-z]+(?:[-'][A-Za-z]?[a-z]+)?"
_STRONG_CUE = re.compile(
    r"(?i:\b(?:my\s+name\s+is|my\s+name's|the\s+name\s+is|name's|under\s+the\s+name(?:\s+of)?"
    r"|speaking\s+with|ask\s+for|you\s+can\s+call\s+me)\s+)"
)
_WEAK_CUE = re.compile(r"(?i:\b(?:this\s+is|i'm|i\s+am|it's)\s+)")
_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+(" + _CAP_WORD + r"(?:\s+" + _CAP_WORD + r")?)")
_SPELLED = re.compile(r"\b(?:[A-Z]-){3,}[A-Z]\b")
_INTRO_END = re.compile(r"\s*(?:[,.!?;]|$|\s(?:from|calling|speaking|here|with|at)\b)")


def _name_words(text: str, pos: int, first_any_case: bool) -> int:
    """End of the 1-3 name words at ``pos`` (``pos`` when there are none)."""
    end = pos
    for i in range(3):
        m = re.compile(r"\s*(" + (_ANY_WORD if i == 0 and first_any_case else _CAP_WORD) + r")").match(
            text, end
        )
        if m is None or m.group(1).lower() in _NOT_NAMES:
            break
        if i == 0 and first_any_case and m.group(1).islower():
            end = m.end()  # a lowercase name after a strong cue: one more lowercase word at most
            m2 = re.compile(r"\s+(" + _ANY_WORD + r")").match(text, end)
            if m2 is not None and m2.group(1).lower() not in _NOT_NAMES and m2.group(1).islower():
                end = m2.end() if _INTRO_END.match(text, m2.end()) else end
            return end
        end = m.end()
    return end


def _en_names(text: str) -> Iterator[Span]:
    for m in _STRONG_CUE.finditer(text):
        end = _name_words(text, m.end(), first_any_case=True)
        if end > m.end():
            yield m.end(), end, "NAME"
    for m in _WEAK_CUE.finditer(text):
        end = _name_words(text, m.end(), first_any_case=False)
        if end > m.end() and _INTRO_END.match(text, end):
            yield m.end(), end, "NAME"
    for m in _TITLE.finditer(text):
        if m.group(1).split()[0].lower() not in _NOT_NAMES:
            yield m.start(1), m.end(1), "NAME"
    for m in _SPELLED.finditer(text):
        yield m.start(), m.end(), "NAME"


_KO_SURNAMES = set(
    "김이박최정강조윤장임한오서신권황안송류유전홍고문양손배백허남심노하곽성차주우구민진나지엄채원천방공현함변염"
    "여추도소석선설마길연위표명기반왕금옥육인맹제모탁국어은편용예경봉"
)
_KO_NOT_NAMES = _words(
    """
    고객 회원 선생 사장 과장 대리 부장 원장 실장 팀장 기사 손님 어머 아버 형 누
    언니 오빠 담당자 상담원 직원 학생 주부 환자 보호자 본인 처음 이번 신규 기존 정회원 개인
    법인 사업자 부모 엄마 아빠 남편 아내 마음 아저 아가 사모 도련 교수 의사 간호사 작가
    기자 대표 고객센터 선배 후배 동생 문의 예약 상담 변경 취소 주문 배송 가입 해지 결제
    문의드 전화 연락 확인 이용 안내 고민 걱정 감사 정말 진짜 지금 오늘 내일 여기 거기
    저기 제가 저희
    """
)
_KO_NAME = r"([가-힣]{2,4}?)"
_KO_STRONG = re.compile(
    r"(?:제\s?이름은|이름은|성함은|저는|전)\s?" + _KO_NAME + r"(?=(?:이)?라고\s?(?:합니다|해요|하는데|하고))"
    r"|(?:제\s?이름은|성함은)\s?" + _KO_NAME + r"(?=입니다|이에요|예요|이고|인데|이요|요|[\s.,!?]|$)"
)
_KO_INTRO = re.compile(r"(?:^|(?<=\s))(?:저는|전)\s?" + _KO_NAME + r"(?=입니다|이에요|예요|인데요)")
_KO_HONORIFIC = re.compile(
    r"(?<![가-힣])([가-힣]{2,4})\s?(?=(?:고객|회원|선생|과장|대리|부장|사장|원장|실장|팀장|기사)?님|씨(?![가-힣]))"
)


def _plausible_ko_name(name: str, need_surname: bool) -> bool:
    if name in _KO_NOT_NAMES or name[:2] in _KO_NOT_NAMES:
        return False
    return not need_surname or name[0] in _KO_SURNAMES


def _ko_names(text: str) -> Iterator[Span]:
    for m in _KO_STRONG.finditer(text):
        group = 1 if m.group(1) is not None else 2
        if _plausible_ko_name(m.group(group), need_surname=False):
            yield m.start(group), m.end(group), "NAME"
    for m in _KO_INTRO.finditer(text):
        if _plausible_ko_name(m.group(1), need_surname=True):
            yield m.start(1), m.end(1), "NAME"
    for m in _KO_HONORIFIC.finditer(text):
        name = m.group(1)
        if len(name) >= 2 and _plausible_ko_name(name, need_surname=True):
            yield m.start(1), m.end(1), "NAME"


# ------------------------------------------------------------------------------------------- mask
_COMMON: tuple[Detector, ...] = (_emails, _rrns, _cards, _phones, _addresses)
_BY_LANGUAGE: dict[str | None, tuple[Detector, ...]] = {
    "en": (_en_names,),
    "ko": (_ko_names, _en_names),  # Korean calls carry English names too
    None: (_en_names, _ko_names),
}
_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(PII_TYPES) + r")\]")


def mask_pii(text: str, language: str | None = None) -> MaskResult:
    """Replace PII in ``text`` with typed placeholders; see the module docstring for what is caught.

    ``language`` ("en", "ko" or None for both) selects the name rules; numbers, e-mails and addresses
    are looked for in every language.
    """
    detectors = _COMMON + _BY_LANGUAGE.get(language, _BY_LANGUAGE[None])
    taken: list[Span] = [(m.start(), m.end(), "") for m in _PLACEHOLDER.finditer(text)]
    for detect in detectors:
        for start, end, kind in detect(text):
            while end > start and text[end - 1] in " ,.":
                end -= 1
            if end > start and all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, kind))
    spans = sorted(s for s in taken if s[2])
    counts: dict[str, int] = {}
    out: list[str] = []
    pos = 0
    for start, end, kind in spans:
        out.append(text[pos:start])
        out.append(f"[{kind}]")
        counts[kind] = counts.get(kind, 0) + 1
        pos = end
    out.append(text[pos:])
    return MaskResult("".join(out), counts)
