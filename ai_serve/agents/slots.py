"""Slot values from what a caller said, in English and Korean, as an STT transcript spells them.

Each extractor returns ``None`` when the utterance holds no value of its kind, so the dialog can
ask again. They are rules, not a model: the forms a phone line hears are few (digits read one by
one, "tomorrow", "내일 오후", "무제한으로요") and a wrong value is worse than asking twice.

- :func:`extract_phone`: ``010-1234-5678``, ``+82 10 1234 5678``, "five five five one two three
  four" ("oh" is zero, "double five" is 55), "공일공 일이삼사 오육칠팔". 7 to 15 digits.
- :func:`extract_number`: ``25``, ``2.5``, ``25,000``, ``2만 5천``, "twenty five", "one hundred and
  five", "세 개", "다섯", "삼십오".
- :func:`extract_date`: ISO dates, "June 13", "6/13", "6월 13일", "today"/"tomorrow"/"the day after
  tomorrow", weekdays ("Friday", "next Friday", "금요일", "다음 주 금요일"), "오늘"/"내일"/"모레"/"글피".
  Relative to ``today``, which the caller passes (no clock is read here).
- :func:`match_choice`: a choice value or one of its synonyms, exactly or fuzzily (difflib).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

__all__ = [
    "extract_date",
    "extract_number",
    "extract_phone",
    "extract_slot",
    "match_choice",
    "normalize",
]

# ------------------------------------------------------------------------------------------ common


def normalize(text: str) -> str:
    """Case-folded NFKC text with punctuation turned into spaces (digits, +, -, /, . kept)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s+\-/.,:]", " ", text)
    text = re.sub(r"(?<!\d)[.,:]|[.,:](?!\d)", " ", text)
    return re.sub(r"\s+", " ", text).strip()


_KO_ENDINGS = (
    "입니다",
    "이에요",
    "예요",
    "이요",
    "이고",
    "에요",
    "으로요",
    "으로",
    "로요",
    "하고",
    "로",
    "에",
    "요",
)
"""Sentence endings and particles a Korean number or date may carry ("오육칠팔이에요")."""


def _strip_ko_ending(token: str) -> str:
    """The token without its ending; "" when the token is only an ending ("이에요" after a number)."""
    if token in _KO_ENDINGS:
        return ""
    for ending in _KO_ENDINGS:
        if token.endswith(ending) and len(token) > len(ending):
            return token[: -len(ending)]
    return token


# ------------------------------------------------------------------------------------------- phone

_EN_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_KO_DIGITS = {"공": "0", "영": "0", "일": "1", "이": "2", "삼": "3", "사": "4", "오": "5", "육": "6",
              "륙": "6", "칠": "7", "팔": "8", "구": "9"}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3}
_PHONE_CHARS = re.compile(r"^\+?[0-9()\-./]*[0-9][0-9()\-./]*$")


def _phone_digits(token: str) -> str | None:
    """The digits one spoken or written token stands for, or None if it is not part of a number."""
    if token in _EN_DIGITS:
        return _EN_DIGITS[token]
    if _PHONE_CHARS.match(token):
        return ("+" if token.startswith("+") else "") + re.sub(r"\D", "", token)
    stripped = _strip_ko_ending(token)
    for candidate in (token, stripped):
        if candidate and all(ch in _KO_DIGITS for ch in candidate):
            return "".join(_KO_DIGITS[ch] for ch in candidate)
    return None


def extract_phone(text: str, *, min_digits: int = 7, max_digits: int = 15) -> str | None:
    """The longest run of digits read out or written in ``text``; ``+`` kept in front. None if short."""
    best = ""
    run = ""
    repeat = 1
    for token in normalize(text).replace("-", " - ").split():
        if token in _REPEAT:
            repeat = _REPEAT[token]
            continue
        if token in ("-", "dash"):
            continue
        digits = _phone_digits(token)
        if digits is None:
            run, repeat = "", 1
            continue
        if digits.startswith("+") and run:
            run = ""  # a + starts a new number
        run += digits * repeat if len(digits) == 1 else digits
        repeat = 1
        if len(run.lstrip("+")) > len(best.lstrip("+")):
            best = run
    return best if min_digits <= len(best.lstrip("+")) <= max_digits else None


# ------------------------------------------------------------------------------------------ number

_EN_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_EN_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_KO_NATIVE = {"하나": 1, "둘": 2, "셋": 3, "넷": 4, "다섯": 5, "여섯": 6, "일곱": 7, "여덟": 8, "아홉": 9,
              "열": 10, "스물": 20, "서른": 30, "마흔": 40, "쉰": 50}  # fmt: skip
