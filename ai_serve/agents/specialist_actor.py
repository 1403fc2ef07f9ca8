"""Each specialist of a multi-agent call as a Ray actor of its own, created per call and let go at
hand-off and hang-up.

Theory of operation. :class:`ActorSpecialists` is the session's ``specialists`` factory in the live
app (:func:`ai_serve.agents.ivr_host.open_session`): for each agent the call is routed or handed to,
it starts a :class:`SpecialistActor` (``num_cpus`` from the options, no restarts) with everything by
value: the agent's spec and the context handed over, its tool matcher, the call's start message,
the session settings, the IVR options (tools file, environment, audit log) and the attendant config
(where the role deployments are). In the actor, the agent is a
:class:`~ai_serve.agents.specialist.Specialist` with its own tool registry, audit log and retriever
client. :class:`RemoteSpecialist` is the session's handle: :meth:`RemoteSpecialist.respond` awaits the
actor (an actor that died raises ``RayActorError``, which the session answers with an apology and a
transfer or a message: never silence); :meth:`RemoteSpecialist.close` asks the actor to commit its
audit rows and exit, and kills it after ``close_timeout_s`` if it has not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pbx_edge.ai_link.protocol import StartMessage

from .agent_config import AgentSpec
from .attendant_config import AttendantConfig, Language
from .audit import AuditLog
from .conversation import SessionSettings
from .specialist import AgentContext, Reply, Route, Specialist, ToolMatcher

__all__ = ["ActorOptions", "ActorSpecialists", "RemoteSpecialist", "SpecialistActor"]

_LOG = logging.getLogger(__name__)


class ActorOptions(BaseModel):
    """How specialists run in the live app (the ``agents_runtime`` of the IVR options)."""

    model_config = ConfigDict(extra="forbid")

    actors: bool = True  # one Ray actor per specialist per call (False: in the call's actor)
    num_cpus: float = Field(0.0, ge=0)
    close_timeout_s: float = Field(5.0, gt=0)


class SpecialistActor:
    """The actor's body (``ray.remote(SpecialistActor)``): one agent of one call."""

    def __init__(
        self,
        spec: dict[str, Any],
        context: AgentContext,
        matcher: ToolMatcher | None,
        start_json: str,
        settings: SessionSettings,
        ivr: dict[str, Any],
        attendant: dict[str, Any],
    ) -> None:
        from .attendant_actor import RoleClients
        from .ivr_host import IvrOptions, load_tools_leniently

        options = IvrOptions.model_validate(ivr)
        self.start = StartMessage.model_validate_json(start_json)
        self.tools = load_tools_leniently(options.tools_file, options.environ())
        self.audit: AuditLog | None = AuditLog(options.audit_url)
        self._audit_started = False
        roles = RoleClients(AttendantConfig.model_validate(attendant))
        self.agent = Specialist(
            AgentSpec.model_validate(spec), context, matcher, tools=self.tools, retrieve=roles.retrieve,
            start=self.start, settings=settings, audit=self.audit,
        )  # fmt: skip

    async def respond(self, request: str, route: Route, language: Language) -> Reply:
        if not self._audit_started and self.audit is not None:
            self._audit_started = True
            try:
                await self.audit.start()
            except Exception:  # the call goes on; its tool calls are logged, not stored
                _LOG.exception("call %s: the audit log cannot open", self.start.call_id)
                self.audit = None
        return await self.agent.respond(request, route, language)

    async def shutdown(self) -> None:
        """Commit the audit rows, close the tools' HTTP session, and exit."""
        import ray

        try:
            if self.audit is not None and self._audit_started:
                await self.audit.close()
            await self.tools.aclose()
        finally:
            ray.actor.exit_actor()  # type: ignore[no-untyped-call]


class RemoteSpecialist:
    """The session's handle on a :class:`SpecialistActor`."""

    def __init__(self, actor: Any, spec: AgentSpec, context: AgentContext, close_timeout_s: float) -> None:
        self._actor = actor
        self.spec = spec
        self.context = context
        self._close_timeout_s = close_timeout_s
        self.closed = False
        self._reaper: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def actor(self) -> Any:
        return self._actor

    async def respond(self, request: str, route: Route, language: Language) -> Reply:
        reply: Reply = await self._actor.respond.remote(request, route, language)
        return reply

    def close(self) -> None:
        """Let the actor go: it commits and exits; killed if it has not within the timeout."""
        if self.closed:
            return
        self.closed = True
        ref = self._actor.shutdown.remote()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._kill()
            return
        self._reaper = loop.create_task(self._reap(ref))

    async def _reap(self, ref: Any) -> None:
        with contextlib.suppress(Exception):  # exit_actor ends the call with an actor error: expected
            await asyncio.wait_for(ref, self._close_timeout_s)
        self._kill()

    def _kill(self) -> None:
        import ray

        with contextlib.suppress(Exception):  # gone already
            ray.kill(self._actor, no_restart=True)


class ActorSpecialists:
    """A ``specialists`` factory: each agent of the call in an actor of its own."""

    def __init__(
        self,
        start: StartMessage,
        settings: SessionSettings,
        ivr: dict[str, Any],
        attendant: dict[str, Any],
        options: ActorOptions | None = None,
    ) -> None:
        self.start, self.settings = start, settings
        self.ivr, self.attendant = ivr, attendant
        self.options = options or ActorOptions()
        self.started: list[RemoteSpecialist] = []

    def __call__(
        self, spec: AgentSpec, context: AgentContext, matcher: ToolMatcher | None
    ) -> RemoteSpecialist:
        import ray

        t0 = time.monotonic()
        actor = (
            ray.remote(SpecialistActor)
            .options(num_cpus=self.options.num_cpus, max_restarts=0)
            .remote(
                spec.model_dump(mode="json"), context, matcher, self.start.to_json(), self.settings,
                self.ivr, self.attendant,
            )
        )  # fmt: skip
        _LOG.info("call %s: agent %s started as an actor (%.0f ms to submit)", self.start.call_id, spec.name,
                  1000 * (time.monotonic() - t0))  # fmt: skip
        handle = RemoteSpecialist(actor, spec, context, self.options.close_timeout_s)
        self.started.append(handle)
        return handle
