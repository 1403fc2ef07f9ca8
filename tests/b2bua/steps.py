"""Steps the core tests repeat, built on :mod:`tests.b2bua.harness`: the caller's INVITE crossing the
edge, a phone registering, and requests that belong to no call (pings, strays, a caller's CANCEL)."""

from __future__ import annotations

from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response

from .harness import CALLEE, CALLER, Wire, in_dialog, invite


def forward_invite(wire: Wire, a_inv: Request | None = None, to: Endpoint = CALLEE) -> Request:
    """The caller sends ``a_inv`` (default :func:`invite`); returns the INVITE the edge sent to ``to``."""
    wire.deliver(a_inv or invite(), CALLER)
    b_inv = wire.take_one(to, "INVITE")
    assert isinstance(b_inv, Request)
    return b_inv


def register(wire: Wire, phone: Endpoint, user: str, *, call_id: str, branch: str, expires: int) -> Response:
    """``phone`` registers ``user@pbx.local`` at its own address; returns the edge's 200."""
    reg = in_dialog(
        "REGISTER",
        call_id=call_id,
        from_=f"<sip:{user}@pbx.local>;tag=r1",
        to=f"<sip:{user}@pbx.local>",
        cseq=1,
        uri="sip:pbx.local",
        via_host=phone,
        branch=branch,
        extra=[("Contact", f"<sip:{user}@{phone.host}:{phone.port}>"), ("Expires", str(expires))],
    )
    wire.deliver(reg, phone)
    ok = wire.take_one(phone, "200")
    assert isinstance(ok, Response)
    return ok


def ping(call_id: str, branch: str, via_host: Endpoint = CALLER) -> Request:
    """An out-of-dialog OPTIONS to the edge from a monitor whose Via names ``via_host``."""
    return in_dialog(
        "OPTIONS",
        call_id=call_id,
        from_="<sip:mon@127.0.0.1>;tag=m1",
        to="<sip:edge@127.0.0.1>",
        cseq=1,
        uri="sip:127.0.0.1:5060",
        via_host=via_host,
        branch=branch,
    )


def stray(method: str, call_id: str, branch: str, *, to_tag: str | None = None) -> Request:
    """A request from the caller for a call or transaction the edge never had."""
    return in_dialog(
        method,
        call_id=call_id,
        from_="<sip:a@127.0.0.1>;tag=1",
        to="<sip:b@127.0.0.1>" + (f";tag={to_tag}" if to_tag else ""),
        cseq=1,
        uri="sip:b@127.0.0.1",
        via_host=CALLER,
        branch=branch,
    )


def cancel_for(a_inv: Request) -> Request:
    """The caller's CANCEL of ``a_inv`` (same branch, as RFC 3261 §9.1 wants)."""
    return in_dialog(
        "CANCEL",
        call_id=a_inv.call_id,
        from_=a_inv.headers.get("From") or "",
        to=a_inv.headers.get("To") or "",
        cseq=a_inv.cseq.seq,
        uri=a_inv.uri,
        via_host=CALLER,
        branch=a_inv.top_via.branch or "",
    )
