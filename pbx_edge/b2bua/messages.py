"""Pure builders for the messages a B2BUA originates: the callee leg's INVITE, CANCEL, relayed responses.

No state lives here: :mod:`pbx_edge.b2bua.core` decides what to send, these functions decide what it
looks like on the wire (RFC 3261 §8.1.1, §9.1, §8.2.6).
"""

from __future__ import annotations

from pbx_edge.sip.message import Headers, Request, Response
from pbx_edge.sip.responses import make_response
from pbx_edge.sip.uri import Address

# Headers that describe the session or the capabilities of the far end: the other leg gets them.
_CAPABILITIES = (
    "Supported",
    "Allow",
    "Accept",
    "Content-Type",
    "Content-Disposition",
    "Session-Expires",
    "Min-SE",
)
INVITE_PASS_HEADERS = (
    *_CAPABILITIES,
    "Subject",
    "Priority",
    "Alert-Info",
    "Call-Info",
    "P-Asserted-Identity",
    "Privacy",
)
RESPONSE_PASS_HEADERS = (*_CAPABILITIES, "Retry-After", "Warning", "Unsupported", "Call-Info", "Alert-Info")
IN_DIALOG_PASS_HEADERS = (*_CAPABILITIES, "Event", "Subscription-State", "Info-Package", "Recv-Info")
# Option tags the edge can honour end to end; a Require with anything else is answered 420.
PASSABLE_REQUIRE = frozenset({"100rel", "timer"})


def copy_headers(src: Headers, dst: Headers, names: tuple[str, ...]) -> None:
    for name in names:
        for value in src.get_all(name):
            dst.add(name, value)


def callee_invite(
    a_request: Request,
    *,
    request_uri: str,
    call_id: str,
    from_tag: str,
    via: str,
    contact: str,
    body: bytes,
) -> Request:
    """The callee leg's INVITE: a new dialog (own Call-ID, tag, CSeq) carrying the caller's identity."""
    a_from = a_request.from_addr
    a_from.params = {k: v for k, v in a_from.params.items() if k != "tag"}
    a_from.params["tag"] = from_tag
    to = a_request.to_addr
    to.params.pop("tag", None)
    max_forwards = int(a_request.headers.get("Max-Forwards") or "70") - 1
    headers = Headers()
    items = headers._items
    items.append(("Via", via))
    items.append(("Max-Forwards", str(max_forwards)))
    items.append(("From", str(a_from)))
    items.append(("To", str(to)))
    items.append(("Call-ID", call_id))
    items.append(("CSeq", "1 INVITE"))
    items.append(("Contact", contact))
    copy_headers(a_request.headers, headers, INVITE_PASS_HEADERS)
    required = sorted(a_request.option_tags("Require") & PASSABLE_REQUIRE)
    if required:
        headers.add("Require", ", ".join(required))
    return Request(headers=headers, body=body, method="INVITE", uri=request_uri)


def cancel_for(invite: Request) -> Request:
    """CANCEL of a client INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, From, To, top Via, Route."""
    src = invite.headers
    headers = Headers()
    headers.add("Via", src.get("Via") or "")
    headers.add("Max-Forwards", "70")
    for route in src.get_all("Route"):
        headers.add("Route", route)
    for name in ("From", "To", "Call-ID"):
        headers.add(name, src.get(name) or "")
    headers.add("CSeq", f"{invite.cseq.seq} CANCEL")
    return Request(headers=headers, method="CANCEL", uri=invite.uri)


def relayed_response(
    origin: Request,
    response: Response,
    *,
    to_tag: str | None,
    contact: str | None,
    body: bytes,
) -> Response:
    """The response the origin leg gets for ``response`` received on the other leg."""
    status, reason = map_status(response.status, response.reason)
    out = make_response(origin, status, reason, to_tag=to_tag)
    if contact is not None and (status < 300 or 300 <= status < 400) and status != 100:
        out.headers.add("Contact", contact)
    copy_headers(response.headers, out.headers, RESPONSE_PASS_HEADERS)
    out.body = body
    if not body:
        out.headers.remove("Content-Type")
    return out


def map_status(status: int, reason: str) -> tuple[int, str]:
    """Statuses that concern only the callee leg become what the caller can act on."""
    if status in (401, 407):
        return 403, "Forbidden (callee requires authentication)"
    if status == 482:
        return 480, "Temporarily Unavailable"
    return status, reason


def contact_header(host: str, port: int, transport: str, user: str = "edge") -> str:
    suffix = ";transport=tcp" if transport == "TCP" else ""
    return f"<sip:{user}@{host}:{port}{suffix}>"


def via_header(host: str, port: int, transport: str, branch: str) -> str:
    return f"SIP/2.0/{transport} {host}:{port};branch={branch};rport"


def caller_identity(request: Request) -> str:
    addr: Address = request.from_addr
    return addr.uri.user_unescaped or str(addr.uri)
