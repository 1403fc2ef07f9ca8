"""From the core's call hooks to operations records: :class:`Event` for the bus, :class:`CdrRecord`.

Records are built with ``model_construct`` (no validation): every field comes from the core's own
typed state, and this runs several times per call on the signalling path.

The core reports ``(name, Call)`` for call.started/ringing/answered/ended, ``(name, data)`` notices
for what is not a call (call.rejected before a call exists, registration.*), and DTMF digits. This
adapter turns them into the shared models, converting the core's monotonic times to UNIX time once.
Every INVITE that reached the core ends in exactly one CDR: ``call.ended`` for calls, ``call.rejected``
for INVITEs refused before a call existed (404, 480, 503 over capacity or while draining).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from pbx_edge.b2bua.call import Call, EndReason
from pbx_edge.media.interface import Side
from pbx_edge.ops.events import new_event_id
from pbx_edge.ops.models import CdrRecord, Disposition, Event

BUSY_CODES = frozenset({486, 600})
HANGUP_SIDE: dict[EndReason, Literal["caller", "callee", "edge"]] = {
    EndReason.CALLER_BYE: "caller",
    EndReason.CALLER_CANCEL: "caller",
    EndReason.CALLEE_BYE: "callee",
    EndReason.REJECTED: "callee",
}


class EventSink(Protocol):
    def publish(self, event: Event) -> None: ...


class CdrSink(Protocol):
    def add(self, record: CdrRecord) -> None: ...


def disposition(call: Call) -> Disposition:
    reason = call.end_reason
    if call.answered_at is not None:
        return "answered"
    if reason is EndReason.NO_ANSWER:
        return "no_answer"
    if reason is EndReason.CALLER_CANCEL:
        return "cancelled"
    if call.final_status in BUSY_CODES:
        return "busy"
    if reason is EndReason.REJECTED:
        return "rejected"
    return "failed"


class CallEventAdapter:
    def __init__(
        self,
        node_id: str,
        events: EventSink,
        cdr: CdrSink,
        monotonic: Callable[[], float],
        codec_of: Callable[[Call], str | None] = lambda call: None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.events = events
        self.cdr = cdr
        self.monotonic = monotonic
        self.codec_of = codec_of
        self.wall = wall
        self._codecs: dict[str, str | None] = {}  # answered calls' codecs, until their CDR

    def to_wall(self, mono: float) -> float:
        return self.wall() - (self.monotonic() - mono)

    # --- hooks -----------------------------------------------------------------------------------
    def on_call(self, name: str, call: Call) -> None:
        data: dict[str, Any] = {}
        stamp = self.monotonic()
        if name == "call.started":
            data["route"] = call.route_source
            stamp = call.created_at
        elif name == "call.answered":
            data["codec"] = self._codecs[call.id] = self.codec_of(call)
            stamp = call.answered_at or stamp
        elif name == "call.callee_available":
            data["extension"] = call.callee
        elif name == "call.transfer_failed":
            data = {"target": call.transfer_target, "reason": call.transfer_error}
        elif name == "call.ended":
            record = self.cdr_record(call)
            self.cdr.add(record)
            data = record.model_dump(
                include={
                    "end_reason",
                    "hangup_side",
                    "sip_code",
                    "duration",
                    "billsec",
                    "disposition",
                    "codec",
                }
            )
            data["reason"] = data.pop("end_reason")
            stamp = call.ended_at or stamp
        self.events.publish(self._event(name, self.to_wall(stamp), call, data))

    def on_notice(self, name: str, data: dict[str, Any]) -> None:
        payload = dict(data)
        when = self.to_wall(float(payload.pop("time", self.monotonic())))
        if name == "call.rejected":
            self.cdr.add(
                CdrRecord.model_construct(
                    call_id=f"rejected-{new_event_id()}",
                    node_id=self.node_id,
                    a_call_id=payload["a_call_id"],
                    caller=payload["caller"],
                    callee=payload["callee"],
                    start=when,
                    end=when,
                    duration=0.0,
                    billsec=0.0,
                    disposition="busy" if payload["sip_code"] in BUSY_CODES else "rejected",
                    end_reason=str(payload["reason"]),
                    hangup_side="edge",
                    sip_code=payload["sip_code"],
                )
            )
            event = Event.model_construct(
                id=new_event_id(),
                name="call.ended",
                time=when,
                node_id=self.node_id,
                a_call_id=payload.pop("a_call_id"),
                caller=payload.pop("caller"),
                callee=payload.pop("callee"),
                data={**payload, "disposition": "rejected", "duration": 0.0, "billsec": 0.0},
            )
            self.events.publish(event)
            return
        self.events.publish(
            Event.model_construct(id=new_event_id(), name=name, time=when, node_id=self.node_id, data=payload)
        )

    def on_dtmf(self, call: Call, leg: Side, digit: str, method: str) -> None:
        data = {"leg": leg.value, "digit": digit, "method": method}
        self.events.publish(self._event("dtmf", self.wall(), call, data))

    # --- records ---------------------------------------------------------------------------------
    def cdr_record(self, call: Call) -> CdrRecord:
        end_mono = call.ended_at if call.ended_at is not None else self.monotonic()
        start = self.to_wall(call.created_at)
        end = self.to_wall(end_mono)
        answer = self.to_wall(call.answered_at) if call.answered_at is not None else None
        reason = call.end_reason or EndReason.ERROR
        return CdrRecord.model_construct(
            call_id=call.id,
            node_id=self.node_id,
            a_call_id=call.a.dialog.call_id,
            b_call_id=call.b.dialog.call_id if call.b is not None else None,
            caller=call.caller,
            callee=call.callee,
            start=start,
            answer=answer,
            end=end,
            duration=max(0.0, end - start),
            billsec=max(0.0, end - answer) if answer is not None else 0.0,
            disposition=disposition(call),
            end_reason=reason.value,
            hangup_side=HANGUP_SIDE.get(reason, "edge"),
            sip_code=call.final_status,
            codec=self._codecs.pop(call.id, None),  # noted at answer: the media is gone by now
        )

    def _event(self, name: str, when: float, call: Call, data: dict[str, Any]) -> Event:
        return Event.model_construct(
            id=new_event_id(),
            name=name,
            time=when,
            node_id=self.node_id,
            call_id=call.id,
            a_call_id=call.a.dialog.call_id,
            b_call_id=call.b.dialog.call_id if call.b is not None else None,
            caller=call.caller,
            callee=call.callee,
            data=data,
        )
