"""What happens to the caller when the callee does not answer in time: the no-answer hook.

The B2BUA asks the policy for an outcome. :class:`RejectCaller` rejects the caller (480 by default)
and cancels the callee leg; :class:`AnswerWithAi` has the edge answer the caller itself and hand the
call to the AI attendant (pbx_edge/b2bua/attendant.py), falling back to ``fallback`` when no AI can
take the call. The same outcome type serves the other triggers (unregistered, busy, away,
after_hours; see pbx_edge/b2bua/triggers.py), each with its own fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pbx_edge.b2bua.call import Call
from pbx_edge.b2bua.triggers import Trigger, TriggerPolicy
from pbx_edge.ops.config import NoAnswerAction


@dataclass(frozen=True, slots=True)
class RejectCaller:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class AnswerWithAi:
    """Answer the caller with the AI attendant, told why (``trigger``); ``fallback`` when the AI
    layer is not configured or not reachable."""

    trigger: Trigger
    fallback: RejectCaller


NoAnswerOutcome = RejectCaller | AnswerWithAi


class NoAnswerPolicy(Protocol):
    def on_no_answer(self, call: Call, action: NoAnswerAction | None) -> NoAnswerOutcome:
        """``action`` is the callee extension's override, if it has one."""
        ...


class RejectOnNoAnswer:
    def __init__(self, default: NoAnswerAction) -> None:
        self.default = default

    def on_no_answer(self, call: Call, action: NoAnswerAction | None) -> NoAnswerOutcome:
        chosen = action or self.default
        return RejectCaller(chosen.code, chosen.reason)


class AiOnNoAnswer:
    """The default policy: the AI attendant where the ``no_answer`` trigger is ``ai`` for the
    callee, else (and as the fallback) the reject :class:`RejectOnNoAnswer` would give."""

    def __init__(self, default: NoAnswerAction, triggers: TriggerPolicy) -> None:
        self.reject = RejectOnNoAnswer(default)
        self.triggers = triggers

    def on_no_answer(self, call: Call, action: NoAnswerAction | None) -> NoAnswerOutcome:
        reject = self.reject.on_no_answer(call, action)
        assert isinstance(reject, RejectCaller)
        if self.triggers.wants_ai(call.callee, "no_answer"):
            return AnswerWithAi("no_answer", reject)
        return reject
