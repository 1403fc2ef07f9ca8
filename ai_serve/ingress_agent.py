"""The ingress's side of an agent call (modes ``attendant`` and ``ivr``): greeting, actor, taps, pump.

:class:`AgentRuntime` belongs to one ingress replica: the attendant options, a
:class:`~ai_serve.agents.greetings.GreetingCache` (warmed in the background on first use of the
replica) and the count of live attendants. :meth:`AgentRuntime.open` starts an
:class:`AttendantCall` for a connection:

1. the greeting goes out from the cache at once (a ``play`` action and its PCM), while
2. the call's :class:`~ai_serve.agents.attendant_actor.AttendantActor` is created (a Ray actor; it
   takes a second or two to start, which the greeting covers) and told when the greeting was played;
3. the transcription of the call runs as in mode ``transcribe``; :meth:`AttendantCall.tap` wraps its
   ``send`` so that the caller leg's finals and STT gaps also go to the actor, and
   :meth:`AttendantCall.frames_fed` tells the actor when the caller's VAD detects speech (barge-in);
4. a pump task sends what the actor streams back: JSON messages as they are, PCM for the caller leg
   framed (16-byte header) in messages of at most ``audio_message_s`` so a ``stop_playback`` drops
   little that is already queued on the edge;
5. ``end``: :meth:`AttendantCall.finish` asks the actor for its summary, drains the pump and kills
   the actor.

A socket lost without ``end`` detaches the call (:meth:`AgentRuntime.detach`): the actor pauses its
outputs (:class:`~ai_serve.agents.wire_outbox.WireOutbox`), and what the ingress had taken but could
not send goes back to it. When the edge reconnects with ``resume`` (after a network blip, and to
deliver ``end`` for a call that ended meanwhile), Serve's proxy may route it to any ingress replica:
the replica finds the call's actor (its own detached call, or by name: the actors are named after the
call in :data:`AGENT_NAMESPACE`) and opens a new output stream on the new socket; what was owed to the
edge (summary, transfer, hang-up) comes first, stale speech is dropped, and the conversation goes on
without a new greeting. The replica that lost the socket lets go of the call when its grace
(``resume_grace_s``) ends; if no resume came, the actor ends the call with reason ``connection_lost``
and logs what could not be delivered. The actor is detached, so a call outlives the replica that
started it (a rolling update, a scale-down, a crash) and resumes through another; the ingress kills
it at the call's end, and it ends itself when no socket renews its lease (``lease_s``) and no
resume comes within the grace.

Mode ``ivr`` (when the app's :class:`~ai_serve.agents.ivr_host.IvrOptions` are enabled) runs the same
way with an IVR or multi-agent session in the actor (:mod:`ai_serve.agents.ivr_host`); the flow's
greeting comes from the same cache when it has no per-call placeholder (the flow as it is now: an
edited greeting is a new text), else the session synthesizes it; and the call keeps the language
of its ``start`` (the flow chooses, ``auto`` included). The edge's ``dtmf`` controls go to the actor
(:meth:`AttendantCall.dtmf`); the attendant ignores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pbx_edge.ai_link.protocol import (
    SAMPLE_RATE,
    Leg,
    PlayAction,
    StartMessage,
    TranscriptEvent,
    TranscriptGap,
    encode_frame,
)

from .agents.attendant_actor import AttendantActor, RoleClients, WireItem
from .agents.attendant_config import AttendantConfig
from .agents.greetings import GreetingCache, configured_greetings
from .agents.ivr_host import IvrOptions, greeting_for, static_greetings
from .agents.wire_outbox import is_speech, reader_token
from .ingress_call import CallStream

__all__ = ["AgentRuntime", "AttendantCall"]

_LOG = logging.getLogger(__name__)

SendText = Callable[[str], Awaitable[None]]
SendBytes = Callable[[bytes], Awaitable[None]]
_FINISH_TIMEOUT_S = 10.0
IVR_GREETINGS = "ivr"  # the greeting cache's key for flow and agents greetings (texts tell them apart)
AGENT_NAMESPACE = "smartpbx-agents"  # the Ray namespace of the per-call agent actors


def actor_name(call_id: str) -> str:
    """The name of ``call_id``'s agent actor (in :data:`AGENT_NAMESPACE`)."""
    return f"agent-{call_id}"