_KO_COUNTER_FORMS = {"한": 1, "두": 2, "세": 3, "네": 4, "스무": 20}
"""Native numbers before a counter ("세 개"); alone they are other words ("네" is "yes")."""
_KO_COUNTERS = (
    "개월",
    "개",
    "명",
    "대",
    "장",
    "번",
    "달",
    "살",
    "시간",
    "시",
    "분",
    "회선",
    "주",
    "년",
    "일",
)
_KO_SMALL_UNITS = {"십": 10, "백": 100, "천": 1000}
_KO_BIG_UNITS = {"만": 10_000, "억": 100_000_000}
_KO_NUMBER = re.compile(r"^[0-9.,영공일이삼사오육칠팔구십백천만억]+$")
_UNIT_SUFFIXES = (
    "원",
    "달러",
    "기가",
    "gb",
    "개월",
    "개",
    "명",
    "대",
    "번",
    "달",
    "분",
    "시간",
    "회선",
    "년",
)


def _num(text: str) -> int | float:
    value = float(text.replace(",", ""))
    return int(value) if value.is_integer() else value


def _parse_korean_number(token: str) -> int | float | None:
    """``2만5천``, ``이만오천``, ``삼십오``, ``25000``: digits, Sino-Korean digits and units."""
    total: float = 0
    section: float = 0
    current: float | None = None
    for part in re.findall(r"[0-9][0-9.,]*|.", token):
        if part[0].isdigit():
            current = _num(part)
        elif part in _KO_DIGITS:
            current = int(_KO_DIGITS[part]) if current is None else current * 10 + int(_KO_DIGITS[part])
        elif part in _KO_SMALL_UNITS:
            section += (1 if current is None else current) * _KO_SMALL_UNITS[part]
            current = None
        elif part in _KO_BIG_UNITS:
            total += (section + (current or 0) or 1) * _KO_BIG_UNITS[part]
            section, current = 0, None
        else:
            return None
    value = total + section + (current or 0)
    return int(value) if float(value).is_integer() else value


def _english_number(tokens: list[str]) -> int | None:
    total = current = 0
    seen = False
    for token in tokens:
        if token in _EN_UNITS:
            current += _EN_UNITS[token]
        elif token in _EN_SCALES and (seen or token == "hundred"):
            scale = _EN_SCALES[token]
            if scale == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * scale
                current = 0
        elif token == "and" and seen:
            continue
        elif token in ("a", "an") and not seen:
            current = 1  # "a hundred"
        else:
            break
        seen = True
    return total + current if seen else None


def _korean_native(token: str, following: str | None) -> int | None:
    """ "다섯", "열두", "스물다섯", "하나요"; "세 개", "두명" (counter forms need a counter)."""
    word = _strip_ko_ending(token)
    tens = next((t for t in ("스물", "서른", "마흔", "쉰", "열") if word.startswith(t)), "")
    base, rest = (_KO_NATIVE[tens] if tens else 0), word[len(tens) :]
    if tens and not rest:
        return base
    if rest in _KO_NATIVE and _KO_NATIVE[rest] < 10:
        return base + _KO_NATIVE[rest]
    for form, value in _KO_COUNTER_FORMS.items():
        if rest.startswith(form):
            glued = rest[len(form) :]
            counted = (
                glued.startswith(_KO_COUNTERS)
                if glued
                else following is not None and following.startswith(_KO_COUNTERS)
            )
            if counted:
                return base + value
    return None


def extract_number(text: str) -> int | float | None:
    """The first number in ``text``, written or spoken, English or Korean."""
    tokens = normalize(text).split()
    for i, token in enumerate(tokens):
        if re.fullmatch(r"[-+]?[0-9][0-9,]*(\.[0-9]+)?", token):
            return _num(token)
        if token in _EN_UNITS or (
            token in ("a", "an") and i + 1 < len(tokens) and tokens[i + 1] in _EN_SCALES
        ):
            value = _english_number(tokens[i:])
            if value is not None:
                return value
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        native = _korean_native(token, following)
        if native is not None:
            return native
        word = _strip_ko_ending(token)
        for suffix in _UNIT_SUFFIXES:
            if word.endswith(suffix) and len(word) > len(suffix):
                word = word[: -len(suffix)]
                break
        sino_ok = len(word) > 1 or word != token or word[0].isdigit()
        if _KO_NUMBER.match(word) and sino_ok:
            # "2만 5천 원": join the following pieces of the same number
            j = i + 1
            while word[-1] in "만억천백" and j < len(tokens):
                nxt = _strip_ko_ending(tokens[j]).removesuffix("원")
                if not nxt or not _KO_NUMBER.match(nxt):
                    break
                word += nxt
                j += 1
            parsed = _parse_korean_number(word)
            if parsed is not None:
                return parsed
    return None


# -------------------------------------------------------------------------------------------- date

_EN_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_KO_WEEKDAYS = "월화수목금토일"
_EN_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
              "october", "november", "december")  # fmt: skip
_RELATIVE = (
    ("the day after tomorrow", 2), ("day after tomorrow", 2), ("tomorrow", 1), ("today", 0), ("tonight", 0),
    ("내일모레", 2), ("내일 모레", 2), ("글피", 3), ("모레", 2), ("내일", 1), ("오늘", 0),
)  # fmt: skip


