"""The agents at run time: one Ray actor per live call, the roles reached by deployment handles.

:class:`AttendantLoop` (asyncio, no Ray) drives a :class:`~ai_serve.agents.session.Session` (the
:class:`~ai_serve.agents.attendant.Attendant`, or an IVR or multi-agent session): speech starts are
handled at once (a barge-in must not wait behind a turn being answered); finals, gaps, keypad digits
(for a :class:`~ai_serve.agents.session.KeypadSession`; ignored otherwise), the edge's word on a
transfer or on the callee's return, and the greeting are queued
and handled one at a time, in the order they came; the session's deadline (silence, the end after the
last words) is waited for between them. Its outputs are queued as wire items: ``("json", text)`` for a
protocol message, ``("audio", pcm)`` for 16 kHz PCM of the caller leg, which the ingress frames and
sends (:mod:`ai_serve.ingress_agent`).

:class:`AttendantActor` is the actor's body (``ray.remote(AttendantActor)``, created by the ingress
when a call starts in mode ``attendant`` or ``ivr``, killed when it ends): :meth:`AttendantActor.run`
is a streaming method the ingress reads the outputs from, one stream per socket of the call (a resume
opens a new one, through any ingress replica: :mod:`ai_serve.agents.wire_outbox`); ``pause``,
``give_back`` and ``expire`` serve a lost socket; the other methods are the inputs. In mode
``ivr`` the session and what it holds (tools, audit log) come from :mod:`ai_serve.agents.ivr_host`.
:class:`RoleClients` wraps the role deployments of the ``smartpbx-roles`` app (TTS, retriever, LLM).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from pbx_edge.ai_link.protocol import PlayAction, StartMessage

from .attendant import Attendant
from .attendant_config import AttendantConfig, Language
from .conversation import Output, Say
from .greetings import to_16k
from .session import AttendedSession, KeypadSession, Session
from .wire_outbox import WireItem, WireOutbox

if TYPE_CHECKING:
    from .ivr_host import HostedSession

__all__ = ["AttendantActor", "AttendantLoop", "Chat", "RoleClients", "WireItem", "check_answer", "wire_items"]

_LOG = logging.getLogger(__name__)

Chat = Callable[..., Awaitable[dict[str, Any]]]  # LlmDeployment.chat: messages, **options -> ChatResult dict
_Input = tuple[str, tuple[Any, ...]]
_CHECK_SCHEMA = {
    "type": "object",
    "properties": {"answers": {"type": "boolean"}},
    "required": ["answers"],
}


async def check_answer(chat: Chat, question: str, answer: str, language: Language) -> bool | None:
    """The LLM's yes/no, by constrained JSON: does ``answer`` answer ``question``? None when it gave no
    usable reply (the caller then goes by the retrieval scores alone)."""
    messages = [
        {"role": "system", "content": "You check the answers of a phone assistant. Reply in JSON."},
        {"role": "user", "content": f"Question: {question}\nAnswer: {answer}\n"
                                    "Does the answer answer the question? Reply {\"answers\": true} or "
                                    "{\"answers\": false}."},
    ]  # fmt: skip
    result = await chat(messages, max_tokens=16, temperature=0.0, json_schema=_CHECK_SCHEMA)
    try:
        verdict = json.loads(str(result.get("text", "")))
    except ValueError:
        return None
    value = verdict.get("answers") if isinstance(verdict, dict) else None
    return value if isinstance(value, bool) else None


def wire_items(outputs: list[Output]) -> list[WireItem]:
    """The attendant's outputs as what goes on the WebSocket, in order."""
    items: list[WireItem] = []
    for out in outputs:
        if isinstance(out, Say):
            items.append(("json", PlayAction(leg="caller", text=out.text, id=out.id).to_json()))
            items.append(("audio", out.pcm))
        else:
            items.append(("json", out.to_json()))
    return items


