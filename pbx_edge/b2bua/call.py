"""A call through the edge: two legs, each its own dialog, and what the B2BUA remembers between events.

The legs never call each other; :mod:`pbx_edge.b2bua.core` routes every transaction event to the
call it belongs to (through the transaction's ``owner``) and decides what the other leg gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from pbx_edge.b2bua.location import Binding
from pbx_edge.media.interface import MediaSession, Side
from pbx_edge.sip.dialog import Dialog
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response
from pbx_edge.sip.transaction import ClientTransaction, ServerTransaction


class CallState(Enum):
    TRYING = "trying"  # INVITE relayed, no provisional yet
    EARLY = "early"  # a 1xx relayed to the caller
    CONFIRMED = "confirmed"  # 2xx relayed: talking
    CANCELLING = "cancelling"  # the caller is gone, waiting for the callee leg to end
    TERMINATED = "terminated"


class EndReason(Enum):
    CALLER_BYE = "caller_bye"
    CALLEE_BYE = "callee_bye"
    CALLER_CANCEL = "caller_cancel"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"  # the callee answered with a final error
    TIMEOUT = "timeout"  # transaction timeout (no response / no ACK)
    TRANSPORT_ERROR = "transport_error"
    ADMIN = "admin"
    AI_HANGUP = "ai_hangup"  # the AI attendant or IVR ended the call (its hangup action)
    MEDIA_TIMEOUT = "media_timeout"  # no RTP either way for media.inactivity_timeout
    SHUTDOWN = "shutdown"
    ERROR = "error"


@dataclass(slots=True, eq=False)
class Leg:
    side: Side
    dialog: Dialog
    transport: str  # "UDP"/"TCP": what our Via and Contact say on this leg
    peer: Endpoint  # where requests to this party go when no route says otherwise
    out_invite_pending: bool = False  # our re-INVITE on this leg awaits its final response
    in_invite_pending: bool = False  # this party's re-INVITE awaits our final response
    last_ack: tuple[Request, Endpoint] | None = None  # re-sent when a 2xx is retransmitted


@dataclass(slots=True, eq=False)
class ReliableProvisional:
    """A 1xx sent reliably to the caller (RFC 3262) and the callee's RSeq it stands for."""

    response: Response
    callee_rseq: int | None
    sent_at: float
    interval: float


@dataclass(slots=True, eq=False)
class Call:
    id: str
    a: Leg
    caller: str
    callee: str
    a_invite_tx: ServerTransaction
    media: MediaSession
    created_at: float
    b: Leg | None = None
    b_invite_tx: ClientTransaction | None = None
    state: CallState = CallState.TRYING
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    final_status: int | None = None
    a_final_sent: bool = False
    b_provisional_seen: bool = False
    cancel_b_when_possible: bool = False
    next_rseq: int = 1
    unacked_reliable: dict[int, ReliableProvisional] = field(default_factory=dict)
    last_callee_rseq: int = 0
    route_source: str = ""
    late_offer_cseq: int | None = None  # callee 2xx carried the offer: its ACK waits for the caller's
    transfer_target: str | None = None  # the AI's last transfer (pbx_edge/b2bua/transfer.py) ...
    transfer_error: str | None = None  # ... and why it failed, if it did

    def leg_for_call_id(self, call_id: str) -> Leg | None:
        if call_id == self.a.dialog.call_id:
            return self.a
        if self.b is not None and call_id == self.b.dialog.call_id:
            return self.b
        return None

    def other(self, leg: Leg) -> Leg | None:
        return self.b if leg is self.a else self.a

    @property
    def call_ids(self) -> tuple[str, str | None]:
        return self.a.dialog.call_id, None if self.b is None else self.b.dialog.call_id


# --- what a client transaction was sent for (stored in tx.owner) -----------------------------


@dataclass(frozen=True, slots=True)
class CalleeInvite:
    call: Call


@dataclass(frozen=True, slots=True)
class Relayed:
    """An in-dialog request relayed from ``origin`` (its server transaction) to the other leg."""

    call: Call
    origin: ServerTransaction
    origin_leg: Leg
    target_leg: Leg


@dataclass(frozen=True, slots=True)
class Hangup:
    call: Call
    leg: Leg


@dataclass(frozen=True, slots=True)
class CancelSent:
    call: Call


@dataclass(frozen=True, slots=True)
class OwnPrack:
    call: Call


@dataclass(frozen=True, slots=True)
class OptionsPing:
    binding: Binding