def _upcoming(today: date, month: int, day: int) -> date | None:
    """``month``/``day`` this year, or next year if that has passed."""
    for year in (today.year, today.year + 1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            return None
        if candidate >= today:
            return candidate
    return None


def _weekday(today: date, weekday: int, which: str | None) -> date:
    """``which``: None (the coming one, today included), "this" (this week), "next" (next week)."""
    if which == "next":
        return today - timedelta(days=today.weekday()) + timedelta(days=7 + weekday)
    if which == "this":
        this_week = today - timedelta(days=today.weekday()) + timedelta(days=weekday)
        if this_week >= today:
            return this_week
    return today + timedelta(days=(weekday - today.weekday()) % 7)


def extract_date(text: str, today: date) -> date | None:
    """The date ``text`` names, relative to ``today``; None if it names none."""
    norm = normalize(text)
    if m := re.search(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", norm):
        try:
            return date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            return None
    if m := re.search(r"(\d{1,2})\s*월\s*(\d{1,2})\s*일", norm):
        return _upcoming(today, int(m[1]), int(m[2]))
    if m := re.search(r"\b(\d{1,2})/(\d{1,2})\b", norm):
        return _upcoming(today, int(m[1]), int(m[2]))
    months = "|".join(_EN_MONTHS)
    if m := re.search(rf"\b({months})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b", norm):
        return _upcoming(today, _EN_MONTHS.index(m[1]) + 1, int(m[2]))
    if m := re.search(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({months})\b", norm):
        return _upcoming(today, _EN_MONTHS.index(m[2]) + 1, int(m[1]))
    for phrase, days in _RELATIVE:
        if re.search(rf"(?<![\w]){re.escape(phrase)}", norm):
            return today + timedelta(days=days)
    if m := re.search(r"\bin (\d+|a|one|two|three|four|five|six|seven) days?\b", norm):
        n = _english_number([m[1]]) if not m[1].isdigit() else int(m[1])
        return today + timedelta(days=1 if m[1] == "a" else (n or 0))
    if m := re.search(rf"\b(?:(this|next|coming)\s+)?({'|'.join(_EN_WEEKDAYS)})\b", norm):
        which = {"coming": None}.get(m[1], m[1]) if m[1] else None
        return _weekday(today, _EN_WEEKDAYS.index(m[2]), which)
    if m := re.search(rf"(?:(이번|다음)\s*주\s*)?([{_KO_WEEKDAYS}])요일", norm):
        which = {"이번": "this", "다음": "next"}.get(m[1] or "")
        return _weekday(today, _KO_WEEKDAYS.index(m[2]), which)
    if m := re.search(r"(?<![\d월])(\d{1,2})\s*일(?!요일)", norm):
        day = int(m[1])
        for months_ahead in (0, 1, 2):
            month = (today.month - 1 + months_ahead) % 12 + 1
            year = today.year + (today.month - 1 + months_ahead) // 12
            try:
                candidate = date(year, month, day)
            except ValueError:
                continue
            if candidate >= today:
                return candidate
    return None


# ------------------------------------------------------------------------------------------ choice


def _term_score(text: str, term: str) -> float:
    if not term:
        return 0.0
    if re.search(rf"(?<![a-z0-9]){re.escape(term)}(?![a-z0-9])", text):
        return 1.0
    tokens = text.split()
    width = len(term.split())
    best = 0.0
    for n in {max(1, width - 1), width, width + 1}:
        for i in range(0, max(1, len(tokens) - n + 1)):
            window = " ".join(tokens[i : i + n])
            best = max(best, difflib.SequenceMatcher(None, window, term).ratio())
    return best


def match_choice(
    text: str, choices: Mapping[str, Sequence[str]], *, cutoff: float = 0.8, ambiguity: float = 0.05
) -> str | None:
    """The choice value whose value or synonym ``text`` says; None if none is close or two are."""
    norm = normalize(text)
    scored: list[tuple[float, str]] = []
    for value, synonyms in choices.items():
        scores = [(_term_score(norm, t), t) for t in (normalize(t) for t in (value, *synonyms))]
        # A longer exact match wins a tie: "unlimited plan" over "plan".
        scored.append((max(sc + (len(t) / 1000 if sc == 1.0 else 0.0) for sc, t in scores), value))
    scored.sort(reverse=True)
    if not scored or scored[0][0] < cutoff:
        return None
    if len(scored) > 1 and scored[1][0] >= cutoff and scored[0][0] - scored[1][0] < ambiguity:
        return None
    return scored[0][1]


# -------------------------------------------------------------------------------------------- slot


def extract_slot(
    slot_type: str, text: str, today: date, choices: Mapping[str, Sequence[str]] | None = None
) -> Any:
    """The value of a slot of ``slot_type`` in ``text`` (a string slot takes the whole utterance)."""
    if slot_type == "phone":
        return extract_phone(text)
    if slot_type == "number":
        return extract_number(text)
    if slot_type == "date":
        return extract_date(text, today)
    if slot_type == "choice":
        return match_choice(text, choices or {})
    if slot_type == "string":
        return text.strip() or None
    raise ValueError(f"unknown slot type {slot_type!r}")
