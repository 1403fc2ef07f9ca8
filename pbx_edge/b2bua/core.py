"""The edge's signalling core: a sans-I/O B2BUA on top of the transaction layer.

Theory of operation. Bytes come in with :meth:`EdgeCore.receive` (from the UDP/TCP adapters) and time
with :meth:`EdgeCore.handle_timer`; what must be sent comes out of :meth:`EdgeCore.outgoing`. The
transaction layer absorbs retransmissions and raises events; each event is routed to the call it
belongs to through the transaction's ``owner`` (client side) or the Call-ID (server side). A call has
two legs, each its own dialog (own Call-ID, tags, CSeq). The legs never talk to each other: this
module decides, per event, what the other leg gets (:mod:`pbx_edge.b2bua.calls` holds those flows).

Requests that belong to no call are answered here: REGISTER (registrar), OPTIONS (capabilities),
CANCEL/BYE without a call (481), unknown methods (501), methods we know but do not take outside a
dialog (405).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pbx_edge.b2bua.attendant import AttendantBackend, AttendedCall
from pbx_edge.b2bua.availability import AvailabilityFlows
from pbx_edge.b2bua.away import AwayTable
from pbx_edge.b2bua.call import Call, CallState, EndReason, Leg, OptionsPing
from pbx_edge.b2bua.flow_base import ACCEPT, ALLOW
from pbx_edge.b2bua.location import Binding, LocationTable
from pbx_edge.b2bua.messages import contact_header, via_header
from pbx_edge.b2bua.no_answer import AiOnNoAnswer, NoAnswerPolicy
from pbx_edge.b2bua.options_ping import OptionsPinger
from pbx_edge.b2bua.registrar import Registrar
from pbx_edge.b2bua.routing import Router
from pbx_edge.b2bua.transfer import TransferInvite
from pbx_edge.b2bua.triggers import TriggerPolicy
from pbx_edge.media.interface import MediaManager, PassThroughMedia, Side
from pbx_edge.ops.config import EdgeConfig
from pbx_edge.ops.ratelimit import InviteRateLimiter, Verdict
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.headers import Via
from pbx_edge.sip.ids import new_branch, new_call_id, new_tag
from pbx_edge.sip.message import Headers, Request, Response, SipParseError, parse_message
from pbx_edge.sip.responses import check_request, make_response
from pbx_edge.sip.timers import TimerHeap
from pbx_edge.sip.transaction import (
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TimerSettings,
    TransactionLayer,
    TransactionTimeout,
    TransportError,
)

log = logging.getLogger("pbx_edge.b2bua")

KNOWN_METHODS = frozenset(ALLOW.replace(" ", "").split(",")) | {"SUBSCRIBE", "REFER", "PUBLISH"}
EventListener = Callable[[str, Call], None]
DtmfListener = Callable[[str, Side, str], None]
NoticeListener = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """What we put in Via/Contact for one transport: the advertised host and the listening port."""

    host: str
    port: int


class EdgeCore(AvailabilityFlows):
    def __init__(
        self,
        config: EdgeConfig,
        local: dict[str, LocalAddress],
        media: MediaManager | None = None,
        no_answer: NoAnswerPolicy | None = None,
        wall_clock: Callable[[], float] = time.time,
        attendant: AttendantBackend | None = None,
    ) -> None:
        if not local:
            raise ValueError("at least one local transport address is required")
        self.config = config
        self.local = local
        self.wall_clock = wall_clock  # only for Date headers; all timing uses the ``now`` we are given
        timers = config.sip.timers
        self.settings = TimerSettings(t1=timers.t1, t2=timers.t2, t4=timers.t4)
        self.tx = TransactionLayer(self.settings)
        self.location = LocationTable()
        self.registrar = Registrar(self.location, config.sip)
        self.router = Router(self.location, config.routing, config.sip.domain)
        self.pinger = OptionsPinger(self.location, config.sip.options_ping)
        self.media: MediaManager = media or PassThroughMedia()
        self.triggers = TriggerPolicy(config.calls, self.router.extension_config, config.routing.ivr_numbers)
        self.no_answer: NoAnswerPolicy = no_answer or AiOnNoAnswer(
            config.calls.no_answer_action, self.triggers
        )
        self.attendant = attendant  # the AI side; None: calls are never handed to the AI attendant
        self.attended: dict[str, AttendedCall] = {}  # calls the AI attendant answered, by our call id
        self.away = AwayTable()
        self.away.on_back.append(self.on_back)
        self.transfers: dict[str, TransferInvite] = {}  # attended calls being transferred
        self.calls: dict[str, Call] = {}  # by our call id
        self.by_call_id: dict[str, Call] = {}  # both legs' Call-IDs -> call
        self.timers: TimerHeap[tuple[str, str, int]] = TimerHeap()
        self.listeners: list[EventListener] = []
        self.dtmf_listeners: list[DtmfListener] = []  # (call id, leg, digit): SIP INFO DTMF
        # Things that are not (yet) a call: call.rejected (before a call exists), registration.*.
        self.notice_listeners: list[NoticeListener] = []
        self.rate_limiter = InviteRateLimiter(config.rate_limit)
        self.refusing: str | None = None  # set while draining or over a resource limit: new calls get 503
        self.sip_received: Counter[str] = Counter()  # requests by method, responses by status code
        self.stats: dict[str, int] = {
            "parse_errors": 0,
            "dropped": 0,
            "calls_total": 0,
            "calls_rejected": 0,
            "handler_errors": 0,
            "calls_ai_answered": 0,
        }
        self.max_message_size = config.sip.max_message_size
        self.supported = frozenset(config.calls.supported_extensions)

    # --- inputs ----------------------------------------------------------------------------
    def receive(self, data: bytes, source: Endpoint, now: float) -> None:
        try:
            message = parse_message(data, stream=source.reliable, max_size=self.max_message_size)
        except SipParseError as exc:
            self.stats["parse_errors"] += 1
            if exc.partial is not None and exc.partial.method != "ACK":
                reply = make_response(exc.partial, exc.status, exc.reason)
                self.tx.send_stateless(reply, source)
            else:
                self.stats["dropped"] += 1
            return
        if isinstance(message, Request):
            self.sip_received[message.method] += 1
            if (
                message.method == "INVITE"
                and message.to_tag is None
                and not self._admit(message, source, now)
            ):
                return
            self._fix_via_received(message, source)
        else:
            self.sip_received[str(message.status)] += 1
        self.tx.receive(message, source, now)
        self._drain(now)

    def _admit(self, invite: Request, source: Endpoint, now: float) -> bool:
        """Per-source INVITE rate limit (NFR11), before any transaction exists: over the rate the
        INVITE gets a stateless 503 with Retry-After, over the ceiling nothing at all (no amplifying
        a flood). Rate-limited INVITEs are counted, not recorded as calls."""
        verdict = self.rate_limiter.check(source.host, now)
        if verdict is Verdict.ALLOW:
            return True
        if verdict is Verdict.REJECT:
            reply = make_response(invite, 503, "Service Unavailable", to_tag=new_tag())
            reply.headers.add("Retry-After", str(self.rate_limiter.retry_after))
            self.tx.send_stateless(reply, source)
        return False

    def transport_error(self, dest: Endpoint, now: float) -> None:
        self.tx.transport_error(dest, now)
        self._drain(now)

    def handle_timer(self, now: float) -> None:
        self.tx.handle_timer(now)
        for key in self.timers.pop_due(now):
            self._on_call_timer(key, now)
        for binding in self.location.expire(now):
            self.notify_binding("registration.expired", binding, now)
        for binding in self.pinger.due(now):  # empty when pinging is disabled
            self._send_options_ping(binding, now)
        self._drain(now)

    def get_timer(self) -> float | None:
        deadlines = [
            d
            for d in (
                self.tx.get_timer(),
                self.timers.next_deadline(),
                self.location.next_expiry(),
                self.pinger.get_timer(),
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def outgoing(self) -> list[tuple[bytes, Endpoint]]:
        return self.tx.outgoing()

    # --- queries -----------------------------------------------------------------------------
    def call_for(self, call_id: str) -> Call | None:
        """The call a Call-ID (of either leg) belongs to."""
        return self.by_call_id.get(call_id)

    def mapped_call_id(self, call_id: str) -> str | None:
        """Call-ID(A) -> Call-ID(B) and back."""
        call = self.by_call_id.get(call_id)
        if call is None:
            return None
        a, b = call.call_ids
        return b if call_id == a else a

    # --- helpers used by the call flows ------------------------------------------------------
    def local_for(self, transport: str) -> LocalAddress:
        return self.local.get(transport) or next(iter(self.local.values()))

    def local_host(self, transport: str) -> str:
        return self.local_for(transport).host

    def via(self, transport: str) -> str:
        local = self.local_for(transport)
        return via_header(local.host, local.port, transport, new_branch())

    def contact(self, transport: str) -> str:
        local = self.local_for(transport)
        return contact_header(local.host, local.port, transport)

    def notify(self, name: str, data: dict[str, Any]) -> None:
        for listener in self.notice_listeners:
            listener(name, data)

    def notify_binding(self, name: str, binding: Binding, now: float) -> None:
        if not self.notice_listeners:
            return
        source = binding.source
        self.notify(
            name,
            {
                "aor": binding.aor,
                "contact": str(binding.contact.uri),
                "source": f"{source.transport.lower()}:{source.host}:{source.port}",
                "expires": max(0.0, binding.expires_at - now),
                "time": now,
            },
        )

    def emit_dtmf(self, call: Call, side: Side, digit: str) -> None:
        for listener in self.dtmf_listeners:
            listener(call.id, side, digit)

    def emit(self, event: str, call: Call) -> None:
        for listener in self.listeners:
            listener(event, call)

    # --- event dispatch ----------------------------------------------------------------------
    def _drain(self, now: float) -> None:
        next_event = self.tx.next_event
        while (event := next_event()) is not None:
            try:
                if isinstance(event, RequestReceived):
                    self._on_request(event.request, event.source, event.tx, now)
                elif isinstance(event, ResponseReceived):
                    self._on_response(event.response, event.tx, now)
                elif isinstance(event, TransactionTimeout):
                    self._on_tx_failure(event.tx, now, timeout=True)
                elif isinstance(event, TransportError):
                    self._on_tx_failure(event.tx, now, timeout=False)
            except Exception:  # a bug in one call's handling must not leak it or stop the others
                self.stats["handler_errors"] += 1
                log.exception("error handling %s", type(event).__name__)
                self._abort_after_error(event, now)

    def _abort_after_error(self, event: object, now: float) -> None:
        """End the call an event belonged to (500 to an unanswered caller, BYE on a talking call)
        and answer the request that failed, so that no call, port or transaction is left behind."""
        tx = getattr(event, "tx", None)
        message = getattr(event, "request", None) or getattr(event, "response", None)
        owner = getattr(tx, "owner", None)
        call = owner if isinstance(owner, Call) else getattr(owner, "call", None)
        if not isinstance(call, Call) and message is not None:
            call = self.by_call_id.get(message.call_id)
        if isinstance(tx, ServerTransaction) and tx.last_response is None:
            with contextlib.suppress(Exception):
                self.tx.send_response(tx, make_response(tx.request, 500, "Server Internal Error"), now)
        if not isinstance(call, Call) or call.state is CallState.TERMINATED:
            return
        try:
            self.hangup(call.id, EndReason.ERROR, now, status=(500, "Server Internal Error"))
        except Exception:  # the signalling is beyond repair: at least free the call and its media
            log.exception("error hanging up call %s after an error", call.id)
            self.end_call(call, EndReason.ERROR, now)

    def _on_request(self, req: Request, source: Endpoint, tx: ServerTransaction | None, now: float) -> None:
        if req.method == "ACK":
            self.on_ack(req, now)
            return
        if tx is None:
            return
        method = req.method
        if method not in KNOWN_METHODS:
            self._reply(tx, 501, "Not Implemented", now, allow=True)
            return
        problem = check_request(req, set(self.supported))
        if problem is not None:
            status, reason = problem
            reply = make_response(req, status, reason)
            if status == 415:
                reply.headers.add("Accept", ACCEPT)
            if status == 420:
                unsupported = sorted(req.option_tags("Require") - self.supported)
                reply.headers.add("Unsupported", ", ".join(unsupported))
            self.tx.send_response(tx, reply, now)
            return
        if req.to_tag is not None:
            self.on_in_dialog_request(req, source, tx, now)
        elif method == "INVITE":
            self.on_initial_invite(req, source, tx, now)
        elif method == "CANCEL":
            self.on_cancel(req, tx, now)
        elif method == "REGISTER":
            result = self.registrar.handle_register(req, source, now, wall_time=self.wall_clock())
            self.tx.send_response(tx, result.response, now)
            for binding in result.added:
                self.notify_binding("registration.added", binding, now)
                self.on_registered(binding)
            for binding in result.removed:
                self.notify_binding("registration.removed", binding, now)
        elif method == "OPTIONS":
            self._reply(tx, 200, "OK", now, allow=True, capabilities=True)
        elif method in ("BYE", "PRACK", "UPDATE", "INFO"):
            self._reply(tx, 481, "Call/Transaction Does Not Exist", now)
        else:
            self._reply(tx, 405, "Method Not Allowed", now, allow=True)

    def _on_response(self, resp: Response, tx: ClientTransaction | None, now: float) -> None:
        if tx is None:
            self.on_stray_response(resp, now)
            return
        owner = tx.owner
        if isinstance(owner, OptionsPing):
            self._on_options_reply(owner, True, now)
            return
        self.on_call_response(owner, tx, resp, now)

    def _on_tx_failure(self, tx: ClientTransaction | ServerTransaction, now: float, *, timeout: bool) -> None:
        owner = tx.owner
        if isinstance(owner, OptionsPing):
            self._on_options_reply(owner, False, now)
            return
        if isinstance(tx, ServerTransaction):
            call = self.by_call_id.get(tx.request.call_id)
            if call is not None and tx.is_invite:
                self.on_unacknowledged(call, tx, now)
            return
        self.on_call_failure(owner, tx, now, timeout=timeout)

    @staticmethod
    def _fix_via_received(req: Request, source: Endpoint) -> None:
        """RFC 3261 §18.2.1 / RFC 3581: note the real source in the top Via when it differs."""
        value = req.headers.get("Via")
        if value is None:
            return
        try:
            via = Via.parse(value)
        except ValueError:
            return
        moved = via.host != source.host
        wants_rport = "rport" in via.params and via.params["rport"] is None
        if not (moved or wants_rport):
            return
        if moved:
            via.params["received"] = source.host
        if wants_rport:
            via.params["rport"] = str(source.port)
            via.params.setdefault("received", source.host)
        vias = req.headers.get_all("Via")
        vias[0] = str(via)
        req.headers.set_all("Via", vias)

    # --- OPTIONS keep-alive pings ----------------------------------------------------------------
    def _send_options_ping(self, binding: Binding, now: float) -> None:
        dest = binding.dest
        local = self.local_for(dest.transport)
        contact_uri = str(binding.contact.uri)
        headers = Headers()
        headers.add("Via", self.via(dest.transport))
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:ping@{local.host}:{local.port}>;tag={new_tag()}")
        headers.add("To", f"<{contact_uri}>")
        headers.add("Call-ID", new_call_id(local.host))
        headers.add("CSeq", "1 OPTIONS")
        request = Request(headers=headers, method="OPTIONS", uri=contact_uri)
        client_tx = self.tx.send_request(request, dest, now)
        client_tx.owner = OptionsPing(binding)

    def _on_options_reply(self, owner: OptionsPing, ok: bool, now: float) -> None:
        self.pinger.on_reply(owner.binding, ok, now)

    # --- bookkeeping -----------------------------------------------------------------------------
    def register_call(self, call: Call) -> None:
        self.calls[call.id] = call
        self.by_call_id[call.a.dialog.call_id] = call
        self.stats["calls_total"] += 1

    def attach_callee(self, call: Call, leg: Leg) -> None:
        call.b = leg
        self.by_call_id[leg.dialog.call_id] = call

    def end_call(self, call: Call, reason: EndReason, now: float, status: int | None = None) -> None:
        if call.state is CallState.TERMINATED:
            return
        call.state = CallState.TERMINATED
        call.end_reason = reason
        call.ended_at = now
        if status is not None and call.final_status is None:
            call.final_status = status
        self.calls.pop(call.id, None)
        for call_id in call.call_ids:
            if call_id is not None and self.by_call_id.get(call_id) is call:
                del self.by_call_id[call_id]
        self.timers.cancel((call.id, "no_answer", 0))
        for rseq in list(call.unacked_reliable):
            self.timers.cancel((call.id, "rel1xx", rseq))
        call.unacked_reliable.clear()
        try:
            self.emit("call.ended", call)  # listeners still see the media (AI streams end first)
        finally:
            self.on_call_over(call)
            self.attended.pop(call.id, None)
            self.forget_transfer(call, now)
            call.media.close()
            # Break the call <-> transaction cycles so the call is freed by reference counting as
            # soon as its transactions end: the edge runs with the cyclic GC mostly off (edge.py).
            call.a_invite_tx.owner = None
            call.b_invite_tx = None