class AttendantLoop:
    """Inputs in, wire items out, for one :class:`Session` (see the module docstring)."""

    def __init__(self, attendant: Session, clock: Callable[[], float] = time.monotonic) -> None:
        self.attendant = attendant  # the session (named for the first one hosted)
        self._clock = clock
        self._inbox: asyncio.Queue[_Input | None] = asyncio.Queue()
        self.outbox = WireOutbox()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """:meth:`finish` was called: the session takes no more inputs."""
        return self._closed

    # inputs ------------------------------------------------------------------------------------

    def greet(self) -> None:
        self._inbox.put_nowait(("greet", ()))

    def greeted(self, text: str, seconds: float, age: float) -> None:
        self._inbox.put_nowait(("greeted", (text, seconds, age)))

    def speech_started(self) -> None:
        if not self._closed:
            self._put(self.attendant.speech_started())

    def heard(self, text: str, confidence: float | None) -> None:
        self._inbox.put_nowait(("heard", (text, confidence)))

    def gap(self) -> None:
        self._inbox.put_nowait(("gap", ()))

    def dtmf(self, digit: str) -> None:
        """A keypad digit, queued with the finals (a session without a keypad ignores it)."""
        self._inbox.put_nowait(("dtmf", (digit,)))

    def transferred(self) -> None:
        self._inbox.put_nowait(("transferred", ()))

    def transfer_failed(self, reason: str) -> None:
        self._inbox.put_nowait(("transfer_failed", (reason,)))

    def callee_available(self, extension: str, reason: str) -> None:
        """The callee can be reached again (only an attended session acts on it)."""
        self._inbox.put_nowait(("callee_available", (extension, reason)))

    # running -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"attendant-{self.attendant.start.call_id}")

    async def finish(self, reason: str) -> None:
        """Stop handling inputs (a turn in progress is cancelled); queue the summary, then the end."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._inbox.empty():  # finals that came with the end: in the transcript, unanswered
            job = self._inbox.get_nowait()
            late = getattr(self.attendant, "heard_late", None)  # the attendant books them
            if job is not None and job[0] == "heard" and late is not None:
                late(job[1][0])
        self._put(self.attendant.finish(reason))
        self.outbox.put(None)

    async def outputs(self, token: str = "", resumed: bool = False) -> AsyncIterator[WireItem]:
        """The wire items until :meth:`finish`, for reader ``token`` (see :class:`WireOutbox`: a newer
        reader, or a pause, ends this one)."""
        self.start()
        self.outbox.open(token, resumed)
        async for item in self.outbox.read(token):
            yield item

    def _put(self, outputs: list[Output]) -> None:
        for item in wire_items(outputs):
            self.outbox.put(item)

    async def _run(self) -> None:
        attendant = self.attendant
        while True:
            deadline = attendant.deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                job = await asyncio.wait_for(self._inbox.get(), timeout)
            except TimeoutError:
                self._put(await attendant.expire())
                continue
            if job is None:
                return
            kind, args = job
            try:
                if kind == "greet":
                    self._put(await attendant.greet())
                elif kind == "greeted":
                    attendant.greeted(*args)
                elif kind == "heard":
                    self._put(await attendant.heard(*args))
                elif kind == "gap":
                    attendant.gap()
                elif kind == "dtmf" and isinstance(attendant, KeypadSession):
                    self._put(await attendant.dtmf(*args))
                elif kind == "transferred":
                    self._put(attendant.transferred())
                elif kind == "transfer_failed":
                    self._put(await attendant.transfer_failed(*args))
                elif kind == "callee_available" and isinstance(attendant, AttendedSession):
                    self._put(await attendant.callee_available(*args))
            except Exception:  # a bug must not leave the caller in silence for the rest of the call
                _LOG.exception("call %s: attendant failed on %s", attendant.start.call_id, kind)


class RoleClients:
    """The role deployments of the roles app, through handles made at first use."""

    def __init__(self, config: AttendantConfig) -> None:
        self.config = config
        self._handles: dict[str, Any] = {}

    def _handle(self, name: str) -> Any:
        if name not in self._handles:
            from ray import serve

            self._handles[name] = serve.get_deployment_handle(name, app_name=self.config.roles_app)
        return self._handles[name]

    async def synthesize(self, text: str, language: Language) -> tuple[bytes, int]:
        async with asyncio.timeout(self.config.tts_timeout_s):
            pcm, rate = await self._handle(self.config.tts_deployment).synthesize.remote(text, language)
        return bytes(pcm), int(rate)

    async def speak(self, text: str, language: Language) -> bytes:
        pcm, rate = await self.synthesize(text, language)
        return to_16k(pcm, rate)

    async def retrieve(
        self, query: str, language: Language, business_unit: str | None
    ) -> list[dict[str, Any]]:
        async with asyncio.timeout(self.config.retrieval_timeout_s):
            hits: list[dict[str, Any]] = await self._handle(self.config.retriever_deployment).search.remote(
                query, k=self.config.retrieval_k, language=language, business_unit=business_unit,
                rerank=self.config.rerank,
            )  # fmt: skip
        return hits

    async def check(self, question: str, answer: str, language: Language) -> bool | None:
        """:func:`check_answer` through the LLM deployment."""
        handle = self._handle(self.config.llm_deployment)

        async def chat(messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
            result: dict[str, Any] = await handle.chat.remote(messages, **options)
            return result

        async with asyncio.timeout(self.config.llm_timeout_s):
            return await check_answer(chat, question, answer, language)


class AttendantActor:
    """One call's agent as a Ray actor (async: inputs are handled while a turn is answered).

    Mode ``attendant``: an :class:`Attendant`. Mode ``ivr`` (``ivr``: the app's
    :class:`~ai_serve.agents.ivr_host.IvrOptions`): the IVR or multi-agent session for the callee, built
    by :func:`~ai_serve.agents.ivr_host.open_session`; raises :class:`LookupError` when none serves it.
    The role clients (TTS, retriever, LLM) and their timeouts are the attendant config's in both modes.
    """

    def __init__(self, start_json: str, config: dict[str, Any], ivr: dict[str, Any] | None = None) -> None:
        start = StartMessage.model_validate_json(start_json)
        self.config = AttendantConfig.model_validate(config)
        self.roles = RoleClients(self.config)
        self.hosted: HostedSession | None = None
        session: Session
        if start.mode == "ivr" and ivr is not None:
            from .ivr_host import IvrOptions, open_session

            self.hosted = open_session(
                start, IvrOptions.model_validate(ivr), speak=self.roles.speak, retrieve=self.roles.retrieve,
                attendant=config,
            )  # fmt: skip
            session = self.hosted.session
        else:
            session = Attendant(
                start,
                self.config,
                speak=self.roles.speak,
                retrieve=self.roles.retrieve,
                check=self.roles.check if self.config.llm_check else None,
                clock=time.monotonic,
            )
        self.loop = AttendantLoop(session)
        self._hosted_started = False
        self._call_id = start.call_id
        self._renewed = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None

    async def renew(self, token: str) -> None:
        """The reader ``token`` is alive (see :meth:`_watch`)."""
        if self.loop.outbox.reader == token:
            self._renewed = time.monotonic()

    async def _watch(self) -> None:
        """The actor outlives the replica that created it (a detached actor: a resume through another
        replica can still find it), so it must end itself when nobody holds the call: a reader that
        stopped renewing its lease for two periods counts as lost (its replica died without a word),
        and a call nobody reads for ``resume_grace_s`` ends as ``connection_lost``, as when the
        replica that lost the socket is alive to say so."""
        outbox, lease = self.loop.outbox, self.config.lease_s
        unread_since: float | None = None
        while not (outbox.ended or self.loop.closed):
            await asyncio.sleep(min(lease, max(self.config.resume_grace_s, 0.05)) / 2)
            now = time.monotonic()
            if outbox.reader is not None and now - self._renewed > 2 * lease:
                outbox.pause(outbox.reader)
            if outbox.reader is not None:
                unread_since = None
                continue
            unread_since = unread_since if unread_since is not None else now
            last = outbox.last_reader
            if now - unread_since < self.config.resume_grace_s or last is None:
                continue
            if await self.expire(last, "connection_lost"):
                _LOG.warning("call %s: nobody held the call; the agent ends itself", self._call_id)
                import ray

                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return

    async def run(self, token: str = "", resumed: bool = False) -> AsyncIterator[WireItem]:
        """The outputs, streamed (``actor.run.options(num_returns="streaming").remote(token)``) to the
        ingress holding the call's socket; a resume (``resumed``, through any ingress replica) opens a
        new stream, which ends the older one (:class:`~ai_serve.agents.wire_outbox.WireOutbox`)."""
        if self.hosted is not None and not self._hosted_started:
            self._hosted_started = True
            await self.hosted.start()
        self._renewed = time.monotonic()
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="agent-watchdog")
        async for item in self.loop.outputs(token, resumed):
            yield item

    async def pause(self, token: str) -> bool:
        """``token``'s stream lost its socket: outputs wait for a resume (False: another took over)."""
        return self.loop.outbox.pause(token)

    async def give_back(self, kind: Literal["json", "audio"], payload: Any) -> None:
        """An output the ingress took and could not send: the next stream gets it first."""
        self.loop.outbox.give_back((kind, payload))

    async def expire(self, token: str, reason: str) -> bool:
        """No resume came within the grace after ``token``'s stream paused: end the session with
        ``reason`` and log what could not be delivered. False, doing nothing, when a resume took
        the call over meanwhile (possibly on another ingress replica)."""
        outbox = self.loop.outbox
        if not outbox.unclaimed_since(token):
            return False
        await self.finish(reason)
        for _, text in outbox.undelivered():
            _LOG.warning("call %s: not delivered (no resume): %s", self._call_id, str(text)[:4000])
        return True

    async def greet(self) -> None:
        self.loop.greet()

    async def greeted(self, text: str, seconds: float, sent_at: float) -> None:
        """The ingress played the cached greeting at UNIX time ``sent_at``."""
        self.loop.greeted(text, seconds, max(0.0, time.time() - sent_at))

    async def speech_started(self) -> None:
        self.loop.speech_started()

    async def heard(self, text: str, confidence: float | None) -> None:
        self.loop.heard(text, confidence)

    async def gap(self) -> None:
        self.loop.gap()

    async def dtmf(self, digit: str) -> None:
        self.loop.dtmf(digit)

    async def transferred(self) -> None:
        self.loop.transferred()

    async def transfer_failed(self, reason: str) -> None:
        self.loop.transfer_failed(reason)

    async def callee_available(self, extension: str, reason: str) -> None:
        self.loop.callee_available(extension, reason)

    async def finish(self, reason: str) -> None:
        await self.loop.finish(reason)
        if self.hosted is not None:
            await self.hosted.close()
