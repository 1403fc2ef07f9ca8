"""Segmentation of a call into question/answer exchanges: adjacency pairs across the two legs.

The customer's leg (the caller by default) asks, the other leg answers. Walking the turns in time order:

- a customer turn that contains a question (not small talk) opens an exchange; the question is the
  turn's substantive sentences up to its last question;
- the other leg's following turns are its answer: their statement sentences are collected (two turns
  are merged), backchannels (``uh huh``, ``네``, ``okay``) and small talk (``thank you``) are skipped,
  and questions the agent asks back (``for adults or children?``) are dropped, so a clarifying question
  never becomes an answer; a bare ``yes``/``네`` is kept only when nothing else answers;
- a customer turn before any answer adds to the question (it is often the reply to a clarifying
  question: ``How much is a cleaning?`` / ``For adults?`` / ``Adults.``); after an answer has started,
  a new question or any substantive customer statement closes the exchange, a backchannel does not;
- questions the agent asks never open an exchange; exchanges without an answer are dropped;
- a customer turn that starts before the agent's answering turn ended cut the agent off: that turn's
  sentences are dropped (a fragment is not an answer; agents repeat what was cut);
- a request to repeat (``can you say that again?``, ``다시 한 번만요``) neither opens nor closes an
  exchange: the answer that follows (the repetition) replaces what was said before it;
- a bare confirmation (``yes, exactly``, ``네 맞아요``) before any answer is the reply to the agent's
  clarifying question and adds nothing to the question. Clarifying questions are recognised without
  their question mark too (``just to make sure, you're asking about ...``, ``~말씀이신가요``).

Questions are found without relying on punctuation, which speech-to-text output often lacks: a
question mark, a wh-word or an auxiliary first (EN), ``can you tell me``-style requests, interrogative
endings (``~나요``, ``~까요``, ``~습니까``) and words (``언제``, ``얼마``, ``어디``, ``어떻게``, ``뭐``)
(KO), after leading fillers (``um``, ``so``, ``음``, ``저기``) are stripped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .models import CallRecord, Exchange, Language, Leg, Turn

__all__ = [
    "detect_language",
    "is_backchannel",
    "is_confirmation",
    "is_polar_answer",
    "is_question",
    "is_repeat_request",
    "is_small_talk",
    "segment_exchanges",
    "split_sentences",
    "strip_fillers",
    "strip_leading_small_talk",
]

_HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")
_LATIN = re.compile(r"[A-Za-z]")


def detect_language(texts: Iterable[str], threshold: float = 0.3) -> Language:
    """``ko`` when Hangul is at least ``threshold`` of the letters (Hangul + Latin), else ``en``."""
    hangul = latin = 0
    for t in texts:
        hangul += len(_HANGUL.findall(t))
        latin += len(_LATIN.findall(t))
    total = hangul + latin
    return "ko" if total and hangul / total >= threshold else "en"


_SENTENCE_END = re.compile(r"(?<=[.?!\u3002\uff1f\uff01])\s+|(?<=[?\uff1f])(?=\S)")


def split_sentences(text: str) -> list[str]:
    """Sentences by end punctuation (a turn without punctuation is one sentence)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


# ------------------------------------------------------------------------------------ fillers
_EN_FILLER = (
    r"(?:um+|uh+|erm|er|ah+|oh|hmm+|mm+|so|well|okay|ok|alright|and|also|yeah|yes|hi|hello|hey|like"
    r"|actually|anyway|right|sorry|excuse me|quick question|one more thing|one more question|by the way"
    r"|i was wondering|i wanted to ask|i want to ask|i'd like to ask|i have a question|i also wanted to ask"
    r"|i just wanted to know|just wondering)"
)
_KO_FILLER = r"(?:음+|어+|아+|그+|저기요|저기|저|혹시|근데|그런데|그리고|네+|예|아니|그러면|그럼|참)"
_LEADING_FILLERS = re.compile(
    r"^(?:(?:" + _EN_FILLER + r"|" + _KO_FILLER + r")(?![\w'])[\s,.!…-]*)+", re.IGNORECASE
)
_INNER_FILLERS = re.compile(r"(?<![\w'])(?:um+|uh+|erm|hmm+|음+|어+)(?![\w'])[,.…]?\s*", re.IGNORECASE)


def strip_fillers(text: str) -> str:
    """Drop leading discourse fillers and inner hesitations; collapse spaces."""
    out = _LEADING_FILLERS.sub("", text.strip())
    out = _INNER_FILLERS.sub("", out)
    return re.sub(r"\s+", " ", out).strip(" ,")


