"""The multi-agent YAML (``config/agents.yaml``): a supervisor's specialists, validated field by field.

Each agent has a name, a role (how it is introduced to the caller), instructions (the system prompt of
an LLM specialist on GPU stacks), a description and example requests (what the supervisor routes on),
the tools it uses (each with example requests, argument templates and a success sentence; the tool
must exist in ``config/tools.yaml`` and allow this agent there), a knowledge filter and the agents it
may hand a caller over to.

:func:`load_agents` reports every problem at once, each naming its field
(``agents[1].handoff[0]: unknown agent 'sales'``); :func:`check_tools` adds the checks against a
:class:`~ai_serve.agents.tools.ToolRegistry`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .ivr_flow import (
    CALL_FIELDS,
    KnowledgeFilter,
    Language,
    Localized,
    Name,
    NluSettings,
    ToolName,
    template_fields,
)
from .tools import CallerContext, ToolRegistry

__all__ = [
    "TEMPLATE_FIELDS",
    "AgentConfigError",
    "AgentSpec",
    "AgentsConfig",
    "ToolUse",
    "check_tools",
    "load_agents",
    "parse_agents",
]

TEMPLATE_FIELDS = CALL_FIELDS | {"request", "agent"}
"""Names a specialist's template may use: the call fields, the caller's ``request`` (the utterance being
handled), the ``agent``'s name; ``facts.<key>`` (what earlier agents learned) and, in ``say``,
``result.<field>`` use a dot."""

_Text = Annotated[str, Field(min_length=1)]


def _scalar_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ToolUse(_Strict):
    """A tool a specialist calls when the caller's request is near one of ``examples``."""

    tool: ToolName
    examples: Annotated[list[_Text], Field(min_length=1)]
    arguments: dict[Name, str] = {}
    say: Localized  # the success sentence; failures are the registry's spoken sentence


class AgentSpec(_Strict):
    name: Name
    role: Localized  # "our billing team": "Let me pass you to {role}."
    instructions: _Text
    description: _Text
    examples: Annotated[list[_Text], Field(min_length=1)]
    tools: list[ToolUse] = []
    knowledge: KnowledgeFilter | None = None
    handoff: list[Name] = []


class AgentsConfig(_Strict):
    version: str | None = None
    numbers: list[Annotated[str, Field(pattern=r"^[0-9A-Za-z+*#_.-]+$")]] = []
    language: Literal["en", "ko", "auto"] = "auto"
    greeting: Localized
    reprompt: Localized  # the supervisor could not tell which specialist the caller needs
    max_retries: int = Field(2, ge=0, le=10)
    routing: NluSettings = NluSettings(threshold=0.88, margin=0.02)
    tool_threshold: float = Field(0.9, gt=0.0, le=1.0)  # a request this near a tool's examples calls it
    human_extension: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+*#-]+$")] | None = None
    agents: Annotated[list[AgentSpec], Field(min_length=1)]
    dtmf: dict[Annotated[str, Field(pattern=r"^[0-9*#]$")], Name] = {}

    @field_validator("version", "human_extension", mode="before")
    @classmethod
    def _str(cls, v: Any) -> Any:
        return _scalar_to_str(v)

    @field_validator("numbers", mode="before")
    @classmethod
    def _numbers_str(cls, v: Any) -> Any:
        return [_scalar_to_str(x) for x in v] if isinstance(v, list) else v

    @field_validator("dtmf", mode="before")
    @classmethod
    def _dtmf_keys_str(cls, v: Any) -> Any:
        return {_scalar_to_str(k): x for k, x in v.items()} if isinstance(v, dict) else v

    @property
    def languages(self) -> tuple[Language, ...]:
        return ("en", "ko") if self.language == "auto" else (self.language,)

    def agent(self, name: str) -> AgentSpec:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(f"no agent {name!r}")

    def text(self, localized: dict[Language, str], language: str) -> str:
        for lang in (language, *self.languages):
            if lang in localized:
                return localized[lang]
        return next(iter(localized.values()))


