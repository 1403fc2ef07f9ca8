"""Between the node and the AI layer: which calls are streamed, and what comes back.

On ``call.answered`` (from the event bus) a call is admitted to the AI link (at most
``ai.max_streams``: past that the call is not streamed and counted as shed; the call itself is never
refused), its decoded-audio tap is subscribed and a :class:`~pbx_edge.ai_link.client.CallStream`
starts. Transcripts come back as ``transcript.partial`` / ``transcript.final`` / ``transcript.gap``
events on the same bus (so webhooks, logs and ``/api/events`` get them), are kept per live call for
``/api/calls/{id}/transcript`` and, finals and gaps, stored by day; media actions (play,
stop-playback, bridge) go to the call's media session, hang-up to the B2BUA.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pbx_edge.ai_link.client import CallMeta, InjectAudio
from pbx_edge.ai_link.config import AiLinkConfig
from pbx_edge.ai_link.link import AiLink, apply_media_action
from pbx_edge.ai_link.live import CallTranscript, LiveTranscript, TranscriptItem
from pbx_edge.ai_link.protocol import ActionMessage, HangupAction, TranscriptEvent, TranscriptGap
from pbx_edge.ai_link.transcripts import TranscriptStore
from pbx_edge.b2bua.call import EndReason
from pbx_edge.ops.events import EventBus, new_event_id
from pbx_edge.ops.models import Event

if TYPE_CHECKING:
    from pbx_edge.edge import EdgeNode

log = logging.getLogger("pbx_edge.ai_link")


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
        if config.enabled:
            bus.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        call_id = event.call_id
        if call_id is None:
            return
        if event.name == "call.answered":
            self._start(event, call_id)
        elif event.name == "call.ended" and call_id in self.transcripts:
            self.link.stop_call(call_id, str(event.data.get("reason", "hangup")))
            del self.transcripts[call_id]

    def _start(self, event: Event, call_id: str) -> None:
        media = self.node.media
        session = media.sessions.get(call_id) if media is not None else None
        if session is None or not self.link.admit(call_id):
            return  # pass-through media has no tap; over max_streams the call goes unstreamed
        queue = session.subscribe_tap(self.config.queue_frames)
        self.transcripts[call_id] = LiveTranscript(call_id)
        self.link.start_call(
            CallMeta.from_event(event),
            queue,
            lambda transcript: self._on_transcript(event, transcript),
            lambda action: self._on_action(call_id, action),
            on_finished=lambda _stream: session.unsubscribe_tap(queue),
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
        name = f"transcript.{kind}"
        data = transcript.model_dump(exclude={"type"})
        self.bus.publish(
            Event.model_construct(
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
        )

    def _on_action(self, call_id: str, action: ActionMessage | InjectAudio) -> None:
        media = self.node.media
        session = media.sessions.get(call_id) if media is not None else None
        if session is not None and apply_media_action(session, action):
            return
        if isinstance(action, HangupAction):
            self.node.hangup(call_id, EndReason.ADMIN)
            return
        log.warning("call %s: AI action %s not supported by the edge yet", call_id, type(action).__name__)

    async def close(self) -> None:
        await self.link.close()