# ---------------------------------------------------------------------------- backchannels
_EN_BACKCHANNEL = re.compile(
    r"^(?:(?:uh[- ]?huh|mm[- ]?hmm|mhm+|hmm+|um+|uh+|oh|ah+|okay|ok|alright|all right|right|yeah|yep|yes"
    r"|sure|i see|got it|great|cool|perfect|good|nice|wow|really|no|nope|sounds good|of course"
    r"|certainly|exactly|makes sense|understood)[\s,.!]*)+$",
    re.IGNORECASE,
)
_KO_BACKCHANNEL = re.compile(
    r"^(?:(?:네+|예+|응+|음+|어+|아+|아하|오|그렇군요|그렇구나|그래요|그렇죠|맞아요|맞습니다|알겠습니다|알겠어요"
    r"|알았어요|좋아요|좋습니다|오케이|그럼요|물론이죠|물론입니다|아니요|아니오|아뇨)[\s,.!~]*)+$"
)
_POLAR_ANSWER = re.compile(
    r"^(?:yes|yeah|yep|no|nope|of course|certainly"
    r"|네|예|아니요|아니오|아뇨|그럼요|물론이죠|물론입니다)\b",
    re.IGNORECASE,
)


def is_backchannel(text: str) -> bool:
    """A turn that only acknowledges (``uh huh``, ``okay``, ``네``); carries no content."""
    t = text.strip()
    return not t or bool(_EN_BACKCHANNEL.match(t) or _KO_BACKCHANNEL.match(t))


# ------------------------------------------------------------------------------ small talk
_SMALL_TALK = re.compile(
    r"(?:\b(?:hi|hello|hey|good (?:morning|afternoon|evening)|thanks(?: a lot| so much)?|thank you(?: so much"
    r"| very much)?|bye|goodbye|bye-bye|have a (?:nice|good|great) (?:day|one|evening|weekend)|take care"
    r"|how are you(?: doing)?(?: today)?|how's it going|how have you been|i'm (?:good|fine|great|well)"
    r"|you're welcome|no problem|my pleasure|nice to meet you|(?:and )?you too|no worries"
    r"|how (?:can|may) i help(?: you)?(?: today)?|what can i do for you(?: today)?"
    r"|is there anything else(?: i can help you with)?|anything else|that's all|that's it)\b"
    r"|안녕하세요|안녕하십니까|감사합니다|고맙습니다|감사해요|고마워요|수고하세요|수고하셨습니다|안녕히\s?(?:계세요|가세요)"
    r"|좋은 하루\s?(?:되세요|보내세요)|여보세요|반갑습니다|잘 지내셨어요|잘 지내시죠|천만에요|별말씀을요"
    r"|(?:무엇을|뭘|무엇이든)\s?도와\s?드릴까요|더 궁금하신\s?(?:거|것|점)\s?(?:있으세요|있으신가요)"
    r"|다른 문의\s?(?:있으세요|사항은요))",
    re.IGNORECASE,
)


def strip_leading_small_talk(text: str) -> str:
    """Drop greetings and fillers from the start (``Hi, hello, so what time ...`` -> ``what time ...``)."""
    while True:
        out = strip_fillers(text)
        m = _SMALL_TALK.match(out)
        if m is None or m.end() == 0:
            return out
        text = out[m.end() :].lstrip(" ,.!")


def is_small_talk(sentence: str) -> bool:
    """A sentence of greetings, thanks or pleasantries only (``Hi, how are you?``, ``감사합니다``)."""
    rest = _SMALL_TALK.sub(" ", sentence)
    rest = strip_fillers(re.sub(r"[^\w\s']", " ", rest))
    return not re.search(r"\w", rest)


