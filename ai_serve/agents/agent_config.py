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

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator

from .flow_checks import placeholders
from .flow_schema import (
    CALL_FIELDS,
    CallConfig,
    KnowledgeFilter,
    Language,
    Localized,
    Name,
    NluSettings,
    Strict,
    Text,
    ToolName,
    scalar_to_str,
)
from .tools import CallerContext, ToolRegistry
from .yaml_source import (
    Loc,
    YamlProblem,
    YamlSourceError,
    content_version,
    dotted,
    parse_mapping,
    read_source,
)

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

Problems = list[tuple[Loc, str]]


class ToolUse(Strict):
    """A tool a specialist calls when the caller's request is near one of ``examples``."""

    tool: ToolName
    examples: Annotated[list[Text], Field(min_length=1)]
    arguments: dict[Name, str] = {}
    say: Localized  # the success sentence; failures are the registry's spoken sentence


class AgentSpec(Strict):
    name: Name
    role: Localized  # "our billing team": "Let me pass you to {role}."
    instructions: Text
    description: Text
    examples: Annotated[list[Text], Field(min_length=1)]
    tools: list[ToolUse] = []
    knowledge: KnowledgeFilter | None = None
    handoff: list[Name] = []


class AgentsConfig(CallConfig):
    numbers: list[Annotated[str, Field(pattern=r"^[0-9A-Za-z+*#_.-]+$")]] = []
    greeting: Localized
    reprompt: Localized  # the supervisor could not tell which specialist the caller needs
    max_retries: int = Field(2, ge=0, le=10)
    routing: NluSettings = NluSettings(threshold=0.88, margin=0.02)
    tool_threshold: float = Field(0.9, gt=0.0, le=1.0)  # a request this near a tool's examples calls it
    human_extension: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.+*#-]+$")] | None = None
    agents: Annotated[list[AgentSpec], Field(min_length=1)]
    dtmf: dict[Annotated[str, Field(pattern=r"^[0-9*#]$")], Name] = {}

    @field_validator("human_extension", mode="before")
    @classmethod
    def _extension_str(cls, v: object) -> object:
        return scalar_to_str(v)

    def agent(self, name: str) -> AgentSpec:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(f"no agent {name!r}")


class AgentConfigError(ValueError):
    """The agents file is invalid: ``problems`` are ``"field.path: message"`` strings, one per problem,
    ``located`` the same problems with their line and column in the file."""

    def __init__(self, source: str, located: list[YamlProblem]) -> None:
        self.source = source
        self.located = located
        self.problems = [f"{p.path}: {p.message}" for p in located]
        super().__init__(f"invalid agents config {source}:\n  " + "\n  ".join(str(p) for p in located))


def _check_template(problems: Problems, where: Loc, text: str, *, result: bool) -> None:
    for name in placeholders(problems, where, text):
        head, _, rest = name.partition(".")
        if head == "facts" and rest:
            continue
        if head == "result" and rest:
            if not result:
                problems.append((where, f"{{{name}}}: tool results exist only in a tool's say"))
            continue
        if rest or name not in TEMPLATE_FIELDS:
            known = ", ".join(
                sorted(TEMPLATE_FIELDS | {"facts.<key>"} | ({"result.<field>"} if result else set()))
            )
            problems.append((where, f"{{{name}}}: unknown placeholder (known: {known})"))


def _check_localized(
    problems: Problems, where: Loc, texts: dict[Language, str], config: AgentsConfig
) -> None:
    for lang in config.languages:
        if lang not in texts:
            problems.append(
                (where, f"missing the {lang!r} text (the config's language is {config.language})")
            )


def _cross_check(config: AgentsConfig) -> Problems:
    problems: Problems = []
    names = [a.name for a in config.agents]
    known = ", ".join(sorted(names))
    for i, name in enumerate(names):
        if name in names[:i]:
            problems.append(
                (("agents", i, "name"), f"duplicate agent name {name!r} (first at index {names.index(name)})")
            )
        if name == "supervisor":
            problems.append((("agents", i, "name"), "'supervisor' is the router's own name"))
    _check_localized(problems, ("greeting",), config.greeting, config)
    _check_localized(problems, ("reprompt",), config.reprompt, config)
    for i, agent in enumerate(config.agents):
        at: Loc = ("agents", i)
        _check_localized(problems, (*at, "role"), agent.role, config)
        for j, target in enumerate(agent.handoff):
            if target == agent.name:
                problems.append(((*at, "handoff", j), "an agent cannot hand off to itself"))
            elif target not in names:
                problems.append(((*at, "handoff", j), f"unknown agent {target!r} (defined: {known})"))
        for j, use in enumerate(agent.tools):
            _check_localized(problems, (*at, "tools", j, "say"), use.say, config)
            for lang, text in use.say.items():
                _check_template(problems, (*at, "tools", j, "say", lang), text, result=True)
            for arg, template in use.arguments.items():
                _check_template(problems, (*at, "tools", j, "arguments", arg), template, result=False)
    for digit, name in config.dtmf.items():
        if name not in names:
            problems.append((("dtmf", digit), f"unknown agent {name!r} (defined: {known})"))
    return problems


def cross_check(config: AgentsConfig) -> list[str]:
    """References, uniqueness, languages and templates, as ``"field.path: message"``."""
    return [f"{dotted(loc)}: {msg}" for loc, msg in _cross_check(config)]


def _tool_problems(config: AgentsConfig, tools: ToolRegistry) -> Problems:
    problems: Problems = []
    for i, agent in enumerate(config.agents):
        for j, use in enumerate(agent.tools):
            where: Loc = ("agents", i, "tools", j, "tool")
            if tools.spec(use.tool) is None:
                problems.append(
                    (where, f"unknown tool {use.tool!r} (defined: {', '.join(sorted(tools.names))})")
                )
            elif not tools.allows(use.tool, CallerContext(call_id="", agent=agent.name)):
                problems.append(
                    (where, f"tools.yaml does not allow agent {agent.name!r} to use {use.tool!r}")
                )
    return problems


def check_tools(config: AgentsConfig, tools: ToolRegistry) -> list[str]:
    """Each tool an agent uses exists in the registry and allows that agent (``tools.yaml``)."""
    return [f"{dotted(loc)}: {msg}" for loc, msg in _tool_problems(config, tools)]


def parse_agents(text: str, source: str = "<string>", *, tools: ToolRegistry | None = None) -> AgentsConfig:
    """Validate the YAML ``text``; raises :class:`AgentConfigError` listing every problem by field (and
    line)."""
    try:
        doc = parse_mapping(text, source, "the agents config")
    except YamlSourceError as e:
        raise AgentConfigError(source, e.problems) from None
    problems = list(doc.duplicates)
    try:
        config = AgentsConfig.model_validate(doc.data)
    except ValidationError as e:
        raise AgentConfigError(source, problems + doc.validation_problems(e)) from None
    found = _cross_check(config) + (_tool_problems(config, tools) if tools is not None else [])
    problems.extend(doc.problem(loc, msg) for loc, msg in found)
    if problems:
        raise AgentConfigError(source, problems)
    return config if config.version else config.model_copy(update={"version": content_version(text)})


def load_agents(path: str | Path, *, tools: ToolRegistry | None = None) -> AgentsConfig:
    """Read and validate ``path`` (with ``tools``: also against the tool registry)."""
    try:
        text = read_source(path)
    except YamlSourceError as e:
        raise AgentConfigError(str(Path(path)), e.problems) from None
    return parse_agents(text, str(Path(path)), tools=tools)