class AgentConfigError(ValueError):
    """The agents file is invalid; ``problems`` are ``"field.path: message"`` strings, one per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid agents config {source}:\n  " + "\n  ".join(problems))


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out or "(top level)"


def _check_template(problems: list[str], where: str, text: str, *, result: bool) -> None:
    try:
        fields = template_fields(text)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return
    for name in fields:
        head, _, rest = name.partition(".")
        if head == "facts" and rest:
            continue
        if head == "result" and rest:
            if not result:
                problems.append(f"{where}: {{{name}}}: tool results exist only in a tool's say")
            continue
        if rest or name not in TEMPLATE_FIELDS:
            known = ", ".join(
                sorted(TEMPLATE_FIELDS | {"facts.<key>"} | ({"result.<field>"} if result else set()))
            )
            problems.append(f"{where}: {{{name}}}: unknown placeholder (known: {known})")


def _check_localized(
    problems: list[str], where: str, texts: dict[Language, str], config: AgentsConfig
) -> None:
    for lang in config.languages:
        if lang not in texts:
            problems.append(
                f"{where}: missing the {lang!r} text (the config's language is {config.language})"
            )


def cross_check(config: AgentsConfig) -> list[str]:
    """References, uniqueness, languages and templates."""
    problems: list[str] = []
    names = [a.name for a in config.agents]
    known = ", ".join(sorted(names))
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(
                f"agents[{i}].name: duplicate agent name {name!r} (first at index {names.index(name)})"
            )
        if name == "supervisor":
            problems.append(f"agents[{i}].name: 'supervisor' is the router's own name")
    _check_localized(problems, "greeting", config.greeting, config)
    _check_localized(problems, "reprompt", config.reprompt, config)
    for i, agent in enumerate(config.agents):
        at = f"agents[{i}]"
        _check_localized(problems, f"{at}.role", agent.role, config)
        for j, target in enumerate(agent.handoff):
            if target == agent.name:
                problems.append(f"{at}.handoff[{j}]: an agent cannot hand off to itself")
            elif target not in names:
                problems.append(f"{at}.handoff[{j}]: unknown agent {target!r} (defined: {known})")
        for j, use in enumerate(agent.tools):
            _check_localized(problems, f"{at}.tools[{j}].say", use.say, config)
            for lang, text in use.say.items():
                _check_template(problems, f"{at}.tools[{j}].say.{lang}", text, result=True)
            for arg, template in use.arguments.items():
                _check_template(problems, f"{at}.tools[{j}].arguments.{arg}", template, result=False)
    for digit, name in config.dtmf.items():
        if name not in names:
            problems.append(f"dtmf.{digit}: unknown agent {name!r} (defined: {known})")
    return problems


def check_tools(config: AgentsConfig, tools: ToolRegistry) -> list[str]:
    """Each tool an agent uses exists in the registry and allows that agent (``tools.yaml``)."""
    problems: list[str] = []
    for i, agent in enumerate(config.agents):
        for j, use in enumerate(agent.tools):
            where = f"agents[{i}].tools[{j}].tool"
            if tools.spec(use.tool) is None:
                problems.append(
                    f"{where}: unknown tool {use.tool!r} (defined: {', '.join(sorted(tools.names))})"
                )
            elif not tools.allows(use.tool, CallerContext(call_id="", agent=agent.name)):
                problems.append(
                    f"{where}: tools.yaml does not allow agent {agent.name!r} to use {use.tool!r}"
                )
    return problems


def parse_agents(text: str, source: str = "<string>", *, tools: ToolRegistry | None = None) -> AgentsConfig:
    """Validate the YAML ``text``; raises :class:`AgentConfigError` listing every problem by field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AgentConfigError(source, [f"(yaml): {e}"]) from None
    if not isinstance(data, dict):
        raise AgentConfigError(source, [f"(top level): must be a mapping, got {type(data).__name__}"])
    try:
        config = AgentsConfig.model_validate(data)
    except ValidationError as e:
        raise AgentConfigError(
            source, [f"{_dotted(tuple(err['loc']))}: {err['msg']}" for err in e.errors()]
        ) from None
    problems = cross_check(config) + (check_tools(config, tools) if tools is not None else [])
    if problems:
        raise AgentConfigError(source, problems)
    if config.version:
        return config
    return config.model_copy(update={"version": "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]})


def load_agents(path: str | Path, *, tools: ToolRegistry | None = None) -> AgentsConfig:
    """Read and validate ``path`` (with ``tools``: also against the tool registry)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AgentConfigError(str(p), [f"(file): cannot read: {e}"]) from None
    return parse_agents(text, str(p), tools=tools)
