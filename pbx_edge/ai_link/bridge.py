"""Between the node and the AI layer: which calls are streamed, and what comes back.

On ``call.answered`` (from the event bus) a call is admitted to the AI link (at most
``ai.max_streams``: past that the call is not streamed and counted as shed; the call itself is never
refused), its decoded-audio tap is subscribed and a :class:`~pbx_edge.ai_link.client.CallStream`
starts. Transcripts come back as ``transcript.partial`` / ``transcript.final`` / ``transcript.gap``
events on the same bus (so webhooks, logs and ``/api/events`` get them), are kept per live call for
``/api/calls/{id}/transcript`` and, finals and gaps, stored by day; media actions (play,
stop-playback, bridge) go to the call's media session, hang-up to the B2BUA; ``agent_event``
messages are published as call events under the name the agent gave. DTMF digits of a streamed
call (the ``dtmf`` event: RFC 4733 from the relay or SIP INFO) go to its stream as ``dtmf`` controls.

The AI attendant (pbx_edge/b2bua/attendant.py): this bridge is the B2BUA's
:class:`~pbx_edge.b2bua.attendant.AttendantBackend`. It says whether the AI layer can take a call
(enabled, a stream slot free, not found unreachable lately) and answers the caller's offer from the
relay (pbx_edge/media/local_answer.py). When an attended call is answered its stream starts in
``attendant`` mode with the trigger (``ivr`` mode for an IVR number, trigger ``ivr``), the caller leg
is bridged to the injector (it hears only the AI) and ``call.ai_answered`` is published
(``trigger``, ``answered_by: "ai"``, ``codec``). A stream
that cannot connect within ``connect_timeout`` (+1 s), or that the AI side ends while the call is
up, hangs the caller up: an attended caller is never left in silence.

A ``transfer`` action asks the B2BUA to connect the caller to the target
(pbx_edge/b2bua/transfer.py). On ``call.transferred`` the caller is taken off the injector (it
hears the target), the AI is told with a ``transfer`` control and its stream goes on transcribing
both legs; the AI's audio is no longer played. ``call.transfer_failed`` (published by the node, as
are all call events) leaves the call with the AI, which is told with a ``transfer_failed`` control
(so is a transfer that cannot even be tried: no route, no offer).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from pbx_edge.ai_link.client import CallMeta, CallStream, InjectAudio
from pbx_edge.ai_link.config import AiLinkConfig
from pbx_edge.ai_link.link import AiLink, apply_media_action
from pbx_edge.ai_link.live import CallTranscript, LiveTranscript, TranscriptItem
from pbx_edge.ai_link.protocol import (
    ActionMessage,
    AgentEvent,
    CalleeAvailableMessage,
    DtmfMessage,
    HangupAction,
    TranscriptEvent,
    TranscriptGap,
    TransferAction,
    TransferFailedMessage,
    TransferMessage,
)
from pbx_edge.ai_link.transcripts import TranscriptStore
from pbx_edge.b2bua.availability import AVAILABLE_BECAUSE
from pbx_edge.b2bua.call import Call, EndReason
from pbx_edge.media.interface import MediaUnavailable, Side
from pbx_edge.media.local_answer import answer_locally, transfer_offer
from pbx_edge.ops.events import EventBus, new_event_id
from pbx_edge.ops.models import Event

if TYPE_CHECKING:
    from pbx_edge.edge import EdgeNode

log = logging.getLogger("pbx_edge.ai_link")

# Event names the node itself publishes: an agent event may not pose as one of them.
RESERVED_EVENT_PREFIXES = ("call.", "registration.", "transcript.", "dtmf")


class AiBridge:
    def __init__(
        self, node: EdgeNode, bus: EventBus, config: AiLinkConfig, wall: Callable[[], float]
    ) -> None:
        self.node = node
        self.bus = bus
        self.config = config
        self.wall = wall
        self.link = AiLink(config)
        self.transcripts: dict[str, LiveTranscript] = {}
        self.received: Counter[str] = Counter()  # transcript messages by kind: final, partial, gap
        self.store = TranscriptStore(Path(config.transcripts_dir), wall) if config.transcripts_dir else None
        self.attended: dict[str, asyncio.TimerHandle | None] = {}  # attended calls -> connect watchdog
        self._down_until = float("-inf")  # node monotonic time until which the AI counts as unreachable
        self.transferring: dict[str, str] = {}  # attended calls -> transfer target asked for
        self.transferred: set[str] = set()  # calls the AI handed to a person: its audio is not played
        if config.enabled:
            bus.subscribe(self._on_event)

    # --- the B2BUA's AttendantBackend ------------------------------------------------------------
    def available(self) -> bool:
        """Whether the AI attendant can take a call now: a relay to answer from, the link enabled
        with a slot free, and no attendant stream that failed to connect lately."""
        return (
            self.node.media is not None and self.link.has_room() and self.node.monotonic() >= self._down_until
        )

    def answer_sdp(self, call: Call) -> bytes:
        media = self.node.media
        session = media.sessions.get(call.id) if media is not None else None
        if session is None:
            raise MediaUnavailable("no relay session: the edge cannot answer the call itself")
        return answer_locally(session, Side.CALLER)

    def transfer_offer(self, call: Call) -> bytes:
        media = self.node.media
        session = media.sessions.get(call.id) if media is not None else None
        if session is None:
            raise MediaUnavailable("no relay session to transfer from")
        return transfer_offer(session)

    # --- events ----------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        call_id = event.call_id
        if call_id is None:
            return
        if event.name == "call.answered":
            attended = self.node.core.attended.get(call_id)
            if attended is None:
                self._start(event, call_id)
            else:
                self._start_attendant(event, call_id, attended.trigger)
        elif event.name == "dtmf":
            self._dtmf(call_id, event.data)
        elif event.name == "call.transferred":
            self._transferred(call_id)
        elif event.name == "call.transfer_failed":
            target = self.transferring.pop(call_id, None) or str(event.data.get("target") or "?")
            self._transfer_failed(call_id, target, event.data.get("reason"))
        elif event.name == "call.callee_available":
            self._callee_available(call_id, event.callee or "")
        elif event.name == "call.ended":
            watchdog = self.attended.pop(call_id, None)
            if watchdog is not None:
                watchdog.cancel()
            self.transferring.pop(call_id, None)
            self.transferred.discard(call_id)
            if call_id in self.transcripts:
                self.link.stop_call(call_id, str(event.data.get("reason", "hangup")))
                del self.transcripts[call_id]

    def _callee_available(self, call_id: str, extension: str) -> None:
        """The callee of an attended call can be reached again: the AI decides what to do."""
        attended = self.node.core.attended.get(call_id)
        stream = self.link.stream(call_id)
        reason = AVAILABLE_BECAUSE.get(attended.trigger) if attended is not None else None
        if stream is None or reason is None or not extension:
            return
        stream.send_control(CalleeAvailableMessage(extension=extension, reason=reason))

    def _dtmf(self, call_id: str, data: dict[str, Any]) -> None:
        """A digit (RFC 4733 or SIP INFO) of a streamed call goes to the AI as a ``dtmf`` control."""
        stream = self.link.stream(call_id)
        if stream is None:
            return
        try:
            message = DtmfMessage(leg=data.get("leg"), digit=data.get("digit"))
        except ValidationError:
            log.warning("call %s: DTMF %r not sent to the AI", call_id, data)
            return
        stream.send_control(message)

    def _start(self, event: Event, call_id: str, trigger: str | None = None) -> CallStream | None:
        media = self.node.media
        session = media.sessions.get(call_id) if media is not None else None
        if session is None or not self.link.admit(call_id):
            return None  # pass-through media has no tap; over max_streams the call goes unstreamed
        queue = session.subscribe_tap(self.config.queue_frames)
        self.transcripts[call_id] = LiveTranscript(call_id)
        meta = CallMeta.from_event(event)
        if trigger is not None:
            meta = replace(meta, mode="ivr" if trigger == "ivr" else "attendant", trigger=trigger)

        def finished(_stream: CallStream) -> None:
            session.unsubscribe_tap(queue)
            if call_id in self.attended:  # the AI side ended the stream while the caller is there
                self._hang_up_soon(call_id, "the AI attendant's stream ended")

        return self.link.start_call(
            meta,
            queue,
            lambda transcript: self._on_transcript(event, transcript),
            lambda action: self._on_action(event, call_id, action),
            on_finished=finished,
        )

    def _start_attendant(self, event: Event, call_id: str, trigger: str) -> None:
        self.attended[call_id] = None
        stream = self._start(event, call_id, trigger)
        media = self.node.media
        session = media.sessions.get(call_id) if media is not None else None
        if stream is None or session is None:
            self._hang_up_soon(call_id, "no AI stream for an attended call")
            return
        session.bridge_to_injector(Side.CALLER)  # the caller hears the AI only
        loop = asyncio.get_running_loop()
        self.attended[call_id] = loop.call_later(
            self.config.connect_timeout + 1.0, self._check_connected, call_id, stream
        )
        data = {"trigger": trigger, "answered_by": "ai", "codec": event.data.get("codec")}
        self.bus.publish(self._call_event(event, "call.ai_answered", data))

    def _transferred(self, call_id: str) -> None:
        """The caller now talks to the transfer target: off the injector, the AI told."""
        target = self.transferring.pop(call_id, "?")
        watchdog = self.attended.pop(call_id, None)  # the stream may end now without a hangup
        if watchdog is not None:
            watchdog.cancel()
        self.transferred.add(call_id)
        media = self.node.media
        session = media.sessions.get(call_id) if media is not None else None
        if session is not None:
            session.stop_playback(Side.CALLER)
            session.bridge_to_injector(Side.CALLER, False)
        stream = self.link.stream(call_id)
        if stream is not None:
            stream.send_control(TransferMessage(leg="caller", target=target))

    def _check_connected(self, call_id: str, stream: CallStream) -> None:
        if call_id not in self.attended:
            return
        self.attended[call_id] = None
        if stream.stats.connects == 0:
            self._down_until = self.node.monotonic() + self.config.reconnect_max
            self._hang_up_soon(call_id, "the AI layer is unreachable")

    def _hang_up_soon(self, call_id: str, why: str) -> None:
        """Hang an attended caller up, outside the core's event dispatch we may be called from."""
        log.warning("call %s: hanging up the caller: %s", call_id, why)
        self.attended.pop(call_id, None)
        asyncio.get_running_loop().call_soon(self.node.hangup, call_id, EndReason.ERROR)

    def _call_event(self, call: Event, name: str, data: dict[str, Any]) -> Event:
        return Event.model_construct(
            id=new_event_id(),
            name=name,
            time=self.wall(),
            node_id=call.node_id,
            call_id=call.call_id,
            a_call_id=call.a_call_id,
            b_call_id=call.b_call_id,
            caller=call.caller,
            callee=call.callee,
            data=data,
        )

    def transcript(self, call_id: str) -> CallTranscript | None:
        """The live transcript of a streamed call, else the stored one of an ended call, else None."""
        live = self.transcripts.get(call_id)
        if live is not None:
            return live.view()
        records = self.store.find(call_id) if self.store is not None else None
        if records is None:
            return None
        items = [TranscriptItem.from_record(r) for r in records]
        return CallTranscript(call_id=call_id, live=False, items=items, partials=[])

    def _on_transcript(self, call: Event, transcript: TranscriptEvent | TranscriptGap) -> None:
        live = self.transcripts.get(call.call_id or "")
        if live is not None:
            live.add(transcript)
        final = isinstance(transcript, TranscriptGap) or transcript.final
        if final and self.store is not None:
            try:
                self.store.append(call, transcript)
            except OSError:  # a full or read-only disk must not take the call's stream down
                log.exception("call %s: cannot store a transcript", call.call_id)
        kind = "gap" if isinstance(transcript, TranscriptGap) else "final" if final else "partial"
        self.received[kind] += 1
        self.bus.publish(
            self._call_event(call, f"transcript.{kind}", transcript.model_dump(exclude={"type"}))
        )

    def _on_action(self, call: Event, call_id: str, action: ActionMessage | AgentEvent | InjectAudio) -> None:
        if isinstance(action, AgentEvent):
            if action.name.startswith(RESERVED_EVENT_PREFIXES):
                log.warning("call %s: agent event %r refused: the name is the node's", call_id, action.name)
                return
            self.bus.publish(self._call_event(call, action.name, dict(action.data)))
            return
        if call_id in self.transferred:
            return  # the caller talks to a person now: the AI only listens
        if isinstance(action, TransferAction):
            self._transfer(call_id, action)
            return
        media = self.node.media
        session = media.sessions.get(call_id) if media is not None else None
        if session is not None and apply_media_action(session, action):
            return
        if isinstance(action, HangupAction):
            self.attended.pop(call_id, None)  # our hangup, not a stream lost
            self.node.hangup(call_id, EndReason.AI_HANGUP)
            return
        log.warning("call %s: AI action %s not supported by the edge yet", call_id, type(action).__name__)

    def _transfer(self, call_id: str, action: TransferAction) -> None:
        if call_id in self.transferring:
            self._transfer_failed(call_id, action.target, "a transfer is under way")
            return
        if action.leg != "caller" or call_id not in self.attended:
            log.warning("call %s: transfer of the %s leg not supported here", call_id, action.leg)
            self._transfer_failed(call_id, action.target, "only an attended caller can be transferred")
            return
        self.transferring[call_id] = action.target
        if not self.node.transfer(call_id, action.target):
            self.transferring.pop(call_id, None)
            log.warning("call %s: cannot transfer to %r", call_id, action.target)
            self._transfer_failed(call_id, action.target, "no route or no offer")

    def _transfer_failed(self, call_id: str, target: str, reason: object) -> None:
        """The AI asked for a transfer that did not happen: it is told, and keeps the caller."""
        stream = self.link.stream(call_id)
        if stream is not None:
            stream.send_control(TransferFailedMessage(target=target or "?", reason=str(reason or "")))

    async def close(self) -> None:
        for watchdog in self.attended.values():
            if watchdog is not None:
                watchdog.cancel()
        self.attended.clear()  # streams stopped at shutdown hang nobody up
        await self.link.close()
