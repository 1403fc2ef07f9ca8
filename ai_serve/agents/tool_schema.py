"""Tool declarations (``config/tools.yaml``): the config models and the checks done at load.

A file is ``tools: [ ... ]``; each tool is a business-system HTTP endpoint that the agents may call.
Everything that can be wrong with a declaration is found when the file is loaded, never on a caller's
call, and the message names the tool and the field (``tools[0] (billing.lookup).timeout_s: ...``):

- unknown keys (pydantic ``extra="forbid"``), bad types and ranges;
- ``parameters`` must be a valid JSON Schema (Draft 2020-12) whose top level is an ``object``;
- every ``{placeholder}`` in the URL must be a required parameter;
- ``retries`` only on GET (only idempotent requests are repeated);
- ``${VAR}`` in ``url`` is expanded from the environment, and ``auth`` secrets are read from it.

Secrets come only from the environment, and a missing variable is a load-time error naming the tool and
the variable: a replica with a missing secret then fails its deployment (and the rollout stops) instead
of answering callers with "I can't reach the billing system" for hours. Secrets are resolved once, kept
out of the models' repr, and never written to the audit log.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped,unused-ignore]  # no py.typed in the wheel
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AuthConfig",
    "BasicAuth",
    "HeaderAuth",
    "PreparedTool",
    "ToolConfigError",
    "ToolSpec",
    "ToolsFile",
    "load_tools",
    "openai_function_name",
]

TOOL_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*(?:\.[a-z][a-z0-9]*(?:_[a-z0-9]+)*)+$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class ToolConfigError(ValueError):
    """The tools file is invalid; the message names each bad tool and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeaderAuth(_Strict):
    """A custom header whose value is the environment variable ``env`` (``X-Api-Key: $CRM_API_KEY``)."""

    name: str
    env: str

    @field_validator("name")
    @classmethod
    def _token(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"not a valid HTTP header name: {value!r}")
        return value


class BasicAuth(_Strict):
    """HTTP basic authentication, user name and password from environment variables."""

    username_env: str
    password_env: str


