"""What happens to the caller when the callee does not answer in time: the no-answer hook.

The B2BUA cancels the callee leg and asks the policy for an outcome. Today the outcome rejects the
caller (480 by default); the AI attendant issue adds an outcome that answers the caller and bridges
the call to an AI leg, without changing the B2BUA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pbx_edge.b2bua.call import Call
from pbx_edge.ops.config import NoAnswerAction


@dataclass(frozen=True, slots=True)
class RejectCaller:
    status: int
    reason: str


NoAnswerOutcome = RejectCaller


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
