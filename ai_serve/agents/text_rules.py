"""What callers say, read by rules: yes, no, goodbye, "a person please", names, phone numbers, language.

The attendant and the IVR sessions share these; texts are compared after :func:`normalize`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from .attendant_config import Language

__all__ = [
    "detect_language",
    "extract_name",
    "extract_number",
    "intelligible",
    "is_goodbye",
    "is_no",
    "is_transfer_request",
    "is_yes",
    "normalize",
    "spoken_number",
]

_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_LATIN = re.compile(r"[A-Za-z]")


def normalize(text: str) -> str:
    """NFKC, casefolded, punctuation and symbols as spaces, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text).split())


def _matches(patterns: Sequence[str], text: str) -> bool:
    said = normalize(text)
    return any(re.search(p, said) for p in patterns)


_TRANSFER = (
    r"\b(speak|talk|connect|transfer|put)\b.*\b(person|someone|somebody|human|operator|agent|"
    r"representative|receptionist|staff|doctor|dr|him|her|them|real)\b",
    r"\b(real|live) (person|human)\b",
    r"\b(operator|representative)\b",
    r"\btransfer me\b|\bput me through\b",
    r"상담원|상담사|직원|사람(이랑|과|하고|한테|을|으로)?\s*(통화|연결|바꿔)|연결해|바꿔\s*주",
)
_GOODBYE = (
    r"^(no|nope|nothing|nah)( (thanks|thank you|that s all|that is all|i m good|i am good))*( bye)?$",
    r"\b(that s all|that is all|that s it|that is it|goodbye|bye)\b",
    r"^((아니요|아니오|아뇨|없어요|없습니다|괜찮아요|괜찮습니다|됐어요|됐습니다|감사합니다|고맙습니다)\s?)+$",
    r"^안녕히 (계세요|계십시오)$",
)
_YES = (
    r"^(yes|yeah|yep|yup|correct|right|sure|ok|okay|exactly|that s right|that is right|that s correct)\b",
    r"^(네|예|응|맞아요|맞습니다|맞아|그래요|그렇습니다)",
)
_NO = (
    r"^(no|nope|wrong|incorrect|not (right|correct)|that s wrong|that is wrong)\b",
    r"^(아니요|아니오|아뇨|아니|틀려요|틀렸어요|아닙니다)",
)


def is_transfer_request(text: str) -> bool:
    """ "Can I speak to a person", "operator", "상담원 연결해 주세요"..."""
    return _matches(_TRANSFER, text)


def is_goodbye(text: str) -> bool:
    """ "No, that's all", "bye", "아니요 괜찮아요"... (short answers only)."""
    return len(normalize(text).split()) <= 6 and _matches(_GOODBYE, text)


def is_yes(text: str) -> bool:
    return _matches(_YES, text) and not is_no(text)


def is_no(text: str) -> bool:
    return _matches(_NO, text)


_NAME_PREFIXES = re.compile(
    r"^(hi|hello|yes|yeah|ok|okay|sure|um|uh)?\s*(my name is|my name s|the name is|this is|it is|it s|"
    r"i am|i m|name s|call me)?\s*",
)
_KO_NAME = re.compile(r"^(네|예)?\s*(저는|제 이름은|이름은)?\s*(.+?)\s*(입니다|이에요|예요|이요|요)?$")


def extract_name(text: str, language: Language) -> str:
    """The name in "My name is Jane Doe." / "저는 홍길동입니다" (empty when nothing is left)."""
    said = normalize(text)
    if language == "ko":
        m = _KO_NAME.match(said)
        name = m.group(3) if m else said
    else:
        name = _NAME_PREFIXES.sub("", said, count=1)
        name = re.sub(r"\b(please|thanks|thank you)\b", "", name)
    name = " ".join(name.split()[:4])
    return name.title() if language == "en" else name


_EN_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_KO_DIGITS = {
    "공": "0", "영": "0", "일": "1", "이": "2", "삼": "3", "사": "4", "오": "5", "육": "6", "칠": "7",
    "팔": "8", "구": "9",
}  # fmt: skip


def extract_number(text: str) -> str:
    """The digits of a spoken phone number: written digits, or digit words ("five five five",
    "공일공")."""
    digits = "".join(c for c in unicodedata.normalize("NFKC", text) if c.isdigit())
    if digits:
        return digits
    out = []
    for token in normalize(text).split():
        if token in _EN_DIGITS:
            out.append(_EN_DIGITS[token])
        elif token and all(c in _KO_DIGITS for c in token):
            out.extend(_KO_DIGITS[c] for c in token)
    return "".join(out)


def spoken_number(digits: str) -> str:
    """Digits read back one by one ("5 5 5, 0 1 0 0"), grouped by 4 from the end."""
    groups: list[str] = []
    rest = digits
    while len(rest) > 4:
        groups.insert(0, rest[-4:])
        rest = rest[:-4]
    groups.insert(0, rest)
    return ", ".join(" ".join(g) for g in groups if g)


def intelligible(text: str) -> bool:
    return any(c.isalnum() for c in text)


def detect_language(text: str) -> Language | None:
    """``ko`` when the text has Hangul, ``en`` when it has Latin letters only, else None."""
    if _HANGUL.search(text):
        return "ko"
    if _LATIN.search(text):
        return "en"
    return None