class AuthConfig(_Strict):
    """Exactly one of: ``bearer_env``, ``header``, ``basic``."""

    bearer_env: str | None = None
    header: HeaderAuth | None = None
    basic: BasicAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AuthConfig:
        chosen = [n for n in ("bearer_env", "header", "basic") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of bearer_env, header, basic (got {chosen or 'none'})")
        return self


class Allowed(_Strict):
    """Who may call the tool: an agent in ``agents`` or a conversation whose intent is in ``intents``.

    Either grants access; ``"*"`` in ``agents`` allows every agent. Nothing listed means nobody.
    """

    agents: tuple[str, ...] = ()
    intents: tuple[str, ...] = ()


class SpokenName(_Strict):
    """How the system is called in a spoken sentence, per language ("the billing system", "요금 시스템")."""

    en: str
    ko: str


class ToolSpec(_Strict):
    """One tool as declared in the YAML file (before environment expansion)."""

    name: str
    description: str = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    auth: AuthConfig | None = None
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    retries: int = Field(default=0, ge=0, le=3)
    retry_backoff_s: float = Field(default=0.1, ge=0, le=5)
    allowed: Allowed = Allowed()
    result: tuple[str, ...] | dict[str, str] | None = None
    system: SpokenName | None = None

    @field_validator("name")
    @classmethod
    def _dotted(cls, value: str) -> str:
        if not TOOL_NAME.match(value) or len(value) > 64:
            raise ValueError(
                "must be dotted lowercase words, e.g. billing.lookup (letters, digits, single "
                "underscores; at most 64 characters)"
            )
        return value

    @field_validator("parameters")
    @classmethod
    def _json_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
            raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        if value.get("type") != "object":
            raise ValueError('the top level must be {"type": "object", ...} (function-calling arguments)')
        return value

    @field_validator("result")
    @classmethod
    def _pointers(
        cls, value: tuple[str, ...] | dict[str, str] | None
    ) -> tuple[str, ...] | dict[str, str] | None:
        pointers = value.values() if isinstance(value, dict) else value or ()
        for p in pointers:
            if not p.startswith("/"):
                raise ValueError(f"{p!r} is not a JSON pointer (it must start with '/')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ToolSpec:
        if self.retries and self.method != "GET":
            raise ValueError(f"retries: only GET tools are retried (this one is {self.method}); set 0")
        properties = self.parameters.get("properties", {})
        required = set(self.parameters.get("required", ()))
        for name in _PLACEHOLDER.findall(_ENV_REF.sub("", self.url)):
            if name not in properties or name not in required:
                raise ValueError(f"url: placeholder {{{name}}} must be a required parameter")
        return self

    @property
    def function_name(self) -> str:
        return openai_function_name(self.name)


class ToolsFile(_Strict):
    tools: tuple[ToolSpec, ...]

    @model_validator(mode="after")
    def _unique(self) -> ToolsFile:
        seen: set[str] = set()
        for tool in self.tools:
            if tool.name in seen:
                raise ValueError(f"tool {tool.name!r} is declared twice")
            seen.add(tool.name)
        return self


def openai_function_name(tool: str) -> str:
    """OpenAI function names allow no dots: ``billing.lookup`` -> ``billing__lookup`` (one to one,
    since tool names never contain a double underscore)."""
    return tool.replace(".", "__")


@dataclass(frozen=True, slots=True)
class PreparedTool:
    """A tool ready to call: URL bases expanded, secrets resolved, arguments validator built."""

    spec: ToolSpec
    url: str
    validator: Any = field(repr=False)  # jsonschema.Draft202012Validator
    headers: Mapping[str, str] = field(repr=False)  # auth headers: secrets, never logged


def load_tools(path: str | Path, environ: Mapping[str, str]) -> list[PreparedTool]:
    """Read, validate and prepare every tool in ``path``; raises :class:`ToolConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ToolConfigError(f"cannot read tools file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ToolConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_tools(data, environ, source=str(path))


def parse_tools(data: Any, environ: Mapping[str, str], *, source: str = "tools") -> list[PreparedTool]:
    if not isinstance(data, dict):
        raise ToolConfigError(f"{source}: top level must be a mapping with a 'tools' list")
    try:
        parsed = ToolsFile.model_validate(data)
    except ValidationError as exc:
        raise ToolConfigError(f"{source}: invalid tools:\n  " + "\n  ".join(_lines(exc, data))) from None
    errors: list[str] = []
    prepared: list[PreparedTool] = []
    for i, spec in enumerate(parsed.tools):
        try:
            prepared.append(_prepare(spec, environ))
        except ValueError as exc:
            errors.append(f"tools[{i}] ({spec.name}).{exc}")
    if errors:
        raise ToolConfigError(f"{source}: invalid tools:\n  " + "\n  ".join(errors))
    return prepared


def _lines(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    tools = data.get("tools")
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "tools" and isinstance(loc[1], int) and isinstance(tools, list):
            raw = tools[loc[1]] if loc[1] < len(tools) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            rest = ".".join(str(p) for p in loc[2:]) or "(tool)"
            where = f"tools[{loc[1]}] ({name or 'unnamed'}).{rest}"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or err["type"] == "missing" else f" (got {value!r})"
        lines.append(f"{where}: {msg}{shown}")
    return lines


def _env(environ: Mapping[str, str], var: str, field_name: str) -> str:
    value = environ.get(var)
    if not value:
        raise ValueError(f"{field_name}: environment variable {var} is not set")
    return value


def _prepare(spec: ToolSpec, environ: Mapping[str, str]) -> PreparedTool:
    url = _ENV_REF.sub(lambda m: _env(environ, m.group(1), "url").rstrip("/"), spec.url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url: {url!r} is not an http(s) URL after expanding the environment")
    headers: dict[str, str] = {}
    auth = spec.auth
    if auth is not None and auth.bearer_env is not None:
        headers["Authorization"] = "Bearer " + _env(environ, auth.bearer_env, "auth.bearer_env")
    elif auth is not None and auth.header is not None:
        headers[auth.header.name] = _env(environ, auth.header.env, "auth.header.env")
    elif auth is not None and auth.basic is not None:
        user = _env(environ, auth.basic.username_env, "auth.basic.username_env")
        password = _env(environ, auth.basic.password_env, "auth.basic.password_env")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    validator = jsonschema.Draft202012Validator(spec.parameters)
    return PreparedTool(spec=spec, url=url, validator=validator, headers=headers)
