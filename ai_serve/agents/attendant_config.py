"""Options of the AI attendant (the ``attendant`` part of the live app's builder args).

Everything the conversation says comes from here: per callee extension the business, the person
called, the knowledge base's business unit, the default language and, optionally, the greeting; per
language the prompts (templates with ``{business}``, ``{person}``, ``{name}``, ``{number}`` and
``{reason}``). Thresholds and timeouts of the conversation and where the roles live (Serve app and
deployment names) complete it. :func:`parse_attendant_config` reports a bad value by its field path,
e.g. ``extensions.201.language: Input should be 'en' or 'ko' (got 'fr')``.
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AttendantConfig",
    "ExtensionConfig",
    "Language",
    "Prompts",
    "TemplateValues",
    "extension_key",
    "parse_attendant_config",
]

Language = Literal["en", "ko"]
PLACEHOLDERS = frozenset({"business", "person", "name", "number", "reason"})


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prompts(_Options):
    """What the attendant says in one language (templates, see the module docstring)."""

    greeting: str
    anything_else: str  # appended to an answer
    not_sure: str  # below the confidence threshold: no guess, a message instead
    ask_name: str
    ask_number: str
    ask_number_again: str  # too few digits heard
    ask_reason: str
    confirm: str
    confirm_again: str  # neither yes nor no heard
    retry_message: str  # the caller said the message was wrong: start over
    message_taken: str
    reprompt_silence: str
    reprompt_unclear: str
    goodbye_no_response: str
    goodbye: str
    transfer: str
    callee_available: str  # the callee can be reached again: connecting the caller
    transfer_failed: str  # the transfer did not go through: a message instead

    @field_validator("*")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        unknown = names - PLACEHOLDERS
        if unknown or "" in names:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown) or ['{}']}; allowed: {sorted(PLACEHOLDERS)}"
            )
        if not value.strip():
            raise ValueError("must not be empty")
        return value


ENGLISH = Prompts(
    greeting="Hello, you have reached {business}. {person} cannot take your call right now. How can I help?",
    anything_else="Is there anything else I can help with?",
    not_sure="I'm sorry, I don't have a reliable answer to that. I can take a message for {person}.",
    ask_name="May I have your name, please?",
    ask_number="What number should {person} call you back on?",
    ask_number_again="Sorry, I did not get the whole number. Please say your callback number digit by digit.",
    ask_reason="And briefly, what is your message?",
    confirm="Let me confirm. {name}, at {number}, about: {reason}. Is that right?",
    confirm_again="Please say yes if the message is right, or no to start over.",
    retry_message="Sorry about that, let's start over.",
    message_taken="Thank you, {name}. I will pass your message on to {person}. Goodbye.",
    reprompt_silence="Are you still there? How can I help you?",
    reprompt_unclear="Sorry, I didn't catch that. Could you say it again?",
    goodbye_no_response="I can't hear you, so I will end the call now. Please call again. Goodbye.",
    goodbye="Thank you for calling {business}. Goodbye.",
    transfer="One moment, I will connect you to {person}.",
    callee_available="Good news: {person} is available now. One moment, I will connect you.",
    transfer_failed="I'm sorry, I could not connect you. I can take a message for {person}.",
)
KOREAN = Prompts(
    greeting=(
        "안녕하세요, {business}입니다. 지금은 {person}께서 전화를 받을 수 없습니다. 무엇을 도와드릴까요?"
    ),
    anything_else="더 궁금하신 점이 있으신가요?",
    not_sure="죄송합니다, 그 질문에는 정확히 답변드리기 어렵습니다. {person}께 메시지를 남겨 드릴게요.",
    ask_name="성함이 어떻게 되세요?",
    ask_number="연락 받으실 전화번호를 말씀해 주세요.",
    ask_number_again="죄송합니다, 번호를 다 듣지 못했습니다. 전화번호를 한 자리씩 말씀해 주세요.",
    ask_reason="어떤 용건인지 간단히 말씀해 주세요.",
    confirm="확인하겠습니다. {name}님, 전화번호 {number}, 용건은 {reason}. 맞으신가요?",
    confirm_again="맞으면 네, 아니면 아니요라고 말씀해 주세요.",
    retry_message="죄송합니다, 처음부터 다시 받겠습니다.",
    message_taken="감사합니다, {name}님. {person}께 메시지를 전해 드리겠습니다. 안녕히 계세요.",
    reprompt_silence="여보세요, 듣고 계신가요? 무엇을 도와드릴까요?",
    reprompt_unclear="죄송합니다, 잘 듣지 못했습니다. 다시 한 번 말씀해 주시겠어요?",
    goodbye_no_response="말씀이 들리지 않아 전화를 종료하겠습니다. 다시 걸어 주세요. 안녕히 계세요.",
    goodbye="{business}에 전화해 주셔서 감사합니다. 안녕히 계세요.",
    transfer="잠시만 기다려 주세요, {person}께 연결해 드리겠습니다.",
    callee_available="{person}께서 지금 통화 가능하십니다. 잠시만 기다려 주세요, 연결해 드리겠습니다.",
    transfer_failed="죄송합니다, 연결되지 않았습니다. {person}께 메시지를 남겨 드릴게요.",
)


def _texts(english: str, korean: str) -> dict[Language, str]:
    return {"en": english, "ko": korean}


def _prompts(english: Prompts, korean: Prompts) -> dict[Language, Prompts]:
    return {"en": english, "ko": korean}


class ExtensionConfig(_Options):
    """One callee extension (or the default for extensions not listed)."""

    business: dict[Language, str] = Field(default_factory=lambda: _texts("our office", "저희 사무실"))
    person: dict[Language, str] = Field(default_factory=lambda: _texts("The person you called", "담당자"))
    business_unit: str | None = None  # the knowledge base filter (None: every unit)
    language: Language = "en"  # when the start message says "auto"
    greeting: dict[Language, str] = Field(default_factory=dict)  # overrides the prompts' greeting
    transfer_target: str | None = None  # where "a person, please" goes (None: the callee extension)

    @field_validator("business", "person")
    @classmethod
    def _not_empty(cls, value: dict[Language, str]) -> dict[Language, str]:
        if not value:
            raise ValueError("give the text for at least one language")
        return value

    def text(self, field: Literal["business", "person"], language: Language) -> str:
        """The field in ``language``, else in English, else in any language given."""
        values = getattr(self, field)
        assert isinstance(values, dict)
        return str(values.get(language) or values.get("en") or next(iter(values.values())))


class AttendantConfig(_Options):
    """The attendant's options; see the module docstring."""

    enabled: bool = True
    extensions: dict[str, ExtensionConfig] = Field(default_factory=dict)
    default_extension: ExtensionConfig = Field(default_factory=ExtensionConfig)
    prompts: dict[Language, Prompts] = Field(default_factory=lambda: _prompts(ENGLISH, KOREAN))
    # Confidence. The retriever re-ranks (cosine + 0.2 * keyword overlap); with multilingual-e5-small
    # the knowledge base's own questions score 0.97-1.1 and unrelated ones 0.78-0.92 (measured), so
    # answer at ``min_score`` or above, and only when the best beats the runner-up by ``min_margin``.
    min_score: float = Field(0.95, ge=0)
    min_margin: float = Field(0.03, ge=0)
    retrieval_k: int = Field(3, ge=1, le=20)
    rerank: bool = True
    llm_check: bool = False  # also ask the LLM whether the retrieved answer answers the question
    # When the edge says the callee can be reached again (it registered, is back, its call ended):
    # connect the caller to it at once (the attendant's part ends with a transfer).
    transfer_when_available: bool = True
    min_stt_confidence: float = Field(0.3, ge=0, le=1)  # below: "sorry, I didn't catch that"
    # Turns: silence after the AI stopped talking, re-prompts before giving up, wait for a final.
    silence_timeout_s: float = Field(8.0, gt=0)
    max_reprompts: int = Field(2, ge=0)
    final_grace_s: float = Field(15.0, gt=0)  # after speech started, the longest wait for its final
    end_delay_s: float = Field(0.5, ge=0)  # hang up / transfer this long after the last audio played
    min_callback_digits: int = Field(7, ge=1)
    max_confirm_attempts: int = Field(2, ge=1)
    # Where the roles are, and how long one request may take.
    roles_app: str = "smartpbx-roles"
    tts_deployment: str = "TtsDeployment"
    retriever_deployment: str = "RetrieverDeployment"
    llm_deployment: str = "LlmDeployment"
    tts_timeout_s: float = Field(30.0, gt=0)
    retrieval_timeout_s: float = Field(15.0, gt=0)
    llm_timeout_s: float = Field(20.0, gt=0)
    # Runtime: one Ray actor per call; audio to the edge in messages of at most this many seconds.
    actor_num_cpus: float = Field(0.0, ge=0)
    audio_message_s: float = Field(1.0, gt=0, le=60)
    # A socket lost without ``end``: the call's actor waits this long for the edge to resume it
    # (then the conversation goes on, and what it said meanwhile is delivered) before it ends.
    resume_grace_s: float = Field(30.0, ge=0)
    # The ingress holding the call's socket renews a lease on the actor this often; an actor whose
    # reader stopped renewing for two periods (its replica died) counts its socket as lost.
    lease_s: float = Field(10.0, gt=0)
    warm_greetings: bool = True  # synthesize the listed extensions' greetings before the first call

    @field_validator("extensions")
    @classmethod
    def _extension_names(cls, value: dict[str, ExtensionConfig]) -> dict[str, ExtensionConfig]:
        for key in value:
            if not key or key != extension_key(key):
                raise ValueError(f"extension {key!r} must be a bare user part such as '201'")
        return value

    @model_validator(mode="after")
    def _prompts_for_every_language(self) -> AttendantConfig:
        needed = {self.default_extension.language} | {e.language for e in self.extensions.values()}
        missing = sorted(needed - set(self.prompts))
        if missing:
            raise ValueError(f"prompts: no prompts for language(s) {missing} that extensions use")
        return self

    def extension(self, callee: str) -> tuple[str, ExtensionConfig]:
        """(key, options) of the callee's extension; the key is ``"*"`` for the default."""
        key = extension_key(callee)
        found = self.extensions.get(key)
        return (key, found) if found is not None else ("*", self.default_extension)

    def language_for(self, requested: str | None, extension: ExtensionConfig) -> Language:
        """The call's language: the start message's when it is one we have prompts for."""
        if requested in self.prompts:
            return requested
        return extension.language

    def greeting_text(self, extension: ExtensionConfig, language: Language) -> str:
        template = extension.greeting.get(language) or self.prompts[language].greeting
        return template.format_map(TemplateValues(business=extension.text("business", language),
                                          person=extension.text("person", language)))  # fmt: skip


class TemplateValues(dict[str, str]):
    """Placeholders a template may use but the moment cannot fill become empty."""

    def __missing__(self, key: str) -> str:
        return ""


def extension_key(callee: str) -> str:
    """``sip:201@pbx;user=phone`` / ``<sip:201@pbx>`` / ``201`` → ``201``."""
    text = callee.strip().strip("<>")
    for scheme in ("sips:", "sip:", "tel:"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
    return text.split("@", 1)[0].split(";", 1)[0].strip()


def parse_attendant_config(data: dict[str, Any] | AttendantConfig | None) -> AttendantConfig:
    """Validate ``data``; a ValueError names each bad field by its path."""
    if isinstance(data, AttendantConfig):
        return data
    try:
        return AttendantConfig.model_validate(data or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(attendant)"
            got = f" (got {err['input']!r})" if err["type"] != "missing" and err["loc"] else ""
            problems.append(f"{where}: {err['msg']}{got}")
        raise ValueError("bad attendant config: " + "; ".join(problems)) from None