# ------------------------------------------------------------------------------- questions
_EN_WH = (
    r"(?:what|what's|whats|when|when's|where|where's|which|who|who's|whom|whose|why|how|how's)"
    r"(?!\s+(?:a|an|i|you|we|they|he|she|it)\b)"  # "What a deal", "When you arrive, ...": statements
)
_EN_SUBJECT = (
    r"(?:i|you|we|they|he|she|it|there|this|that|these|those|my|your|our|their|the|a|an|any|anyone"
    r"|someone|somebody|anybody|y'all|u)"
)
_EN_AUX_FIRST = (
    r"(?:(?:do|does|did|is|isn't|are|aren't|was|were|can|could|will|would|should|shall|may|might|am|don't"
    r"|doesn't|can't|won't)\s+"
    + _EN_SUBJECT
    + r"|(?:have|has|had)\s+(?:i|you|we|they|he|she|it|there|anyone))\b"
)
_EN_QUESTION = re.compile(r"^(?:" + _EN_WH + r"\b|" + _EN_AUX_FIRST + r")", re.IGNORECASE)
_EN_REQUEST = re.compile(
    r"\b(?:can|could|would) you (?:please )?(?:tell|let) me\b|\b(?:i'd|i would) like to know\b"
    r"|\bi (?:want|need|wanted|needed) to know\b|\bi wonder(?:ed)?\b|\bi was wondering\b|\bdo you know\b"
    r"|\bany idea\b|\bis it possible\b|\bplease tell me\b|\btell me (?:about|what|when|where|how|if)\b"
    r"|^(?:how|what) about\b|,\s*(?:right|correct|isn't it|don't you|or not)\s*$",
    re.IGNORECASE,
)
_KO_ENDING = re.compile(r"(?:나요|까요|[습됩합입갑옵]니까|[는인은한던]가요|는지요|(?<!아)니|냐)[\s?.!~]*$")
_KO_REQUEST = re.compile(r"(?:알려\s?주(?!시면|면)|알고\s?싶|궁금(?!하신|하시)|여쭤|물어\s?보)")
_KO_WH = re.compile(
    r"(?<![가-힣])(?:언제(?!든)|얼마(?!든|\s?전|\s?후|\s?안|나\s)|어디(?!든)|어떻게(?!든)|어떤|어느|뭐(?!든)"
    r"|무엇(?!이든)|무슨|몇|왜|누구(?!든))"
)
_KO_CLOSE = re.compile(r"(?:요|나|까|니|지|야|냐|죠|\?)[\s?.!~]*$")


def is_question(sentence: str, language: Language | None = None, *, strict: bool = False) -> bool:
    """Whether a sentence asks something (punctuation optional); small talk is not a question.

    ``strict`` (used on the answering leg, where dropping a statement loses content) ignores the
    weaker cues: Korean interrogative words (``몇 분`` is also "a few minutes") and request phrasings.
    """
    s = strip_fillers(sentence)
    if not s or is_small_talk(s):
        return False
    if s.rstrip().endswith(("?", "\uff1f")) or _CLARIFYING.search(s) or _CLARIFYING.search(sentence):
        return True
    request = not strict and bool(_EN_REQUEST.search(sentence) or _EN_REQUEST.search(s))
    if language != "ko" and (_EN_QUESTION.search(s) or request):
        return True
    if language != "en":
        if _KO_ENDING.search(s):
            return True
        if not strict and (_KO_REQUEST.search(s) or (_KO_WH.search(s) and _KO_CLOSE.search(s))):
            return True
    return False


_REPEAT_REQUEST = re.compile(
    r"\b(?:say (?:that|it) again|repeat (?:that|it|yourself)|come again"
    r"|(?:didn't|did not|couldn't) (?:catch|hear)|you (?:cut|broke) (?:out|up)|pardon(?: me)?\s*[?.!]*$"
    r"|what was that|one more time)\b"
    r"|다시\s?(?:한\s?번|말씀|얘기|말해)|뭐라고\s?(?:하셨|하셨어요|하셨죠|요)|(?:잘\s?)?못\s?들었|안\s?들려|끊겨서",
    re.IGNORECASE,
)
_CLARIFYING = re.compile(
    r"^(?:just )?to (?:make sure|confirm|clarify)\b|\byou(?:'re| are) asking (?:about|if|whether)\b"
    r"|\b(?:do|did) you mean\b|(?:말씀|문의|얘기)(?:이|하)?신가요|말씀하시는\s?(?:거|건)",
    re.IGNORECASE,
)
_CONFIRMATION = re.compile(
    r"^(?:(?:yes|yeah|yep|right|exactly|correct|that's (?:it|right|correct)|네+|예|맞아요|맞습니다|그거요"
    r"|그거|그렇습니다)[\s,.!]*)+$",
    re.IGNORECASE,
)


def is_repeat_request(text: str) -> bool:
    """The customer asks to hear it again (``sorry, can you say that again?``, ``뭐라고 하셨죠?``)."""
    return bool(_REPEAT_REQUEST.search(strip_fillers(text)) or _REPEAT_REQUEST.search(text))


