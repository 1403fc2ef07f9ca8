"""Drive an :class:`EdgeCore` with plain function calls: two fake UAs (caller, callee) and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pbx_edge.b2bua.core import EdgeCore, LocalAddress
from pbx_edge.media.interface import MediaManager
from pbx_edge.ops.config import parse_config
from pbx_edge.sip.endpoint import Endpoint
from pbx_edge.sip.message import Request, Response, SipParseError, parse_message

EDGE = Endpoint("UDP", "127.0.0.1", 5060)
CALLER = Endpoint("UDP", "127.0.0.1", 5062)
CALLEE = Endpoint("UDP", "127.0.0.1", 5070)

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
)


def _parse_sent(data: bytes, dest: Endpoint) -> Request | Response:
    """Parse what the core sent. A 400 to a broken request echoes its broken headers (RFC 3261
    §8.2.6 says copy them), so such a response is read by its status line alone."""
    try:
        return parse_message(data, stream=dest.reliable)
    except SipParseError:
        version, code, reason = data.split(b"\r\n", 1)[0].decode().split(" ", 2)
        assert version == "SIP/2.0", data[:80]
        return Response(status=int(code), reason=reason)


def make_core(media: MediaManager | None = None, **overrides: Any) -> EdgeCore:
    data: dict[str, Any] = {
        "sip": {"listen": [{"transport": "udp", "host": "127.0.0.1", "port": 5060}]},
        "calls": {"no_answer_timeout": 10},
        "routing": {"static_routes": [{"prefix": "", "target": "sip:127.0.0.1:5070"}]},
        "rate_limit": {"allow": ["127.0.0.0/8"]},  # the tests' phones call much faster than 10/s
    }
    for key, value in overrides.items():
        data[key] = value
    config = parse_config(data, environ={})
    return EdgeCore(config, {"UDP": LocalAddress("127.0.0.1", 5060)}, media=media)


@dataclass
class Wire:
    """Feeds bytes to the core and sorts what it sends by destination."""

    core: EdgeCore
    now: float = 1000.0
    sent: dict[Endpoint, list[Request | Response]] = field(default_factory=dict)

    def deliver(self, message: Request | Response | bytes, source: Endpoint) -> None:
        data = message if isinstance(message, bytes) else bytes(message)
        self.core.receive(data, source, self.now)
        self._collect()

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadline = self.core.get_timer()
            if deadline is None or deadline > end:
                break
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
            self._collect()
        self.now = end

    def _collect(self) -> None:
        for data, dest in self.core.outgoing():
            self.sent.setdefault(dest, []).append(_parse_sent(data, dest))

    def take(self, dest: Endpoint) -> list[Request | Response]:
        return self.sent.pop(dest, [])

    def take_one(self, dest: Endpoint, kind: str) -> Request | Response:
        """The one message of ``kind`` (a method or a status code) sent to ``dest``; others kept."""
        queue = self.sent.get(dest, [])
        for i, msg in enumerate(queue):
            label = msg.method if isinstance(msg, Request) else str(msg.status)
            if label == kind:
                del queue[i]
                return msg
        labels = [m.method if isinstance(m, Request) else m.status for m in queue]
        raise AssertionError(f"no {kind} sent to {dest}; sent: {labels}")


def invite(
    call_id: str = "a-call-1",
    *,
    user: str = "bob",
    extra: list[tuple[str, str]] | None = None,
    body: bytes = SDP,
    cseq: int = 1,
    branch: str = "z9hG4bKcaller1",
) -> Request:
    lines = [
        f"INVITE sip:{user}@127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport",
        "Max-Forwards: 70",
        f"To: <sip:{user}@127.0.0.1:5060>",
        "From: Alice <sip:alice@127.0.0.1:5062>;tag=alice-tag",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} INVITE",
        "Contact: <sip:alice@127.0.0.1:5062>",
    ]
    lines += [f"{k}: {v}" for k, v in extra or []]
    if body:
        lines.append("Content-Type: application/sdp")
    data = ("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def answer(
    request: Request,
    status: int,
    reason: str,
    *,
    to_tag: str | None = "bob-tag",
    body: bytes = b"",
    extra: list[tuple[str, str]] | None = None,
    contact: str | None = "<sip:bob@127.0.0.1:5070>",
) -> Response:
    """A response from a UA to ``request`` (RFC 3261 §8.2.6)."""
    resp = Response(status=status, reason=reason)
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.headers.get_all(name):
            resp.headers.add(name, value)
    if to_tag and request.to_tag is None:
        resp.headers.set("To", f"{request.headers.get('To')};tag={to_tag}")
    if contact and status < 300 and status > 100:
        resp.headers.add("Contact", contact)
    for name, value in extra or []:
        resp.headers.add(name, value)
    if body:
        resp.headers.add("Content-Type", "application/sdp")
        resp.body = body
    return resp


def in_dialog(
    method: str,
    *,
    call_id: str,
    from_: str,
    to: str,
    cseq: int,
    uri: str,
    via_host: Endpoint,
    branch: str,
    body: bytes = b"",
    extra: list[tuple[str, str]] | None = None,
) -> Request:
    req = Request(method=method, uri=uri)
    h = req.headers
    h.add("Via", f"SIP/2.0/UDP {via_host.host}:{via_host.port};branch={branch}")
    h.add("Max-Forwards", "70")
    h.add("From", from_)
    h.add("To", to)
    h.add("Call-ID", call_id)
    h.add("CSeq", f"{cseq} {method}")
    for name, value in extra or []:
        h.add(name, value)
    if body:
        h.add("Content-Type", "application/sdp")
        req.body = body
    return req


EDGE_URI = "sip:edge@127.0.0.1:5060"


def from_caller(
    method: str, a_inv: Request, dialog_msg: Request | Response, cseq: int, branch: str, **kw: Any
) -> Request:
    """An in-dialog request from the caller; ``dialog_msg`` carries the edge's To tag."""
    return in_dialog(
        method,
        call_id=a_inv.call_id,
        from_=a_inv.headers.get("From") or "",
        to=dialog_msg.headers.get("To") or "",
        cseq=cseq,
        uri=EDGE_URI,
        via_host=CALLER,
        branch=branch,
        **kw,
    )


def from_callee(method: str, b_inv: Request, cseq: int, branch: str, **kw: Any) -> Request:
    """An in-dialog request from the callee (tag ``bob-tag``) on the edge's callee leg."""
    return in_dialog(
        method,
        call_id=b_inv.call_id,
        from_="<sip:bob@127.0.0.1:5070>;tag=bob-tag",
        to=b_inv.headers.get("From") or "",
        cseq=cseq,
        uri=EDGE_URI,
        via_host=CALLEE,
        branch=branch,
        **kw,
    )


def ack_for(req: Request, resp: Response, source: Endpoint, branch: str) -> Request:
    return in_dialog(
        "ACK",
        call_id=req.call_id,
        from_=req.headers.get("From") or "",
        to=resp.headers.get("To") or "",
        cseq=req.cseq.seq,
        uri=str(resp.contacts[0].uri) if resp.contacts else req.uri,
        via_host=source,
        branch=branch,
    )