class AgentRuntime:
    """Per ingress replica: options, greeting cache, live attendants (see the module docstring)."""

    def __init__(self, config: AttendantConfig, ivr: IvrOptions | None = None) -> None:
        self.config = config
        self.ivr = ivr if ivr is not None else IvrOptions(enabled=False)
        self.roles = RoleClients(config)
        self.greetings = GreetingCache(self.roles.synthesize)
        self.active = 0
        self._warm: asyncio.Task[int] | None = None
        self._ivr_warm: asyncio.Task[int] | None = None
        self.detached: dict[str, AttendantCall] = {}  # socket lost, waiting for a resume
        self._actor_class: Any = None

    def actor_class(self) -> Any:
        """``ray.remote(AttendantActor)``, made once per replica (Ray exports the class once)."""
        if self._actor_class is None:
            import ray

            self._actor_class = ray.remote(AttendantActor)
        return self._actor_class

    def wants(self, start: StartMessage) -> bool:
        if start.mode == "ivr":
            return self.ivr.enabled
        return start.mode == "attendant" and self.config.enabled

    def ensure_warm(self) -> None:
        """Synthesize the configured greetings in the background (the attendant's per extension, the
        IVR flows' and agents' without per-call values); again later while some failed (the roles app
        may come up after this replica)."""
        if self.ivr.enabled and self.config.warm_greetings:
            ivr = self._ivr_warm
            if ivr is None or (ivr.done() and not ivr.cancelled() and ivr.result() == 0):
                self._ivr_warm = asyncio.create_task(self._warm_ivr(), name="ivr-greetings")
        if not (self.config.warm_greetings and self.config.extensions):
            return
        items = configured_greetings(self.config)
        if self._warm is not None and (not self._warm.done() or self._warm.result() == len(items)):
            return
        self._warm = asyncio.create_task(self.greetings.warm(items), name="attendant-greetings")

    async def _warm_ivr(self) -> int:
        """Cache the IVR and multi-agent greetings that have no per-call placeholder."""
        items = await asyncio.to_thread(static_greetings, self.ivr)
        return await self.greetings.warm((IVR_GREETINGS, language, text) for text, language in items)

    def info(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "greetings_cached": self.greetings.size,
            "greetings_synthesized": self.greetings.syntheses,
            "greeting_cache_hits": self.greetings.hits,
        }

    def detach(self, call: AttendantCall) -> None:
        """``call``'s socket is gone without ``end``: keep it for a resume (see the module docstring)."""
        self.detached[call.start.call_id] = call
        call.detach(self.config.resume_grace_s, lambda: self.detached.pop(call.start.call_id, None))

    async def resume(
        self, start: StartMessage, send_text: SendText, send_bytes: SendBytes
    ) -> AttendantCall | None:
        """The call ``start`` resumes on a new socket with its agent actor, whether this replica or
        another one started it; None when no actor is left (a new one then starts, without greeting)."""
        if not start.resume:
            return None
        local = self.detached.pop(start.call_id, None)
        actor = local.release() if local is not None else await self._find_actor(start.call_id)
        if actor is None:
            return None
        call = AttendantCall(self, start, send_text, send_bytes)
        call.adopt(actor)
        _LOG.info("call %s: resumed with its agent (%s)", start.call_id,
                  "kept here" if local is not None else "found by name")  # fmt: skip
        return call

    @staticmethod
    async def _find_actor(call_id: str) -> Any:
        """The live agent actor of ``call_id`` (started by any replica), or None."""
        import ray

        try:
            return await asyncio.to_thread(ray.get_actor, actor_name(call_id), namespace=AGENT_NAMESPACE)
        except ValueError:
            return None

    async def open(
        self, start: StartMessage, send_text: SendText, send_bytes: SendBytes
    ) -> AttendantCall | None:
        """Greet (from the cache) and start the call's actor; None when the actor cannot be started
        (the call is then only transcribed)."""
        self.ensure_warm()
        call = AttendantCall(self, start, send_text, send_bytes)
        try:
            await call.begin()
        except Exception:
            _LOG.exception("call %s: the attendant could not start", start.call_id)
            await call.cancel()
            return None
        return call


