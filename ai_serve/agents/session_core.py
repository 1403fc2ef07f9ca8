"""What the IVR and the multi-agent sessions share beyond :class:`~.conversation.Conversation`.

The tools, the knowledge base and the audit log; the call's language (the one asked for when the
config has it, else the config's first; with ``auto`` and two languages, each caller final may switch
it); whitespace-tidy sentences built from parts; the silence count; the tool calls booked for the
summary; and the built-in sentences in both languages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pbx_edge.ai_link.protocol import StartMessage

from .attendant_config import Language
from .conversation import Conversation, Output, Retrieve, SessionSettings, Speak, TurnStats
from .flow_schema import CallConfig
from .text_rules import detect_language
from .tools import CallRecorder, ToolRegistry, ToolResult

__all__ = ["SessionCore", "SessionStats", "phrase"]

_PHRASES: dict[Language, dict[str, str]] = {
    "en": {
        "anything_else": "Is there anything else I can help you with?",
        "how_help": "How can I help you?",
        "unclear": "Sorry, I didn't catch that.",
        "not_sure": "I'm not sure about that, and I don't want to guess.",
        "offer_person": "You can ask me something else, or say 'agent' to talk to a person.",
        "apology": "I'm sorry, something went wrong on my side.",
        "transfer": "Let me connect you to a colleague.",
        "transfer_failed": "I'm sorry, I couldn't connect you right now.",
        "take_message": "Please tell me your name, number and a short message, and we will call you back.",
        "message_taken": "Thank you, I have passed your message on. Goodbye.",
        "handoff": "Let me pass you to {role}.",
        "goodbye_no_response": "I can't hear you, so I'll end the call now. Goodbye.",
    },
    "ko": {
        "anything_else": "더 도와드릴 일이 있을까요?",
        "how_help": "무엇을 도와드릴까요?",
        "unclear": "죄송합니다, 잘 못 들었어요.",
        "not_sure": "그 부분은 정확히 알지 못해 추측으로 답하지 않겠습니다.",
        "offer_person": "다른 것을 물어보시거나, '상담원'이라고 말씀하시면 연결해 드릴게요.",
        "apology": "죄송합니다, 저희 쪽에 문제가 생겼습니다.",
        "transfer": "담당 직원에게 연결해 드릴게요.",
        "transfer_failed": "죄송합니다, 지금은 연결해 드릴 수 없습니다.",
        "take_message": "성함과 연락처, 남기실 말씀을 말씀해 주시면 다시 연락드리겠습니다.",
        "message_taken": "감사합니다, 메시지를 전달해 드리겠습니다. 안녕히 계세요.",
        "handoff": "{role}에게 연결해 드릴게요.",
        "goodbye_no_response": "말씀이 들리지 않아 통화를 종료하겠습니다. 안녕히 계세요.",
    },
}


def phrase(key: str, language: Language, **values: str) -> str:
    """A built-in sentence of the sessions in ``language``."""
    return _PHRASES[language][key].format(**values)


@dataclass(slots=True)
class SessionStats(TurnStats):
    reprompts: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class SessionCore(Conversation[SessionStats]):
    """The IVR and multi-agent sessions' common base (see the module docstring)."""

    def __init__(
        self,
        start: StartMessage,
        config: CallConfig,
        tools: ToolRegistry,
        *,
        speak: Speak,
        retrieve: Retrieve,
        clock: Callable[[], float],
        audit: CallRecorder | None,
        settings: SessionSettings | None,
    ) -> None:
        """``config``: the flow or the agents config the call runs on; ``audit`` records the tool calls
        when ``tools`` was built without a recorder."""
        requested, languages = start.language, config.languages
        language: Language = requested if requested in languages else languages[0]
        settings = settings or SessionSettings()
        super().__init__(start, language, speak=speak, clock=clock, settings=settings, stats=SessionStats())
        self._detect = requested == "auto" and len(languages) > 1
        self.version = config.version  # the call keeps this version of its flow or agents to the end
        self.tools = tools
        self._retrieve = retrieve
        self._audit = audit

    # ------------------------------------------------------------------------------ to override

    async def _silent_turn(self) -> list[Output]:
        """What the session says after a silence (counted in ``stats.silences``)."""
        raise NotImplementedError

    def _set_language(self, language: Language) -> None:
        """The caller switched language (``auto`` calls only)."""
        self.language = language

    async def _on_transfer_failed(self, target: str) -> list[Output]:
        """Say so, and go on listening."""
        language = self.language
        return await self._say(f"{phrase('transfer_failed', language)} {phrase('anything_else', language)}")

    # ---------------------------------------------------------------------------------- helpers

    def _heard(self, text: str, confidence: float | None) -> str | None:
        said = super()._heard(text, confidence)
        if said and self._detect and (lang := detect_language(said)) is not None:
            self._set_language(lang)
        return said

    async def _on_silence(self) -> list[Output]:
        self.last_input_at = self._clock()
        self.stats.silences += 1
        return await self._silent_turn()

    async def _say(self, text: str) -> list[Output]:
        """Say ``text`` with its spaces tidied (parts may be empty); nothing when nothing is left."""
        text = " ".join(text.split())
        return await super()._say(text) if text else []

    def _book_tool(self, result: ToolResult, by: str) -> None:
        self.stats.tool_calls.append(
            {
                "tool": result.tool,
                "by": by,
                "ok": result.ok,
                "error": result.error_kind,
                "status": result.status,
            }
        )
