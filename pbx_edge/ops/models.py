"""The operations data model shared by the event bus, the CDR store, webhooks and the admin API.

Times are UNIX seconds (UTC) as floats: the node converts from its monotonic clock once, when the
record is made, so every consumer sees wall-clock times.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

# The names the node itself publishes (agent events, transcripts: see pbx_edge/ops/events.py)
EVENT_NAMES = (
    "call.started",
    "call.ringing",
    "call.answered",
    "call.ended",
    "call.ai_answered",
    "call.transferred",
    "call.transfer_failed",
    "call.callee_available",
    "registration.added",
    "registration.expired",
    "dtmf",
)

Disposition = Literal["answered", "no_answer", "busy", "failed", "cancelled", "rejected"]


class Event(BaseModel):
    """One thing that happened on the node; ``data`` holds the event-specific fields (documented per
    name in pbx_edge/ops/events.py)."""

    id: str  # unique, time-ordered (ULID-like): also the webhook idempotency key
    name: str
    time: float
    node_id: str
    call_id: str | None = None  # our call id
    a_call_id: str | None = None  # the caller leg's SIP Call-ID
    b_call_id: str | None = None  # the callee leg's SIP Call-ID
    caller: str | None = None
    callee: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class CdrRecord(BaseModel):
    """One call detail record: every call gets one, answered or not."""

    call_id: str
    node_id: str
    a_call_id: str
    b_call_id: str | None = None
    caller: str
    callee: str
    start: float
    answer: float | None = None
    end: float
    duration: float  # end - start
    billsec: float  # end - answer, 0 when not answered
    disposition: Disposition
    end_reason: str  # EndReason value: caller_bye, callee_bye, no_answer, media_timeout, shutdown...
    hangup_side: Literal["caller", "callee", "edge"]
    sip_code: int | None = None  # final response the caller got
    codec: str | None = None


class CallInfo(BaseModel):
    """A live call as the admin API shows it (FR21)."""

    call_id: str
    state: str
    a_call_id: str
    b_call_id: str | None = None
    caller: str
    callee: str
    start: float
    answer: float | None = None
    codec: str | None = None
    media_ports: list[int] = Field(default_factory=list)


class RegistrationInfo(BaseModel):
    aor: str
    contact: str
    source: str
    expires_in: float


class PortUsage(BaseModel):
    allocated_calls: int
    total_calls: int
    allocated_ports: int
    total_ports: int
    unusable_blocks: int


class NodeView(Protocol):
    """What the admin API and the metrics read from (and ask of) a running node."""

    node_id: str

    @property
    def ready(self) -> bool: ...

    def active_calls(self) -> list[CallInfo]: ...

    def call_info(self, call_id: str) -> CallInfo | None: ...

    def hangup(self, call_id: str) -> bool:
        """End a call from the edge (admin): BYE both legs, or 480 + CANCEL before answer."""
        ...

    def port_usage(self) -> PortUsage | None:
        """None when media is pass-through."""
        ...

    def registrations(self) -> list[RegistrationInfo]: ...