def is_confirmation(text: str) -> bool:
    """A bare yes to a clarifying question (``Yes, exactly.``, ``네 그거요.``)."""
    return bool(_CONFIRMATION.match(text.strip()))


def is_polar_answer(text: str) -> bool:
    """Starts with yes/no (``Yes.``, ``네 가능해요``): an answer to a yes/no question."""
    return bool(_POLAR_ANSWER.match(text.strip()))


# ---------------------------------------------------------------------------- segmentation
@dataclass(slots=True)
class _Open:
    """The exchange being built."""

    question: list[str]
    start: float
    end: float
    answer: list[str] = field(default_factory=list)
    weak: list[str] = field(default_factory=list)  # bare yes/no turns, used when nothing else answers
    answer_end: float = 0.0
    last_turn_at: int = 0  # len(answer) before the agent's latest answering turn (to drop it if cut)


def _question_part(sentences: Sequence[str], language: Language) -> list[str]:
    """The substantive sentences of a turn up to its last question ([] when it asks nothing)."""
    last = max((i for i, s in enumerate(sentences) if is_question(s, language)), default=-1)
    return [s for s in sentences[: last + 1] if not is_small_talk(s)] if last >= 0 else []


def _answer_part(sentences: Sequence[str], language: Language) -> list[str]:
    """The statement sentences of an answering turn (questions back and small talk dropped)."""
    return [s for s in sentences if not is_question(s, language, strict=True) and not is_small_talk(s)]


def _join(parts: Sequence[str], language: Language) -> str:
    """Sentences from several turns as one text, each ending with punctuation."""
    out = []
    for i, p in enumerate(parts):
        follows = parts[i + 1] if i + 1 < len(parts) else ""
        if p and p[-1] not in ".?!,\u3002\uff1f\uff01" and not follows[:1].islower():
            p += "?" if is_question(p, language) else "."
        out.append(p)
    return " ".join(out)


def segment_exchanges(
    call: CallRecord, language: Language | None = None, *, customer_leg: Leg = "caller"
) -> list[Exchange]:
    """The question/answer exchanges of one call (see the module docstring).

    ``language`` defaults to the call's by Hangul ratio; ``customer_leg`` is the leg that asks.
    """
    turns: list[Turn] = sorted(call.turns, key=lambda t: t.start)
    lang: Language = language or detect_language(t.text for t in turns)
    out: list[Exchange] = []
    current: _Open | None = None

    def close() -> None:
        nonlocal current
        if current is not None:
            answer = current.answer or current.weak
            if answer:
                out.append(
                    Exchange(
                        call_id=call.call_id,
                        language=lang,
                        question=_join(current.question, lang),
                        answer=_join(answer, lang),
                        asked_by=customer_leg,
                        start=current.start,
                        end=max(current.answer_end, current.end),
                        answered_at=call.answered_at,
                        business_unit=call.business_unit,
                    )
                )
        current = None

    for turn in turns:
        text = turn.text.strip()
        if not text or (is_backchannel(text) and not (turn.leg != customer_leg and is_polar_answer(text))):
            continue
        sentences = split_sentences(text)
        if turn.leg == customer_leg:
            if current is not None and current.answer and turn.start < current.answer_end:
                del current.answer[current.last_turn_at :]  # the customer cut that turn off
            if is_repeat_request(text):
                if current is not None:
                    current.answer.clear()  # what follows is the answer, said again
                    current.weak.clear()
                continue
            if current is not None and not current.answer and is_confirmation(text):
                continue  # "yes, exactly": the reply to a clarifying question
            asked = _question_part(sentences, lang)
            if asked:
                if current is not None and not current.answer and not current.weak:
                    current.question.extend(asked)  # asked again before any answer: one question
                    current.end = turn.end
                    continue
                close()
                current = _Open(question=asked, start=turn.start, end=turn.end)
            elif current is not None:
                rest = [s for s in sentences if not is_small_talk(s)]
                if not rest:
                    continue
                if current.answer or current.weak:
                    close()  # the customer moved on
                else:
                    current.question.extend(rest)  # e.g. the reply to a clarifying question
                    current.end = turn.end
            continue
        if current is None:
            continue
        if is_backchannel(text):
            current.weak.append(text)
            current.answer_end = max(current.answer_end, turn.end)
            continue
        stated = _answer_part(sentences, lang)
        if stated:
            current.last_turn_at = len(current.answer)
            current.answer.extend(stated)
            current.answer_end = max(current.answer_end, turn.end)
    close()
    return out
