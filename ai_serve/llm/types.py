"""Value types of the LLM role: a validated chat request and its result, in OpenAI's vocabulary.

Messages are plain OpenAI chat messages (``{"role": ..., "content": ...}``) so that they cross Ray
and HTTP as JSON and the same list can be sent to vLLM, a llama.cpp server or a hosted API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict, Unpack

__all__ = [
    "ROLES",
    "ChatOptions",
    "ChatRequest",
    "ChatResult",
    "Message",
    "StreamOptions",
    "ToolCall",
    "ToolChoice",
    "Usage",
    "tool_name",
]

ROLES = frozenset({"system", "user", "assistant", "tool"})
Message = Mapping[str, Any]
ToolChoice = Literal["auto", "none", "required"] | Mapping[str, Any]


class StreamOptions(TypedDict, total=False):
    """The keyword arguments of ``stream()``; their defaults are those of :meth:`ChatRequest.create`."""

    max_tokens: int
    temperature: float
    stop: Sequence[str] | str | None
    json_schema: Mapping[str, Any] | None
    grammar: str | None
    seed: int | None


class ChatOptions(StreamOptions, total=False):
    """The keyword arguments of ``chat()``: those of ``stream()`` and the OpenAI tools on offer."""

    tools: Sequence[Mapping[str, Any]] | None
    tool_choice: ToolChoice


def tool_name(tool: Mapping[str, Any]) -> str:
    """The function name of an OpenAI tool definition ``{"type": "function", "function": {...}}``."""
    try:
        name = tool["function"]["name"]
    except (KeyError, TypeError):
        raise ValueError(
            f"a tool must be {{'type': 'function', 'function': {{'name': ...}}}}, got {tool!r}"
        ) from None
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tool's function name must be a non-empty string, got {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat completion request; validated on construction (a bad request never reaches a model)."""

    messages: tuple[Message, ...]
    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    json_schema: Mapping[str, Any] | None = None  # constrain the answer to JSON matching this schema
    grammar: str | None = None  # or to this GBNF grammar (llama.cpp syntax)
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: ToolChoice = "auto"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("messages must not be empty")
        for i, m in enumerate(self.messages):
            if not isinstance(m, Mapping):
                raise ValueError(f"messages[{i}] must be a mapping, got {type(m).__name__}")
            if m.get("role") not in ROLES:
                raise ValueError(f"messages[{i}].role must be one of {sorted(ROLES)}, got {m.get('role')!r}")
            content = m.get("content")
            if content is None and not (m["role"] == "assistant" and m.get("tool_calls")):
                raise ValueError(f"messages[{i}].content is missing")
            if content is not None and not isinstance(content, str):
                raise ValueError(f"messages[{i}].content must be a string (text only)")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be within [0, 2], got {self.temperature}")
        if self.json_schema is not None and self.grammar is not None:
            raise ValueError("give json_schema or grammar, not both")
        if self.tools and (self.json_schema is not None or self.grammar is not None):
            raise ValueError("tools cannot be combined with json_schema or grammar")
        names = [tool_name(t) for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        if isinstance(self.tool_choice, Mapping):
            chosen = self.tool_choice.get("function", {}).get("name")
            if chosen not in names:
                raise ValueError(f"tool_choice names {chosen!r}, which is not among the tools {names}")
        elif self.tool_choice not in ("auto", "none", "required"):
            raise ValueError(
                f"tool_choice must be auto, none, required or a function, got {self.tool_choice!r}"
            )
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice='required' needs tools")

    @classmethod
    def create(
        cls,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | str | None = None,
        json_schema: Mapping[str, Any] | None = None,
        grammar: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: ToolChoice = "auto",
        seed: int | None = None,
    ) -> ChatRequest:
        """Build from the keyword arguments of ``chat()``; ``stop`` may be one string or several."""
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return cls(
            messages=tuple(dict(m) for m in messages),
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stops,
            json_schema=json_schema,
            grammar=grammar,
            tools=tuple(tools or ()),
            tool_choice=tool_choice,
            seed=seed,
        )

    @classmethod
    def for_stream(cls, messages: Sequence[Message], **options: Unpack[StreamOptions]) -> ChatRequest:
        """:meth:`create` from the keyword arguments of ``stream()``, which offers no tools."""
        unknown = options.keys() - StreamOptions.__optional_keys__
        if unknown:
            raise TypeError(f"stream() got unexpected keyword arguments {sorted(unknown)}")
        return cls.create(messages, **options)

    @property
    def wants_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for; ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> dict[str, Any]:
        """``arguments`` as a dict; ValueError when the model wrote something else."""
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError(f"tool call {self.name}: arguments are not a JSON object: {self.arguments!r}")
        return value


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The answer to one :class:`ChatRequest`."""

    text: str
    finish_reason: str  # "stop", "length" or "tool_calls"
    model: str
    usage: Usage = field(default_factory=Usage)
    tool_calls: tuple[ToolCall, ...] = ()
    latency_s: float = 0.0

    def json(self) -> Any:
        """The text parsed as JSON (for answers constrained by ``json_schema``)."""
        return json.loads(self.text)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for a Serve response or a log line."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatResult:
        return cls(
            text=data["text"],
            finish_reason=data["finish_reason"],
            model=data["model"],
            usage=Usage(**data.get("usage", {})),
            tool_calls=tuple(ToolCall(**c) for c in data.get("tool_calls", ())),
            latency_s=float(data.get("latency_s", 0.0)),
        )