class AttendantCall:
    """One attendant call on the ingress (see the module docstring)."""

    def __init__(
        self, runtime: AgentRuntime, start: StartMessage, send_text: SendText, send_bytes: SendBytes
    ) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.ivr = start.mode == "ivr"
        key, extension = self.config.extension(start.callee)
        self.extension_key = key
        self.language = self.config.language_for(start.language, extension)
        self.greeting_text = self.config.greeting_text(extension, self.language)
        self.start = self._as_heard(start)
        self._send_text, self._send_bytes = send_text, send_bytes
        self._actor: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._lease: asyncio.Task[None] | None = None
        self._seq = 0
        self._media = 0
        self._caller_utterances = 0
        self.first_audio_s: float | None = None  # start message → greeting audio sent
        self._t0 = time.monotonic()
        self._closed = False
        self._detached = False
        self._grace: asyncio.Task[None] | None = None
        self._token = reader_token()  # this socket's stream of the actor's outputs

    def _as_heard(self, start: StartMessage) -> StartMessage:
        """The STT hears an attendant call in the attendant's language (not "auto"); an IVR call as
        started."""
        return start if self.ivr else start.model_copy(update={"language": self.language})

    # -------------------------------------------------------------------------------- lifecycle

    async def begin(self) -> None:
        args = (
            self.start.to_json(),
            self.config.model_dump(),
            self.runtime.ivr.model_dump() if self.ivr else None,
        )
        # Detached: the call outlives this replica (a rolling update, a scale-down); the actor ends
        # itself when nobody renews its lease (AttendantActor._watch).
        options: dict[str, Any] = {
            "num_cpus": self.config.actor_num_cpus, "max_restarts": 0, "lifetime": "detached",
        }  # fmt: skip
        actor_class = self.runtime.actor_class()
        try:  # named, so that a resume through another replica finds it
            actor = actor_class.options(
                **options, name=actor_name(self.start.call_id), namespace=AGENT_NAMESPACE
            ).remote(*args)
        except ValueError:  # the name is taken: a second start of a live call without resume
            _LOG.warning(
                "call %s: an agent of this call id lives on; this one is not named", self.start.call_id
            )
            actor = actor_class.options(**options).remote(*args)
        self._follow(actor, resumed=False)
        if self.start.resume:
            return  # a reconnection: the caller was greeted already
        key, language, text = self.extension_key, self.language, self.greeting_text
        if self.ivr:
            static = await asyncio.to_thread(greeting_for, self.runtime.ivr, self.start)
            if static is None:  # a greeting with per-call values: the session says it
                self._actor.greet.remote()
                return
            key, (text, language) = IVR_GREETINGS, static
        try:
            greeting = await self.runtime.greetings.get(key, language, text)
        except Exception as exc:
            _LOG.warning(
                "call %s: no cached greeting (%r); the session synthesizes it", self.start.call_id, exc
            )
            self._actor.greet.remote()
            return
        sent_at = time.time()
        await self._send_text(
            PlayAction(leg="caller", text=greeting.text, id=f"{self.start.call_id}:greeting").to_json()
        )
        await self._send_audio(greeting.pcm)
        self.first_audio_s = time.monotonic() - self._t0
        self._actor.greeted.remote(greeting.text, greeting.seconds, sent_at)
        _LOG.info("call %s: greeting out %.0f ms after start", self.start.call_id, 1000 * self.first_audio_s)

    async def finish(self, reason: str = "caller_hangup") -> None:
        """The edge sent ``end``: the summary goes out, then the actor is killed."""
        if self._closed:
            return
        try:
            async with asyncio.timeout(_FINISH_TIMEOUT_S):
                await self._actor.finish.remote(reason)
                if self._pump is not None:
                    await self._pump
        except Exception as exc:
            _LOG.warning("call %s: attendant did not finish cleanly: %r", self.start.call_id, exc)
        await self.cancel()

    def adopt(self, actor: Any) -> None:
        """Go on with the call's existing agent ``actor`` (a resume): its outputs come to this socket
        from now on, what was owed to the edge first; nobody greets."""
        self._follow(actor, resumed=True)

    def _follow(self, actor: Any, resumed: bool) -> None:
        self._actor = actor
        self.runtime.active += 1
        outputs = actor.run.options(num_returns="streaming").remote(self._token, resumed)
        self._pump = asyncio.create_task(
            self._pump_outputs(outputs), name=f"attendant-pump-{self.start.call_id}"
        )
        self._lease = asyncio.create_task(self._renew(), name=f"attendant-lease-{self.start.call_id}")

    async def _renew(self) -> None:
        """Renew this socket's lease on the actor while the socket lives."""
        while not (self._closed or self._detached):
            self._actor.renew.remote(self._token)
            await asyncio.sleep(self.config.lease_s)

    def detach(self, grace_s: float, forget: Callable[[], object]) -> None:
        """The socket is gone: the actor keeps its outputs for a resume (here or through another
        replica); after ``grace_s`` without one the call ends (``forget`` first)."""
        self._detached = True
        self._actor.pause.remote(self._token)
        self._grace = asyncio.create_task(self._expire(grace_s, forget), name=f"grace-{self.start.call_id}")

    async def _expire(self, grace_s: float, forget: Callable[[], object]) -> None:
        await asyncio.sleep(grace_s)
        forget()
        try:  # the actor ends the session and logs what it could not deliver, unless resumed elsewhere
            async with asyncio.timeout(_FINISH_TIMEOUT_S):
                expired = bool(await self._actor.expire.remote(self._token, "connection_lost"))
        except Exception as exc:
            _LOG.warning("call %s: the agent did not end cleanly: %r", self.start.call_id, exc)
            expired = True
        if expired:
            await self.cancel()
        else:
            self.release()

    def release(self) -> Any:
        """Let go of the call without ending it (another socket goes on with it); its actor."""
        if self._grace is not None and self._grace is not asyncio.current_task():
            self._grace.cancel()
        if not self._closed:
            self._closed = True
            if self._actor is not None:
                self.runtime.active -= 1
            for task in (self._pump, self._lease):
                if task is not None:
                    task.cancel()
        return self._actor

    async def cancel(self) -> None:
        """The call ended (or could not start): stop the pump, kill the actor."""
        if self._closed:
            return
        self.release()
        if self._pump is not None:
            with contextlib.suppress(BaseException):
                await self._pump
        if self._actor is not None:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(self._actor, no_restart=True)

    # ------------------------------------------------------------------------------------ inputs

    def tap(self, send: SendText) -> SendText:
        """``send`` for the call's transcripts that also hands the caller's finals to the attendant."""

        async def tapped(text: str) -> None:
            await send(text)
            if '"caller"' not in text or self._closed:
                return
            if text.startswith('{"type":"transcript",'):
                event = TranscriptEvent.model_validate_json(text)
                if event.final and event.leg == "caller":
                    self._actor.heard.remote(event.text, event.confidence)
            elif text.startswith('{"type":"transcript_gap",'):
                gap = TranscriptGap.model_validate_json(text)
                if gap.leg == "caller" and gap.reason == "stt_failed":
                    self._actor.gap.remote()

        return tapped

    def dtmf(self, digit: str) -> None:
        """The edge reported a keypad digit (of the caller leg)."""
        if not self._closed:
            self._actor.dtmf.remote(digit)

    def callee_available(self, extension: str, reason: str) -> None:
        """The edge says the callee the attendant answered for can be reached again."""
        if not self._closed:
            self._actor.callee_available.remote(extension, reason)

    def transfer_result(self, ok: bool, reason: str = "") -> None:
        """The edge connected the caller to the transfer target (``ok``), or could not (``reason``)."""
        if self._closed:
            return
        if ok:
            self._actor.transferred.remote()
        else:
            self._actor.transfer_failed.remote(reason)

    def frames_fed(self, call: CallStream) -> None:
        """After each batch: a new caller utterance opened by the VAD is speech starting."""
        cutter = call.cutters["caller"]
        if cutter.utterances != self._caller_utterances:
            self._caller_utterances = cutter.utterances
            if cutter.open_number is not None and not self._closed:
                self._actor.speech_started.remote()

    # ----------------------------------------------------------------------------------- outputs

    async def _pump_outputs(self, outputs: Any) -> None:
        try:
            async for ref in outputs:
                item: WireItem = await ref
                await self._deliver(*item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the actor died: transcription goes on without the attendant
            _LOG.warning("call %s: attendant output stream failed: %r", self.start.call_id, exc)

    async def _deliver(self, kind: str, payload: Any) -> None:
        """Send one item; one that cannot be sent (detached, or the socket failed) goes back to the
        actor for the stream of a resume (speech is dropped there)."""
        try:
            if self._detached:
                raise ConnectionError("detached")
            if kind == "json":
                await self._send_text(payload)
            else:
                await self._send_audio(payload)
        except Exception:
            if not is_speech((kind, payload)):
                self._actor.give_back.remote(kind, payload)

    async def _send_audio(self, pcm: bytes) -> None:
        """PCM for the caller leg in messages of at most ``audio_message_s``."""
        step = max(2, int(self.config.audio_message_s * SAMPLE_RATE) * 2)
        for offset in range(0, len(pcm), step):
            chunk = pcm[offset : offset + step]
            await self._send_bytes(encode_frame(Leg.CALLER, self._seq, self._media, chunk))
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            self._media += len(chunk) // 2
